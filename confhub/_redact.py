"""Recognising secrets, so that they stay out of output, logs and (optionally) caches.

The rule (documented in ``docs/guide.md``, "Secrets"): a key is secret when any word of any
segment of its dotted path is a secret word. Segments are split into words on ``_``, ``-``
and camelCase boundaries and lower-cased; a trailing plural ``s`` is dropped; list indexes
(``users[0]``) are ignored. So ``db.password``, ``SECRET_KEY``, ``apiKeys``,
``passwords.admin`` and ``users[0].token`` are secret; ``bypass`` and ``compass`` are not.
A string value that is a URL with a password (``postgres://u:pw@h/db``) is shown with the
password replaced, whatever its key. Values inside lists and tables are checked with their
full path, recursively (:func:`redact_value`, :func:`strip_secrets`).

A source can also declare that every value it holds is secret whatever the key (a secrets
directory: ``Layer.secret``); the callers pass those keys as ``secret_keys`` and they are
redacted like secret-looking ones, tables under them included.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from ._location import REDACTED as REDACTED
from ._location import split_location

#: Words that make a key secret wherever they appear in its path.
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "pwd",
        "secret",
        "token",
        "credential",
        "apikey",
        "privatekey",
        "cookie",
    }
)
#: Adjacent word pairs that make a key secret (``api_key``, ``accessKey``, ``SECRET_KEY``).
_SECRET_PAIRS = frozenset(
    {
        ("api", "key"),
        ("private", "key"),
        ("access", "key"),
        ("signing", "key"),
        ("session", "key"),
        ("encryption", "key"),
        ("master", "key"),
        ("auth", "key"),
    }
)
#: Words that make a key secret only as the last word of the key (``redis.auth``, ``db.pass``):
#: elsewhere they are too common (``auth.enabled``, ``pass_through``).
_SECRET_LAST_WORDS = frozenset({"pass", "auth", "pw"})

_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_INDEX = re.compile(r"\[[^\]]*\]")

#: Option names of a source spec whose values are credentials.
SECRET_OPTIONS = frozenset(
    {"password", "token", "acl_token", "secret", "client_key", "key_password", "auth"}
)

#: A string that is a URL with a password: ``scheme://user:password@host...``.
_DSN = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.\-]*://[^\s@]*:[^\s]*@", re.S)


def _words(segment: str) -> list[str]:
    words = []
    for part in re.split(r"[_\-\s]+", _INDEX.sub("", segment)):
        for word in _WORD.findall(part):
            lower = word.lower()
            if len(lower) > 3 and lower.endswith("s") and not lower.endswith("ss"):
                lower = lower[:-1]
            words.append(lower)
    return words


def is_secret_key(key: str) -> bool:
    """Return whether the dotted ``key`` looks like it holds a secret (``db.password``).

    See the module docstring for the rule; it errs towards secret.
    """
    words: list[str] = []
    for segment in key.split("."):
        seg_words = _words(segment)
        if any(w in _SECRET_WORDS for w in seg_words):
            return True
        if any(pair in _SECRET_PAIRS for pair in itertools.pairwise(seg_words)):
            return True
        words.extend(seg_words)
    return bool(words) and words[-1] in _SECRET_LAST_WORDS


def has_embedded_password(value: Any) -> bool:
    """Whether ``value`` is a string URL that carries a password (a DSN)."""
    return isinstance(value, str) and _DSN.match(value) is not None


def redact_value(key: str, value: Any, secret_keys: Collection[str] = ()) -> Any:
    """``value`` of ``key`` as it may be shown: a secret key's value (or one of
    ``secret_keys``, the keys of a source whose every value is secret) replaced by
    ``<redacted>``, a DSN's password replaced, tables and lists redacted item by item (each
    checked with its full path: ``users[0].password``)."""
    if is_secret_key(key) or key in secret_keys:
        return REDACTED
    if isinstance(value, str):
        return redact_url(value) if has_embedded_password(value) else value
    if isinstance(value, Mapping):
        return {
            k: redact_value(f"{key}.{k}" if key else str(k), v, secret_keys)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(f"{key}[{i}]", v, secret_keys) for i, v in enumerate(value))
    return value


#: Returned by :func:`strip_secrets` for a value that is a secret as a whole.
DROPPED: Any = object()


def strip_secrets(key: str, value: Any) -> Any:
    """``value`` of ``key`` without its secrets (for ``?cache_secrets=false``): a secret as a
    whole gives :data:`DROPPED`; tables and lists lose their secret entries."""
    if is_secret_key(key) or has_embedded_password(value):
        return DROPPED
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            kept = strip_secrets(f"{key}.{k}" if key else str(k), v)
            if kept is not DROPPED:
                out[k] = kept
        return out
    if isinstance(value, (list, tuple)):
        items = [strip_secrets(f"{key}[{i}]", v) for i, v in enumerate(value)]
        # A list with a secret item is left out whole: a cached list with holes would lie.
        return DROPPED if any(v is DROPPED for v in items) else type(value)(items)
    return value


def redact_url(text: str) -> str:
    """Return ``text`` with a URL's password and secret query options replaced.

    ``text`` is ``scheme://[user[:password]@]hosts/path[?query]``; the user info is found
    by the core's one location parser (:mod:`confhub._location`), so a password holding
    ``#``, ``?``, ``/`` or ``@`` is replaced whole.
    """
    scheme, sep, rest = text.partition(":")
    if not sep or not rest.startswith("//"):
        return text
    parts, query = split_location(rest)
    shown = f"{scheme}:{parts.display}"
    if query is not None:
        pairs = [
            (k, REDACTED if k.lower() in SECRET_OPTIONS else v)
            for k, v in parse_qsl(query, keep_blank_values=True)
        ]
        shown += "?" + urlencode(pairs, safe="<>/:,")
    return shown

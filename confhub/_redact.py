"""Recognising secrets, so that they stay out of output, logs and (optionally) caches."""

from __future__ import annotations

import re
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "<redacted>"

#: Key segments that mark a value as secret (matched on the last segment, case-insensitive).
_SECRET_SEGMENT = re.compile(
    r"(pass(word|wd|phrase)?|secret|token|api[_-]?key|apikey|private[_-]?key|credentials?|"
    r"client[_-]?secret|auth|cookie|session[_-]?key|signing[_-]?key|access[_-]?key)$",
    re.IGNORECASE,
)

#: Option names of a source spec whose values are credentials.
SECRET_OPTIONS = frozenset(
    {"password", "token", "acl_token", "secret", "client_key", "key_password", "auth"}
)


_RAW_USERINFO = re.compile(r"(?P<userinfo>.*)@(?P<rest>[A-Za-z0-9.\-:,\[\]]+(?:[/?].*)?)$", re.S)


def is_secret_key(key: str) -> bool:
    """Return whether the dotted ``key`` looks like it holds a secret (``db.password``)."""
    last = key.rsplit(".", 1)[-1]
    return _SECRET_SEGMENT.search(last) is not None


def redact_url(text: str) -> str:
    """Return ``text`` with a URL's password and secret query options replaced."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" not in netloc and "@" in parts.path and text.partition(":")[2].startswith("//"):
        # A password with a raw "/" ends the netloc early ("u:pa/ss@h:2379/app/"): redact
        # everything up to the last "@" before the hosts, whatever it holds.
        match = _RAW_USERINFO.match(text.partition(":")[2][2:])
        if match is not None:
            user = match.group("userinfo").split(":", 1)[0].split("/", 1)[0]
            scheme = text.partition(":")[0]
            return redact_url(f"{scheme}://{user}:{REDACTED}@{match.group('rest')}")
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    query = parts.query
    if query:
        pairs = [
            (k, REDACTED if k.lower() in SECRET_OPTIONS else v)
            for k, v in parse_qsl(query, keep_blank_values=True)
        ]
        query = urlencode(pairs, safe="<>/:,")
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, parts.fragment))

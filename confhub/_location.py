"""The one parser of a network spec's location: ``//user:password@host:port[,host:port]/path``.

Display, redaction, the cache identity and the store plugins all read a spec's
credentials from :class:`UrlParts`, never from :mod:`urllib.parse`: ``urlsplit`` ends the
authority at the first ``/``, ``?`` or ``#``, so a password holding one of them (``Hash#Pw``)
turned into a "fragment" that was printed in clear and dropped the key prefix from the
cache identity.

The rule: the user info runs to the **last** ``@`` that is followed by a host list (names,
IPv4 or ``[IPv6]``, each with an optional ``:port``, separated by ``,``) and then the end,
a ``/`` or a ``?``. A password may therefore hold any character raw (``#``, ``?``, ``/``,
``@``); an ``@`` after the hosts (in the key prefix or an option value) must be written
``%40`` (or the prefix given as ``?prefix=``). User and password are percent-decoded.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import attrs

REDACTED = "<redacted>"

_HOST = r"(?:\[[0-9A-Za-z:.%]*\](?::[0-9]*)?|[A-Za-z0-9._~-]+(?::[0-9]*)?|:[0-9]+)"
#: A host list that ends the authority (at the end of the text, a "/" or a "?").
_HOSTS = re.compile(rf"{_HOST}(?:,\s*{_HOST})*(?=$|[/?])")


@attrs.frozen(repr=False)
class UrlParts:
    """A ``//[user[:password]@]hosts/path`` location, parsed once.

    ``user`` and ``password`` are percent-decoded (``None`` when absent); ``hosts`` are the
    ``host[:port]`` items as written, blanks dropped; ``path`` starts at the first ``/``
    after the hosts (empty when there is none) and is kept verbatim. ``display`` and the
    ``repr`` never hold the password.
    """

    user: str | None
    password: str | None
    hosts: tuple[str, ...]
    path: str

    @property
    def has_credentials(self) -> bool:
        """Whether the location carried a user info part (``user@`` or ``user:password@``)."""
        return self.user is not None or self.password is not None

    @property
    def display(self) -> str:
        """``//user:<redacted>@hosts/path``: the location fit for logs and errors."""
        userinfo = ""
        if self.has_credentials:
            user = self.user or ""
            userinfo = f"{user}:{REDACTED}@" if self.password is not None else f"{user}@"
        return f"//{userinfo}{','.join(self.hosts)}{self.path}"

    def __repr__(self) -> str:
        return f"UrlParts({self.display!r})"


def split_location(rest: str) -> tuple[UrlParts, str | None]:
    """Parse ``rest`` (what follows ``scheme:``, starting with ``//``) into its parts and
    its query string (``None`` when there is no ``?`` after the path)."""
    body = rest[2:] if rest.startswith("//") else rest
    userinfo: str | None = None
    start = 0
    for at in _at_signs_last_first(body):
        if _HOSTS.match(body, at + 1):
            userinfo, start = body[:at], at + 1
            break
    else:
        # No "@" before a host list: an "@" inside the plain authority still marks user info
        # (its hosts are then bad, which the backend reports without the user info).
        authority = re.match(r"[^/?]*", body)
        end = authority.end() if authority else 0
        at = body.rfind("@", 0, end)
        if at >= 0:
            userinfo, start = body[:at], at + 1
    after = body[start:]
    hosts_end = re.match(r"[^/?]*", after)
    cut = hosts_end.end() if hosts_end else 0
    hosts = tuple(h.strip() for h in after[:cut].split(",") if h.strip())
    path, qmark, query = after[cut:].partition("?")
    user = password = None
    if userinfo is not None:
        raw_user, colon, raw_password = userinfo.partition(":")
        user = unquote(raw_user)
        password = unquote(raw_password) if colon else None
    return UrlParts(user=user, password=password, hosts=hosts, path=path), (
        query if qmark else None
    )


def _at_signs_last_first(text: str) -> list[int]:
    return [i for i in range(len(text) - 1, -1, -1) if text[i] == "@"]


def location_with_credentials(rest: str) -> tuple[str, str | None]:
    """Split ``//...`` text into the location (user info, hosts and path, verbatim) and the
    query; ``SourceSpec.parse`` uses it so a ``?`` in a password does not start the query."""
    body = rest[2:]
    query = split_location(rest)[1]
    if query is None:
        return rest, None
    return "//" + body[: len(body) - len(query) - 1], query

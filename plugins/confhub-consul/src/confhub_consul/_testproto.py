"""The test server's protocol values: a parsed :class:`Request`, a :class:`Reply` (or a
connection action), the :class:`EngineConfig` knobs, Go's formats (durations, ``path.Clean``,
``encoding/json``) and the reply helpers every endpoint module shares. No behaviour: the
engine (:mod:`confhub_consul._testserver`) and the endpoint modules build on these.
"""

from __future__ import annotations

import dataclasses
import json
import re
import urllib.parse
from email.message import Message
from typing import Literal

from confhub_consul._teststate import AclToken

__all__ = [
    "ERR_HEADERS",
    "JSON_HEADERS",
    "UINT64_MAX",
    "Denied",
    "EngineConfig",
    "KeyValidation",
    "MissingKeyBlocking",
    "Reply",
    "Request",
    "RequestRecord",
    "format_go_duration",
    "go_clean",
    "go_json",
    "parse_go_duration",
    "text_reply",
]

_GO_DURATION = re.compile(r"^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+$")
_GO_UNIT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
UINT64_MAX = 2**64 - 1

KeyValidation = Literal["none", "1.21.5-regex", "current"]
MissingKeyBlocking = Literal["current", "legacy"]


def parse_go_duration(text: str) -> float:
    """Parse a Go ``time.ParseDuration`` string into seconds; raise ``ValueError`` if invalid."""
    if text in {"0", "+0", "-0"}:
        return 0.0
    if not _GO_DURATION.match(text):
        raise ValueError(f"time: invalid duration {json.dumps(text)}")
    total = sum(float(n) * _UNIT_SECONDS[u] for n, u in _GO_UNIT.findall(text))
    return -total if text.startswith("-") else total


def format_go_duration(seconds: float) -> str:
    """Format seconds as Go's ``Duration.String`` does for whole seconds (``24h0m0s``)."""
    whole = round(seconds)
    if whole == 0:
        return "0s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def go_clean(path: str) -> str:
    """Go's ``net/http`` cleanPath: ``path.Clean`` keeping a trailing slash."""
    if not path.startswith("/"):
        path = "/" + path
    parts: list[str] = []
    for seg in path.split("/"):
        if seg in {"", "."}:
            continue
        if seg == "..":
            if parts:
                parts.pop()
            continue
        parts.append(seg)
    cleaned = "/" + "/".join(parts)
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


def go_json(obj: object, *, pretty: bool = False) -> bytes:
    """Serialise like Go's ``encoding/json`` (compact, HTML-escaped), or ``?pretty`` style."""
    if pretty:
        text = json.dumps(obj, indent=4, ensure_ascii=False) + "\n"
    else:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    for raw, esc in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, esc)
    return text.encode("utf-8")


@dataclasses.dataclass(frozen=True)
class Request:
    """One parsed HTTP request, as the engine sees it."""

    method: str
    raw_path: str
    raw_query: str
    headers: Message
    body: bytes
    content_length: int

    @property
    def path(self) -> str:
        """The percent-decoded path (Go's ``req.URL.Path``)."""
        return urllib.parse.unquote(self.raw_path)

    @property
    def query(self) -> dict[str, list[str]]:
        """Query parameters, blank values kept (``?recurse`` gives ``{"recurse": [""]}``)."""
        return urllib.parse.parse_qs(self.raw_query, keep_blank_values=True)


@dataclasses.dataclass(frozen=True)
class Reply:
    """One HTTP response, or a connection action (``drop``: close without answering)."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    action: Literal["reply", "drop"] = "reply"
    drip: float = 0.0  # > 0: send the headers, then the body one byte per ``drip`` seconds
    drip_headers: bool = False  # with ``drip``: the status line and headers drip too


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """A request the test server received (see ``ConsulTestServer.requests``)."""

    method: str
    path: str
    query: str
    at: float


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Every knob of the test server; see ``ConsulTestServer`` for their meaning."""

    datacenter: str = "dc1"
    node_name: str = "consul-test"
    version: str = "1.21.4"
    acl_enabled: bool = False
    acl_default_policy: Literal["allow", "deny"] = "allow"
    enable_key_list_policy: bool = False
    default_token: str | None = None
    anonymous_token: AclToken | None = None
    kv_max_value_size: int = 524_288
    txn_max_req_len: int = 524_288
    max_txn_ops: int = 128
    default_query_time: float = 300.0
    max_query_time: float = 600.0
    jitter: bool = True
    seed: int | None = None
    session_ttl_min: float = 10.0
    key_validation: KeyValidation = "current"
    missing_key_blocking: MissingKeyBlocking = "current"
    strict_session_decode: bool = True
    dcsa_min: float = 60.0
    check_reap_interval: float = 30.0
    check_update_interval: float = 300.0


class Denied(Exception):
    """ACL refusal; the message is the 403 body."""


ERR_HEADERS = (("Content-Type", "text/plain; charset=utf-8"),)
JSON_HEADERS = (("Content-Type", "application/json"),)


def text_reply(status: int, body: str, *extra: tuple[str, str]) -> Reply:
    """A plain-text reply (Consul's errors)."""
    return Reply(status, (*ERR_HEADERS, *extra), body.encode("utf-8"))

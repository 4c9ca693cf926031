"""HTTP layer of the Consul test server: routing, parameters, ACLs, blocking queries, faults.

:class:`Engine` turns one parsed :class:`Request` into one :class:`Reply` (or a connection
action such as drop/hang) without touching sockets, so the protocol rules live in one place;
:class:`_Handler` and :class:`_HTTPServer` only move bytes. The public wrapper is
:class:`confhub_consul.testing.ConsulTestServer`.

Behaviour follows ``shared/consul-api.md`` section 2; comments cite its subsections.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import email.utils
import itertools
import json
import logging
import random
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from confhub_consul._testagent import AgentState
from confhub_consul._testagentapi import AgentAPI
from confhub_consul._teststate import (
    ANONYMOUS_ACCESSOR,
    READ_VERBS,
    AclToken,
    ConsulState,
    InvalidSessionError,
    KVEntry,
    TxnKVOp,
)

__all__ = [
    "Engine",
    "EngineConfig",
    "FaultHandle",
    "HTTPFrontend",
    "Reply",
    "Request",
    "RequestRecord",
    "format_go_duration",
    "parse_go_duration",
]

_log = logging.getLogger("confhub.consul.testserver")

KV_ALLOW = "OPTIONS,GET,PUT,DELETE"
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
_REGEX_1215 = r"^[a-zA-Z0-9,_./\-?&=]+$"
_UINT64_MAX = 2**64 - 1
_MAX_BODY = 64 * 1024 * 1024  # larger requests get the connection closed unread

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


def _go_clean(path: str) -> str:
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


def _go_json(obj: object, *, pretty: bool = False) -> bytes:
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


@dataclasses.dataclass
class _Fault:
    id: int
    kind: Literal["status", "drop", "hang", "delay", "drip"]
    path_prefix: str
    methods: frozenset[str] | None
    remaining: int | None
    status: int = 0
    body: str = ""
    delay: float = 0.0
    drip_headers: bool = False

    def matches(self, req: Request) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.methods is not None and req.method not in self.methods:
            return False
        return req.path.startswith(self.path_prefix)


@dataclasses.dataclass(frozen=True)
class FaultHandle:
    """A handle on one injected fault; ``clear()`` removes it."""

    id: int
    _engine: Engine = dataclasses.field(repr=False, compare=False)

    def clear(self) -> None:
        """Remove this fault; requests hung by it are released."""
        self._engine.clear_fault(self.id)

    @property
    def remaining(self) -> int | None:
        """How many more requests the fault applies to (``None``: until cleared)."""
        return self._engine.fault_remaining(self.id)


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


class _Denied(Exception):
    """ACL refusal; the message is the 403 body."""


_ERR_HEADERS = (("Content-Type", "text/plain; charset=utf-8"),)
_JSON_HEADERS = (("Content-Type", "application/json"),)


def _text(status: int, body: str, *extra: tuple[str, str]) -> Reply:
    return Reply(status, (*_ERR_HEADERS, *extra), body.encode("utf-8"))


class Engine:
    """Protocol core shared by every handler thread of one test server."""

    def __init__(
        self, config: EngineConfig, state: ConsulState, tokens: Mapping[str, AclToken]
    ) -> None:
        self.config = config
        self.state = state
        self.tokens: dict[str, AclToken] = dict(tokens)
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._rng = random.Random(config.seed)
        self._faults: dict[int, _Fault] = {}
        self._fault_ids = itertools.count(1)
        self._hang_release = threading.Condition()
        self._hang_generation = 0
        self._hung = 0
        self._records: list[RequestRecord] = []
        self._blocked = 0
        self._leader = True
        self._leader_lost_at = 0.0
        self._follower_lag_ms = 0
        self.anonymous = config.anonymous_token or AclToken(
            secret_id="anonymous",  # noqa: S106 - Consul's well-known anonymous token name
            accessor_id=ANONYMOUS_ACCESSOR,
        )
        self.agent = AgentState(
            state,
            node=config.node_name,
            datacenter=config.datacenter,
            parse_duration=parse_go_duration,
            dcsa_min=config.dcsa_min,
            reap_interval=config.check_reap_interval,
            check_update_interval=config.check_update_interval,
        )
        self._agent_api = AgentAPI(self, self.agent)

    # ------------------------------------------- helpers for the agent endpoints

    def parse_read(self, req: Request) -> tuple[str, int, float | None] | Reply:
        """Consistency and blocking parameters of a read, or the 400 that ends it."""
        return self._parse_read(req)

    def preamble(self, req: Request, mode: str) -> Reply | AclToken:
        """Datacenter, leader (unless stale) and token checks; the token or the reply."""
        return self._preamble(req, mode)

    def common_checks(self, req: Request) -> Reply | None:
        """The datacenter check alone (agent-local endpoints need no leader)."""
        return self._common_checks(req)

    def token_or_reply(self, req: Request) -> Reply | AclToken:
        """The request's token, or the 403 for an unknown one."""
        try:
            return self._token(req)
        except _Denied as exc:
            return _text(403, str(exc))

    def default_level(self) -> str:
        """The ACL level of rules a token does not give."""
        return self._default_level()

    def denied(self, token: AclToken, perm: str, name: str) -> Exception:
        """Consul's ``Permission denied`` error for ``token`` lacking ``perm`` on ``name``."""
        return self._denied(token, perm, name)

    def meta(self, index: int | None, mode: str) -> tuple[tuple[str, str], ...]:
        """The index, known-leader and last-contact headers of a read."""
        return self._meta(index, mode)

    def block(
        self,
        min_index: int,
        wait: float | None,
        evaluate: Callable[[], tuple[Reply, int, bool]],
        *,
        missing_key_rule: bool,
    ) -> Reply:
        """Run a possibly blocking read (see ``_block``)."""
        return self._block(min_index, wait, evaluate, missing_key_rule=missing_key_rule)

    @staticmethod
    def text(status: int, body: str) -> Reply:
        """A plain-text (error) reply."""
        return _text(status, body)

    @staticmethod
    def reply(status: int, headers: tuple[tuple[str, str], ...], body: bytes) -> Reply:
        """A reply with these headers and body."""
        return Reply(status, headers, body)

    @staticmethod
    def json_reply(req: Request, body: object, headers: tuple[tuple[str, str], ...]) -> Reply:
        """A 200 JSON reply (indented with ``?pretty``)."""
        return Reply(200, (*headers, *_JSON_HEADERS), _go_json(body, pretty="pretty" in req.query))

    def tick(self) -> None:
        """Expire sessions and TTL checks, sync check output, reap critical services."""
        self.state.expire_sessions()
        self.agent.tick()

    # --------------------------------------------------------------- faults

    def add_fault(
        self,
        fault_kind: Literal["status", "drop", "hang", "delay", "drip"],
        *,
        path_prefix: str,
        methods: frozenset[str] | None,
        times: int | None,
        status: int = 0,
        body: str = "",
        delay: float = 0.0,
        drip_headers: bool = False,
    ) -> FaultHandle:
        """Register a fault and return its handle."""
        if times is not None and times < 1:
            raise ValueError("times must be >= 1, or None for 'until cleared'")
        with self._lock:
            fid = next(self._fault_ids)
            self._faults[fid] = _Fault(
                fid, fault_kind, path_prefix, methods, times, status, body, delay, drip_headers
            )
        return FaultHandle(fid, self)

    def clear_fault(self, fault_id: int) -> None:
        """Remove one fault and release requests it hung."""
        with self._lock:
            self._faults.pop(fault_id, None)
        self.release_hung()

    def clear_faults(self) -> None:
        """Remove every fault and release every hung request."""
        with self._lock:
            self._faults.clear()
        self.release_hung()

    def fault_remaining(self, fault_id: int) -> int | None:
        """Return a fault's remaining count (0 once used up or cleared)."""
        with self._lock:
            fault = self._faults.get(fault_id)
            if fault is None:
                return 0
            return fault.remaining

    def release_hung(self) -> None:
        """Let every currently hung request go on (they are answered normally)."""
        with self._hang_release:
            self._hang_generation += 1
            self._hang_release.notify_all()

    def set_leader(self, has_leader: bool) -> None:
        """Switch the simulated cluster between having and not having a leader."""
        with self._lock:
            if self._leader and not has_leader:
                self._leader_lost_at = time.monotonic()
            self._leader = has_leader

    @property
    def has_leader(self) -> bool:
        """Whether the simulated cluster has a leader."""
        with self._lock:
            return self._leader

    def set_last_contact(self, seconds: float | None) -> None:
        """Make ``?stale`` reads answer as a follower ``seconds`` behind the leader."""
        if seconds is not None and seconds < 0:
            raise ValueError("a last contact is >= 0 seconds, or None")
        with self._lock:
            self._follower_lag_ms = 0 if seconds is None else int(seconds * 1000)

    def _last_contact_ms(self, mode: str) -> int:
        """``X-Consul-Lastcontact``: 0 on the leader; a stale read may be served by a lagging
        follower; without a leader, the time since it was lost."""
        with self._lock:
            lag = self._follower_lag_ms if mode == "stale" else 0
            if self._leader:
                return lag
            return max(lag, int((time.monotonic() - self._leader_lost_at) * 1000))

    def records(self) -> list[RequestRecord]:
        """Return a copy of the request log."""
        with self._lock:
            return list(self._records)

    def reset_records(self) -> None:
        """Empty the request log."""
        with self._lock:
            self._records.clear()

    @property
    def blocked(self) -> int:
        """Number of requests currently parked in a blocking query."""
        with self.state.cond:
            return self._blocked

    def _take_faults(self, req: Request) -> list[_Fault]:
        """Pick the faults that apply to this request, consuming one use of each."""
        picked: list[_Fault] = []
        with self._lock:
            for fault in self._faults.values():
                if fault.matches(req):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    picked.append(dataclasses.replace(fault))
        return picked

    def _hang(self, fault_id: int) -> bool:
        """Park until released, the fault is cleared, or the server stops; True if stopping."""
        with self._hang_release:
            generation = self._hang_generation
            self._hung += 1
            try:
                while not self.stopping.is_set():
                    if self._hang_generation != generation:
                        return False
                    with self._lock:
                        if fault_id not in self._faults:
                            return False
                    self._hang_release.wait(0.25)
            finally:
                self._hung -= 1
        return True

    @property
    def hung(self) -> int:
        """Number of requests currently parked by a ``hang`` fault."""
        with self._hang_release:
            return self._hung

    # ------------------------------------------------------------- dispatch

    def handle(self, req: Request) -> Reply:
        """Answer one request, applying injected faults first."""
        with self._lock:
            self._records.append(
                RequestRecord(req.method, req.path, req.raw_query, time.monotonic())
            )
        self.tick()
        for fault in self._take_faults(req):
            if fault.kind == "hang" and self._hang(fault.id):
                return Reply(0, action="drop")
            if fault.kind == "drop":
                return Reply(0, action="drop")
            if fault.kind == "delay" and self.stopping.wait(fault.delay):
                return Reply(0, action="drop")
            if fault.kind == "status":
                return self._finish(req, _text(fault.status, fault.body))
            if fault.kind == "drip":
                reply = self._finish(req, self._route(req))
                return dataclasses.replace(reply, drip=fault.delay, drip_headers=fault.drip_headers)
        return self._finish(req, self._route(req))

    def _finish(self, req: Request, reply: Reply) -> Reply:
        policy = "allow" if not self.config.acl_enabled else self.config.acl_default_policy
        headers = (
            *reply.headers,
            ("X-Consul-Default-Acl-Policy", policy),
            ("Vary", "Accept-Encoding"),
        )
        return dataclasses.replace(reply, headers=headers)

    def _route(self, req: Request) -> Reply:
        path = req.path
        # cleanhttp's PrintablePathCheckHandler (2.1): unprintable characters give 400.
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
            return Reply(400)
        cleaned = _go_clean(path)
        if path == "/v1/kv":
            cleaned = "/v1/kv/"
        if cleaned != path:
            return self._redirect(req, cleaned)
        routes: list[tuple[str, bool, str, Callable[[Request, str], Reply]]] = [
            ("/v1/kv/", True, KV_ALLOW, self._kv),
            ("/v1/txn", False, "OPTIONS,PUT", self._txn),
            ("/v1/status/leader", False, "OPTIONS,GET", self._status_leader),
            ("/v1/status/peers", False, "OPTIONS,GET", self._status_peers),
            ("/v1/agent/self", False, "OPTIONS,GET", self._agent_self),
            ("/v1/session/create", False, "OPTIONS,PUT", self._session_create),
            ("/v1/session/renew/", True, "OPTIONS,PUT", self._session_renew),
            ("/v1/session/destroy/", True, "OPTIONS,PUT", self._session_destroy),
            ("/v1/session/info/", True, "OPTIONS,GET", self._session_info),
            ("/v1/session/list", False, "OPTIONS,GET", self._session_list),
            ("/v1/session/node/", True, "OPTIONS,GET", self._session_node),
            *self._agent_api.routes(),
        ]
        for prefix, subtree, allow, handler in routes:
            if path == prefix or (subtree and path.startswith(prefix)):
                if req.method == "OPTIONS":
                    return Reply(200, (("Allow", allow),))
                if req.method not in allow.split(","):
                    return _text(405, f"method {req.method} not allowed", ("Allow", allow))
                return handler(req, path[len(prefix) :])
        if path.startswith("/v1/"):
            return _text(404, "Invalid URL path: not a recognized HTTP API endpoint")
        return _text(404, "404 page not found\n")

    @staticmethod
    def _redirect(req: Request, cleaned: str) -> Reply:
        location = urllib.parse.quote(cleaned, safe="/:@!$&'()*+,;=-._~")
        if req.raw_query:
            location += "?" + req.raw_query
        headers: tuple[tuple[str, str], ...] = (("Location", location),)
        body = b""
        if req.method in {"GET", "HEAD"}:
            headers += (("Content-Type", "text/html; charset=utf-8"),)
            body = f'<a href="{location}">Moved Permanently</a>.\n\n'.encode()
        return Reply(301, headers, body)

    # --------------------------------------------------------------- common

    def _token(self, req: Request) -> AclToken:
        """Resolve the request's token (2.2 priority order); raise _Denied if unknown."""
        if not self.config.acl_enabled:
            return AclToken(secret_id="", accessor_id="acls-disabled", management=True)
        secret = ""
        token_param = req.query.get("token", [""])[0]
        if token_param:
            secret = token_param
        elif req.headers.get("X-Consul-Token"):
            secret = req.headers.get("X-Consul-Token", "")
        else:
            auth = req.headers.get("Authorization", "").split()
            if len(auth) > 1 and auth[0].lower() == "bearer":
                secret = auth[1]
        if not secret:
            secret = self.config.default_token or ""
        if not secret:
            return self.anonymous
        if secret == self.anonymous.secret_id:
            return self.anonymous
        with self._lock:
            token = self.tokens.get(secret)
        if token is None:
            raise _Denied("ACL not found")
        return token

    @staticmethod
    def _denied(token: AclToken, perm: str, name: str) -> _Denied:
        if token.is_anonymous:
            return _Denied(
                f"Permission denied: anonymous token lacks permission '{perm}' on "
                f'"{name}". The anonymous token is used implicitly when a request does not '
                "specify a token."
            )
        return _Denied(
            f"Permission denied: token with AccessorID '{token.accessor_id}' lacks "
            f"permission '{perm}' on \"{name}\""
        )

    def _default_level(self) -> str:
        return "write" if self.config.acl_default_policy == "allow" else "deny"

    def _can_read(self, token: AclToken, key: str) -> bool:
        return token.key_level(key, self._default_level()) >= 1

    def _can_write(self, token: AclToken, key: str) -> bool:
        return token.key_level(key, self._default_level()) >= 3

    def _parse_read(self, req: Request) -> tuple[str, int, float | None] | Reply:
        """Parse consistency and blocking parameters (2.7, 2.8); return a 400 on errors."""
        q = req.query
        stale, consistent = "stale" in q, "consistent" in q
        if stale and consistent:
            return _text(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        if "max_stale" in q:
            try:
                parse_go_duration(q["max_stale"][0])
            except ValueError:
                return _text(400, f'Invalid max_stale value "{q["max_stale"][0]}"')
        wait: float | None = None
        if "wait" in q:
            try:
                wait = parse_go_duration(q["wait"][0])
            except ValueError:
                return _text(400, "Invalid wait time")
        index = 0
        if "index" in q:
            raw = q["index"][0]
            if not raw.isdigit() or int(raw) > _UINT64_MAX:
                return _text(400, "Invalid index")
            index = int(raw)
        mode = "stale" if stale else ("consistent" if consistent else "default")
        return mode, index, wait

    def _common_checks(self, req: Request) -> Reply | None:
        dc = req.query.get("dc", [""])[0]
        if dc and dc != self.config.datacenter:
            return _text(500, "No path to datacenter")
        return None

    def _leader_check(self, mode: str) -> Reply | None:
        if mode != "stale" and not self.has_leader:
            return _text(500, "No cluster leader")
        return None

    def _meta(self, index: int | None, mode: str) -> tuple[tuple[str, str], ...]:
        headers: list[tuple[str, str]] = []
        if index is not None:
            headers.append(("X-Consul-Index", str(max(index, 1))))
        headers.append(("X-Consul-Knownleader", "true" if self.has_leader else "false"))
        headers.append(("X-Consul-Lastcontact", str(self._last_contact_ms(mode))))
        return tuple(headers)

    def query_timeout(self, wait: float | None) -> float:
        """Consul's RPCQueryTimeout: default, clamp, then jitter up to wait/16 (2.7).

        The seconds a blocking query asking for ``wait`` (``None``: none given) is held at
        most; public so that a test can check the draws without timing a query."""
        cfg = self.config
        timeout = wait if wait is not None and wait > 0 else cfg.default_query_time
        timeout = min(timeout, cfg.max_query_time)
        if cfg.jitter:
            with self._lock:
                timeout += self._rng.uniform(0, timeout / 16)
        return timeout

    def _block(
        self,
        min_index: int,
        wait: float | None,
        evaluate: Callable[[], tuple[Reply, int, bool]],
        *,
        missing_key_rule: bool,
    ) -> Reply:
        """Run a (possibly blocking) read.

        ``evaluate`` returns ``(reply, index, exists)``. The query returns when its index
        passes ``min_index``; a single key that was missing at the first evaluation waits for
        the key to appear instead (current Consul, issue #9449) unless the legacy profile is
        on. Timeout, snapshot restore and server stop return the current result.
        """
        cond = self.state.cond
        with cond:
            reply, index, exists = evaluate()
            if min_index == 0 or index > min_index or reply.status not in {200, 404}:
                return reply
            strict_missing = (
                missing_key_rule and not exists and self.config.missing_key_blocking == "current"
            )
            deadline = time.monotonic() + self.query_timeout(wait)
            generation = self.state.generation
            self._blocked += 1
            try:
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self.stopping.is_set():
                        return reply
                    cond.wait(remaining)
                    reply, index, exists = evaluate()
                    if self.state.generation != generation:
                        return reply
                    if reply.status not in {200, 404}:
                        return reply
                    if strict_missing:
                        if exists:
                            return reply
                    elif index > min_index:
                        return reply
            finally:
                self._blocked -= 1

    # ------------------------------------------------------------------- KV

    def _validate_key(self, key: str) -> Reply | None:
        profile = self.config.key_validation
        if profile == "none" or not key:
            return None
        if profile == "1.21.5-regex":
            if not re.match(_REGEX_1215, key):
                return _text(
                    500, f'invalid key name, keys should respect the "{_REGEX_1215}" format'
                )
            return None
        segments = re.split(r"[/\\]", key)
        if ".." in segments or key != key.strip(" "):
            return _text(
                500,
                f'invalid key name "{key}": path traversal or leading/trailing '
                "spaces are not allowed",
            )
        return None

    def _kv(self, req: Request, key: str) -> Reply:
        q = req.query
        if req.method == "GET":
            return self._kv_get(req, key)
        exclusive = ("cas", "acquire", "release") if req.method == "PUT" else ("recurse", "cas")
        present = [f for f in exclusive if f in q]
        if len(present) > 1:
            encoded = urllib.parse.urlencode(
                sorted(urllib.parse.parse_qsl(req.raw_query, keep_blank_values=True))
            )
            return _text(400, f"Conflicting flags: {encoded}")
        if req.method == "PUT":
            return self._kv_put(req, key)
        return self._kv_delete(req, key)

    def _kv_get(self, req: Request, key: str) -> Reply:
        parsed = self._parse_read(req)
        if isinstance(parsed, Reply):
            return parsed
        mode, min_index, wait = parsed
        q = req.query
        keys_mode, recurse = "keys" in q, "recurse" in q
        if not key and not (keys_mode or recurse):
            return _text(400, "Missing key name")
        token = self._preamble(req, mode, key)
        if isinstance(token, Reply):
            return token
        pretty = "pretty" in q
        default = self._default_level()
        if keys_mode or recurse:
            if self.config.enable_key_list_policy and token.key_level(key, default) < 2:
                return _text(403, str(self._denied(token, "key:list", key)))
            separator = q.get("separator", q.get("seperator", [""]))[0]

            def evaluate_list() -> tuple[Reply, int, bool]:
                entries = self.state.list_prefix(key)
                index = self.state.prefix_index(key)
                visible = [e for e in entries if self._can_read(token, e.key)]
                headers = self._meta(index, mode)
                if len(visible) < len(entries) and not token.is_anonymous:
                    headers += (("X-Consul-Results-Filtered-By-Acls", "true"),)
                if keys_mode:
                    names = self._cut_keys([e.key for e in visible], key, separator)
                    if not names and key:
                        return Reply(404, headers), index, False
                    body = _go_json(names, pretty=pretty)
                else:
                    if not visible:
                        return Reply(404, headers), index, False
                    body = _go_json([e.to_json() for e in visible], pretty=pretty)
                return Reply(200, (*headers, *_JSON_HEADERS), body), index, True

            return self._block(min_index, wait, evaluate_list, missing_key_rule=False)

        if not self._can_read(token, key):
            return _text(403, str(self._denied(token, "key:read", key)))
        raw = "raw" in q

        def evaluate_key() -> tuple[Reply, int, bool]:
            entry = self.state.get(key)
            index = self.state.key_index(key)
            headers = self._meta(index, mode)
            if entry is None:
                return Reply(404, headers), index, False
            if raw:
                raw_headers = (
                    ("Content-Type", "text/plain"),
                    ("X-Content-Type-Options", "nosniff"),
                    ("Content-Security-Policy", "sandbox"),
                )
                return Reply(200, (*headers, *raw_headers), entry.value), index, True
            headers += (("X-Consul-Query-Backend", "blocking-query"),)
            body = _go_json([entry.to_json()], pretty=pretty)
            return Reply(200, (*headers, *_JSON_HEADERS), body), index, True

        return self._block(min_index, wait, evaluate_key, missing_key_rule=True)

    @staticmethod
    def _cut_keys(keys: list[str], prefix: str, separator: str) -> list[str]:
        if not separator:
            return keys
        out: list[str] = []
        for k in keys:
            pos = k.find(separator, len(prefix))
            cut = k if pos < 0 else k[: pos + len(separator)]
            if not out or out[-1] != cut:
                out.append(cut)
        return out

    @staticmethod
    def _uint(q: dict[str, list[str]], name: str) -> int | Reply | None:
        if name not in q:
            return None
        raw = q[name][0]
        if not raw.isdigit():
            return _text(500, f'strconv.ParseUint: parsing "{raw}": invalid syntax')
        if int(raw) > _UINT64_MAX:
            return _text(500, f'strconv.ParseUint: parsing "{raw}": value out of range')
        return int(raw)

    def _preamble(self, req: Request, mode: str, key: str | None = None) -> Reply | AclToken:
        """The checks every KV, txn and session request starts with, in Consul's order:
        the key's validity, the datacenter, a leader (unless ``mode`` is stale), the token.
        Returns the reply that ends the request, or the resolved token."""
        checks = (
            self._validate_key(key) if key is not None else None,
            self._common_checks(req),
            self._leader_check(mode),
        )
        for check in checks:
            if check is not None:
                return check
        try:
            return self._token(req)
        except _Denied as exc:
            return _text(403, str(exc))

    def _write_preamble(self, req: Request, key: str) -> Reply | AclToken:
        return self._preamble(req, "default", key)

    def _kv_put(self, req: Request, key: str) -> Reply:
        q = req.query
        if not key:
            return _text(400, "Missing key name")
        flags = self._uint(q, "flags")
        if isinstance(flags, Reply):
            return flags
        cas = self._uint(q, "cas")
        if isinstance(cas, Reply):
            return cas
        limit = self.config.kv_max_value_size
        if req.content_length > limit:
            return _text(
                413,
                f"Request body({req.content_length} bytes) too large, max size: "
                f"{limit} bytes. See https://developer.hashicorp.com/docs/agent/"
                "config/config-files#kv_max_value_size.",
            )
        token = self._write_preamble(req, key)
        if isinstance(token, Reply):
            return token
        if not self._can_write(token, key):
            return _text(403, str(self._denied(token, "key:write", key)))
        value, flag_value = req.body, flags or 0
        if "acquire" in q:
            try:
                ok = self.state.acquire(key, value, q["acquire"][0], flags=flag_value)
            except InvalidSessionError as exc:
                return _text(500, str(exc))
        elif "release" in q:
            ok = self.state.release(key, value, q["release"][0], flags=flag_value)
        else:
            ok = self.state.set(key, value, flags=flag_value, cas=cas)
        return Reply(200, _JSON_HEADERS, b"true" if ok else b"false")

    def _kv_delete(self, req: Request, key: str) -> Reply:
        q = req.query
        recurse = "recurse" in q
        if not key and not recurse:
            return _text(400, "Missing key name")
        cas = self._uint(q, "cas")
        if isinstance(cas, Reply):
            return cas
        token = self._write_preamble(req, key)
        if isinstance(token, Reply):
            return token
        allowed = (
            token.can_write_prefix(key, self._default_level())
            if recurse
            else self._can_write(token, key)
        )
        if not allowed:
            return _text(403, str(self._denied(token, "key:write", key)))
        ok = self.state.delete(key, cas=cas, recurse=recurse)
        return Reply(200, _JSON_HEADERS, b"true" if ok else b"false")

    # ------------------------------------------------------------------ txn

    def _txn(self, req: Request, _rest: str) -> Reply:
        cfg = self.config
        max_len = max(cfg.txn_max_req_len, cfg.kv_max_value_size)
        if req.content_length > max_len:
            return _text(
                413,
                f"Request body({req.content_length} bytes) too large, max size: "
                f"{max_len} bytes. See https://developer.hashicorp.com/docs/agent/"
                "config/config-files#txn_max_req_len.",
            )
        try:
            ops = _decode_txn(req.body)
        except _TxnDecodeError as exc:
            return _text(400, f"Failed to parse body: {exc}")
        except _TxnUnsupportedError as exc:
            return _text(500, str(exc))
        if len(ops) > cfg.max_txn_ops:
            return _text(
                413, f"Transaction contains too many operations ({len(ops)} > {cfg.max_txn_ops})"
            )
        for op in ops:
            if len(op.value) > cfg.kv_max_value_size:
                return _text(
                    413,
                    f'Value for key "{op.key}" is too large ({len(op.value)} > '
                    f"{cfg.kv_max_value_size} bytes)",
                )
        writes = any(op.verb not in READ_VERBS for op in ops)
        mode = "default"
        if not writes:
            parsed = self._parse_read(req)
            if isinstance(parsed, Reply):
                return parsed
            mode = parsed[0]
        token = self._preamble(req, mode)
        if isinstance(token, Reply):
            return token
        default = self._default_level()
        errors: list[tuple[int, str]] = []
        for i, op in enumerate(ops):
            if op.verb in {"get", "get-tree", "get-or-empty"}:
                continue  # filtered on output
            if op.verb in READ_VERBS:
                if not self._can_read(token, op.key):
                    errors.append((i, str(self._denied(token, "key:read", op.key))))
            elif op.verb == "delete-tree":
                if not token.can_write_prefix(op.key, default):
                    errors.append((i, str(self._denied(token, "key:write", op.key))))
            elif not self._can_write(token, op.key):
                errors.append((i, str(self._denied(token, "key:write", op.key))))
            elif op.verb == "lock" and self.state.in_lock_delay(op.key):
                errors.append((i, f'failed to lock key "{op.key}" due to lock delay'))
        results: list[tuple[KVEntry, bool]] = []
        if not errors:
            results, errors = self.state.apply_kv(ops)
        if errors:
            body = {"Results": None, "Errors": [{"OpIndex": i, "What": what} for i, what in errors]}
            return Reply(409, _JSON_HEADERS, _go_json(body))
        visible = [
            {"KV": entry.to_json(with_value=with_value)}
            for entry, with_value in results
            if self._can_read(token, entry.key)
        ]
        body_out = {"Results": visible or None, "Errors": None}
        headers = _JSON_HEADERS if writes else (*self._meta(None, mode), *_JSON_HEADERS)
        return Reply(200, headers, _go_json(body_out, pretty="pretty" in req.query))

    # ------------------------------------------------------------- sessions

    def _session_write_check(self, req: Request) -> Reply | None:
        token = self._preamble(req, "default")
        if isinstance(token, Reply):
            return token
        if token.other_level("session", self._default_level()) < 3:
            return _text(403, str(self._denied(token, "session:write", self.config.node_name)))
        return None

    def _session_create(self, req: Request, _rest: str) -> Reply:
        check = self._session_write_check(req)
        if check is not None:
            return check
        try:
            fields = self._decode_session(req.body)
        except ValueError as exc:
            return _text(400, f"Request decode failed: {exc}")
        ttl_text = str(fields.get("ttl") or "")
        ttl = 0.0
        if ttl_text:
            try:
                ttl = parse_go_duration(ttl_text)
            except ValueError as exc:
                return _text(500, f"Session TTL '{ttl_text}' invalid: {exc}")
            if ttl != 0 and not self.config.session_ttl_min <= ttl <= 86400:
                return _text(
                    500,
                    f"Invalid Session TTL '{round(ttl * 1e9)}', must be between "
                    f"[{format_go_duration(self.config.session_ttl_min)}="
                    f"{format_go_duration(86400)}]",
                )
        behavior = str(fields.get("behavior") or "release")
        if behavior not in {"release", "delete"}:
            return _text(500, f"Invalid Behavior setting '{behavior}'")
        lock_delay = 15.0
        raw_delay = fields.get("lockdelay")
        if isinstance(raw_delay, str) and raw_delay:
            try:
                lock_delay = parse_go_duration(raw_delay)
            except ValueError as exc:
                return _text(400, f"Request decode failed: {exc}")
        elif isinstance(raw_delay, int | float) and not isinstance(raw_delay, bool):
            # Consul reads small numbers as seconds, large ones as nanoseconds.
            lock_delay = float(raw_delay) if raw_delay < 1000 else raw_delay / 1e9
        bound = self._session_checks(fields)
        if isinstance(bound, Reply):
            return bound
        sess = self.state.create_session(
            name=str(fields.get("name") or ""),
            node=str(fields.get("node") or self.config.node_name),
            lock_delay=lock_delay,
            behavior="delete" if behavior == "delete" else "release",
            ttl=ttl,
            ttl_text=ttl_text,
            node_checks=bound[0],
            service_checks=bound[1],
        )
        return Reply(200, _JSON_HEADERS, _go_json({"ID": sess.id}))

    def _decode_session(self, body: bytes) -> dict[str, object]:
        if not body.strip():
            return {}
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid character in JSON: {exc.msg}") from exc
        if not isinstance(data, dict):
            raise ValueError("json: cannot unmarshal into Go value of type structs.Session")
        known = {
            "id",
            "name",
            "node",
            "lockdelay",
            "behavior",
            "ttl",
            "checks",
            "nodechecks",
            "servicechecks",
            "namespace",
            "partition",
            "createindex",
            "modifyindex",
        }
        out: dict[str, object] = {}
        for name, value in data.items():
            low = name.lower()
            if low not in known:
                if self.config.strict_session_decode:
                    raise ValueError(f'json: unknown field "{name}"')
                continue
            out[low] = value
        return out

    def _session_renew(self, req: Request, sid: str) -> Reply:
        if not sid:
            return _text(400, "Missing session")
        check = self._session_write_check(req)
        if check is not None:
            return check
        sess = self.state.renew_session(sid)
        if sess is None:
            return _text(404, f"Session id '{sid}' not found")
        return Reply(200, _JSON_HEADERS, _go_json([sess.to_json()]))

    def _session_destroy(self, req: Request, sid: str) -> Reply:
        if not sid:
            return _text(400, "Missing session")
        check = self._session_write_check(req)
        if check is not None:
            return check
        self.state.destroy_session(sid)
        return Reply(200, _JSON_HEADERS, b"true")

    def _session_read(self, req: Request, select: Callable[[], list[dict[str, Any]]]) -> Reply:
        parsed = self._parse_read(req)
        if isinstance(parsed, Reply):
            return parsed
        mode, min_index, wait = parsed
        token = self._preamble(req, mode)
        if isinstance(token, Reply):
            return token
        if token.other_level("session", self._default_level()) < 1:
            # Consul filters sessions by ACL; with no session:read the list is empty.
            def select() -> list[dict[str, Any]]:
                return []

        def evaluate() -> tuple[Reply, int, bool]:
            index = self.state.session_table_index()
            body = _go_json(select(), pretty="pretty" in req.query)
            return Reply(200, (*self._meta(index, mode), *_JSON_HEADERS), body), index, True

        return self._block(min_index, wait, evaluate, missing_key_rule=False)

    def _session_info(self, req: Request, sid: str) -> Reply:
        if not sid:
            return _text(400, "Missing session")

        def select() -> list[dict[str, Any]]:
            sess = self.state.session(sid)
            return [sess.to_json()] if sess is not None else []

        return self._session_read(req, select)

    def _session_list(self, req: Request, _rest: str) -> Reply:
        return self._session_read(req, lambda: [s.to_json() for s in self.state.sessions()])

    def _session_node(self, req: Request, node: str) -> Reply:
        return self._session_read(
            req, lambda: [s.to_json() for s in self.state.sessions() if s.node == node]
        )

    def _session_checks(
        self, fields: Mapping[str, object]
    ) -> tuple[tuple[str, ...], tuple[str, ...]] | Reply:
        """The node and service checks a new session binds to, each existing and not
        critical (else Consul's 500)."""
        raw_nodes = fields.get("nodechecks", fields.get("checks"))
        nodes = ["serfHealth"] if raw_nodes is None else raw_nodes
        raw_services = fields.get("servicechecks") or []
        if not isinstance(nodes, list) or not isinstance(raw_services, list):
            return _text(400, "Request decode failed: checks must be lists")
        services = [
            str(c.get("ID") or c.get("id") or "") if isinstance(c, dict) else str(c)
            for c in raw_services
        ]
        for check_id in [str(n) for n in nodes] + services:
            if check_id == "serfHealth":
                continue
            check = self.agent.check(check_id)
            if check is None:
                return _text(500, f"Missing check '{check_id}' registration")
            if check.status == "critical":
                return _text(500, f"Check '{check_id}' is in critical state")
        return tuple(str(n) for n in nodes), tuple(services)

    # ------------------------------------------------------- status, agent

    def _status_leader(self, req: Request, _rest: str) -> Reply:
        leader = "127.0.0.1:8300" if self.has_leader else ""
        return Reply(200, _JSON_HEADERS, _go_json(leader, pretty="pretty" in req.query))

    def _status_peers(self, req: Request, _rest: str) -> Reply:
        return Reply(200, _JSON_HEADERS, _go_json(["127.0.0.1:8300"], pretty="pretty" in req.query))

    def _agent_self(self, req: Request, _rest: str) -> Reply:
        try:
            token = self._token(req)
        except _Denied as exc:
            return _text(403, str(exc))
        if token.other_level("agent", self._default_level()) < 1:
            return _text(403, str(self._denied(token, "agent:read", self.config.node_name)))
        cfg = self.config
        body = {
            "Config": {
                "Datacenter": cfg.datacenter,
                "PrimaryDatacenter": cfg.datacenter,
                "NodeName": cfg.node_name,
                "NodeID": "11111111-2222-3333-4444-555555555555",
                "Revision": "testserver",
                "Server": True,
                "Version": cfg.version,
                "BuildDate": "2025-01-01T00:00:00Z",
            },
            "DebugConfig": {},
            "Coord": {
                "Vec": [0, 0, 0, 0, 0, 0, 0, 0],
                "Error": 1.5,
                "Adjustment": 0,
                "Height": 1e-05,
            },
            "Member": {
                "Name": cfg.node_name,
                "Addr": "127.0.0.1",
                "Port": 8301,
                "Tags": {"dc": cfg.datacenter, "role": "consul"},
                "Status": 1,
            },
            "Stats": {},
            "Meta": {"consul-network-segment": ""},
        }
        return Reply(200, _JSON_HEADERS, _go_json(body, pretty="pretty" in req.query))


class _TxnDecodeError(Exception):
    """The txn body does not decode (Consul answers 400 "Failed to parse body: ...")."""


class _TxnUnsupportedError(Exception):
    """A txn op type the test server does not implement."""


_KV_FIELDS = {"verb", "key", "value", "flags", "index", "session", "namespace", "partition"}
_OP_FIELDS = {"kv", "node", "service", "check", "session", "intention"}


def _decode_txn(body: bytes) -> list[TxnKVOp]:
    """Decode a ``/v1/txn`` body strictly, like Go's ``DisallowUnknownFields`` decoder."""
    try:
        data = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _TxnDecodeError(f"invalid character in JSON input: {exc}") from exc
    if data is None:
        return []
    if not isinstance(data, list):
        raise _TxnDecodeError("json: cannot unmarshal object into Go value of type structs.TxnOps")
    ops: list[TxnKVOp] = []
    for item in data:
        if not isinstance(item, dict):
            raise _TxnDecodeError("json: cannot unmarshal into Go value of type structs.TxnOp")
        kv: Any = None
        for name, value in item.items():
            low = name.lower()
            if low not in _OP_FIELDS:
                raise _TxnDecodeError(f'json: unknown field "{name}"')
            if low == "kv":
                kv = value
            elif value is not None:
                raise _TxnUnsupportedError(
                    f"test server: only KV operations are supported in /v1/txn, got {name}"
                )
        if not isinstance(kv, dict):
            raise _TxnDecodeError("json: cannot unmarshal into Go struct field TxnOp.KV")
        fields: dict[str, Any] = {}
        for name, value in kv.items():
            low = name.lower()
            if low not in _KV_FIELDS:
                raise _TxnDecodeError(f'json: unknown field "{name}"')
            fields[low] = value
        raw_value = fields.get("value") or ""
        if not isinstance(raw_value, str):
            raise _TxnDecodeError(
                "json: cannot unmarshal into Go struct field KVTxnOp.KV.Value of type []uint8"
            )
        try:
            value_bytes = base64.b64decode(raw_value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _TxnDecodeError(
                f"illegal base64 data at input byte {_bad_b64_pos(raw_value)}"
            ) from exc
        numbers: dict[str, int] = {}
        for field in ("flags", "index"):
            num = fields.get(field) or 0
            if not isinstance(num, int) or isinstance(num, bool) or not 0 <= num <= _UINT64_MAX:
                raise _TxnDecodeError(
                    f"json: cannot unmarshal {json.dumps(num)} into Go struct "
                    f"field KVTxnOp.KV.{field.title()} of type uint64"
                )
            numbers[field] = num
        ops.append(
            TxnKVOp(
                verb=str(fields.get("verb") or ""),
                key=str(fields.get("key") or ""),
                value=value_bytes,
                flags=numbers["flags"],
                index=numbers["index"],
                session=str(fields.get("session") or ""),
            )
        )
    return ops


def _bad_b64_pos(text: str) -> int:
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
    for i, ch in enumerate(text):
        if ch not in alphabet:
            return i
    return len(text)


# ---------------------------------------------------------------- transport


class _Handler(BaseHTTPRequestHandler):
    """Moves bytes between a socket and the engine; HTTP/1.1 keep-alive like Go."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # Go sets TCP_NODELAY; without it, replies wait ~40 ms
    server: _HTTPServer
    timeout = 120  # idle keep-alive connections are also shut down on stop

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def _serve(self) -> None:
        length_header = self.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else 0
        if length > _MAX_BODY:
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        raw_path, _, raw_query = self.path.partition("?")
        req = Request(self.command, raw_path, raw_query, self.headers, body, length)
        reply = self.server.engine.handle(req)
        if reply.action == "drop":
            self.close_connection = True
            return
        if reply.drip > 0 and reply.drip_headers:
            self._drip_all(reply)
            return
        self.send_response_only(reply.status)
        self.send_header("Date", email.utils.formatdate(usegmt=True))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD" and reply.body:
            if reply.drip > 0:
                self._drip(reply)
                return
            self.wfile.write(reply.body)

    def _drip(self, reply: Reply) -> None:
        """Send the body one byte per ``reply.drip`` seconds (a slow-drip server)."""
        self.close_connection = True
        self.wfile.flush()
        stopping = self.server.engine.stopping
        for i in range(len(reply.body)):
            if stopping.wait(reply.drip):
                return
            try:
                self.wfile.write(reply.body[i : i + 1])
                self.wfile.flush()
            except OSError:
                return  # the client gave up

    def _drip_all(self, reply: Reply) -> None:
        """Send everything, status line and headers included, one byte per ``reply.drip``
        seconds (a server whose every ``recv`` succeeds but never finishes its headers)."""
        self.close_connection = True
        phrase = self.responses.get(reply.status, ("",))[0]
        lines = [
            f"{self.protocol_version} {reply.status} {phrase}",
            f"Date: {email.utils.formatdate(usegmt=True)}",
            *(f"{name}: {value}" for name, value in reply.headers),
            f"Content-Length: {len(reply.body)}",
        ]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self.command != "HEAD":
            data += reply.body
        stopping = self.server.engine.stopping
        for i in range(len(data)):
            if stopping.wait(reply.drip):
                return
            try:
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
            except OSError:
                return  # the client gave up

    do_GET = do_PUT = do_DELETE = do_POST = do_OPTIONS = do_HEAD = do_PATCH = _serve

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        _log.debug("%s " + format, self.address_string(), *args)


class _HTTPServer(ThreadingHTTPServer):
    """A threading server whose handler threads are tracked and joined on close."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True  # a restarted agent on the same port (TIME_WAIT)

    def __init__(
        self, address: tuple[str, int], engine: Engine, context: ssl.SSLContext | None
    ) -> None:
        self.engine = engine
        self._context = context
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self._context is not None:
            sock = self._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self._open_lock:
            self._open.add(sock)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:  # noqa: ANN401 - socketserver signature
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        """Shut down every open connection so idle keep-alive threads end at once."""
        with self._open_lock:
            socks = list(self._open)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: object, client_address: object) -> None:
        _log.debug("connection from %s ended with an error", client_address, exc_info=True)


class HTTPFrontend:
    """Owns the listening socket, the accept thread and the session reaper thread."""

    def __init__(
        self,
        engine: Engine,
        host: str,
        port: int,
        context: ssl.SSLContext | None,
        reaper_interval: float,
    ) -> None:
        self.engine = engine
        self._httpd = _HTTPServer((host, port), engine, context)
        self._reaper_interval = reaper_interval
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"consul-testserver-http-{self.port}",
            ),
            threading.Thread(target=self._reap, name=f"consul-testserver-reaper-{self.port}"),
            threading.Thread(target=self._probe, name=f"consul-testserver-checks-{self.port}"),
        ]

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        """Start serving."""
        for thread in self._threads:
            thread.start()

    def sever(self) -> None:
        """Shut down every open connection (requests in progress and idle keep-alives)."""
        self._httpd.close_open_connections()

    def _reap(self) -> None:
        while not self._stop.wait(self._reaper_interval):
            self.engine.tick()

    def _probe(self) -> None:
        """Run HTTP/TCP checks as their intervals come round (loopback targets only)."""
        while not self._stop.wait(self._reaper_interval):
            for check in self.engine.agent.probe_due():
                if self._stop.is_set():
                    return
                self.engine.agent.probe(check)

    def stop(self) -> None:
        """Stop accepting, release every parked request, close sockets, join all threads."""
        self._stop.set()
        self.engine.stopping.set()
        self.engine.state.wake_all()
        self.engine.release_hung()
        if self._threads[0].is_alive():
            self._httpd.shutdown()
        self._httpd.close_open_connections()
        self._httpd.server_close()  # joins handler threads (block_on_close)
        for thread in self._threads:
            if thread.is_alive():
                thread.join()

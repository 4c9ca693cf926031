"""The protocol core of the Consul test server: routing, parameters, ACLs, blocking queries,
faults.

:class:`Engine` turns one parsed :class:`Request` into one :class:`Reply` (or a connection
action such as drop/hang) without touching sockets, so the protocol rules live in one place.
It owns what every endpoint shares (the token, the datacenter and leader checks, read
parameters, blocking, the response headers) and routes each request to an endpoint module:
:mod:`~confhub_consul._testkvapi` (KV, txn), :mod:`~confhub_consul._testsessionapi`
(sessions), :mod:`~confhub_consul._testagentapi` (agent, health, catalog). The faults
are kept by :mod:`~confhub_consul._testfaults`, the values are in
:mod:`~confhub_consul._testproto`, the sockets in :mod:`~confhub_consul._testhttp`. The
public wrapper is :class:`confhub_consul.testing.ConsulTestServer`.

Behaviour follows ``shared/consul-api.md`` section 2; comments cite its subsections.
"""

from __future__ import annotations

import dataclasses
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping

from confhub_consul._testagent import AgentState
from confhub_consul._testagentapi import AgentAPI
from confhub_consul._testfaults import FaultHandle, Faults
from confhub_consul._testkvapi import KVAPI
from confhub_consul._testproto import (
    JSON_HEADERS,
    UINT64_MAX,
    Denied,
    EngineConfig,
    Reply,
    Request,
    RequestRecord,
    format_go_duration,
    go_clean,
    go_json,
    parse_go_duration,
    text_reply,
)
from confhub_consul._testsessionapi import SessionAPI
from confhub_consul._teststate import ANONYMOUS_ACCESSOR, AclToken, ConsulState

__all__ = [
    "Engine",
    "EngineConfig",
    "FaultHandle",
    "Reply",
    "Request",
    "RequestRecord",
    "format_go_duration",
    "parse_go_duration",
]

_REGEX_1215 = r"^[a-zA-Z0-9,_./\-?&=]+$"


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
        #: The injected faults (``ConsulTestServer``'s fault methods add and clear them).
        self.faults = Faults(self.stopping)
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
        self._apis = (KVAPI(self), SessionAPI(self), AgentAPI(self, self.agent))

    def token_or_reply(self, req: Request) -> Reply | AclToken:
        """The request's token, or the 403 for an unknown one."""
        try:
            return self._token(req)
        except Denied as exc:
            return text_reply(403, str(exc))

    @staticmethod
    def text(status: int, body: str) -> Reply:
        """A plain-text (error) reply."""
        return text_reply(status, body)

    @staticmethod
    def reply(status: int, headers: tuple[tuple[str, str], ...], body: bytes) -> Reply:
        """A reply with these headers and body."""
        return Reply(status, headers, body)

    @staticmethod
    def json_reply(req: Request, body: object, headers: tuple[tuple[str, str], ...]) -> Reply:
        """A 200 JSON reply (indented with ``?pretty``)."""
        return Reply(200, (*headers, *JSON_HEADERS), go_json(body, pretty="pretty" in req.query))

    def tick(self) -> None:
        """Expire sessions and TTL checks, sync check output, reap critical services."""
        self.state.expire_sessions()
        self.agent.tick()

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

    def add_token(self, token: AclToken) -> None:
        """Register (or replace) an ACL token."""
        with self._lock:
            self.tokens[token.secret_id] = token

    def remove_token(self, secret_id: str) -> None:
        """Forget a token; requests using it get 403 ``ACL not found``."""
        with self._lock:
            self.tokens.pop(secret_id, None)

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

    # ------------------------------------------------------------- dispatch

    def handle(self, req: Request) -> Reply:
        """Answer one request, applying injected faults first."""
        with self._lock:
            self._records.append(
                RequestRecord(req.method, req.path, req.raw_query, time.monotonic())
            )
        self.tick()
        for fault in self.faults.take(req):
            if fault.kind == "hang" and self.faults.hang(fault.id):
                return Reply(0, action="drop")
            if fault.kind == "drop":
                return Reply(0, action="drop")
            if fault.kind == "delay" and self.stopping.wait(fault.delay):
                return Reply(0, action="drop")
            if fault.kind == "status":
                return self._finish(req, text_reply(fault.status, fault.body))
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
        cleaned = go_clean(path)
        if path == "/v1/kv":
            cleaned = "/v1/kv/"
        if cleaned != path:
            return self._redirect(req, cleaned)
        routes: list[tuple[str, bool, str, Callable[[Request, str], Reply]]] = [
            ("/v1/status/leader", False, "OPTIONS,GET", self._status_leader),
            ("/v1/status/peers", False, "OPTIONS,GET", self._status_peers),
        ]
        for api in self._apis:
            routes += api.routes()
        for prefix, subtree, allow, handler in routes:
            if path == prefix or (subtree and path.startswith(prefix)):
                if req.method == "OPTIONS":
                    return Reply(200, (("Allow", allow),))
                if req.method not in allow.split(","):
                    return text_reply(405, f"method {req.method} not allowed", ("Allow", allow))
                return handler(req, path[len(prefix) :])
        if path.startswith("/v1/"):
            return text_reply(404, "Invalid URL path: not a recognized HTTP API endpoint")
        return text_reply(404, "404 page not found\n")

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
        """Resolve the request's token (2.2 priority order); raise Denied if unknown."""
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
            raise Denied("ACL not found")
        return token

    @staticmethod
    def denied(token: AclToken, perm: str, name: str) -> Denied:
        if token.is_anonymous:
            return Denied(
                f"Permission denied: anonymous token lacks permission '{perm}' on "
                f'"{name}". The anonymous token is used implicitly when a request does not '
                "specify a token."
            )
        return Denied(
            f"Permission denied: token with AccessorID '{token.accessor_id}' lacks "
            f"permission '{perm}' on \"{name}\""
        )

    def default_level(self) -> str:
        return "write" if self.config.acl_default_policy == "allow" else "deny"

    def can_read(self, token: AclToken, key: str) -> bool:
        return token.key_level(key, self.default_level()) >= 1

    def can_write(self, token: AclToken, key: str) -> bool:
        return token.key_level(key, self.default_level()) >= 3

    def parse_read(self, req: Request) -> tuple[str, int, float | None] | Reply:
        """Parse consistency and blocking parameters (2.7, 2.8); return a 400 on errors."""
        q = req.query
        stale, consistent = "stale" in q, "consistent" in q
        if stale and consistent:
            return text_reply(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        if "max_stale" in q:
            try:
                parse_go_duration(q["max_stale"][0])
            except ValueError:
                return text_reply(400, f'Invalid max_stale value "{q["max_stale"][0]}"')
        wait: float | None = None
        if "wait" in q:
            try:
                wait = parse_go_duration(q["wait"][0])
            except ValueError:
                return text_reply(400, "Invalid wait time")
        index = 0
        if "index" in q:
            raw = q["index"][0]
            if not raw.isdigit() or int(raw) > UINT64_MAX:
                return text_reply(400, "Invalid index")
            index = int(raw)
        mode = "stale" if stale else ("consistent" if consistent else "default")
        return mode, index, wait

    def common_checks(self, req: Request) -> Reply | None:
        dc = req.query.get("dc", [""])[0]
        if dc and dc != self.config.datacenter:
            return text_reply(500, "No path to datacenter")
        return None

    def _leader_check(self, mode: str) -> Reply | None:
        if mode != "stale" and not self.has_leader:
            return text_reply(500, "No cluster leader")
        return None

    def meta(self, index: int | None, mode: str) -> tuple[tuple[str, str], ...]:
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

    def block(
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

    # ------------------------------------------------------- KV, txn, sessions

    def _validate_key(self, key: str) -> Reply | None:
        profile = self.config.key_validation
        if profile == "none" or not key:
            return None
        if profile == "1.21.5-regex":
            if not re.match(_REGEX_1215, key):
                return text_reply(
                    500, f'invalid key name, keys should respect the "{_REGEX_1215}" format'
                )
            return None
        segments = re.split(r"[/\\]", key)
        if ".." in segments or key != key.strip(" "):
            return text_reply(
                500,
                f'invalid key name "{key}": path traversal or leading/trailing '
                "spaces are not allowed",
            )
        return None

    def preamble(self, req: Request, mode: str, key: str | None = None) -> Reply | AclToken:
        """The checks every KV, txn and session request starts with, in Consul's order:
        the key's validity, the datacenter, a leader (unless ``mode`` is stale), the token.
        Returns the reply that ends the request, or the resolved token."""
        checks = (
            self._validate_key(key) if key is not None else None,
            self.common_checks(req),
            self._leader_check(mode),
        )
        for check in checks:
            if check is not None:
                return check
        try:
            return self._token(req)
        except Denied as exc:
            return text_reply(403, str(exc))

    # ------------------------------------------------------- status, agent

    def _status_leader(self, req: Request, _rest: str) -> Reply:
        leader = "127.0.0.1:8300" if self.has_leader else ""
        return Reply(200, JSON_HEADERS, go_json(leader, pretty="pretty" in req.query))

    def _status_peers(self, req: Request, _rest: str) -> Reply:
        return Reply(200, JSON_HEADERS, go_json(["127.0.0.1:8300"], pretty="pretty" in req.query))

"""HTTP endpoints of the test server's sessions: ``/v1/session/create``, ``renew``,
``destroy``, ``info``, ``list`` and ``node`` (``shared/consul-api.md`` 2.10-2.12).

:class:`SessionAPI` answers them through the engine's shared request helpers (parameters,
tokens, leader, blocking); the sessions live in the engine's
:class:`~confhub_consul._teststate.ConsulState`, the checks a session binds to in its
:class:`~confhub_consul._testagent.AgentState`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from confhub_consul._testproto import (
    JSON_HEADERS,
    Reply,
    Request,
    format_go_duration,
    go_json,
    parse_go_duration,
    text_reply,
)

if TYPE_CHECKING:
    from confhub_consul._testserver import Engine

__all__ = ["SessionAPI"]

Handler = Callable[[Request, str], Reply]


class SessionAPI:
    """The session endpoints of one test server."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def routes(self) -> list[tuple[str, bool, str, Handler]]:
        """``(prefix, subtree, allowed methods, handler)`` rows for the engine's router."""
        return [
            ("/v1/session/create", False, "OPTIONS,PUT", self._session_create),
            ("/v1/session/renew/", True, "OPTIONS,PUT", self._session_renew),
            ("/v1/session/destroy/", True, "OPTIONS,PUT", self._session_destroy),
            ("/v1/session/info/", True, "OPTIONS,GET", self._session_info),
            ("/v1/session/list", False, "OPTIONS,GET", self._session_list),
            ("/v1/session/node/", True, "OPTIONS,GET", self._session_node),
        ]

    def _session_write_check(self, req: Request) -> Reply | None:
        token = self.engine.preamble(req, "default")
        if isinstance(token, Reply):
            return token
        if token.other_level("session", self.engine.default_level()) < 3:
            return text_reply(
                403, str(self.engine.denied(token, "session:write", self.engine.config.node_name))
            )
        return None

    def _session_create(self, req: Request, _rest: str) -> Reply:
        check = self._session_write_check(req)
        if check is not None:
            return check
        try:
            fields = self._decode_session(req.body)
        except ValueError as exc:
            return text_reply(400, f"Request decode failed: {exc}")
        ttl_text = str(fields.get("ttl") or "")
        ttl = 0.0
        if ttl_text:
            try:
                ttl = parse_go_duration(ttl_text)
            except ValueError as exc:
                return text_reply(500, f"Session TTL '{ttl_text}' invalid: {exc}")
            if ttl != 0 and not self.engine.config.session_ttl_min <= ttl <= 86400:
                return text_reply(
                    500,
                    f"Invalid Session TTL '{round(ttl * 1e9)}', must be between "
                    f"[{format_go_duration(self.engine.config.session_ttl_min)}="
                    f"{format_go_duration(86400)}]",
                )
        behavior = str(fields.get("behavior") or "release")
        if behavior not in {"release", "delete"}:
            return text_reply(500, f"Invalid Behavior setting '{behavior}'")
        lock_delay = 15.0
        raw_delay = fields.get("lockdelay")
        if isinstance(raw_delay, str) and raw_delay:
            try:
                lock_delay = parse_go_duration(raw_delay)
            except ValueError as exc:
                return text_reply(400, f"Request decode failed: {exc}")
        elif isinstance(raw_delay, int | float) and not isinstance(raw_delay, bool):
            # Consul reads small numbers as seconds, large ones as nanoseconds.
            lock_delay = float(raw_delay) if raw_delay < 1000 else raw_delay / 1e9
        bound = self._session_checks(fields)
        if isinstance(bound, Reply):
            return bound
        sess = self.engine.state.create_session(
            name=str(fields.get("name") or ""),
            node=str(fields.get("node") or self.engine.config.node_name),
            lock_delay=lock_delay,
            behavior="delete" if behavior == "delete" else "release",
            ttl=ttl,
            ttl_text=ttl_text,
            node_checks=bound[0],
            service_checks=bound[1],
        )
        return Reply(200, JSON_HEADERS, go_json({"ID": sess.id}))

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
                if self.engine.config.strict_session_decode:
                    raise ValueError(f'json: unknown field "{name}"')
                continue
            out[low] = value
        return out

    def _session_renew(self, req: Request, sid: str) -> Reply:
        if not sid:
            return text_reply(400, "Missing session")
        check = self._session_write_check(req)
        if check is not None:
            return check
        sess = self.engine.state.renew_session(sid)
        if sess is None:
            return text_reply(404, f"Session id '{sid}' not found")
        return Reply(200, JSON_HEADERS, go_json([sess.to_json()]))

    def _session_destroy(self, req: Request, sid: str) -> Reply:
        if not sid:
            return text_reply(400, "Missing session")
        check = self._session_write_check(req)
        if check is not None:
            return check
        self.engine.state.destroy_session(sid)
        return Reply(200, JSON_HEADERS, b"true")

    def _session_read(self, req: Request, select: Callable[[], list[dict[str, Any]]]) -> Reply:
        parsed = self.engine.parse_read(req)
        if isinstance(parsed, Reply):
            return parsed
        mode, min_index, wait = parsed
        token = self.engine.preamble(req, mode)
        if isinstance(token, Reply):
            return token
        if token.other_level("session", self.engine.default_level()) < 1:
            # Consul filters sessions by ACL; with no session:read the list is empty.
            def select() -> list[dict[str, Any]]:
                return []

        def evaluate() -> tuple[Reply, int, bool]:
            index = self.engine.state.session_table_index()
            body = go_json(select(), pretty="pretty" in req.query)
            return Reply(200, (*self.engine.meta(index, mode), *JSON_HEADERS), body), index, True

        return self.engine.block(min_index, wait, evaluate, missing_key_rule=False)

    def _session_info(self, req: Request, sid: str) -> Reply:
        if not sid:
            return text_reply(400, "Missing session")

        def select() -> list[dict[str, Any]]:
            sess = self.engine.state.session(sid)
            return [sess.to_json()] if sess is not None else []

        return self._session_read(req, select)

    def _session_list(self, req: Request, _rest: str) -> Reply:
        return self._session_read(req, lambda: [s.to_json() for s in self.engine.state.sessions()])

    def _session_node(self, req: Request, node: str) -> Reply:
        return self._session_read(
            req, lambda: [s.to_json() for s in self.engine.state.sessions() if s.node == node]
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
            return text_reply(400, "Request decode failed: checks must be lists")
        services = [
            str(c.get("ID") or c.get("id") or "") if isinstance(c, dict) else str(c)
            for c in raw_services
        ]
        for check_id in [str(n) for n in nodes] + services:
            if check_id == "serfHealth":
                continue
            check = self.engine.agent.check(check_id)
            if check is None:
                return text_reply(500, f"Missing check '{check_id}' registration")
            if check.status == "critical":
                return text_reply(500, f"Check '{check_id}' is in critical state")
        return tuple(str(n) for n in nodes), tuple(services)

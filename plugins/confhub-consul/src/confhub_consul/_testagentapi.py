"""HTTP endpoints of the test server's agent, health and catalog (``shared/consul-api.md``
2.13-2.14, checklist items 56-73).

:class:`AgentAPI` answers ``/v1/agent/self``, ``/v1/agent/service/*``, ``/v1/agent/check/*``,
``/v1/agent/services``, ``/v1/agent/checks``, ``/v1/health/service/<s>``,
``/v1/health/checks/<s>``, ``/v1/catalog/service/<s>`` and ``/v1/catalog/services`` through
the engine's shared request helpers (parameters, tokens, leader, blocking), and keeps its
state in :class:`~confhub_consul._testagent.AgentState`. Agent writes (register, check
updates) are agent-local: they work without a cluster leader; health and catalog reads need
one unless ``?stale``.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from confhub_consul._testagent import STATUSES, AgentState, RegistrationError
from confhub_consul._testfilter import FilterError, compile_filter
from confhub_consul._testproto import Reply, Request
from confhub_consul._teststate import AclToken

if TYPE_CHECKING:
    from confhub_consul._testserver import Engine

__all__ = ["AgentAPI"]

Handler = Callable[[Request, str], Reply]
_HEALTH_FIELDS = frozenset({"Node", "Service", "Checks"})
_CATALOG_FIELDS = frozenset(
    {
        "ID", "Node", "Address", "Datacenter", "TaggedAddresses", "NodeMeta", "ServiceKind",
        "ServiceID", "ServiceName", "ServiceTags", "ServiceAddress", "ServiceWeights",
        "ServiceMeta", "ServicePort", "ServiceEnableTagOverride", "CreateIndex", "ModifyIndex",
    }
)  # fmt: skip
_TRUE = {"", "1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}


class AgentAPI:
    """The agent, health and catalog endpoints of one test server."""

    def __init__(self, engine: Engine, agent: AgentState) -> None:
        self.engine = engine
        self.agent = agent

    def routes(self) -> list[tuple[str, bool, str, Handler]]:
        """``(prefix, subtree, allowed methods, handler)`` rows for the engine's router."""
        return [
            ("/v1/agent/service/register", False, "OPTIONS,PUT", self._register),
            ("/v1/agent/service/deregister/", True, "OPTIONS,PUT", self._deregister),
            ("/v1/agent/check/pass/", True, "OPTIONS,PUT", self._status("passing")),
            ("/v1/agent/check/warn/", True, "OPTIONS,PUT", self._status("warning")),
            ("/v1/agent/check/fail/", True, "OPTIONS,PUT", self._status("critical")),
            ("/v1/agent/check/update/", True, "OPTIONS,PUT", self._update),
            ("/v1/agent/self", False, "OPTIONS,GET", self._agent_self),
            ("/v1/agent/services", False, "OPTIONS,GET", self._agent_services),
            ("/v1/agent/checks", False, "OPTIONS,GET", self._agent_checks),
            ("/v1/health/service/", True, "OPTIONS,GET", self._health_service),
            ("/v1/health/checks/", True, "OPTIONS,GET", self._health_checks),
            ("/v1/catalog/service/", True, "OPTIONS,GET", self._catalog_service),
            ("/v1/catalog/services", False, "OPTIONS,GET", self._catalog_services),
        ]

    # --------------------------------------------------------------- common

    def _agent_token(self, req: Request, level: int, name: str) -> Reply | None:
        """Agent endpoints: datacenter and token only (no leader needed); ``service:``."""
        eng = self.engine
        common = eng.common_checks(req)
        if common is not None:
            return common
        token = eng.token_or_reply(req)
        if not isinstance(token, AclToken):
            return token
        if token.other_level("service", eng.default_level()) < level:
            perm = "service:write" if level >= 3 else "service:read"
            return eng.text(403, str(eng.denied(token, perm, name)))
        return None

    def _ok(self) -> Reply:
        return self.engine.reply(200, (), b"")

    # --------------------------------------------------------------- writes

    def _register(self, req: Request, _rest: str) -> Reply:
        try:
            service, checks = self.agent.parse_service(req.body)
        except RegistrationError as exc:
            return self.engine.text(400, str(exc))
        refused = self._agent_token(req, 3, service.name)
        if refused is not None:
            return refused
        replace = _flag(req.query.get("replace-existing-checks", [None])[0])
        self.agent.register(service, checks, replace_checks=replace)
        return self._ok()

    def _deregister(self, req: Request, service_id: str) -> Reply:
        refused = self._agent_token(req, 3, service_id)
        if refused is not None:
            return refused
        if not self.agent.deregister(service_id):
            return self.engine.text(
                404,
                f'Unknown service ID "{service_id}". Ensure that the service ID is passed, '
                "not the service name.",
            )
        return self._ok()

    def _status(self, status: str) -> Handler:
        def handler(req: Request, check_id: str) -> Reply:
            note = req.query.get("note", [""])[0]
            return self._set(req, check_id, status, note)

        return handler

    def _update(self, req: Request, check_id: str) -> Reply:
        try:
            data = json.loads(req.body or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return self.engine.text(400, f"Request decode failed: {exc}")
        if not isinstance(data, dict):
            return self.engine.text(400, "Request decode failed: body must be a JSON object")
        fields = {str(k).lower(): v for k, v in data.items()}
        status = str(fields.get("status") or "")
        if status not in STATUSES:
            return self.engine.text(400, f'Invalid check status: "{status}"')
        return self._set(req, check_id, status, str(fields.get("output") or ""))

    def _set(self, req: Request, check_id: str, status: str, output: str) -> Reply:
        refused = self._agent_token(req, 3, check_id)
        if refused is not None:
            return refused
        result = self.agent.update_check(check_id, status, output)
        if result == "unknown":
            return self.engine.text(
                404,
                f'Unknown check ID "{check_id}". Ensure that the check ID is passed, not the '
                "check name.",
            )
        if result == "not-ttl":
            return self.engine.text(500, f'CheckID "{check_id}" does not have associated TTL')
        return self._ok()

    # ---------------------------------------------------------------- reads

    def _agent_services(self, req: Request, _rest: str) -> Reply:
        refused = self._agent_token(req, 1, "")
        if refused is not None:
            return refused
        dc = self.engine.config.datacenter
        body = {s.id: s.agent_json(dc) for s in self.agent.services()}
        return self.engine.json_reply(req, body, ())

    def _agent_checks(self, req: Request, _rest: str) -> Reply:
        refused = self._agent_token(req, 1, "")
        if refused is not None:
            return refused
        services = {s.id: s for s in self.agent.services()}
        body = {
            c.id: c.json(
                self.agent.node,
                services[c.service_id].tags if c.service_id in services else (),
                agent_view=True,
            )
            for c in self.agent.checks()
        }
        return self.engine.json_reply(req, body, ())

    def _read(
        self,
        req: Request,
        name: str,
        select: Callable[[], tuple[int, Any]],
    ) -> Reply:
        """A blocking, consistency-aware read of one service's index (health, catalog)."""
        eng = self.engine
        parsed = eng.parse_read(req)
        if not isinstance(parsed, tuple):
            return parsed
        mode, min_index, wait = parsed
        token = eng.preamble(req, mode)
        if not isinstance(token, AclToken):
            return token
        if token.other_level("service", eng.default_level()) < 1:
            select = _empty_read(select)

        def evaluate() -> tuple[Reply, int, bool]:
            index, body = select()
            consistency = "stale" if mode == "stale" else "leader"
            if mode == "consistent":
                consistency = "consistent"
            headers = (*eng.meta(index, mode), ("X-Consul-Effective-Consistency", consistency))
            return eng.json_reply(req, body, headers), index, True

        return eng.block(min_index, wait, evaluate, missing_key_rule=False)

    def _health_service(self, req: Request, name: str) -> Reply:
        q = req.query
        passing = False
        if "passing" in q:
            raw = q["passing"][0]
            if raw not in _TRUE | _FALSE:
                return self.engine.text(400, "Invalid value for ?passing")
            passing = raw in _TRUE
        tags = q.get("tag", [])
        pred = None
        if q.get("filter", [""])[0]:
            try:
                pred = compile_filter(q["filter"][0], _HEALTH_FIELDS)
            except FilterError as exc:
                return self.engine.text(
                    400, f"Failed to create boolean expression evaluator: {exc}"
                )

        def select() -> tuple[int, list[dict[str, Any]]]:
            index, entries = self.agent.health(name)
            out = []
            for entry in entries:
                if passing and any(c["Status"] != "passing" for c in entry["Checks"]):
                    continue
                if any(t not in entry["Service"]["Tags"] for t in tags):
                    continue
                if pred is not None and not pred(entry):
                    continue
                out.append(entry)
            return index, out

        return self._read(req, name, select)

    def _health_checks(self, req: Request, name: str) -> Reply:
        def select() -> tuple[int, list[dict[str, Any]]]:
            index, entries = self.agent.health(name)
            return index, [c for e in entries for c in e["Checks"] if c["ServiceID"]]

        return self._read(req, name, select)

    def _catalog_service(self, req: Request, name: str) -> Reply:
        tags = req.query.get("tag", [])
        pred = None
        if req.query.get("filter", [""])[0]:
            try:
                pred = compile_filter(req.query["filter"][0], _CATALOG_FIELDS)
            except FilterError as exc:
                return self.engine.text(
                    400, f"Failed to create boolean expression evaluator: {exc}"
                )

        def select() -> tuple[int, list[dict[str, Any]]]:
            index, nodes = self.agent.catalog(name)
            out = [
                n
                for n in nodes
                if all(t in n["ServiceTags"] for t in tags) and (pred is None or pred(n))
            ]
            return index, out

        return self._read(req, name, select)

    def _catalog_services(self, req: Request, _rest: str) -> Reply:
        return self._read(req, "", self.agent.catalog_services)

    def _agent_self(self, req: Request, _rest: str) -> Reply:
        token = self.engine.token_or_reply(req)
        if isinstance(token, Reply):
            return token
        if token.other_level("agent", self.engine.default_level()) < 1:
            denied = self.engine.denied(token, "agent:read", self.engine.config.node_name)
            return self.engine.text(403, str(denied))
        cfg = self.engine.config
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
        return self.engine.json_reply(req, body, ())


def _empty_read(select: Callable[[], tuple[int, Any]]) -> Callable[[], tuple[int, Any]]:
    """The same index with an empty result (an ACL-filtered read)."""

    def filtered() -> tuple[int, Any]:
        index, body = select()
        return index, type(body)()

    return filtered


def _flag(raw: str | None) -> bool:
    """A parsed boolean query parameter (absent: False)."""
    if raw is None:
        return False
    return urllib.parse.unquote(raw) in _TRUE

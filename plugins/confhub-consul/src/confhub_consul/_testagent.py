"""The test server's agent: services, health checks, and the catalog view of them.

:class:`AgentState` holds what one Consul agent (one node, with a passing ``serfHealth``)
owns: its registered services and their checks. It shares the
:class:`~confhub_consul._teststate.ConsulState` condition and Raft index, so health and catalog
blocking queries wake on the same commits as KV and sessions, and a check that turns critical
invalidates the sessions bound to it in the same step.

Behaviour follows ``shared/consul-api.md`` 2.13-2.15 (checklist items 56-77):

- registration is validated like Consul's (400 texts), check IDs are ``service:<id>`` (or
  ``service:<id>:<n>`` for several), the initial status is ``critical`` unless given, and a
  re-registration keeps an existing check's status and output;
- a TTL check turns critical ``TTL`` after its last update (Output ``TTL expired...``);
  HTTP and TCP checks are probed on loopback every ``Interval`` (see :meth:`probe_due`);
- a status change is written to the catalog at once (raising the service's index); an
  output-only change waits ``check_update_interval``;
- ``DeregisterCriticalServiceAfter`` is raised to ``dcsa_min`` and the reaper runs every
  ``reap_interval`` (Consul: 1 min and 30 s; both knobs so tests run in seconds);
- the index of a service's health/catalog query is its per-service index, or for a service
  with no instances the extinction index (raised whenever a service loses its last
  instance), or the catalog's max index when no service ever died out.

The clock is the state's (inject a ``ManualClock`` to drive TTLs, reaping and output sync).
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import ipaddress
import socket
import urllib.parse
from typing import Any, Literal

from confhub_consul._testregistration import (
    STATUSES,
    AgentCheck,
    AgentService,
    RegistrationError,
    decode_service,
)
from confhub_consul._teststate import ConsulState

__all__ = ["STATUSES", "AgentCheck", "AgentService", "AgentState", "RegistrationError"]

_OUTPUT_MAX = 4096


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class AgentState:
    """Services and checks of the test server's single agent; see the module docstring."""

    def __init__(
        self,
        state: ConsulState,
        *,
        node: str,
        datacenter: str,
        parse_duration: Any,  # noqa: ANN401 - the server's Go-duration parser
        dcsa_min: float = 60.0,
        reap_interval: float = 30.0,
        check_update_interval: float = 300.0,
    ) -> None:
        self.state = state
        self.node = node
        self.datacenter = datacenter
        self._parse = parse_duration
        self.dcsa_min = dcsa_min
        self.reap_interval = reap_interval
        self.check_update_interval = check_update_interval
        self._services: dict[str, AgentService] = {}
        self._checks: dict[str, AgentCheck] = {}
        self._service_index: dict[str, int] = {}
        self._extinction_index = 0
        self._catalog_index = state.raft_index
        self._node_index = state.raft_index
        self._last_reap = state.clock()

    # ------------------------------------------------------------- decoding

    def parse_service(self, body: bytes) -> tuple[AgentService, list[AgentCheck]]:
        """Decode a ``/v1/agent/service/register`` body (400 :class:`RegistrationError`),
        with this agent's ``DeregisterCriticalServiceAfter`` floor."""
        return decode_service(body, parse_duration=self._parse, dcsa_min=self.dcsa_min)

    # -------------------------------------------------------------- writes

    def _touch(self, service_name: str, idx: int) -> None:
        self._service_index[service_name] = idx
        self._catalog_index = idx

    def register(
        self, service: AgentService, checks: list[AgentCheck], *, replace_checks: bool
    ) -> None:
        """Add or replace a service and its checks (existing checks keep their state)."""
        st = self.state
        with st.cond:
            now = st.clock()
            old = self._services.get(service.id)
            changed = old is None or not old.same(service)
            idx = st.raft_index + 1
            stored = dataclasses.replace(
                service,
                create_index=old.create_index if old is not None else idx,
                modify_index=idx if changed else (old.modify_index if old else idx),
            )
            new_ids = {c.id for c in checks}
            dropped = [
                cid
                for cid, c in self._checks.items()
                if c.service_id == service.id and replace_checks and cid not in new_ids
            ]
            for cid in dropped:
                del self._checks[cid]
                changed = True
            for given in checks:
                check = given
                prev = self._checks.get(check.id)
                if prev is not None:
                    # Consul snapshots check state and restores it on re-registration.
                    check = dataclasses.replace(
                        check,
                        status=prev.status,
                        output=prev.output,
                        synced_output=prev.synced_output,
                        critical_since=prev.critical_since,
                        create_index=prev.create_index,
                        modify_index=prev.modify_index,
                        last_sync=prev.last_sync,
                    )
                    if not _same_check(prev, check):
                        check = dataclasses.replace(check, modify_index=idx)
                        changed = True
                else:
                    check = dataclasses.replace(
                        check,
                        create_index=idx,
                        modify_index=idx,
                        critical_since=now if check.status == "critical" else None,
                        last_sync=now,
                    )
                    changed = True
                if check.kind == "ttl":
                    check = dataclasses.replace(check, ttl_deadline=now + check.ttl)
                elif check.next_probe is None:
                    check = dataclasses.replace(check, next_probe=now)
                self._checks[check.id] = check
            self._services[service.id] = stored
            if changed:
                st.next_index()
                self._touch(service.name, idx)
                st.commit()
            self._invalidate(dropped)

    def deregister(self, service_id: str) -> bool:
        """Remove a service and its checks; False when the ID is unknown."""
        st = self.state
        with st.cond:
            service = self._services.pop(service_id, None)
            if service is None:
                return False
            gone = [cid for cid, c in self._checks.items() if c.service_id == service_id]
            for cid in gone:
                del self._checks[cid]
            idx = st.next_index()
            self._touch(service.name, idx)
            if not any(s.name == service.name for s in self._services.values()):
                self._extinction_index = idx
                self._service_index.pop(service.name, None)
            st.commit()
            self._invalidate(gone)
            return True

    def update_check(
        self, check_id: str, status: str, output: str
    ) -> Literal["ok", "unknown", "not-ttl"]:
        """Set a TTL check's status and output and restart its timer."""
        with self.state.cond:
            check = self._checks.get(check_id)
            if check is None:
                return "unknown"
            if check.kind != "ttl":
                return "not-ttl"
            now = self.state.clock()
            self._set_status(check, status, output[:_OUTPUT_MAX], now, ttl_deadline=now + check.ttl)
            return "ok"

    def _set_status(
        self,
        check: AgentCheck,
        status: str,
        output: str,
        now: float,
        **extra: Any,  # noqa: ANN401 - dataclass fields
    ) -> None:
        """Store a check's new status (under the lock): a status change is synced to the
        catalog at once, an output-only change waits for the next sync."""
        st = self.state
        if status != check.status:
            idx = st.next_index()
            check = dataclasses.replace(
                check,
                status=status,
                output=output,
                synced_output=output,
                modify_index=idx,
                last_sync=now,
                critical_since=((check.critical_since or now) if status == "critical" else None),
                **extra,
            )
            self._checks[check.id] = check
            self._touch(check.service_name, idx)
            st.commit()
            if status == "critical":
                self._invalidate([check.id])
        else:
            self._checks[check.id] = dataclasses.replace(check, output=output, **extra)

    def _invalidate(self, check_ids: list[str]) -> None:
        for sid in self.state.sessions_bound_to(check_ids):
            self.state.destroy_session(sid)

    # -------------------------------------------------------------- ticking

    def tick(self) -> None:
        """Expire TTL checks, sync deferred output, and run the reaper when it is due."""
        st = self.state
        with st.cond:
            now = st.clock()
            for stored in list(self._checks.values()):
                check = stored
                if (
                    check.kind == "ttl"
                    and check.ttl_deadline is not None
                    and now >= check.ttl_deadline
                    and check.status != "critical"
                ):
                    text = "TTL expired"
                    if check.output:
                        text += f" (last output before timeout follows): {check.output}"
                    self._set_status(check, "critical", text, now, ttl_deadline=None)
                    check = self._checks[check.id]
                if (
                    check.output != check.synced_output
                    and now - check.last_sync >= self.check_update_interval
                ):
                    idx = st.next_index()
                    self._checks[check.id] = dataclasses.replace(
                        check, synced_output=check.output, last_sync=now, modify_index=idx
                    )
                    self._touch(check.service_name, idx)
                    st.commit()
            if now - self._last_reap >= self.reap_interval:
                self._last_reap = now
                self._reap(now)

    def _reap(self, now: float) -> None:
        doomed = {
            c.service_id
            for c in self._checks.values()
            if c.deregister_after is not None
            and c.critical_since is not None
            and now - c.critical_since > c.deregister_after
        }
        for sid in sorted(doomed):
            self.deregister(sid)

    def probe_due(self) -> list[AgentCheck]:
        """HTTP/TCP checks whose interval came round (their next probe is rescheduled)."""
        with self.state.cond:
            now = self.state.clock()
            due = []
            for check in list(self._checks.values()):
                if check.next_probe is not None and now >= check.next_probe:
                    self._checks[check.id] = dataclasses.replace(
                        check, next_probe=now + check.interval
                    )
                    due.append(check)
            return due

    def probe(self, check: AgentCheck) -> None:
        """Run one HTTP or TCP probe (loopback targets only) and store its result."""
        status, output = _probe(check)
        with self.state.cond:
            current = self._checks.get(check.id)
            if current is not None:
                self._set_status(current, status, output, self.state.clock())

    def restore(self, index: int) -> None:
        """A snapshot restore (see ``ConsulState.restore_snapshot``): every catalog index
        drops to at most ``index``; call under the state's condition."""
        with self.state.cond:
            self._service_index = {k: min(v, index) for k, v in self._service_index.items()}
            self._extinction_index = min(self._extinction_index, index)
            self._catalog_index = min(self._catalog_index, index)
            self._node_index = min(self._node_index, index)
            self._services = {
                k: dataclasses.replace(
                    s,
                    create_index=min(s.create_index, index),
                    modify_index=min(s.modify_index, index),
                )
                for k, s in self._services.items()
            }
            self._checks = {
                k: dataclasses.replace(
                    c,
                    create_index=min(c.create_index, index),
                    modify_index=min(c.modify_index, index),
                )
                for k, c in self._checks.items()
            }

    # ---------------------------------------------------------------- reads

    def services(self) -> list[AgentService]:
        """Every registered service, by ID."""
        with self.state.cond:
            return [self._services[k] for k in sorted(self._services)]

    def checks(self) -> list[AgentCheck]:
        """Every service check, by ID."""
        with self.state.cond:
            return [self._checks[k] for k in sorted(self._checks)]

    def check(self, check_id: str) -> AgentCheck | None:
        """One check, or None."""
        with self.state.cond:
            return self._checks.get(check_id)

    def service_index(self, name: str) -> int:
        """The blocking index of ``name``'s health and catalog queries (2.14)."""
        with self.state.cond:
            if name in self._service_index:
                return self._service_index[name]
            return self._extinction_index or self._catalog_index

    def catalog_index(self) -> int:
        """The index of ``/v1/catalog/services``."""
        with self.state.cond:
            return self._catalog_index

    def node_json(self) -> dict[str, Any]:
        """The agent's node, as health entries show it."""
        return {
            "ID": "11111111-2222-3333-4444-555555555555",
            "Node": self.node,
            "Address": "127.0.0.1",
            "Datacenter": self.datacenter,
            "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
            "Meta": {"consul-network-segment": ""},
            "CreateIndex": self._node_index,
            "ModifyIndex": self._node_index,
        }

    def serf_json(self) -> dict[str, Any]:
        """The node's ``serfHealth`` check (always passing on the test server)."""
        return {
            "Node": self.node,
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": "passing",
            "Notes": "",
            "Output": "Agent alive and reachable",
            "ServiceID": "",
            "ServiceName": "",
            "ServiceTags": [],
            "Type": "",
            "Interval": "",
            "Timeout": "",
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": self._node_index,
            "ModifyIndex": self._node_index,
        }

    def health(self, name: str) -> tuple[int, list[dict[str, Any]]]:
        """``(index, entries)`` of ``/v1/health/service/<name>``, every status."""
        with self.state.cond:
            entries = []
            by_service: dict[str, list[AgentCheck]] = {}
            for check in self.checks():
                by_service.setdefault(check.service_id, []).append(check)
            for service in self.services():
                if service.name != name:
                    continue
                checks = [
                    c.json(self.node, service.tags, agent_view=False)
                    for c in by_service.get(service.id, ())
                ]
                entries.append(
                    {
                        "Node": self.node_json(),
                        "Service": service.health_json(),
                        "Checks": [self.serf_json(), *checks],
                    }
                )
            return self.service_index(name), entries

    def catalog(self, name: str) -> tuple[int, list[dict[str, Any]]]:
        """``(index, nodes)`` of ``/v1/catalog/service/<name>``, whatever the health."""
        with self.state.cond:
            out = []
            for s in self.services():
                if s.name != name:
                    continue
                out.append(
                    {
                        "ID": "11111111-2222-3333-4444-555555555555",
                        "Node": self.node,
                        "Address": "127.0.0.1",
                        "Datacenter": self.datacenter,
                        "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
                        "NodeMeta": {"consul-network-segment": ""},
                        "ServiceKind": "",
                        "ServiceID": s.id,
                        "ServiceName": s.name,
                        "ServiceTags": list(s.tags),
                        "ServiceAddress": s.address,
                        "ServiceWeights": dict(s.weights),
                        "ServiceMeta": dict(s.meta),
                        "ServicePort": s.port,
                        "ServiceEnableTagOverride": s.enable_tag_override,
                        "CreateIndex": s.create_index,
                        "ModifyIndex": s.modify_index,
                    }
                )
            return self.service_index(name), out

    def catalog_services(self) -> tuple[int, dict[str, list[str]]]:
        """``(index, {name: tags})`` of ``/v1/catalog/services`` (``consul`` included)."""
        with self.state.cond:
            names: dict[str, set[str]] = {"consul": set()}
            for s in self._services.values():
                names.setdefault(s.name, set()).update(s.tags)
            return self._catalog_index, {k: sorted(v) for k, v in sorted(names.items())}


def _same_check(a: AgentCheck, b: AgentCheck) -> bool:
    return dataclasses.replace(a, ttl_deadline=None, next_probe=None) == dataclasses.replace(
        b, ttl_deadline=None, next_probe=None
    )


def _probe(check: AgentCheck) -> tuple[str, str]:
    """``(status, output)`` of one HTTP or TCP probe."""
    if check.kind == "tcp":
        host, _, port = check.target.rpartition(":")
        if not _loopback(host):
            return "critical", f"test server: probes loopback targets only, not {host!r}"
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=check.timeout):
                return "passing", f"TCP connect {check.target}: Success"
        except (OSError, ValueError) as exc:
            return "critical", f"dial tcp {check.target}: {exc}"
    url = urllib.parse.urlsplit(check.target)
    host = url.hostname or ""
    if not _loopback(host):
        return "critical", f"test server: probes loopback targets only, not {host!r}"
    conn_type = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = conn_type(
        host, url.port or (443 if url.scheme == "https" else 80), timeout=check.timeout
    )
    try:
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        conn.request(check.method, path)
        resp = conn.getresponse()
        body = resp.read(_OUTPUT_MAX).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        return "critical", f'Get "{check.target}": {exc}'
    finally:
        with contextlib.suppress(OSError):
            conn.close()
    text = f"HTTP {check.method} {check.target}: {resp.status} {resp.reason} Output: {body}"
    if 200 <= resp.status < 300:
        return "passing", text
    if resp.status == 429:
        return "warning", text
    return "critical", text

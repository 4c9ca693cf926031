"""What a registration on the test server's agent holds, and how its body decodes.

:class:`AgentService` and :class:`AgentCheck` are the values the agent
(:class:`~confhub_consul._testagent.AgentState`) keeps and shows as Consul does;
:func:`decode_service` turns a ``/v1/agent/service/register`` body into them, validated as
Consul validates it (its 400 texts, as :class:`RegistrationError`): check IDs
``service:<id>`` (``service:<id>:<n>`` for several), the initial status ``critical`` unless
given, ``DeregisterCriticalServiceAfter`` raised to the agent's floor.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any, Literal

__all__ = [
    "STATUSES",
    "AgentCheck",
    "AgentService",
    "CheckKind",
    "RegistrationError",
    "decode_check",
    "decode_service",
]

CheckKind = Literal["ttl", "http", "tcp", "script", "grpc"]
STATUSES = ("passing", "warning", "critical")


class RegistrationError(ValueError):
    """A service or check definition Consul would refuse with 400; the message is the body."""


@dataclasses.dataclass(frozen=True)
class AgentService:
    """One service instance registered on the agent."""

    id: str
    name: str
    address: str
    port: int
    tags: tuple[str, ...]
    meta: Mapping[str, str]
    weights: Mapping[str, int]
    enable_tag_override: bool
    create_index: int = 0
    modify_index: int = 0

    def same(self, other: AgentService) -> bool:
        """Whether ``other`` defines the same service (a re-registration that is a no-op)."""
        return dataclasses.replace(other, create_index=0, modify_index=0) == dataclasses.replace(
            self, create_index=0, modify_index=0
        )

    def agent_json(self, datacenter: str) -> dict[str, Any]:
        """As ``/v1/agent/services`` shows it."""
        return {
            "ID": self.id,
            "Service": self.name,
            "Tags": list(self.tags),
            "Meta": dict(self.meta),
            "Port": self.port,
            "Address": self.address,
            "Weights": dict(self.weights),
            "EnableTagOverride": self.enable_tag_override,
            "Datacenter": datacenter,
        }

    def health_json(self) -> dict[str, Any]:
        """As the ``Service`` object of a ``/v1/health/service`` entry."""
        return {
            "ID": self.id,
            "Service": self.name,
            "Tags": list(self.tags),
            "Address": self.address,
            "Meta": dict(self.meta) if self.meta else None,
            "Port": self.port,
            "Weights": dict(self.weights),
            "EnableTagOverride": self.enable_tag_override,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclasses.dataclass(frozen=True)
class AgentCheck:
    """One health check, as the agent keeps it (times are readings of the state's clock).

    ``output`` is the agent's view; ``synced_output`` what the catalog (health endpoints)
    shows: a status change syncs at once, an output-only change after
    ``check_update_interval``.
    """

    id: str
    name: str
    service_id: str
    service_name: str
    kind: CheckKind
    status: str
    output: str = ""
    synced_output: str = ""
    notes: str = ""
    ttl: float = 0.0
    interval: float = 0.0
    timeout: float = 10.0
    target: str = ""
    method: str = "GET"
    deregister_after: float | None = None
    critical_since: float | None = None
    ttl_deadline: float | None = None
    next_probe: float | None = None
    last_sync: float = 0.0
    create_index: int = 0
    modify_index: int = 0

    def json(self, node: str, tags: tuple[str, ...], *, agent_view: bool) -> dict[str, Any]:
        """As Consul shows a check (``agent_view``: the agent's newest output)."""
        return {
            "Node": node,
            "CheckID": self.id,
            "Name": self.name,
            "Status": self.status,
            "Notes": self.notes,
            "Output": self.output if agent_view else self.synced_output,
            "ServiceID": self.service_id,
            "ServiceName": self.service_name,
            "ServiceTags": list(tags),
            "Type": self.kind,
            "Interval": _go_seconds(self.interval),
            "Timeout": _go_seconds(self.timeout) if self.kind != "ttl" else "",
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


def _go_seconds(seconds: float) -> str:
    if not seconds:
        return ""
    return f"{seconds:g}s"


def _norm(data: Mapping[str, Any]) -> dict[str, Any]:
    """Field names as Consul's decoder matches them: case-insensitive, snake_case aliases."""
    return {str(k).lower().replace("_", ""): v for k, v in data.items()}


def _duration(value: object, field: str, parse: Callable[[str], float]) -> float:
    if value in (None, ""):
        return 0.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) / 1e9  # a JSON number is nanoseconds
    if isinstance(value, str):
        try:
            return float(parse(value))
        except ValueError as exc:
            raise RegistrationError(f"Request decode failed: {field}: {exc}") from exc
    raise RegistrationError(f"Request decode failed: {field}: not a duration")


def decode_check(
    raw: object,
    service_id: str,
    default_id: str,
    name: str,
    *,
    parse_duration: Callable[[str], float],
    dcsa_min: float,
) -> AgentCheck:
    """Decode and validate one check definition of a registration (400 on errors)."""
    if not isinstance(raw, Mapping):
        raise RegistrationError("Request decode failed: check must be an object")
    c = _norm(raw)
    ttl = _duration(c.get("ttl"), "TTL", parse_duration)
    interval = _duration(c.get("interval"), "Interval", parse_duration)
    timeout = _duration(c.get("timeout"), "Timeout", parse_duration) or 10.0
    dcsa = _duration(c.get("deregistercriticalserviceafter"), "DCSA", parse_duration)
    kind: CheckKind
    target = ""
    if c.get("http"):
        kind, target = "http", str(c["http"])
    elif c.get("tcp"):
        kind, target = "tcp", str(c["tcp"])
    elif c.get("args") or c.get("script"):
        kind = "script"
    elif c.get("grpc"):
        kind, target = "grpc", str(c["grpc"])
    else:
        kind = "ttl"
    if ttl > 0 and interval > 0:
        raise RegistrationError("Invalid check: Interval and TTL cannot both be specified")
    if kind != "ttl" and interval <= 0:
        raise RegistrationError(
            "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or "
            "OSService checks"
        )
    if kind == "ttl" and ttl <= 0:
        raise RegistrationError("Invalid check: TTL must be > 0 for TTL checks")
    if kind in {"script", "grpc"}:
        raise RegistrationError(
            f"Invalid check: the test server does not run {kind} checks; use TTL, HTTP or TCP"
        )
    status = str(c.get("status") or "critical")
    if status not in STATUSES:
        raise RegistrationError(
            "Invalid check: Status for checks must 'passing', 'warning', 'critical'"
        )
    return AgentCheck(
        id=str(c.get("checkid") or c.get("id") or default_id),
        name=str(c.get("name") or name),
        service_id=service_id,
        service_name="",
        kind=kind,
        status=status,
        notes=str(c.get("notes") or ""),
        ttl=ttl,
        interval=interval,
        timeout=timeout,
        target=target,
        method=str(c.get("method") or "GET"),
        deregister_after=max(dcsa, dcsa_min) if dcsa > 0 else None,
    )


def decode_service(
    body: bytes, *, parse_duration: Callable[[str], float], dcsa_min: float
) -> tuple[AgentService, list[AgentCheck]]:
    """Decode a ``/v1/agent/service/register`` body (400 :class:`RegistrationError`)."""
    try:
        data = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegistrationError(f"Request decode failed: {exc}") from exc
    if not isinstance(data, Mapping):
        raise RegistrationError("Request decode failed: body must be a JSON object")
    d = _norm(data)
    name = str(d.get("name") or "")
    if not name:
        raise RegistrationError("Missing service name")
    sid = str(d.get("id") or name)
    port = d.get("port") or 0
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise RegistrationError(f"Request decode failed: Port: {port!r} is not a port")
    meta = d.get("meta") or {}
    if not isinstance(meta, Mapping) or not all(isinstance(v, str) for v in meta.values()):
        raise RegistrationError("Request decode failed: Meta must map strings to strings")
    tags = d.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise RegistrationError("Request decode failed: Tags must be a list of strings")
    weights = _norm(d.get("weights") or {})
    service = AgentService(
        id=sid,
        name=name,
        address=str(d.get("address") or ""),
        port=port,
        tags=tuple(tags),
        meta=dict(meta),
        weights={
            "Passing": int(weights.get("passing", 1)),
            "Warning": int(weights.get("warning", 1)),
        },
        enable_tag_override=bool(d.get("enabletagoverride")),
    )
    raw_checks: list[object] = []
    single = d.get("check")
    if isinstance(single, Mapping) and single:
        raw_checks.append(single)
    raw_checks.extend(d.get("checks") or [])
    several = len(raw_checks) > 1
    checks = [
        dataclasses.replace(
            decode_check(
                raw,
                sid,
                f"service:{sid}:{n}" if several else f"service:{sid}",
                f"Service '{name}' check",
                parse_duration=parse_duration,
                dcsa_min=dcsa_min,
            ),
            service_name=name,
        )
        for n, raw in enumerate(raw_checks, 1)
    ]
    return service, checks

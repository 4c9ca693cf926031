"""The Consul registry store: ``consul://host:port/[prefix/]`` for :class:`confhub.Registry`.

:class:`ConsulRegistry` implements :class:`confhub.RegistryBackend` on Consul's agent, health
and KV APIs (``shared/consul-api.md`` 2.13-2.15, 3.5):

- **register**: ``PUT /v1/agent/service/register`` with a TTL check ``service:<id>`` (TTL =
  the registration's ttl, ``DeregisterCriticalServiceAfter`` = the ``deregister_after``
  option, 60 s by default, Consul's floor) plus any HTTP/TCP checks passed through, then the
  current status pushed at once (a re-registered check keeps its old status otherwise);
- **keepalive / set_status**: ``PUT /v1/agent/check/update/service:<id>`` with the current
  status; a 404 (or an old agent's 500 "does not have associated TTL") is
  :class:`~confhub.LeaseLostError`: the agent forgot us (restarted, reaped us), register again;
- **list / wait**: ``GET /v1/health/service/<service>`` (every status; an instance's status is
  its worst check's, node checks included; the address is the service's, else the node's),
  blocking with the KV watch's index rules (:mod:`~confhub_consul._index`) and its token
  bucket; a record that cannot be an :class:`~confhub.Instance` (no port, malformed) is
  skipped and reported as a :class:`~confhub.SourceFormatError` naming the service ID;
- **services**: ``GET /v1/catalog/services`` without Consul's own ``consul`` service;
- **lock**: :class:`~confhub_consul._lock.ConsulLock` on the key ``<prefix>_locks/<name>``.

Registration is agent-local: the spec's agent owns the instance, and services are not
namespaced by the prefix (the prefix only places lock keys).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from confhub import (
    BackendSettings,
    CheckSpec,
    Instance,
    LeaseLostError,
    RegistryError,
    RegistryInputError,
    ServiceListing,
    SourceFormatError,
    SourceSpec,
    SourceUnavailableError,
    SpecError,
)

from ._calls import Calls
from ._http import Response
from ._index import query_index, response_index, went_back
from ._lock import ConsulLock
from ._options import ConsulOptions
from ._reader import body_text, duration
from ._watch import TokenBucket

_RANK = {"passing": 0, "warning": 1, "critical": 2}
_META_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_CHECK_KINDS = ("http", "tcp")


def _check_path(instance_id: str) -> str:
    return "/v1/agent/check/update/" + quote(f"service:{instance_id}", safe=":")


class ConsulRegistry:
    """A registry store on one Consul agent; see the module docstring."""

    def __init__(self, spec: SourceSpec, settings: BackendSettings | None = None) -> None:
        opts = ConsulOptions.from_spec(spec, settings)
        if opts.document is not None:
            raise SpecError(
                f"{opts.display}: a registry spec names an agent and an optional key prefix "
                "for locks (consul://host:port/ or consul://host:port/myapp/); drop format=",
                spec=opts.display,
            )
        self.opts = opts
        self.source = opts.display
        self.deregister_after = spec.option_float("deregister_after", 60.0)
        self.lock_delay = spec.option_float("lock_delay", 0.0)
        if not self.deregister_after > 0 or not self.lock_delay >= 0:
            raise SpecError(
                f"{opts.display}: deregister_after must be > 0 and lock_delay >= 0 seconds",
                spec=opts.display,
            )
        self._calls = Calls(opts)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._status: dict[str, str] = {}  # instance_id -> the status we push

    def __repr__(self) -> str:
        return f"<ConsulRegistry {self.source}>"

    # -- registration --------------------------------------------------------------------------
    def _body(self, instance: Instance, ttl: float, checks: tuple[CheckSpec, ...]) -> bytes:
        dcsa = duration(self.deregister_after)
        definitions: list[dict[str, Any]] = [
            {
                "CheckID": f"service:{instance.instance_id}",
                "Name": f"confhub keepalive of {instance.instance_id}",
                "TTL": duration(ttl),
                "Status": instance.status,
                "DeregisterCriticalServiceAfter": dcsa,
            }
        ]
        for n, check in enumerate(checks, 1):
            if check.kind not in _CHECK_KINDS:
                raise RegistryInputError(
                    f"{self.source}: check kind {check.kind!r} of {instance.instance_id!r} is "
                    "not one Consul runs for confhub; use 'http' or 'tcp'",
                    source=self.source,
                    name=instance.instance_id,
                )
            definitions.append(
                {
                    "CheckID": f"service:{instance.instance_id}:{check.kind}{n}",
                    "Name": f"{check.kind} {check.target}",
                    check.kind.upper(): check.target,
                    "Interval": duration(check.interval),
                    "Timeout": duration(check.timeout),
                    "DeregisterCriticalServiceAfter": dcsa,
                }
            )
        body = {
            "ID": instance.instance_id,
            "Name": instance.service,
            "Address": instance.address,
            "Port": instance.port,
            "Meta": dict(instance.meta),
            "Checks": definitions,
        }
        return json.dumps(body).encode("utf-8")

    def _check_meta(self, instance: Instance) -> None:
        for key, value in instance.meta.items():
            if not _META_KEY.match(key) or key.startswith("consul-") or len(value) > 512:
                raise RegistryError(
                    f"{self.source}: meta key {key!r} of {instance.instance_id!r} is refused "
                    "by Consul; use letters, digits, '_' and '-' (at most 128, not starting "
                    "with 'consul-') and values of at most 512 characters",
                    source=self.source,
                    name=instance.instance_id,
                )
        if len(instance.meta) > 64:
            raise RegistryError(
                f"{self.source}: {instance.instance_id!r} has {len(instance.meta)} meta keys; "
                "Consul takes at most 64",
                source=self.source,
                name=instance.instance_id,
            )

    def register(self, instance: Instance, ttl: float, checks: tuple[CheckSpec, ...]) -> None:
        """Register (or re-register) the instance with its TTL check and push its status."""
        self._check_meta(instance)
        body = self._body(instance, ttl, checks)
        resp = self._calls.request(
            "PUT",
            "/v1/agent/service/register",
            body=body,
            accept=(400,),
            what=f"registering {instance.instance_id!r}",
        )
        if resp.status == 400:
            raise RegistryError(
                f"{self.source}: Consul refused the registration of {instance.instance_id!r} "
                f"({body_text(resp)}); fix the instance or its checks",
                source=self.source,
                name=instance.instance_id,
            )
        with self._lock:
            self._status[instance.instance_id] = instance.status
        self._push(instance.instance_id, instance.status, "registered")

    def _push(self, instance_id: str, status: str, output: str) -> None:
        resp = self._calls.request(
            "PUT",
            _check_path(instance_id),
            body=json.dumps({"Status": status, "Output": f"confhub: {output}"}).encode(),
            accept=(404, 500),
            what=f"updating the TTL check of {instance_id!r}",
        )
        if resp.status == 404 or (
            resp.status == 500 and "does not have associated TTL" in body_text(resp)
        ):
            raise LeaseLostError(
                f"{self.source}: the Consul agent no longer has {instance_id!r} (restarted, "
                "or reaped after its check stayed critical); it is registered again",
                source=self.source,
                name=instance_id,
            )
        if resp.status == 500:
            raise SourceUnavailableError(
                f"{self.source}: Consul answered 500 {body_text(resp)} while updating the TTL "
                f"check of {instance_id!r}; retrying",
                source=self.source,
            )

    def keepalive(self, instance_id: str) -> None:
        """Pass the TTL check with the current status (not always ``passing``)."""
        with self._lock:
            status = self._status.get(instance_id, "passing")
        self._push(instance_id, status, "keepalive")

    def set_status(self, instance_id: str, status: str) -> None:
        """Set the instance's own status (its TTL check's) at once."""
        if status not in _RANK:
            raise ValueError(f"status must be passing, warning or critical, not {status!r}")
        with self._lock:
            self._status[instance_id] = status
        self._push(instance_id, status, f"status {status}")

    def deregister(self, instance_id: str) -> None:
        """Deregister the instance and its checks (no error when already gone)."""
        with self._lock:
            self._status.pop(instance_id, None)
        self._calls.request(
            "PUT",
            "/v1/agent/service/deregister/" + quote(instance_id, safe=""),
            accept=(404,),
            what=f"deregistering {instance_id!r}",
        )

    # -- discovery -----------------------------------------------------------------------------
    def _health(self, service: str, index: int, wait: float) -> ServiceListing:
        query: list[tuple[str, str]] = []
        read_timeout = None
        if index > 0 and wait > 0:
            # Consul adds up to wait/16 of jitter: ask for less so it answers within ``wait``.
            query = [("index", str(query_index(index))), ("wait", duration(wait * 16 / 17))]
            read_timeout = wait + self.opts.timeout
        resp = self._calls.request(
            "GET",
            "/v1/health/service/" + quote(service, safe=""),
            query=query,
            read_timeout=read_timeout,
            what=f"listing service {service!r}",
            consistency=True,
        )
        return self._listing(service, resp)

    def _listing(self, service: str, resp: Response) -> ServiceListing:
        index = response_index(resp, self.source)
        try:
            entries = json.loads(resp.body)
            if not isinstance(entries, list):
                raise TypeError("not a list")
        except (ValueError, TypeError) as exc:
            raise SourceUnavailableError(
                f"{self.source}: Consul sent a malformed health listing of {service!r} "
                f"({type(exc).__name__}); retrying",
                source=self.source,
            ) from exc
        instances: list[Instance] = []
        skipped: list[SourceFormatError] = []
        for entry in entries:
            try:
                instances.append(self._instance(service, entry))
            except SourceFormatError as exc:
                skipped.append(exc)
        instances.sort(key=lambda i: i.instance_id)  # Consul's order is not stable
        return ServiceListing(index=index, instances=instances, skipped=skipped)

    def _instance(self, service: str, entry: object) -> Instance:
        sid = "?"
        try:
            if not isinstance(entry, Mapping):
                raise TypeError("entry is not an object")
            svc, node, checks = entry["Service"], entry["Node"], entry["Checks"]
            sid = str(svc["ID"])
            port = svc.get("Port")
            if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
                raise SourceFormatError(
                    f"{self.source}: Consul service {sid!r} of {service!r} has no usable port "
                    f"({port!r}); it is skipped: register it with a Port from 1 to 65535",
                    source=self.source,
                    key=sid,
                )
            worst = max((str(c["Status"]) for c in checks), key=lambda s: _RANK.get(s, 2))
            return Instance(
                service=str(svc["Service"]),
                instance_id=sid,
                address=str(svc.get("Address") or node.get("Address") or ""),
                port=port,
                meta={str(k): str(v) for k, v in (svc.get("Meta") or {}).items()},
                status=worst if worst in _RANK else "critical",
                origin=sid,
                revision=int(svc.get("ModifyIndex") or 0) or None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SourceFormatError(
                f"{self.source}: Consul sent a health entry of {service!r} (service "
                f"{sid!r}) that is not an instance ({type(exc).__name__}: {exc}); it is "
                "skipped: re-register it with an ID, a Name and a Port",
                source=self.source,
                key=sid,
            ) from exc

    def list_instances(self, service: str) -> ServiceListing:
        """Every instance of ``service`` now, whatever its status."""
        return self._health(service, 0, 0.0)

    def wait_instances(self, service: str, index: int, timeout: float) -> ServiceListing:
        """Return once the listing's index moves past ``index`` (or goes back: a reset),
        else after ``timeout`` with the current listing."""
        deadline = time.monotonic() + timeout
        bucket = TokenBucket(self.opts.rate, self.opts.burst)
        while True:
            remaining = deadline - time.monotonic()
            if index <= 0 or remaining <= 0 or self._stop.is_set():
                return self._health(service, 0, 0.0)
            listing = self._health(service, index, remaining)
            if went_back(index, listing.index) or listing.index > index:
                return listing
            # The same index: the wait ran out or Consul woke us for nothing.
            if deadline - time.monotonic() <= 0 or not bucket.take(self._stop):
                return listing

    def services(self) -> tuple[str, ...]:
        """Names of the registered services (Consul's own ``consul`` left out)."""
        resp = self._calls.request(
            "GET", "/v1/catalog/services", what="listing services", consistency=True
        )
        try:
            names = json.loads(resp.body)
            return tuple(sorted(str(n) for n in names if n != "consul"))
        except (ValueError, TypeError) as exc:
            raise SourceUnavailableError(
                f"{self.source}: Consul sent a malformed service catalog; retrying",
                source=self.source,
            ) from exc

    # -- locks ---------------------------------------------------------------------------------
    def lock(self, name: str, ttl: float, identity: str) -> ConsulLock:
        """The lock ``name`` for ``identity`` on the key ``<prefix>_locks/<name>``."""
        if not name or name.startswith("/") or "//" in name:
            raise RegistryError(
                f"{self.source}: lock name {name!r} cannot be a Consul key; use letters, "
                "digits, '-', '_', '.' and single '/'",
                source=self.source,
                name=name,
            )
        return ConsulLock(
            self._calls,
            name=name,
            key=f"{self.opts.prefix}_locks/{name}",
            ttl=ttl,
            identity=identity,
            lock_delay=self.lock_delay,
            stop=self._stop,
        )

    def close(self) -> None:
        """Wake every parked call and close the connections; idempotent."""
        self._stop.set()
        self._calls.close()

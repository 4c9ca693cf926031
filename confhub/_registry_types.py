"""The registry protocol: the values and the backend interfaces a registry store implements.

A plugin provides a store through the ``confhub_make_registry(spec, settings)`` hook
(see :mod:`confhub.hookspecs`); the core (:class:`confhub.Registry`) owns the threads,
the state machine and the policies (keepalive every ``ttl/3``, re-registration after a
lost lease, discovery's watch loop and staleness, lock validity, elections), and calls the
backend's methods, each of which is bounded by ``settings.connect_timeout`` unless it
takes a timeout. An unreachable store raises :class:`confhub.SourceUnavailableError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Protocol, runtime_checkable

import attrs

from ._errors import SourceFormatError

#: The statuses an instance may have, best first.
STATUSES = ("passing", "warning", "critical")


def _freeze_meta(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType({str(k): str(v) for k, v in (value or {}).items()})


def _check_status(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in STATUSES:
        raise ValueError(
            f"{attribute.name} must be one of {', '.join(STATUSES)}, not {value!r}; "
            "pass 'passing', 'warning' or 'critical'"
        )


@attrs.frozen
class Instance:
    """One registered instance of a service, as a store lists it.

    ``origin`` is where it lives in the store (the etcd key, the Consul service id), for
    error messages; ``revision`` is the store's revision of the record when known (etcd's
    mod revision). ``meta`` is a read-only mapping of strings. Equality compares every
    field but ``revision``; the hash leaves ``meta`` out.
    """

    service: str
    instance_id: str
    address: str
    port: int
    meta: Mapping[str, str] = attrs.field(factory=dict, converter=_freeze_meta, hash=False)
    status: str = attrs.field(default="passing", validator=_check_status)
    origin: str = ""
    revision: int | None = attrs.field(default=None, eq=False, hash=False)

    @property
    def endpoint(self) -> str:
        """``address:port`` (an IPv6 address in brackets)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    def same_record(self, other: Instance) -> bool:
        """Whether ``other`` describes this instance with the same address, port, meta and
        status (``origin`` and ``revision`` aside): discovery's notion of "unchanged"."""
        return (
            self.service == other.service
            and self.instance_id == other.instance_id
            and self.address == other.address
            and self.port == other.port
            and dict(self.meta) == dict(other.meta)
            and self.status == other.status
        )


def _instances(value: Iterable[Instance]) -> tuple[Instance, ...]:
    return tuple(value)


def _errors(value: Iterable[SourceFormatError]) -> tuple[SourceFormatError, ...]:
    return tuple(value)


@attrs.frozen
class ServiceListing:
    """The instances of one service at one index of the store.

    ``index`` is the store's position (etcd revision, Consul ``X-Consul-Index``);
    ``instances`` holds every instance whatever its status, in no particular order;
    ``skipped`` the records that
    could not be read, each a :class:`confhub.SourceFormatError` naming its key and the fix.
    """

    index: int
    instances: tuple[Instance, ...] = attrs.field(default=(), converter=_instances)
    skipped: tuple[SourceFormatError, ...] = attrs.field(default=(), converter=_errors, eq=False)


@attrs.frozen
class CheckSpec:
    """A health check the store runs itself (Consul's agent checks).

    ``kind`` is ``"http"`` or ``"tcp"``; ``target`` the URL or ``host:port``; ``interval``
    and ``timeout`` in seconds. Stores that run no checks (etcd, memory) refuse them with a
    clear error.
    """

    kind: str
    target: str
    interval: float = 10.0
    timeout: float = 1.0


@runtime_checkable
class LockBackend(Protocol):
    """One lock (or election) name held by one identity, as a store implements it.

    - ``acquire(timeout)`` blocks until held (``None``: no bound but the caller's) and returns
      the fencing token (etcd: the create revision of our key; Consul: the ``LockIndex``), or
      raises :class:`confhub.LockTimeoutError`;
    - ``keepalive()`` refreshes the TTL once, :class:`confhub.LockLostError` when the store
      no longer has our lease or session;
    - ``release()`` gives the lock up at once (no error when not held);
    - ``holder()`` the identity and token of the current holder, or ``None``;
    - ``wait_holder(known, timeout)`` returns when the holder differs from ``known`` or
      ``timeout`` elapsed (then the current holder).
    """

    def acquire(self, timeout: float | None) -> int: ...

    def keepalive(self) -> None: ...

    def release(self) -> None: ...

    def holder(self) -> tuple[str, int] | None: ...

    def wait_holder(
        self, known: tuple[str, int] | None, timeout: float
    ) -> tuple[str, int] | None: ...


@runtime_checkable
class RegistryBackend(Protocol):
    """What a registry store provides (``confhub_make_registry`` returns one).

    - ``register(instance, ttl, checks)`` creates or re-creates the TTL-bound presence;
      idempotent;
    - ``keepalive(instance_id)`` refreshes its TTL once, :class:`confhub.LeaseLostError`
      when the store no longer has it;
    - ``set_status(instance_id, status)``;
    - ``deregister(instance_id)`` removes it at once, no error when already gone;
    - ``list_instances(service)`` the :class:`ServiceListing` now;
    - ``wait_instances(service, index, timeout)`` returns when the listing's index moved
      past ``index`` or ``timeout`` elapsed (then the current listing); it returns within
      ``timeout`` plus the connect timeout;
    - ``services()`` the names of the services with at least one record;
    - ``lock(name, ttl, identity)`` a :class:`LockBackend`;
    - ``close()`` releases connections; idempotent.
    """

    def register(self, instance: Instance, ttl: float, checks: tuple[CheckSpec, ...]) -> None: ...

    def keepalive(self, instance_id: str) -> None: ...

    def set_status(self, instance_id: str, status: str) -> None: ...

    def deregister(self, instance_id: str) -> None: ...

    def list_instances(self, service: str) -> ServiceListing: ...

    def wait_instances(self, service: str, index: int, timeout: float) -> ServiceListing: ...

    def services(self) -> tuple[str, ...]: ...

    def lock(self, name: str, ttl: float, identity: str) -> LockBackend: ...

    def close(self) -> None: ...

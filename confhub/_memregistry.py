"""The in-process registry store (``memory:`` specs), a builtin plugin.

``Registry("memory:")`` and ``Registry("memory:NAME")`` use the store of that name in this
process, created on first use and shared by every registry that names it (so one test can
register with one registry and discover with another). TTLs run on the monotonic clock:
an instance not kept alive disappears after its TTL, a lock holder's entry likewise. The
store can be made unreachable (:meth:`MemoryRegistryStore.fail`) and can forget leases
(:meth:`MemoryRegistryStore.expire`), which is how the core's failure paths are tested
without a network. Shipped in :mod:`confhub.testing`.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import attrs

from ._backend import hookimpl
from ._errors import (
    LeaseLostError,
    LockLostError,
    LockTimeoutError,
    RegistryError,
    RegistryInputError,
    SourceUnavailableError,
)
from ._registry_types import CheckSpec, Instance, ServiceListing

if TYPE_CHECKING:
    from ._backend import BackendSettings
    from ._spec import SourceSpec

__all__ = ["MemoryRegistryStore", "memory_registry_store"]

# The stores by name: the one piece of module state, because ``memory:NAME`` promises that
# every registry of this process naming NAME sees the same instances.
_STORES: dict[str, MemoryRegistryStore] = {}
_STORES_LOCK = threading.Lock()


def memory_registry_store(name: str = "") -> MemoryRegistryStore:
    """The in-process store that ``memory:NAME`` specs use (created on first use)."""
    with _STORES_LOCK:
        store = _STORES.get(name)
        if store is None:
            store = _STORES[name] = MemoryRegistryStore(name)
        return store


@attrs.define
class _Record:
    instance: Instance
    ttl: float
    expires: float


@attrs.define
class _Entry:
    identity: str
    token: int
    ttl: float
    expires: float


class MemoryRegistryStore:
    """One in-process registry store: instances with TTLs, lock queues, a revision.

    Test controls: :meth:`fail` / :meth:`recover` (every call raises
    :class:`confhub.SourceUnavailableError` meanwhile; TTLs keep running, as on a real
    store), :meth:`expire` (forget a registration's lease now), :meth:`expire_lock` (forget
    a lock holder's lease now), :meth:`clear`.
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.display = f"memory:{name}"
        self.cond = threading.Condition()
        self.revision = 0
        self.records: dict[tuple[str, str], _Record] = {}
        self.service_revision: dict[str, int] = {}
        self.locks: dict[str, list[_Entry]] = {}
        self._down = False
        self.keepalives = 0

    def __repr__(self) -> str:
        return f"MemoryRegistryStore({self.name!r}, instances={len(self.records)})"

    # -- test controls -----------------------------------------------------------------------

    def fail(self) -> None:
        """Make the store unreachable until :meth:`recover` (TTLs keep running)."""
        with self.cond:
            self._down = True
            self.cond.notify_all()

    def recover(self) -> None:
        """Make the store reachable again."""
        with self.cond:
            self._down = False
            self.cond.notify_all()

    def expire(self, instance_id: str | None = None) -> None:
        """Forget the lease of ``instance_id`` (every instance when ``None``) at once."""
        with self.cond:
            for key in [k for k in self.records if instance_id in (None, k[1])]:
                self.drop(key)
            self.cond.notify_all()

    def expire_lock(self, name: str) -> None:
        """Forget the lease of the holder of lock ``name`` at once."""
        with self.cond:
            queue = self.locks.get(name)
            if queue:
                queue.pop(0)
                self.bump()
            self.cond.notify_all()

    def holder(self, name: str) -> str | None:
        """The identity holding lock ``name`` as the store sees it now (works while the
        store is failed: this is the test's view, not a client's)."""
        with self.cond:
            self.tick()
            queue = self.locks.get(name)
            return queue[0].identity if queue else None

    def clear(self) -> None:
        """Forget everything."""
        with self.cond:
            self.records.clear()
            self.locks.clear()
            self.bump()
            self.cond.notify_all()

    # -- the backends' side: used by MemoryRegistry and MemoryLock, holding ``cond`` --------

    def check(self) -> None:
        if self._down:
            raise SourceUnavailableError(
                f"{self.display}: the registry is unreachable (MemoryRegistryStore.fail())",
                source=self.display,
            )
        self.tick()

    def bump(self) -> int:
        self.revision += 1
        return self.revision

    def drop(self, key: tuple[str, str]) -> None:
        del self.records[key]
        self.service_revision[key[0]] = self.bump()

    def tick(self) -> None:
        now = time.monotonic()
        changed = False
        for key in [k for k, r in self.records.items() if r.expires <= now]:
            self.drop(key)
            changed = True
        for queue in self.locks.values():
            alive = [e for e in queue if e.expires > now]
            if len(alive) != len(queue):
                queue[:] = alive
                self.bump()
                changed = True
        if changed:
            self.cond.notify_all()

    def _next_expiry(self) -> float:
        times = [r.expires for r in self.records.values()]
        times += [e.expires for q in self.locks.values() for e in q]
        return min(times, default=float("inf"))

    def wait_change(self, deadline: float) -> None:
        """Wait (holding ``cond``) for a change, an expiry or ``deadline``."""
        now = time.monotonic()
        self.cond.wait(max(0.0, min(deadline, self._next_expiry()) - now))


class MemoryLock:
    """A lock of a :class:`MemoryRegistryStore`: a queue by arrival, token = revision."""

    def __init__(self, backend: MemoryRegistry, name: str, ttl: float, identity: str) -> None:
        self._backend = backend
        self._store = backend.store
        self._name = name
        self._ttl = ttl
        self._identity = identity
        self._entry: _Entry | None = None

    def acquire(self, timeout: float | None) -> int:
        store = self._store
        deadline = float("inf") if timeout is None else time.monotonic() + timeout
        with store.cond:
            store.check()
            entry = _Entry(self._identity, store.bump(), self._ttl, time.monotonic() + self._ttl)
            queue = store.locks.setdefault(self._name, [])
            queue.append(entry)
            self._entry = entry
            store.cond.notify_all()
            while True:
                try:
                    store.check()
                except SourceUnavailableError:
                    self._forget(queue, entry)
                    raise
                if entry not in queue:  # our lease expired while we waited (cannot happen
                    entry.expires = time.monotonic() + self._ttl  # while we refresh it)
                    queue.append(entry)
                if queue[0] is entry:
                    return entry.token
                if self._backend.closed:
                    self._forget(queue, entry)
                    raise RegistryError(f"{store.display}: closed while waiting for a lock")
                if time.monotonic() >= deadline:
                    self._forget(queue, entry)
                    raise LockTimeoutError(
                        f"lock {self._name!r} in {store.display} was not free within "
                        f"{timeout:g}s (held by {queue[0].identity!r}); retry or wait longer",
                        source=store.display,
                        name=self._name,
                    )
                entry.expires = time.monotonic() + self._ttl  # a waiter keeps its lease
                store.wait_change(min(deadline, time.monotonic() + self._ttl / 3))

    def _forget(self, queue: list[_Entry], entry: _Entry) -> None:
        if entry in queue:
            queue.remove(entry)
            self._store.bump()
            self._store.cond.notify_all()
        self._entry = None

    def keepalive(self) -> None:
        store = self._store
        with store.cond:
            store.check()
            store.keepalives += 1
            queue = store.locks.get(self._name, [])
            if self._entry is None or self._entry not in queue:
                raise LockLostError(
                    f"lock {self._name!r} in {store.display}: our lease is gone",
                    source=store.display,
                    name=self._name,
                )
            self._entry.expires = time.monotonic() + self._ttl

    def release(self) -> None:
        store = self._store
        with store.cond:
            store.check()
            entry = self._entry
            if entry is not None:
                self._forget(store.locks.get(self._name, []), entry)

    def holder(self) -> tuple[str, int] | None:
        store = self._store
        with store.cond:
            store.check()
            return self._holder()

    def _holder(self) -> tuple[str, int] | None:
        queue = self._store.locks.get(self._name)
        return (queue[0].identity, queue[0].token) if queue else None

    def wait_holder(self, known: tuple[str, int] | None, timeout: float) -> tuple[str, int] | None:
        store = self._store
        deadline = time.monotonic() + timeout
        with store.cond:
            while True:
                store.check()
                now = self._holder()
                if now != known or time.monotonic() >= deadline or self._backend.closed:
                    return now
                store.wait_change(deadline)


class MemoryRegistry:
    """The ``memory:`` registry backend: one connection to a :class:`MemoryRegistryStore`."""

    def __init__(self, store: MemoryRegistryStore) -> None:
        self.store = store
        self.closed = False
        self._services: dict[str, str] = {}

    def register(self, instance: Instance, ttl: float, checks: tuple[CheckSpec, ...]) -> None:
        store = self.store
        if checks:
            raise RegistryInputError(
                f"{store.display} runs no health checks; drop checks= (report health with "
                "registration.set_status) or use a consul:// registry",
                source=store.display,
                name=instance.service,
            )
        with store.cond:
            store.check()
            key = (instance.service, instance.instance_id)
            store.records[key] = _Record(instance, ttl, time.monotonic() + ttl)
            store.service_revision[instance.service] = store.bump()
            self._services[instance.instance_id] = instance.service
            store.cond.notify_all()

    def _record(self, instance_id: str) -> _Record:
        store = self.store
        record = store.records.get((self._services.get(instance_id, ""), instance_id))
        if record is None:
            raise LeaseLostError(
                f"{store.display}: instance {instance_id!r} is no longer registered (its "
                "lease expired or was revoked)",
                source=store.display,
                name=instance_id,
            )
        return record

    def keepalive(self, instance_id: str) -> None:
        with self.store.cond:
            self.store.check()
            self.store.keepalives += 1
            record = self._record(instance_id)
            record.expires = time.monotonic() + record.ttl

    def set_status(self, instance_id: str, status: str) -> None:
        store = self.store
        with store.cond:
            store.check()
            record = self._record(instance_id)
            record.instance = attrs.evolve(record.instance, status=status)
            store.service_revision[record.instance.service] = store.bump()
            store.cond.notify_all()

    def deregister(self, instance_id: str) -> None:
        store = self.store
        with store.cond:
            store.check()
            key = (self._services.pop(instance_id, ""), instance_id)
            if key in store.records:
                store.drop(key)
                store.cond.notify_all()

    def _listing(self, service: str) -> ServiceListing:
        store = self.store
        instances = [
            attrs.evolve(r.instance, origin=f"{store.display}/{service}/{i}", revision=None)
            for (s, i), r in sorted(store.records.items())
            if s == service
        ]
        return ServiceListing(index=store.revision, instances=tuple(instances))

    def list_instances(self, service: str) -> ServiceListing:
        with self.store.cond:
            self.store.check()
            return self._listing(service)

    def wait_instances(self, service: str, index: int, timeout: float) -> ServiceListing:
        store = self.store
        deadline = time.monotonic() + timeout
        with store.cond:
            while True:
                store.check()
                moved = store.service_revision.get(service, 0) > index
                if moved or time.monotonic() >= deadline or self.closed:
                    return self._listing(service)
                store.wait_change(deadline)

    def services(self) -> tuple[str, ...]:
        with self.store.cond:
            self.store.check()
            return tuple(sorted({s for s, _ in self.store.records}))

    def lock(self, name: str, ttl: float, identity: str) -> MemoryLock:
        return MemoryLock(self, name, ttl, identity)

    def close(self) -> None:
        with self.store.cond:
            self.closed = True
            self.store.cond.notify_all()


@hookimpl
def confhub_make_registry(spec: SourceSpec, settings: BackendSettings) -> MemoryRegistry | None:
    """A :class:`MemoryRegistry` for ``memory:`` and ``memory:NAME`` specs."""
    if spec.scheme != "memory":
        return None
    return MemoryRegistry(memory_registry_store(spec.location))

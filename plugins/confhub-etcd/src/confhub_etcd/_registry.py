"""The etcd registry store (``confhub_make_registry`` for ``etcd://host:2379/prefix/``).

Layout under the spec's prefix::

    PREFIX/SERVICE/INSTANCE_ID     {"address": ..., "port": ..., "meta": {...}, "status": ...}
                                   attached to the instance's lease (TTL = the registration's)
    PREFIX/_locks/NAME/LEASE_HEX   the lock queue (see _lock.py); value = the holder's identity

A registration is a lease plus one key; the core keeps the lease alive (``keepalive``) and
re-registers when etcd forgot it. A listing is one range read of ``PREFIX/SERVICE/`` at one
revision (its index); ``wait_instances`` watches that range from index + 1.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from confhub import (
    CheckSpec,
    Instance,
    LeaseLostError,
    RegistryInputError,
    ServiceListing,
    SourceFormatError,
    SourcePermissionError,
    SourceUnavailableError,
    SpecError,
)

from ._client import EtcdClient
from ._config import open_client, parse_spec
from ._errors import EtcdAuthError, EtcdError
from ._lease import KeepaliveStream, Leases, StreamSet, lease_missing
from ._lock import EtcdLock
from ._rpc import stubs
from ._types import (
    EventKind,
    KeyValue,
    PrefixSnapshot,
    WatchBatch,
    WatchEvent,
    WatchState,
    WatchStatus,
    key_text,
    to_bytes,
)

if TYPE_CHECKING:
    from confhub import BackendSettings, SourceSpec

    from ._config import EtcdSourceConfig

__all__ = ["EtcdRegistry", "make_registry"]

log = logging.getLogger("confhub.etcd")

LOCKS = "_locks"
T = TypeVar("T")


def instance_document(instance: Instance) -> bytes:
    """The JSON document of ``instance`` as stored under its key."""
    return json.dumps(
        {
            "service": instance.service,
            "id": instance.instance_id,
            "address": instance.address,
            "port": instance.port,
            "meta": dict(instance.meta),
            "status": instance.status,
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


_DECODER = json.JSONDecoder()


def _decode(raw: bytes) -> object:
    """``json.loads(raw)`` for UTF-8 bytes, without its per-call encoding detection (half
    the cost of a listing's parse at 1,000 records); the same errors for bad JSON."""
    text = raw.decode("utf-8").strip(" \t\n\r")  # JSON's whitespace only
    doc, end = _DECODER.raw_decode(text)
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return doc


def parse_instance(
    service: str, instance_id: str, kv: KeyValue | WatchEvent, source: str
) -> Instance:
    """The :class:`Instance` stored in ``kv``, or :class:`SourceFormatError` naming the key."""
    key = key_text(kv.key)
    fix = "re-register the instance (registry.register) or delete the key"

    def bad(why: str) -> SourceFormatError:
        return SourceFormatError(
            f"{source}: instance record {key!r} {why}; {fix}", source=source, key=key
        )

    try:
        doc = _decode(kv.value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise bad(f"is a JSON {type(doc).__name__}, not an object")
    address, port = doc.get("address"), doc.get("port")
    if not isinstance(address, str) or not address:
        raise bad("has no 'address' (a host or IP string)")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise bad(f"has port {port!r}, not an int from 1 to 65535")
    meta = doc.get("meta") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise bad("has a 'meta' that is not an object of strings")
    status = doc.get("status", "passing")
    try:
        return Instance(
            service=service,
            instance_id=instance_id,
            address=address,
            port=port,
            meta=meta,
            status=status,
            origin=key,
            revision=kv.mod_revision,
        )
    except ValueError as exc:  # the status
        raise bad(f"is not an instance: {exc}") from None


class _ClientPool:
    """One :class:`EtcdClient` per endpoints, credentials and TLS settings, shared by every
    registry connection of this process that uses them (a discovery, a lock and the
    registrations of one app share one gRPC channel), closed when the last one is.

    In a child forked from a process using it, :meth:`forget` drops the parent's clients:
    the child's new connections get clients of their own, and giving back an inherited one
    closes nothing (the parent's channels are not the child's). It runs from the at-fork
    handler and, before that handler may have run (a discovery resuming on a thread started
    by confhub's own handler, which runs first), on the child's first use of the pool.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._clients: dict[tuple[object, ...], tuple[EtcdClient, KeepaliveStream, int]] = {}

    def forget(self) -> None:
        """After fork(), in the child: a new lock, no clients (the parent's are dropped,
        never closed: only references go). Once per process."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self._clients = {}

    @staticmethod
    def _key(config: EtcdSourceConfig) -> tuple[object, ...]:
        return (
            config.endpoints,
            config.timeout,
            config.tls,
            config.credentials,
            config.max_receive_bytes,
        )

    def take(self, config: EtcdSourceConfig, display: str) -> tuple[EtcdClient, KeepaliveStream]:
        """The shared client of ``config`` (made on first use: :func:`open_client`, whose
        :class:`SpecError` names ``display``) and its keepalive stream."""
        key = self._key(config)
        self.forget()
        with self._lock:
            found = self._clients.get(key)
            if found is None:
                client = open_client(config, display)
                found = (client, KeepaliveStream(client), 0)
            client, stream, users = found
            self._clients[key] = (client, stream, users + 1)
            return client, stream

    def give_back(self, config: EtcdSourceConfig, client: EtcdClient) -> None:
        key = self._key(config)
        self.forget()
        with self._lock:
            found = self._clients.get(key)
            if found is None or found[0] is not client:
                return  # a client inherited across fork(): the parent's, left alone
            client, stream, users = found
            if users > 1:
                self._clients[key] = (client, stream, users - 1)
                return
            del self._clients[key]
        stream.close()
        client.close()


# The one piece of module state: the issue asks registrations, discoveries, locks and
# elections to share the plugin's connections, and a Registry makes one backend for each.
_POOL = _ClientPool()
os.register_at_fork(after_in_child=_POOL.forget)


class _Listing:
    """A service's instances and skipped records by key, at ``index`` (mutable, private
    to one backend; :meth:`freeze` gives the :class:`ServiceListing` value)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.instances: dict[str, Instance] = {}
        self.skipped: dict[str, SourceFormatError] = {}

    def forget(self, key: str) -> None:
        self.instances.pop(key, None)
        self.skipped.pop(key, None)

    def copy(self) -> _Listing:
        other = _Listing(self.index)
        other.instances = dict(self.instances)
        other.skipped = dict(self.skipped)
        return other

    def freeze(self) -> ServiceListing:
        return ServiceListing(
            index=self.index,
            instances=self.instances.values(),  # in no particular order
            skipped=[self.skipped[k] for k in sorted(self.skipped)],
        )


class _ServiceWatch:
    """One service's listing kept current by a :class:`PrefixWatcher` (its thread applies
    each batch); :meth:`wait` returns when the listing moves past an index. A watch that
    loses its stream is broken for good: the waiter gets the error, and the next read
    (the core reads again after a failure) starts a new watch from that read."""

    def __init__(
        self, registry: EtcdRegistry, service: str, listing: _Listing, snapshot: PrefixSnapshot
    ) -> None:
        self._registry = registry
        self._service = service
        self._prefix = f"{registry.prefix}{service}/"
        self._cond = threading.Condition()
        self._listing = listing
        self._error: BaseException | None = None
        self._closed = False
        config = registry.config
        self._watcher = registry.client.watch_prefix(
            self._prefix,
            self._on_batch,
            self._on_state,
            snapshot=snapshot,
            backoff=config.backoff,
            progress_interval=config.progress_interval,
            source=registry.display,
        )

    @property
    def healthy(self) -> bool:
        return self._error is None and not self._closed

    def _on_batch(self, batch: WatchBatch) -> None:
        with self._cond:
            for event in batch.events:
                if event.kind is EventKind.DELETE:
                    self._listing.forget(key_text(event.key))
                else:
                    self._registry.record(self._listing, self._service, self._prefix, event)
            self._listing.index = max(self._listing.index, batch.revision)
            self._cond.notify_all()

    def _on_state(self, status: WatchStatus) -> None:
        if status.state is WatchState.DISCONNECTED:
            with self._cond:
                self._error = status.error or EtcdError("the watch was lost")
                self._cond.notify_all()
            self._watcher.halt()  # broken for good; never close() from its own thread

    def wait(self, index: int, timeout: float) -> ServiceListing:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._error is not None:
                    error = self._error
                    break
                if self._listing.index > index or self._closed:
                    return self._listing.freeze()
                left = deadline - time.monotonic()
                if left <= 0:
                    return self._listing.freeze()
                self._cond.wait(left)
        if isinstance(error, EtcdError):
            raise self._registry.translate(error, f"the watch of {self._service}")
        raise SourceUnavailableError(
            f"{self._registry.display}: the watch of {self._service} failed: {error}",
            source=self._registry.display,
        )

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._watcher.close()


class EtcdRegistry:
    """A :class:`confhub.RegistryBackend` on etcd. Thread-safe; no I/O until first used."""

    def __init__(self, spec: SourceSpec, config: EtcdSourceConfig) -> None:
        self.display = spec.display
        self.config = config
        self.prefix = config.prefix
        self.streams = StreamSet()
        self._lock = threading.Lock()
        self._client: EtcdClient | None = None
        self._keepalives: KeepaliveStream | None = None
        self._leases: dict[str, tuple[int, Instance]] = {}
        # One watch per service followed here, so that an event updates the listing in time
        # proportional to the change, and the stream stays open between waits.
        self._watches: dict[str, _ServiceWatch] = {}
        # The last read of each service, where its watch starts.
        self._reads: dict[str, tuple[_Listing, PrefixSnapshot]] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"EtcdRegistry({self.display!r})"

    @property
    def client(self) -> EtcdClient:
        """The shared client of this spec's endpoints and credentials, taken on first use."""
        with self._lock:
            if self._client is None:
                if self._closed:
                    raise SourceUnavailableError(
                        f"{self.display}: this registry connection is closed", source=self.display
                    )
                self._client, self._keepalives = _POOL.take(self.config, self.display)
            return self._client

    def leases(self) -> Leases:
        """Lease calls on the shared client and its keepalive stream."""
        client = self.client
        return Leases(client, self._keepalives)

    def translate(self, exc: EtcdError, what: str) -> Exception:
        """An etcd failure as confhub's: unavailable, or refused (auth)."""
        if isinstance(exc, EtcdAuthError):
            return SourcePermissionError(
                f"{self.display}: etcd refused {what}: {exc.reason or exc}; check the user, "
                "the password and the user's roles",
                source=self.display,
            )
        return SourceUnavailableError(f"{self.display}: {what} failed: {exc}", source=self.display)

    def run(self, what: str, action: Callable[[], T]) -> T:
        """``action()`` with etcd errors translated."""
        try:
            return action()
        except EtcdError as exc:
            raise self.translate(exc, what) from None

    # -- registration ------------------------------------------------------------------------

    def _key(self, service: str, instance_id: str) -> bytes:
        return to_bytes(f"{self.prefix}{service}/{instance_id}")

    def _put(self, instance: Instance, lease_id: int) -> None:
        request = stubs().PutRequest(
            key=self._key(instance.service, instance.instance_id),
            value=instance_document(instance),
            lease=lease_id,
        )
        self.client.call("kv", "Put", request, idempotent=False, what="registration put")

    def register(self, instance: Instance, ttl: float, checks: tuple[CheckSpec, ...]) -> None:
        if checks:
            raise RegistryInputError(
                f"{self.display}: etcd runs no health checks; drop checks= (report health "
                "with registration.set_status) or use a consul:// registry",
                source=self.display,
                name=instance.service,
            )
        leases = self.leases()
        what = f"the registration of {instance.service}/{instance.instance_id}"
        lease_id = self.run(what, lambda: leases.grant(ttl))
        try:
            self.run(what, lambda: self._put(instance, lease_id))
        except BaseException:
            self._forget_lease(leases, lease_id)
            raise
        with self._lock:
            old = self._leases.get(instance.instance_id)
            self._leases[instance.instance_id] = (lease_id, instance)
        if old is not None and old[0] != lease_id:
            self._forget_lease(leases, old[0])  # the key is on the new lease already

    def _forget_lease(self, leases: Leases, lease_id: int) -> None:
        try:
            leases.revoke(lease_id)
        except EtcdError as exc:
            log.info("revoking lease %x failed (%s); it expires by itself", lease_id, exc)

    def _lease_of(self, instance_id: str) -> tuple[int, Instance]:
        with self._lock:
            found = self._leases.get(instance_id)
        if found is None:
            raise LeaseLostError(
                f"{self.display}: instance {instance_id!r} is not registered here",
                source=self.display,
                name=instance_id,
            )
        return found

    def _lost(self, instance: Instance, lease_id: int) -> LeaseLostError:
        return LeaseLostError(
            f"{self.display}: etcd no longer has lease {lease_id:x} of "
            f"{instance.service}/{instance.instance_id} (it expired or was revoked)",
            source=self.display,
            name=instance.instance_id,
        )

    def keepalive(self, instance_id: str) -> None:
        lease_id, instance = self._lease_of(instance_id)
        leases = self.leases()
        if not self.run("a lease keepalive", lambda: leases.keepalive(lease_id)):
            raise self._lost(instance, lease_id)

    def set_status(self, instance_id: str, status: str) -> None:
        lease_id, instance = self._lease_of(instance_id)
        updated = Instance(
            service=instance.service,
            instance_id=instance.instance_id,
            address=instance.address,
            port=instance.port,
            meta=instance.meta,
            status=status,
        )
        try:
            self._put(updated, lease_id)
        except EtcdError as exc:
            if lease_missing(exc):
                raise self._lost(instance, lease_id) from None
            raise self.translate(exc, f"the status update of {instance_id}") from None
        with self._lock:
            if instance_id in self._leases:
                self._leases[instance_id] = (lease_id, updated)

    def deregister(self, instance_id: str) -> None:
        with self._lock:
            found = self._leases.pop(instance_id, None)
        if found is None:
            return
        lease_id, _ = found
        leases = self.leases()
        self.run(f"the deregistration of {instance_id}", lambda: leases.revoke(lease_id))

    # -- listing -----------------------------------------------------------------------------

    def list_instances(self, service: str) -> ServiceListing:
        prefix = f"{self.prefix}{service}/"
        snapshot = self.run(
            f"the listing of {service}", lambda: self.client.read_prefix(prefix, convert=False)
        )
        listing = _Listing(snapshot.revision)
        for kv in snapshot.items:
            self.record(listing, service, prefix, kv)
        with self._lock:
            self._reads[service] = (listing.copy(), snapshot)
        return listing.freeze()

    def record(
        self, listing: _Listing, service: str, prefix: str, kv: KeyValue | WatchEvent
    ) -> None:
        """Put ``kv`` (a record under ``prefix``) into ``listing``: parsed, or skipped."""
        key = key_text(kv.key)
        listing.forget(key)
        instance_id = key[len(prefix) :]
        if not instance_id or "/" in instance_id:
            listing.skipped[key] = SourceFormatError(
                f"{self.display}: key {key!r} is not PREFIX/SERVICE/INSTANCE_ID; "
                "delete it or move it out of the registry's prefix",
                source=self.display,
                key=key,
            )
            return
        try:
            listing.instances[key] = parse_instance(service, instance_id, kv, self.display)
        except SourceFormatError as exc:
            listing.skipped[key] = exc

    def wait_instances(self, service: str, index: int, timeout: float) -> ServiceListing:
        with self._lock:
            watch = self._watches.get(service)
            if watch is not None and not watch.healthy:
                del self._watches[service]
                broken, watch = watch, None
            else:
                broken = None
            read = self._reads.pop(service, None) if watch is None else None
        if broken is not None:
            broken.close()
        if watch is None:
            if read is None or read[0].index != index:
                return self.list_instances(service)  # the next wait starts from this read
            watch = self._start_watch(service, *read)
        return watch.wait(index, timeout)

    def _start_watch(
        self, service: str, listing: _Listing, snapshot: PrefixSnapshot
    ) -> _ServiceWatch:
        """One resilient watch per service, from the read that gave ``listing``."""
        watch = _ServiceWatch(self, service, listing, snapshot)
        with self._lock:
            closed = self._closed
            if not closed:
                self._watches[service] = watch
        if closed:
            watch.close()
        return watch

    def services(self) -> tuple[str, ...]:
        _, keys = self.run("the service list", lambda: self.client.keys_under(self.prefix))
        names = set()
        for key in keys:
            name, slash, _ = key_text(key)[len(self.prefix) :].partition("/")
            if slash and name and name != LOCKS:
                names.add(name)
        return tuple(sorted(names))

    def lock(self, name: str, ttl: float, identity: str) -> EtcdLock:
        return EtcdLock(self, f"{self.prefix}{LOCKS}/{name}/", name, ttl, identity)

    def close(self) -> None:
        """End the waits in progress, stop the watches and close the client. Idempotent."""
        self.streams.cancel_all()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            client, self._client = self._client, None
            watches = list(self._watches.values())
            self._watches.clear()
        for watch in watches:
            watch.close()
        if client is not None:
            _POOL.give_back(self.config, client)


def make_registry(spec: SourceSpec, settings: BackendSettings) -> EtcdRegistry:
    """The registry for an ``etcd:`` spec (no I/O); ``?timeout=`` defaults to the
    settings' ``connect_timeout``."""
    config = parse_spec(spec, default_timeout=settings.connect_timeout)
    if config.fmt is not None:
        raise SpecError(
            f"{spec.display}: a registry lives under a key prefix, not in one document; drop "
            "format= and write etcd://host:2379/prefix/",
            spec=spec.display,
        )
    return EtcdRegistry(spec, config)

"""Test helpers shipped for users: an in-memory, watchable, writable backend.

``MemoryStore`` is both the store and the plugin that serves it::

    store = MemoryStore("app", {"db.port": "5432"})
    with Hub([{"db": {"port": 1}}, "memory:app"], plugins=[store]) as hub:
        store.set("db.port", "5433")          # subscribers see the change
        store.fail(SourceUnavailableError)    # the next reads and the watch fail
        store.recover()

Updates are delivered to the hub synchronously, from the thread that calls :meth:`set`,
:meth:`delete` or :meth:`transaction`, one delta per revision like a real KV store.

Test hooks into a running hub (documented, stable, and built on its public accessors):
:func:`backend_of` (the backend object serving a source) and :func:`queue_depth` (how many
events wait for the subscribers).

Changing configuration in a test and waiting until a hub has published it (any source: a
file, etcd, Consul, a :class:`MemoryStore`): :func:`change_and_wait` runs the change and
returns the hub's :class:`Change`; :func:`wait_for_value` waits for a key to hold a value.
The pytest plugin (``confhub.pytest_plugin``) adds fixtures on top; ``docs/testing.md``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._backend import Backend, BackendInfo, BackendSettings, Notify, WriteOp, hookimpl
from ._dispatch import merge_changes
from ._errors import SourceUnavailableError, WriteConflictError
from ._kvcontract import KVBackendContract, KVStoreHarness
from ._layer import Layer, LayerDelta, flatten
from ._memregistry import MemoryRegistryStore, memory_registry_store
from ._merge import MISSING
from ._regcontract import RegistryBackendContract, RegistryStoreHarness
from .kv import check_transaction, check_write_shape

if TYPE_CHECKING:
    from ._hub import Hub
    from ._snapshot import Change, ErrorEvent
    from ._spec import SourceSpec

__all__ = [
    "KVBackendContract",
    "KVStoreHarness",
    "MemoryBackend",
    "MemoryRegistryStore",
    "MemoryStore",
    "RegistryBackendContract",
    "RegistryStoreHarness",
    "backend_of",
    "change_and_wait",
    "memory_registry_store",
    "free_ports",
    "queue_depth",
    "wait_for_value",
]


def backend_of(hub: Hub, source: str) -> Backend:
    """The backend object serving ``source`` in a started ``hub``.

    ``source`` is a slot's display name (as in ``hub.sources``; its active member's backend)
    or a fallback member's. The hub owns the backend: inspect it, do not close it.
    """
    return hub.backend_for(source)


def free_ports(count: int = 1) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 for a test's servers (the sockets are
    held until all are chosen, so the kernel cannot hand the same port out twice)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def queue_depth(hub: Hub) -> int:
    """How many events (changes, errors, state changes) wait for ``hub``'s subscribers.

    It stays bounded (``Hub(max_backlog=...)``) however slow the subscribers are.
    """
    return hub.backlog


def change_and_wait(
    hub: Hub,
    change: Callable[[], object],
    *,
    keys: Iterable[str] = (),
    timeout: float = 10.0,
) -> Change:
    """Run ``change()`` (a write to any store or file the hub reads) and wait until ``hub``
    has published its effect; return the hub's :class:`~confhub.Change` (changes published
    meanwhile merged into one, as the notifier does under a backlog).

    With ``keys``, wait until every one of them has changed (a store may deliver one write
    per event); without, the first published change ends the wait. Raises the hub's error
    at once when it rejects the update (:class:`ConfigValidationError`, a broken file...),
    and :class:`TimeoutError` after ``timeout`` seconds, naming the keys still awaited, what
    was published meanwhile and the sources' health (a store that never answered, a key a
    higher source masks: a masked change publishes nothing).
    """
    wanted = set(keys)
    got: list[Change] = []
    errors: list[ErrorEvent] = []
    done = threading.Event()

    def on_change(published: Change) -> None:
        got.append(published)
        seen = {k for c in got for k in c.keys}
        if not wanted - seen:
            done.set()

    def on_error(event: ErrorEvent) -> None:
        errors.append(event)
        done.set()

    with hub.subscribe(on_change, on_error=on_error):
        change()
        finished = done.wait(timeout)
    if errors and (not got or wanted - {k for c in got for k in c.keys}):
        event = errors[0]
        raise event.error
    if not finished:
        seen = sorted({k for c in got for k in c.keys})
        health = "; ".join(
            f"{s.source}: {s.state.value}" + (f" ({s.last_error})" if s.last_error else "")
            for s in hub.health().sources
        )
        raise TimeoutError(
            f"the hub did not publish the change within {timeout} s: still waiting for "
            f"{sorted(wanted - set(seen)) or 'any change'}; published meanwhile: "
            f"{seen or 'nothing'}; sources: {health}. Is the key masked by a higher "
            "source, or the store unreachable?"
        )
    return _merged(got)


def _merged(changes: list[Change]) -> Change:
    merged = merge_changes(changes)  # the notifier's own merge of a backlog
    return merged if merged is not None else changes[-1]


def wait_for_value(hub: Hub, key: str, value: Any, *, timeout: float = 10.0) -> None:
    """Wait until ``hub.get(key)`` equals ``value`` (``confhub.MISSING``: until the key is
    gone); return at once if it does already. :class:`TimeoutError` after ``timeout``
    seconds names the key, the value awaited and the value the hub still has."""
    reached = threading.Event()

    def check(_: object = None) -> None:
        if hub.get(key, MISSING) == value:
            reached.set()

    with hub.subscribe(check):
        check()
        if reached.wait(timeout):
            return
    raise TimeoutError(
        f"{key} did not become {value!r} within {timeout} s: the hub has "
        f"{hub.get(key, MISSING)!r} (generation {hub.generation}); "
        f"explain: confhub explain {key}"
    )


class MemoryStore:
    """An in-memory key-value store with revisions; register it with ``plugins=[store]``.

    It serves specs ``memory:NAME`` whose NAME matches ``name``.
    """

    def __init__(self, name: str = "default", data: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.confhub_plugin_name = f"memory-store-{name}-{id(self)}"
        self._lock = threading.RLock()
        self._data: dict[str, Any] = flatten(data or {}, source=f"memory:{name}")
        self._key_revisions: dict[str, int] = dict.fromkeys(self._data, 1)
        self.revision = 1
        self._watchers: list[Notify] = []
        self._failure: BaseException | None = None
        #: How many loads were answered.
        self.loads = 0
        #: Seconds every load blocks before answering (a slow or hung store).
        self.delay = 0.0
        #: The :class:`confhub.BackendSettings` the last hub that made a backend passed.
        self.settings: BackendSettings | None = None

    # -- mutation --------------------------------------------------------------------------
    def set(self, key: str, value: Any) -> int:
        """Set one dotted key; returns the new revision."""
        return self.transaction({key: value})

    def delete(self, *keys: str) -> int:
        """Delete keys; returns the new revision."""
        return self.transaction({}, delete=keys)

    def transaction(self, values: Mapping[str, Any], delete: Any = ()) -> int:
        """Apply several sets and deletes as one revision (one delta to watchers)."""
        with self._lock:
            self.revision += 1
            flat = flatten(values, source=f"memory:{self.name}")
            for key in delete:
                self._data.pop(key, None)
                self._key_revisions.pop(key, None)
            self._data.update(flat)
            for key in flat:
                self._key_revisions[key] = self.revision
            delta = LayerDelta(
                set=flat,
                deleted=frozenset(delete) - flat.keys(),
                revision=self.revision,
                details={k: f"memory key {k} (revision {self.revision})" for k in flat},
            )
            watchers = list(self._watchers) if self._failure is None else []
            revision = self.revision
        for notify in watchers:
            notify(delta)
        return revision

    def fail(self, error: BaseException | type[BaseException] = SourceUnavailableError) -> None:
        """Make loads fail and tell watchers the source is lost."""
        if isinstance(error, type):
            error = error(
                f"memory:{self.name} is down (MemoryStore.fail)", source=f"memory:{self.name}"
            )  # type: ignore[call-arg]
        with self._lock:
            self._failure = error
            watchers = list(self._watchers)
        for notify in watchers:
            notify(error)

    def recover(self) -> None:
        """End a failure; watchers get the whole current layer (a resync)."""
        with self._lock:
            self._failure = None
            layer = self._layer()
            watchers = list(self._watchers)
        for notify in watchers:
            notify(layer)

    def add_watcher(self, notify: Notify) -> None:
        """Send every later update to ``notify`` (a backend's watch)."""
        with self._lock:
            self._watchers.append(notify)

    def remove_watcher(self, notify: Notify) -> None:
        """Stop sending updates to ``notify`` (no effect if it is not watching)."""
        with self._lock:
            if notify in self._watchers:
                self._watchers.remove(notify)

    @property
    def watch_count(self) -> int:
        """How many watches are open on this store (0 once every hub using it closed)."""
        with self._lock:
            return len(self._watchers)

    @property
    def data(self) -> dict[str, Any]:
        """A copy of the flat contents."""
        with self._lock:
            return dict(self._data)

    # -- backend side ----------------------------------------------------------------------
    def _layer(self) -> Layer:
        return Layer.from_flat(
            self._data,
            source=f"memory:{self.name}",
            revision=self.revision,
            details={k: f"memory key {k} (revision {r})" for k, r in self._key_revisions.items()},
        )

    def load(self) -> Layer:
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            self.loads += 1
            if self._failure is not None:
                raise self._failure
            return self._layer()

    def write(self, key: str, value: Any, expected_revision: Any = None) -> int:
        with self._lock:
            if expected_revision is not None:
                actual = self._key_revisions.get(key, 0)
                if actual != int(expected_revision):
                    raise WriteConflictError(
                        f"memory:{self.name}: {key} is at revision {actual}, "
                        f"not {expected_revision}; re-read and retry",
                        source=f"memory:{self.name}",
                        key=key,
                        expected=expected_revision,
                        actual=actual,
                    )
            # The same refusal as the KV plugins': no write changes what is a table.
            check_write_shape(self._data, key, value, source=f"memory:{self.name}")
            return self.set(key, value)

    def commit(self, ops: Any, force: bool = False) -> int:
        """Apply :class:`confhub.WriteOp` s as one revision, each expected revision checked
        first (nothing is applied when one differs), refused as the KV plugins refuse a
        transaction (:func:`confhub.kv.check_transaction`) unless ``force``."""
        ops = tuple(ops)
        source = f"memory:{self.name}"
        with self._lock:
            for op in ops:
                actual = self._key_revisions.get(op.key, 0)
                if op.expected_revision is not None and actual != int(op.expected_revision):
                    raise WriteConflictError(
                        f"{source}: {op.key} is at revision {actual}, not "
                        f"{op.expected_revision}; nothing was written: re-read and retry",
                        source=source,
                        key=op.key,
                        expected=op.expected_revision,
                        actual=actual,
                    )
            check_transaction(self._data, ops, source=source, force=force)
            puts = {op.key: op.value for op in ops if op.action == "put"}
            gone = [op.key for op in ops if op.action == "delete" and op.key in self._data]
            if not puts and not gone:
                return self.revision
            return self.transaction(puts, delete=gone)

    def read(self, key: str) -> tuple[Any, int]:
        """``(value, revision)`` of one dotted key; ``(MISSING, 0)`` when absent."""
        with self._lock:
            if self._failure is not None:
                raise self._failure
            if key not in self._data:
                return MISSING, 0
            return self._data[key], self._key_revisions[key]

    @hookimpl
    def confhub_backend_schemes(self) -> list[BackendInfo]:
        return [BackendInfo("memory", "in-memory store for tests", writable=True, watchable=True)]

    @hookimpl
    def confhub_make_backend(
        self, spec: SourceSpec, settings: BackendSettings
    ) -> MemoryBackend | None:
        if spec.scheme != "memory" or spec.location != self.name:
            return None
        self.settings = settings
        return MemoryBackend(self, settings)


class MemoryBackend(Backend):
    """The backend object the hub gets for a ``memory:NAME`` spec.

    It is ``cacheable`` like a remote store, so the hub's cache and fallback logic apply.
    """

    cacheable = True

    def __init__(self, store: MemoryStore, settings: BackendSettings | None = None) -> None:
        self.store = store
        #: What the hub passed (timeouts, retry and cache policy); defaults when made by hand.
        self.settings = BackendSettings() if settings is None else settings
        self._notify: Notify | None = None

    def load(self) -> Layer:
        return self.store.load()

    def watch(self, notify: Notify) -> None:
        self._notify = notify
        self.store.add_watcher(notify)

    def write(self, key: str, value: Any, expected_revision: Any = None) -> int:
        return self.store.write(key, value, expected_revision)

    def delete(self, key: str, expected_revision: Any = None) -> int:
        return self.store.commit((WriteOp.delete(key, expected_revision),))

    def commit(self, ops: Any, force: bool = False) -> int:
        return self.store.commit(ops, force)

    def read(self, key: str) -> tuple[Any, int]:
        return self.store.read(key)

    def close(self) -> None:
        if self._notify is not None:
            self.store.remove_watcher(self._notify)

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
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._backend import Backend, BackendInfo, BackendSettings, Notify, hookimpl
from ._errors import SourceUnavailableError, WriteConflictError
from ._kvcontract import KVBackendContract, KVStoreHarness
from ._layer import Layer, LayerDelta, flatten
from ._memregistry import MemoryRegistryStore, memory_registry_store
from ._regcontract import RegistryBackendContract, RegistryStoreHarness
from .kv import check_write_shape

if TYPE_CHECKING:
    from ._hub import Hub
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
    "memory_registry_store",
    "queue_depth",
]


def backend_of(hub: Hub, source: str) -> Backend:
    """The backend object serving ``source`` in a started ``hub``.

    ``source`` is a slot's display name (as in ``hub.sources``; its active member's backend)
    or a fallback member's. The hub owns the backend: inspect it, do not close it.
    """
    return hub.backend_for(source)


def queue_depth(hub: Hub) -> int:
    """How many events (changes, errors, state changes) wait for ``hub``'s subscribers.

    It stays bounded (``Hub(max_backlog=...)``) however slow the subscribers are.
    """
    return hub.backlog


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

    def close(self) -> None:
        if self._notify is not None:
            self.store.remove_watcher(self._notify)

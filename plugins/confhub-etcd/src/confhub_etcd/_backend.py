"""The confhub backend for etcd v3: loads, the watch glue, and compare-and-swap writes.

Two layouts:

* **tree** (the default): every key under a prefix is one leaf; ``/myapp/db/pool/size`` under
  the prefix ``/myapp/`` becomes ``db.pool.size``. Values are UTF-8 text.
* **document** (``?format=json|yaml|toml``): the spec names ONE key whose value is a whole
  document.

The spec ``etcd://[user[:password]@]host:port[,host:port...]/prefix/?options`` is parsed by
:mod:`confhub_etcd._config`; see ``docs/backend.md`` for the options, the watch semantics and
the behaviour under failure.

Everything etcd-specific (channels, failover, resume, compaction resync, auth, limits, fork
safety) lives in the client layer (:mod:`confhub_etcd._client` and the modules under it);
turning etcd keys into layers is :mod:`confhub_etcd._layers`; the shared KV glue (key mapping,
value encoding, messages, backoff, report-once, "the source is back") is :mod:`confhub.kv`.
This module wires them onto confhub's backend contract.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from confhub import (
    Backend,
    BackendSettings,
    Layer,
    LayerDelta,
    Notify,
    SourceFormatError,
    SourcePermissionError,
    SourceSpec,
    SourceUnavailableError,
    WriteOp,
    kv,
)

from ._client import EtcdClient
from ._config import EtcdSourceConfig, open_client, parse_spec
from ._errors import EtcdAuthError, EtcdError, EtcdTLSError, EtcdTooManyKeys
from ._layers import NOUN, checked_tree_layer, document_layer, fast_tree_layer, tree_delta
from ._transactions import EtcdTransactions
from ._types import (
    EventKind,
    KeyValue,
    PrefixSnapshot,
    WatchBatch,
    WatchEvent,
    WatchState,
    WatchStatus,
)
from ._watcher import PrefixWatcher
from ._writes import EtcdWrites

__all__ = ["EtcdBackend", "EtcdSourceConfig", "make_backend", "parse_spec"]

log = logging.getLogger("confhub.etcd")


class _Trouble(enum.Enum):
    """What the backend last reported to the hub (its ``ReportOnce`` kinds)."""

    UNAVAILABLE = "unavailable"
    REFUSED = "refused"
    TOO_MANY_KEYS = "too many keys"
    BROKEN = "broken content"
    DOCUMENT_MISSING = "document key missing"


def _principal(config: EtcdSourceConfig) -> str | None:
    if config.credentials is not None:
        return f"user:{config.credentials.user}"
    if config.tls is not None and config.tls.cert_file:
        return f"cert:{Path(config.tls.cert_file).absolute()}"
    return None


class EtcdBackend(Backend):
    """One ``etcd://`` source: ``load()``, ``watch(notify)``, ``write()``, ``close()``.

    The client is created on first use (``load``, ``write``), never in the constructor. The
    watcher thread calls ``notify`` with one :class:`confhub.LayerDelta` per etcd watch
    response (all keys of a revision together), ``confhub.kv.recovered`` when a lost watch
    is re-established, and an error once per change of trouble: a
    :class:`confhub.SourceUnavailableError` for a lost connection or a deleted document key,
    a :class:`confhub.SourcePermissionError` when etcd refuses the watch, a
    :class:`confhub.SourceFormatError` while the content is broken.
    """

    #: Remote: the hub bounds loads and keeps a last-good copy on disk.
    cacheable = True

    def __init__(self, spec: SourceSpec, config: EtcdSourceConfig) -> None:
        self.spec = spec
        self.config = config
        #: Who reads (``Backend.cache_principal``): etcd's RBAC user, else the TLS client
        #: certificate (whose CN etcd takes as the user). The cache keeps one file per
        #: principal, keyed by an HMAC of it; a user name, not the password, so a rotated
        #: password keeps its last good copy.
        self.cache_principal = _principal(config)
        self.display = spec.display
        self.keys = kv.KeyMap(config.prefix, source=spec.display, noun=NOUN)
        self._lock = threading.Lock()
        self._client: EtcdClient | None = None
        self._watcher: PrefixWatcher | None = None
        self._closed = False
        self._notify: Notify | None = None
        # State shared between load() and the watcher thread; the watcher thread is the only
        # writer once watch() started.
        self._snapshot: PrefixSnapshot | None = None
        self._layer: Layer | None = None  # the last content delivered without error
        self._pending: dict[bytes, WatchEvent] = {}  # changes not yet deliverable (broken)
        self._lost = False
        self._broken = False  # the content is refused (broken, too many keys, missing)
        self._reports = kv.ReportOnce()
        self._writes = EtcdWrites(
            client=lambda: self.client,
            keys=self.keys,
            config=config,
            display=self.display,
            translate=self._translate,
        )
        self._transactions = EtcdTransactions(
            client=lambda: self.client,
            keys=self.keys,
            config=config,
            display=self.display,
            check_key=self._writes.check_key,
            translate=self._translate,
        )

    def __repr__(self) -> str:
        return f"EtcdBackend({self.display!r})"

    @property
    def watcher(self) -> PrefixWatcher | None:
        """The running prefix watcher (its counters: ``resyncs``, ``reconnects`` ...), or
        None before ``watch()`` and after ``close()``. For diagnostics and tests."""
        return self._watcher

    # -- client ------------------------------------------------------------------------------

    @property
    def client(self) -> EtcdClient:
        """The etcd client, created on first use. Raises SpecError for unreadable TLS files."""
        with self._lock:
            if self._closed:
                raise SourceUnavailableError(
                    f"{self.display}: the backend is closed", source=self.display
                )
            if self._client is None:
                self._client = open_client(self.config, self.display)
            return self._client

    def _too_many(self, exc: EtcdTooManyKeys) -> SourceFormatError:
        # etcd's range count is the exact count at the read's revision (the read itself
        # stopped after its first page), so no "at least".
        return kv.too_many_keys(self.display, exc.actual, exc.limit)

    def _translate(self, exc: EtcdError, what: str) -> Exception:
        if isinstance(exc, EtcdTooManyKeys):
            return self._too_many(exc)
        if isinstance(exc, EtcdAuthError):
            return SourcePermissionError(
                f"{self.display}: etcd refused {what}: {exc.reason or exc}; check the user, "
                "the password and the user's roles",
                source=self.display,
            )
        # A certificate the other side refuses stays refused: not worth a start's retries.
        return SourceUnavailableError(
            f"{self.display}: {exc}",
            source=self.display,
            retry_at_start=not isinstance(exc, EtcdTLSError),
        )

    # -- load ----------------------------------------------------------------------------------

    def load(self) -> Layer:
        """Read the prefix (or the document key) at one revision; returns the layer."""
        client = self.client
        cfg = self.config
        try:
            if cfg.fmt is None:
                # The protobuf messages as they are: each is read once, by _tree_layer (and
                # by the watcher's PrefixSnapshot.revisions()); no KeyValue per key.
                snapshot = client.read_prefix(
                    cfg.prefix, page_size=cfg.page_size, max_keys=cfg.max_keys, convert=False
                )
            else:
                item, revision = client.get(cfg.prefix)
                snapshot = PrefixSnapshot(revision, (item,) if item is not None else ())
        except EtcdError as exc:
            raise self._translate(exc, "the read") from None
        layer = self._tree_layer(snapshot) if cfg.fmt is None else self._document_layer(snapshot)
        with self._lock:
            if self._watcher is None:  # once watching, the watcher thread owns this state
                self._snapshot = snapshot
                self._layer = layer
                self._pending.clear()
                self._broken = False
        return layer

    def _tree_layer(self, snapshot: PrefixSnapshot) -> Layer:
        layer = fast_tree_layer(snapshot.items, self.config.prefix, snapshot.revision)
        if layer is None:  # something to skip or report: key by key
            layer = checked_tree_layer(snapshot.items, self.keys, snapshot.revision)
        return layer

    def _document_layer(self, snapshot: PrefixSnapshot) -> Layer:
        key = self.config.prefix
        item = next((i for i in snapshot.items if i.key == key.encode()), None)
        return document_layer(
            item,
            self.config.fmt or "json",  # only called for the document layout
            key=key,
            source=self.display,
            revision=snapshot.revision,
            optional=self.spec.optional,
        )

    def resume(self, layer: Layer) -> bool:
        """Adopt ``layer`` (this source's content at etcd revision ``layer.revision``, as
        another process of a host-shared group read it) as the last load: the next
        :meth:`watch` starts at ``layer.revision + 1`` without a read, so a change made
        meanwhile arrives once, as a delta. ``False`` for a layer without an etcd revision,
        or once watching. (The watcher keeps each key's ``mod_revision`` only to diff a
        read after a compaction; unknown here, they are 0, so such a resync re-sends every
        key and the hub publishes only what changed.)"""
        revision = layer.revision
        if isinstance(revision, bool) or not isinstance(revision, int) or revision <= 0:
            return False
        if self.config.fmt is None:
            items = tuple(
                KeyValue(self.keys.to_store(k).encode(), b"", 0, 0, 0) for k in layer.values
            )
        else:
            present = bool(layer.values)
            items = (KeyValue(self.config.prefix.encode(), b"", 0, 0, 0),) if present else ()
        with self._lock:
            if self._watcher is not None or self._closed:
                return False
            self._snapshot = PrefixSnapshot(revision, items)
            self._layer = layer
            self._pending.clear()
            self._broken = False
        return True

    # -- watch ---------------------------------------------------------------------------------

    def watch(self, notify: Notify) -> None:
        """Start the prefix watcher at the last load's revision + 1; returns at once."""
        client = self.client
        with self._lock:
            old, self._watcher = self._watcher, None
        if old is not None:
            old.close()
        self._notify = notify
        snapshot, self._snapshot = self._snapshot, None  # the watcher keeps its own copy
        watcher = PrefixWatcher(
            client,
            self.config.prefix,
            self._on_batch,
            self._on_state,
            snapshot=snapshot,
            backoff=self.config.backoff,
            progress_interval=self.config.progress_interval,
            page_size=self.config.page_size,
            max_keys=self.config.max_keys if self.config.fmt is None else None,
            source=self.display,  # redacted: no password
            log_states=False,  # the hub logs the source's outage and recovery, once
        )
        with self._lock:
            if self._closed:
                return
            self._watcher = watcher
        watcher.start()

    def _deliver(self, update: Layer | LayerDelta) -> None:
        """Good content: the hub gets it, and the next trouble is news."""
        self._broken = False
        self._reports.reset()
        notify = self._notify
        if notify is not None:
            notify(update)

    def _report(self, error: Exception, kind: Hashable) -> None:
        """Trouble of ``kind``: told to the hub once until the kind changes or it clears."""
        notify = self._notify
        if notify is not None and self._reports.changed(kind):
            notify(error)

    def _on_state(self, status: WatchStatus) -> None:
        if status.state is WatchState.CONNECTED and self._lost:
            self._lost = False
            if not self._broken and self._layer is not None:
                # Nothing may have changed while we were away: the source is back. Changes
                # made meanwhile follow on this same thread right after.
                self._deliver(kv.recovered(self.display, status.revision))
        if status.state is not WatchState.DISCONNECTED:
            return
        self._lost = True
        error = status.error
        if isinstance(error, EtcdTooManyKeys):
            # Not an outage: the content is refused until the prefix shrinks.
            self._broken = True
            self._report(self._too_many(error), _Trouble.TOO_MANY_KEYS)
        elif isinstance(error, EtcdAuthError):
            # Permission revoked (or the user removed): an ACL problem, not an outage.
            message = (
                f"{self.display}: etcd refused the watch at revision {status.revision}: "
                f"{error.reason or error}; check the user's roles; retrying"
            )
            self._report(SourcePermissionError(message, source=self.display), _Trouble.REFUSED)
        else:
            message = (
                f"{self.display}: lost the etcd watch at revision {status.revision}: {error}; "
                "retrying"
            )
            self._report(SourceUnavailableError(message, source=self.display), _Trouble.UNAVAILABLE)

    def _on_batch(self, batch: WatchBatch) -> None:
        try:
            if self.config.fmt is None:
                self._tree_batch(batch)
            else:
                self._document_batch(batch)
        except SourceFormatError as exc:
            self._broken = True
            self._report(exc, (_Trouble.BROKEN, exc.key))

    def _tree_batch(self, batch: WatchBatch) -> None:
        # Changes accumulate in _pending until they apply cleanly on top of the last good
        # layer; the hub then gets them as one delta. So a broken value or a leaf/parent
        # clash holds back only until it is fixed, and nothing is lost meanwhile.
        base = self._layer
        if base is None:  # watch without a load: the first batch is the initial read
            base = Layer.from_flat({}, source=self.display)
        for event in batch.events:
            self._pending[event.key] = event
        delta = tree_delta(base, self._pending.values(), self.keys, batch.revision)
        new = base.apply(delta, source=self.display)  # raises on a leaf/parent clash
        self._pending.clear()
        self._layer = new
        self._deliver(delta)

    def _document_batch(self, batch: WatchBatch) -> None:
        key = self.config.prefix.encode()
        mine = [e for e in batch.events if e.key == key]
        if not mine:
            return
        event = mine[-1]
        items: tuple[KeyValue, ...] = ()
        if event.kind is EventKind.PUT:
            items = (
                KeyValue(
                    event.key, event.value, event.mod_revision, event.create_revision, event.version
                ),
            )
        try:
            # Raises SourceFormatError when malformed; when deleted, SourceUnavailableError
            # for a required source (the hub keeps the last good values), an empty layer for
            # an optional one. Writing the key again recovers either way.
            layer = self._document_layer(PrefixSnapshot(batch.revision, items))
        except SourceUnavailableError as exc:
            self._broken = True  # no "source is back" after a reconnect while it is missing
            self._report(exc, _Trouble.DOCUMENT_MISSING)
            return
        self._layer = layer
        self._deliver(layer)

    # -- write ---------------------------------------------------------------------------------

    def write(self, key: str, value: Any, expected_revision: Any = None) -> int:
        """Write dotted ``key``; with ``expected_revision`` a compare-and-swap on the etcd
        key's mod_revision (0: the key must not exist). Returns the new revision
        (:meth:`confhub_etcd._writes.EtcdWrites.write`: the shape check and its guard)."""
        return self._writes.write(key, value, expected_revision)

    # -- delete, transactions, read (confhub_etcd._transactions) ----------------------------

    def delete(self, key: str, expected_revision: Any = None) -> int:
        """Delete dotted ``key`` (every etcd key that holds it); nothing there is no error,
        a table there is a :class:`confhub.WriteError`. Returns the revision after it."""
        return self._transactions.commit((WriteOp.delete(key, expected_revision),))

    def commit(self, ops: Sequence[WriteOp], force: bool = False) -> int:
        """Apply ``ops`` in ONE etcd transaction; returns its revision
        (:meth:`confhub_etcd._transactions.EtcdTransactions.commit`)."""
        return self._transactions.commit(ops, force)

    def read(self, key: str) -> tuple[Any, int]:
        """``(value, mod_revision)`` of dotted ``key`` read from etcd; ``(MISSING, 0)``
        when absent (:meth:`confhub_etcd._transactions.EtcdTransactions.read`)."""
        return self._transactions.read(key)

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the watcher (joined) and close the client. Idempotent."""
        with self._lock:
            self._closed = True
            watcher, self._watcher = self._watcher, None
            client, self._client = self._client, None
        self._notify = None
        # The client first: it ends a call the watcher may be blocked in, then joins it.
        if client is not None:
            client.close()
        if watcher is not None:
            watcher.close()


def make_backend(spec: SourceSpec, settings: BackendSettings) -> EtcdBackend:
    """Build the backend for an ``etcd:`` spec (no I/O); ``?timeout=`` defaults to the
    hub's ``connect_timeout``."""
    return EtcdBackend(spec, parse_spec(spec, default_timeout=settings.connect_timeout))

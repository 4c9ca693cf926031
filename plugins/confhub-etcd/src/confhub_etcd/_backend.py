"""The confhub backend for etcd v3: specs, loads, the watch glue, and compare-and-swap writes.

Two layouts:

* **tree** (the default): every key under a prefix is one leaf; ``/myapp/db/pool/size`` under
  the prefix ``/myapp/`` becomes ``db.pool.size``. Values are UTF-8 text.
* **document** (``?format=json|yaml|toml``): the spec names ONE key whose value is a whole
  document.

The spec ``etcd://[user[:password]@]host:port[,host:port...]/prefix/?options``; see
``docs/backend.md`` for the options, the watch semantics and the behaviour under failure.

Everything etcd-specific (channels, failover, resume, compaction resync, auth, limits, fork
safety) lives in the client layer (:mod:`confhub_etcd._client` and the modules under it); the
spec is parsed by :mod:`confhub_etcd._config`; this module maps them onto confhub's contract.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import immutables
from confhub import (
    Layer,
    LayerDelta,
    Notify,
    SourceFormatError,
    SourcePermissionError,
    SourceSpec,
    SourceUnavailableError,
    SpecError,
    WriteConflictError,
    WriteError,
    parse_document,
)

from ._client import EtcdClient
from ._config import EtcdSourceConfig, parse_spec
from ._errors import EtcdAuthError, EtcdError, EtcdLimitError, EtcdTooManyKeys
from ._tree import fast_tree_layer
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

if TYPE_CHECKING:
    from confhub import Hub

__all__ = ["EtcdBackend", "EtcdSourceConfig", "make_backend", "parse_spec"]

log = logging.getLogger("confhub.etcd")

_DETAIL_HEAD: Final = "etcd key "
_DETAIL_TAIL: Final = " (mod_revision "


# ------------------------------------------------------------------------------------------------
# helpers


def _detail(key: bytes, mod_revision: int) -> str:
    return f"{_DETAIL_HEAD}{key.decode('utf-8', 'backslashreplace')}{_DETAIL_TAIL}{mod_revision})"


def _owner(detail: str | None) -> str | None:
    """The etcd key named by a detail written by :func:`_detail` (cached details too)."""
    if detail is None or not detail.startswith(_DETAIL_HEAD):
        return None
    end = detail.rfind(_DETAIL_TAIL)
    return detail[len(_DETAIL_HEAD) : end] if end > 0 else None


def _encode(value: Any, *, source: str, key: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, str | int | float):
        return str(value).encode("utf-8")
    raise WriteError(
        f"{source}: cannot write a {type(value).__name__} to {key!r}: etcd keys hold text; "
        "write one leaf key at a time as a string or number",
        source=source,
        key=key,
    )


def _set_nested(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _dump_document(data: Mapping[str, Any], fmt: str, *, source: str, key: str) -> bytes:
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
    if fmt == "yaml":
        import yaml  # noqa: PLC0415 - optional, as in the core's parsers

        return yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True).encode("utf-8")
    try:
        import tomli_w  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
    except ImportError:
        raise WriteError(
            f"{source}: writing into a TOML document needs the tomli_w package "
            "(pip install tomli_w), or write the whole document key yourself",
            source=source,
            key=key,
        ) from None
    dumped: str = tomli_w.dumps(dict(data))
    return dumped.encode("utf-8")


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------
# the backend


class EtcdBackend:
    """One ``etcd://`` source: ``load()``, ``watch(notify)``, ``write()``, ``close()``.

    The client is created on first use (``load``, ``write``), never in the constructor. The
    watcher thread calls ``notify`` with one :class:`confhub.LayerDelta` per etcd watch
    response (all keys of a revision together), an empty delta carrying the revision when a
    lost watch is re-established, a :class:`confhub.SourceUnavailableError` once per lost
    connection, and a :class:`confhub.SourceFormatError` while the content is broken.
    """

    #: Remote: the hub bounds loads and keeps a last-good copy on disk.
    cacheable = True

    def __init__(self, spec: SourceSpec, config: EtcdSourceConfig) -> None:
        self.spec = spec
        self.config = config
        self.display = spec.display
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
        self._broken = False  # the last update sent was a SourceFormatError

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
                cfg = self.config
                try:
                    self._client = EtcdClient(
                        list(cfg.endpoints),
                        timeout=cfg.timeout,
                        tls=cfg.tls,
                        credentials=cfg.credentials,
                        max_receive_bytes=cfg.max_receive_bytes,
                    )
                except OSError as exc:
                    raise SpecError(
                        f"{self.display}: cannot read a TLS file ({exc.strerror}: "
                        f"{exc.filename}); fix the ca=, cert= or key= option",
                        spec=self.display,
                    ) from None
                except ValueError as exc:
                    raise SpecError(f"{self.display}: {exc}", spec=self.display) from None
            return self._client

    def _too_many(self, exc: EtcdTooManyKeys) -> SourceFormatError:
        return SourceFormatError(
            f"{self.display}: at least {exc.actual:,} keys, more than max_keys={exc.limit:,}; "
            "refusing them (stopped reading after the first page): raise ?max_keys= on the "
            "source if that many keys are intended, or delete the runaway keys",
            source=self.display,
        )

    def _translate(self, exc: EtcdError, what: str) -> Exception:
        if isinstance(exc, EtcdTooManyKeys):
            return self._too_many(exc)
        if isinstance(exc, EtcdAuthError):
            return SourcePermissionError(
                f"{self.display}: etcd refused {what}: {exc.reason or exc}; check the user, "
                "the password and the user's roles",
                source=self.display,
            )
        return SourceUnavailableError(f"{self.display}: {exc}", source=self.display)

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
                kv, revision = client.get(cfg.prefix)
                snapshot = PrefixSnapshot(revision, (kv,) if kv is not None else ())
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

    def _dotted(self, key: bytes) -> str | None:
        """The dotted key of an etcd key under the prefix; None for keys that carry none."""
        try:
            rel = key.decode("utf-8")[len(self.config.prefix) :]
        except UnicodeDecodeError:
            raise SourceFormatError(
                f"{self.display}: etcd key {key!r} is not valid UTF-8; rename it",
                source=self.display,
            ) from None
        if not rel or rel.endswith("/"):
            return None  # the prefix itself, or a "directory" marker key
        dotted = rel.replace("/", ".")
        if dotted.startswith(".") or ".." in dotted:
            raise SourceFormatError(
                f"{self.display}: etcd key {key.decode()!r} has an empty path segment; rename it",
                source=self.display,
                key=dotted,
            )
        return dotted

    def _text(self, kv: KeyValue | WatchEvent, dotted: str) -> str:
        try:
            return kv.value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SourceFormatError(
                f"{self.display}: the value of etcd key {kv.key.decode('utf-8', 'replace')!r} "
                f"is not valid UTF-8 (byte {exc.start}); store text",
                source=self.display,
                key=dotted,
            ) from None

    def _tree_layer(self, snapshot: PrefixSnapshot) -> Layer:
        layer = fast_tree_layer(snapshot.items, self.config.prefix, snapshot.revision)
        return layer if layer is not None else self._checked_tree_layer(snapshot)

    def _checked_tree_layer(self, snapshot: PrefixSnapshot) -> Layer:
        # Key by key: skips the prefix key and directory markers, and names the etcd key at
        # fault in every error (the fast path hands over whatever it does not handle).
        values: dict[str, str] = {}
        details: dict[str, str] = {}
        inner: dict[str, int] = {}
        prefix = self.config.prefix
        skip = len(prefix.encode("utf-8"))
        head = f"{_DETAIL_HEAD}{prefix}"
        for kv in snapshot.items:
            try:
                rel = kv.key[skip:].decode("utf-8")
                value = kv.value.decode("utf-8")
            except UnicodeDecodeError:
                dotted = self._dotted(kv.key)  # raises for a bad key
                if dotted is None:
                    continue
                self._text(kv, dotted)  # raises for a bad value
                raise  # pragma: no cover - one of the two above raised
            if not rel or rel[-1] == "/":
                continue  # the prefix itself, or a "directory" marker key
            dotted = rel.replace("/", ".")
            if dotted[0] == "." or ".." in dotted:
                self._dotted(kv.key)  # raises, naming the key
            if dotted in values:
                raise self._clash(dotted, _owner(details[dotted]), kv.key)
            values[dotted] = value
            details[dotted] = f"{head}{rel}{_DETAIL_TAIL}{kv.mod_revision})"
            # The parents' child counts (Layer.inner), inline: Layer.from_flat would walk
            # every key's prefixes twice more.
            i = dotted.rfind(".")
            while i > 0:
                parent = dotted[:i]
                inner[parent] = inner.get(parent, 0) + 1
                i = dotted.rfind(".", 0, i)
        both = values.keys() & inner.keys()
        if both:
            parent = min(both)
            child = next(k for k in sorted(values) if k.startswith(parent + "."))
            raise SourceFormatError(
                f"{self.display}: {_owner(details[parent])!r} is both a value and the parent "
                f"of {_owner(details[child])!r}; a key cannot be both a leaf and a parent: "
                "delete or rename one of them",
                source=self.display,
                key=parent,
            )
        return Layer(
            values=immutables.Map(values),
            inner=immutables.Map(inner),
            revision=snapshot.revision,
            details=immutables.Map(details),
        )

    def _clash(self, dotted: str, first: str | None, second: bytes) -> SourceFormatError:
        return SourceFormatError(
            f"{self.display}: etcd keys {first!r} and {second.decode()!r} both map to "
            f"{dotted!r} (dots nest like slashes); delete or rename one of them",
            source=self.display,
            key=dotted,
        )

    def _document_layer(self, snapshot: PrefixSnapshot) -> Layer:
        key = self.config.prefix.encode()
        kv = next((item for item in snapshot.items if item.key == key), None)
        if kv is None:
            return self._missing_document(snapshot.revision)
        fmt = self.config.fmt or "json"  # only called for the document layout
        data = parse_document(kv.value, fmt, source=self.display, path=kv.key.decode())
        layer = Layer.from_mapping(data, source=self.display)
        detail = _detail(kv.key, kv.mod_revision)
        return Layer.from_flat(
            dict(layer.values),
            source=self.display,
            revision=snapshot.revision,
            details=dict.fromkeys(layer.values, detail),
        )

    def _missing_document(self, revision: int) -> Layer:
        """A missing document key is a missing file: an empty layer for an optional source,
        else :class:`confhub.SourceUnavailableError` naming the key and the fix."""
        if self.spec.optional:
            return Layer.from_flat({}, source=self.display, revision=revision)
        raise SourceUnavailableError(
            f"{self.display}: document key {self.config.prefix} does not exist (revision "
            f"{revision}); create it, fix the path, or add ?optional=true",
            source=self.display,
        )

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
        )
        with self._lock:
            if self._closed:
                return
            self._watcher = watcher
        watcher.start()

    def _deliver(self, update: Layer | LayerDelta | BaseException) -> None:
        notify = self._notify
        if notify is not None:
            notify(update)

    def _on_state(self, status: WatchStatus) -> None:
        if status.state is WatchState.DISCONNECTED:
            self._lost = True
            if isinstance(status.error, EtcdTooManyKeys):
                # Not an outage: the content is refused until the prefix shrinks.
                self._broken = True
                self._deliver(self._too_many(status.error))
                return
            if isinstance(status.error, EtcdAuthError):
                # Permission revoked (or the user removed): an ACL problem, not an outage.
                self._deliver(
                    SourcePermissionError(
                        f"{self.display}: etcd refused the watch at revision "
                        f"{status.revision}: {status.error.reason or status.error}; check the "
                        "user's roles; retrying",
                        source=self.display,
                    )
                )
                return
            self._deliver(
                SourceUnavailableError(
                    f"{self.display}: lost the etcd watch at revision {status.revision}: "
                    f"{status.error}; retrying",
                    source=self.display,
                )
            )
        elif status.state is WatchState.CONNECTED and self._lost:
            self._lost = False
            if not self._broken and self._layer is not None:
                # Nothing may have changed while we were away: tell the hub the source is
                # back (an empty delta makes it "live" again); changes made meanwhile follow
                # on this same thread right after.
                self._deliver(LayerDelta(revision=status.revision))

    def _on_batch(self, batch: WatchBatch) -> None:
        try:
            if self.config.fmt is None:
                self._tree_batch(batch)
            else:
                self._document_batch(batch)
        except SourceFormatError as exc:
            self._broken = True
            self._deliver(exc)

    def _tree_batch(self, batch: WatchBatch) -> None:
        # Changes accumulate in _pending until they apply cleanly on top of the last good
        # layer; the hub then gets them as one delta. So a broken value or a leaf/parent
        # clash holds back only until it is fixed, and nothing is lost meanwhile.
        base = self._layer
        if base is None:  # watch without a load: the first batch is the initial read
            base = Layer.from_flat({}, source=self.display)
        pending = self._pending
        for event in batch.events:
            pending[event.key] = event
        to_set: dict[str, str] = {}
        set_from: dict[str, bytes] = {}
        details: dict[str, str] = {}
        deleted: set[str] = set()
        base_values, base_details = base.values, base.details
        for event in pending.values():
            if event.kind is EventKind.DELETE:
                try:
                    dotted = self._dotted(event.key)
                except SourceFormatError:
                    continue  # a key that never applied (not UTF-8, empty segment)
                if dotted is not None and _owner(base_details.get(dotted)) in (
                    None,
                    event.key.decode("utf-8", "backslashreplace"),
                ):
                    deleted.add(dotted)
        for event in pending.values():
            if event.kind is not EventKind.PUT:
                continue
            dotted = self._dotted(event.key)
            if dotted is None:
                continue
            if dotted in set_from:
                raise self._clash(dotted, set_from[dotted].decode(), event.key)
            owner = _owner(base_details.get(dotted))
            name = event.key.decode("utf-8", "backslashreplace")
            if dotted in base_values and dotted not in deleted and owner not in (None, name):
                raise self._clash(dotted, owner, event.key)
            to_set[dotted] = self._text(event, dotted)
            set_from[dotted] = event.key
            details[dotted] = _detail(event.key, event.mod_revision)
        delta = LayerDelta(
            set=to_set, deleted=deleted - to_set.keys(), revision=batch.revision, details=details
        )
        new = base.apply(delta, source=self.display)  # raises on a leaf/parent clash
        pending.clear()
        self._layer = new
        self._broken = False
        self._deliver(delta)

    def _document_batch(self, batch: WatchBatch) -> None:
        key = self.config.prefix.encode()
        mine = [e for e in batch.events if e.key == key]
        if not mine:
            return
        event = mine[-1]
        if event.kind is EventKind.DELETE:
            # Required: SourceUnavailableError (the hub keeps the last good values, stale);
            # optional: an empty layer. Writing the key again recovers either way.
            snapshot = PrefixSnapshot(batch.revision, ())
        else:
            kv = KeyValue(
                event.key, event.value, event.mod_revision, event.create_revision, event.version
            )
            snapshot = PrefixSnapshot(batch.revision, (kv,))
        try:
            layer = self._document_layer(snapshot)  # raises when malformed or missing
        except SourceUnavailableError as exc:
            self._broken = True  # no "source is back" after a reconnect while it is missing
            self._deliver(exc)
            return
        self._layer = layer
        self._broken = False
        self._deliver(layer)

    # -- write ---------------------------------------------------------------------------------

    def _etcd_key(self, key: str) -> str:
        parts = key.split(".")
        if not key or any(not p for p in parts) or "/" in key:
            raise WriteError(
                f"{self.display}: {key!r} is not a dotted key such as db.pool.size "
                "(no empty segments, no '/')",
                source=self.display,
                key=key,
            )
        return self.config.prefix + "/".join(parts)

    def write(self, key: str, value: Any, expected_revision: Any = None) -> int:
        """Write dotted ``key``; with ``expected_revision`` a compare-and-swap on the etcd
        key's mod_revision (0: the key must not exist). Returns the new revision."""
        if self.config.fmt is not None:
            return self._write_document(key, value, expected_revision)
        etcd_key = self._etcd_key(key)
        payload = _encode(value, source=self.display, key=key)
        client = self.client
        try:
            if expected_revision is None:
                return client.put(etcd_key, payload)
            expected = int(expected_revision)
            result = client.put_if_revision(etcd_key, payload, expected)
        except EtcdLimitError as exc:
            raise WriteError(f"{self.display}: {exc}", source=self.display, key=key) from None
        except EtcdError as exc:
            raise self._translate(exc, f"the write of {key!r}") from None
        if not result.succeeded:
            raise WriteConflictError(
                f"{self.display}: {key} (etcd key {etcd_key}) is at mod_revision "
                f"{result.actual or 'none (absent)'}, not {expected}; re-read "
                "(confhub explain shows the mod_revision) and retry",
                source=self.display,
                key=key,
                expected=expected,
                actual=result.actual,
            )
        return result.revision

    def _write_document(self, key: str, value: Any, expected_revision: Any) -> int:
        cfg = self.config
        fmt = cfg.fmt or "json"  # only called for the document layout
        self._etcd_key(key)  # validates the dotted key
        client = self.client
        for _ in range(5):
            try:
                kv, _rev = client.get(cfg.prefix)
            except EtcdError as exc:
                raise self._translate(exc, "the read") from None
            actual = kv.mod_revision if kv is not None else 0
            expected = actual if expected_revision is None else int(expected_revision)
            if expected != actual:
                raise WriteConflictError(
                    f"{self.display}: document key {cfg.prefix} is at mod_revision {actual}, "
                    f"not {expected}; re-read and retry",
                    source=self.display,
                    key=key,
                    expected=expected,
                    actual=actual,
                )
            data = (
                _thaw(parse_document(kv.value, fmt, source=self.display)) if kv is not None else {}
            )
            _set_nested(data, key, value)
            payload = _dump_document(data, fmt, source=self.display, key=key)
            try:
                result = client.put_if_revision(cfg.prefix, payload, expected)
            except EtcdLimitError as exc:
                raise WriteError(f"{self.display}: {exc}", source=self.display, key=key) from None
            except EtcdError as exc:
                raise self._translate(exc, f"the write of {key!r}") from None
            if result.succeeded:
                return result.revision
            if expected_revision is not None:
                raise WriteConflictError(
                    f"{self.display}: document key {cfg.prefix} changed (mod_revision "
                    f"{result.actual}, not {expected}); re-read and retry",
                    source=self.display,
                    key=key,
                    expected=expected,
                    actual=result.actual,
                )
        raise WriteConflictError(
            f"{self.display}: document key {cfg.prefix} kept changing; retry later",
            source=self.display,
            key=key,
        )

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


def make_backend(spec: SourceSpec, hub: Hub | None) -> EtcdBackend:
    """Build the backend for an ``etcd:`` spec (no I/O)."""
    timeout = float(getattr(hub, "connect_timeout", 2.0) or 2.0)
    return EtcdBackend(spec, parse_spec(spec, default_timeout=timeout))

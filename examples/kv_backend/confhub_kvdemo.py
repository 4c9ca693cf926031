"""kvdemo: a small confhub backend for a key-value store, written against ``confhub.kv``.

A worked example for third-party backend authors (``docs/plugins.md`` walks through it).
The store is :class:`DemoServer`, an in-process stand-in for a networked KV server with the
API most of them have: a ranged read at one revision, compare-and-swap puts, and a
long-polling watch of the changes after a revision. Everything else is what a real backend
would write, and each piece of glue comes from the kit:

- keys: :class:`confhub.kv.KeyMap` (prefix, folder markers, empty segments, UTF-8);
- values: :func:`confhub.kv.decode_text` when reading, :func:`confhub.kv.encode_value` when
  writing;
- writes that would change a source's shape: :func:`confhub.kv.check_write_shape`;
- the key cap: :func:`confhub.kv.too_many_keys`;
- the watch: :class:`confhub.kv.Backoff` between retries, :class:`confhub.kv.ReportOnce` so
  an outage is reported once, :func:`confhub.kv.recovered` when the store is back;
- options: :func:`confhub.kv.check_options` (unknown ones are a warning), and
  ``BackendInfo(volatile_options=...)`` for the ones that do not change what a source holds;
- the hub's timeouts and retry policy: :class:`confhub.BackendSettings`.

Specs: ``kvdemo://SERVER/PREFIX/`` reads every key under ``PREFIX/`` (tree layout);
``kvdemo://SERVER/KEY?format=json`` reads one key holding a JSON document. Options:
``wait`` (seconds a watch call blocks), ``retry_initial``/``retry_max`` (the watch's
backoff; default: the hub's), ``format``, and the core's (``optional``, ``max_keys``...).

The plugin is an object holding the servers it can reach, so it is registered per hub::

    server = DemoServer("main")
    server.put("app/db/port", "5432")
    with confhub.Hub(["kvdemo://main/app/"], plugins=[KVDemoPlugin(server)]) as hub:
        hub.get("db.port")                 # '5432'
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import confhub
from confhub import (
    MISSING,
    Layer,
    LayerDelta,
    Notify,
    SourceFormatError,
    SourceSpec,
    SourceUnavailableError,
    SpecError,
    WriteConflictError,
    WriteError,
    WriteOp,
    kv,
    parse_document,
)

__all__ = ["DemoBackend", "DemoServer", "Entry", "Event", "KVDemoPlugin"]

log = logging.getLogger("confhub_kvdemo")
T = TypeVar("T")

#: The options this backend reads; the core's (``kv.CORE_OPTIONS``) are accepted anyway.
OPTIONS = frozenset({"format", "wait", "retry_initial", "retry_max"})
#: Options that change how a source is read, not what it holds: out of the cache identity.
VOLATILE_OPTIONS = frozenset({"wait", "retry_initial", "retry_max"})


# -- the store ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One stored key: its value and the revision that last wrote it."""

    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True)
class Event:
    """One change: a put (``value`` set) or a delete (``value`` is None) at ``revision``."""

    key: str
    value: bytes | None
    revision: int


class DemoServer:
    """An in-process KV server: keys to bytes, one revision per write, long-poll watches.

    Every call raises :class:`ConnectionError` while the server is stopped (:meth:`stop`,
    :meth:`start`), as a client of a networked store would. Its history is never compacted
    (a real store's is: a backend then reads the whole prefix again).
    """

    def __init__(self, name: str = "demo") -> None:
        self.name = name
        self.revision = 0
        self._changed = threading.Condition()
        self._data: dict[str, Entry] = {}
        self._history: list[Event] = []
        self._up = True

    def _check(self) -> None:
        if not self._up:
            raise ConnectionError(f"kvdemo server {self.name!r} is not answering")

    def range(self, prefix: str) -> tuple[int, list[Entry]]:
        """The store revision and every entry whose key starts with ``prefix``."""
        with self._changed:
            self._check()
            return self.revision, [e for k, e in sorted(self._data.items()) if k.startswith(prefix)]

    def get(self, key: str) -> Entry | None:
        """The entry of ``key``, or None."""
        with self._changed:
            self._check()
            return self._data.get(key)

    def put(self, key: str, value: bytes | str, *, expected: int | None = None) -> tuple[bool, int]:
        """Store ``value``; with ``expected``, only if the key's ``mod_revision`` is that (0: only
        if absent). Returns ``(True, new revision)``, or ``(False, the key's mod_revision)``."""
        data = value.encode("utf-8") if isinstance(value, str) else value
        with self._changed:
            self._check()
            current = self._data.get(key)
            actual = 0 if current is None else current.mod_revision
            if expected is not None and expected != actual:
                return False, actual
            self.revision += 1
            self._data[key] = Entry(key, data, self.revision)
            self._history.append(Event(key, data, self.revision))
            self._changed.notify_all()
            return True, self.revision

    def delete(self, key: str) -> int:
        """Delete ``key`` (if present); returns the store revision."""
        with self._changed:
            self._check()
            if self._data.pop(key, None) is not None:
                self.revision += 1
                self._history.append(Event(key, None, self.revision))
                self._changed.notify_all()
            return self.revision

    def txn(
        self, puts: Mapping[str, bytes], deletes: list[str], expected: Mapping[str, int]
    ) -> tuple[bool, int, dict[str, int]]:
        """Apply ``puts`` and ``deletes`` as ONE revision, only if every key of ``expected``
        is at that ``mod_revision`` (0: absent). Returns ``(True, revision, {})``, or
        ``(False, store revision, {key: actual mod_revision})`` for the keys that differ."""
        with self._changed:
            self._check()
            stale = {}
            for key, want in expected.items():
                current = self._data.get(key)
                actual = 0 if current is None else current.mod_revision
                if actual != want:
                    stale[key] = actual
            if stale:
                return False, self.revision, stale
            gone = [k for k in deletes if k in self._data]
            if not puts and not gone:
                return True, self.revision, {}
            self.revision += 1
            for key in gone:
                del self._data[key]
                self._history.append(Event(key, None, self.revision))
            for key, data in puts.items():
                self._data[key] = Entry(key, data, self.revision)
                self._history.append(Event(key, data, self.revision))
            self._changed.notify_all()
            return True, self.revision, {}

    def watch(
        self, prefix: str, after: int, timeout: float, cancel: threading.Event
    ) -> tuple[int, list[Event]]:
        """Block until the store is past revision ``after`` (or ``timeout``, or ``cancel``);
        return the store revision and the events under ``prefix`` after ``after``."""
        with self._changed:
            self._changed.wait_for(
                lambda: not self._up or self.revision > after or cancel.is_set(), timeout
            )
            self._check()
            events = [e for e in self._history if e.revision > after and e.key.startswith(prefix)]
            return self.revision, events

    def wake(self) -> None:
        """Wake every blocked :meth:`watch` (a client closing its connections)."""
        with self._changed:
            self._changed.notify_all()

    def stop(self) -> None:
        """Stop answering (an outage); the data is kept."""
        with self._changed:
            self._up = False
            self._changed.notify_all()

    def start(self) -> None:
        """Answer again."""
        with self._changed:
            self._up = True
            self._changed.notify_all()


# -- the backend -------------------------------------------------------------------------------


class DemoBackend(confhub.Backend):
    """One ``kvdemo://`` source: ``load``, ``watch``, ``write`` and ``close``, and the
    optional ``delete``, ``commit`` (transactions) and ``read``."""

    #: A remote store: the hub bounds its loads, caches it, and retries it from the cache.
    cacheable = True

    def __init__(
        self, spec: SourceSpec, settings: confhub.BackendSettings, server: DemoServer
    ) -> None:
        self.source = spec.display
        self.server = server
        path = spec.location[2:].partition("/")[2]  # kvdemo://SERVER/PATH
        fmt = spec.option("format")
        if fmt not in (None, "json"):
            raise SpecError(f"{self.source}: format={fmt!r}: kvdemo reads json", spec=self.source)
        if fmt is not None and (not path or path.endswith("/")):
            raise SpecError(
                f"{self.source}: format=json names one key: kvdemo://SERVER/app/config.json",
                spec=self.source,
            )
        # Tree layout: a prefix is a folder, so app/ never reads app2/.
        prefix = path if not path or path.endswith("/") else path + "/"
        self.document: str | None = path if fmt is not None else None
        self.keys = kv.KeyMap(prefix, source=self.source, noun="kvdemo key")
        self.optional = spec.optional
        self.max_keys = spec.max_keys
        self.wait = spec.option_float("wait", 5.0)
        # The spec's own options win over the hub's settings.
        self.backoff = kv.Backoff(
            spec.option_float("retry_initial", settings.retry_initial),
            spec.option_float("retry_max", settings.retry_max),
        )
        self._revision = 0  # of the last load: the watch starts after it
        self._missing = False  # the document key does not exist
        self._broken = False  # the last watch update was refused: read everything next
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def read_prefix(self) -> str:
        """What reads and watches ask the server for."""
        return self.document if self.document is not None else self.keys.prefix

    def _call(self, request: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``request(*args, **kwargs)``, a server call: a lost connection is unavailable."""
        try:
            return request(*args, **kwargs)
        except ConnectionError as exc:
            raise SourceUnavailableError(
                f"{self.source}: cannot reach the kvdemo server ({exc}); retrying",
                source=self.source,
            ) from None

    # -- reading --------------------------------------------------------------------------

    def load(self) -> Layer:
        """Read the prefix (or the document) at one revision."""
        revision, entries = self._call(self.server.range, self.read_prefix)
        layer = self._layer(revision, entries)
        self._revision = revision
        return layer

    def _layer(self, revision: int, entries: list[Entry]) -> Layer:
        if self.document is not None:
            return self._document(revision, entries)
        if len(entries) > self.max_keys:
            raise kv.too_many_keys(self.source, len(entries), self.max_keys)
        values: dict[str, str] = {}
        details: dict[str, str] = {}
        for entry in entries:
            dotted = self.keys.to_dotted(entry.key)  # SourceFormatError for a bad key
            if dotted is None:
                continue  # the prefix itself or a folder marker
            values[dotted] = self._text(entry.key, entry.value)
            details[dotted] = f"kvdemo key {entry.key} (revision {entry.mod_revision})"
        # The core refuses a leaf/parent clash here, in the kit's words, naming the details.
        return Layer.from_flat(values, source=self.source, revision=revision, details=details)

    def _text(self, key: str, value: bytes) -> str:
        return kv.decode_text(value, source=self.source, key=key, noun="kvdemo key")

    def _document(self, revision: int, entries: list[Entry]) -> Layer:
        entry = next((e for e in entries if e.key == self.document), None)
        self._missing = entry is None
        if entry is None:
            # A missing document is a missing file: empty if optional, else unavailable.
            if self.optional:
                return Layer.from_flat({}, source=self.source, revision=revision)
            raise SourceUnavailableError(
                f"{self.source}: the document key {self.document!r} does not exist; "
                "create it, fix the path, or add ?optional=true",
                source=self.source,
                key=self.document,
            )
        data = parse_document(entry.value, "json", source=self.source, path=entry.key)
        detail = f"kvdemo key {entry.key} (revision {entry.mod_revision})"
        return Layer.from_mapping(
            data, source=self.source, revision=revision, locate=lambda _key: detail
        )

    # -- watching -------------------------------------------------------------------------

    def watch(self, notify: Notify) -> None:
        """Start the watch thread after the last load's revision; returns at once."""
        self._thread = threading.Thread(
            target=self._run, args=(notify,), name=f"confhub-kvdemo[{self.source}]", daemon=True
        )
        self._thread.start()

    def _run(self, notify: Notify) -> None:
        reports = kv.ReportOnce()
        revision, attempt, lost = self._revision, 0, False
        while not self._stop.is_set():
            # After a failure, ask without blocking: the hub hears "back" as soon as it is.
            wait = 0.0 if lost else self.wait
            try:
                now, events = self.server.watch(self.read_prefix, revision, wait, self._stop)
            except ConnectionError as exc:
                lost = True
                if reports.changed(type(exc)):  # once per outage, not once per retry
                    notify(
                        SourceUnavailableError(
                            f"{self.source}: lost the kvdemo server at revision {revision} "
                            f"({exc}); retrying",
                            source=self.source,
                        )
                    )
                self._stop.wait(self.backoff.delay(attempt))
                attempt += 1
                continue
            if lost:
                lost, attempt = False, 0
                if not self._missing:  # a deleted document stays unavailable until written
                    reports.reset()
                    notify(kv.recovered(self.source, revision))
            if events and not self._stop.is_set():
                self._deliver(notify, reports, now, events)
            revision = now

    def _deliver(
        self, notify: Notify, reports: kv.ReportOnce, revision: int, events: list[Event]
    ) -> None:
        if self.document is not None:
            mine = [e for e in events if e.key == self.document]
            if not mine:
                return
            last = mine[-1]
            entries = [] if last.value is None else [Entry(last.key, last.value, last.revision)]
            try:
                notify(self._document(revision, entries))
            except SourceUnavailableError as exc:  # deleted, and required: stale
                if reports.changed("document deleted"):
                    notify(exc)
                return
            except SourceFormatError as exc:  # broken JSON: the hub keeps the last good
                notify(exc)
                return
            reports.reset()
            return
        try:
            if self._broken:
                raise _Resync
            update: Layer | LayerDelta = self._delta(revision, events)
        except (SourceFormatError, _Resync):
            # A change that cannot be applied (a bad key or value): from now on send the
            # whole prefix, so nothing is lost while it is broken and it heals by itself.
            try:
                update = self._layer(*self._call(self.server.range, self.read_prefix))
            except (SourceFormatError, SourceUnavailableError) as exc:
                self._broken = True
                notify(exc)
                return
            self._broken = False
        notify(update)

    def _delta(self, revision: int, events: list[Event]) -> LayerDelta:
        """The events as one delta (a later event of a key wins)."""
        changed: dict[str, str] = {}
        details: dict[str, str] = {}
        deleted: set[str] = set()
        for event in events:
            dotted = self.keys.to_dotted(event.key)
            if dotted is None:
                continue
            if event.value is None:
                changed.pop(dotted, None)
                details.pop(dotted, None)
                deleted.add(dotted)
            else:
                deleted.discard(dotted)
                changed[dotted] = self._text(event.key, event.value)
                details[dotted] = f"kvdemo key {event.key} (revision {event.revision})"
        return LayerDelta(set=changed, deleted=deleted, revision=revision, details=details)

    # -- writing ----------------------------------------------------------------------------

    def write(self, key: str, value: Any, expected_revision: Any = None) -> int:
        """Write dotted ``key``; with ``expected_revision`` a compare-and-swap on the store
        key's revision (0: must not exist). Returns the new revision."""
        if self.document is not None:
            return self._write_document(key, value, expected_revision)
        store_key = self.keys.to_store(key)
        try:
            valid = self.keys.to_dotted(store_key) == key
        except SourceFormatError:
            valid = False
        if not valid:
            raise WriteError(
                f"{self.source}: {key!r} is not a dotted key such as db.port", source=self.source
            )
        # Refuse a value over a table, or a key under a value, before anything is sent:
        # read the keys the write could clash with (just those under its first segment).
        _, related = self._call(self.server.range, self.keys.write_scope(key))
        held = self.keys.index(e.key for e in related)  # dotted key -> its store keys
        kv.check_write_shape(list(held), key, value, source=self.source)
        payload = kv.encode_value(value, source=self.source, key=key)
        expected = None if expected_revision is None else int(expected_revision)
        ok, revision = self._call(self.server.put, store_key, payload, expected=expected)
        if not ok:
            raise self._conflict(key, store_key, expected, revision)
        return revision

    def _write_document(self, key: str, value: Any, expected_revision: Any) -> int:
        """Read-modify-CAS of the document key: retried while other writers win, unless the
        caller asked for a revision."""
        document = self.document or ""
        for _ in range(5):
            entry = self._call(self.server.get, document)
            actual = 0 if entry is None else entry.mod_revision
            expected = actual if expected_revision is None else int(expected_revision)
            if expected != actual:
                raise self._conflict(key, document, expected, actual)
            data: dict[str, Any] = {}
            if entry is not None:
                data = _plain(
                    parse_document(entry.value, "json", source=self.source, path=document)
                )
            kv.check_write_shape(data, key, value, source=self.source)  # what it would shadow
            _set_leaf(data, key, value, source=self.source)
            payload = json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8")
            ok, revision = self._call(self.server.put, document, payload, expected=actual)
            if ok:
                return revision
            if expected_revision is not None:
                raise self._conflict(key, document, expected, revision)
        raise WriteConflictError(
            f"{self.source}: the document key {document!r} kept changing; retry later",
            source=self.source,
            key=key,
        )

    def _conflict(
        self, key: str, store_key: str, expected: int | None, actual: int
    ) -> WriteConflictError:
        return WriteConflictError(
            f"{self.source}: {key} (kvdemo key {store_key}) is at revision "
            f"{actual or 'none (absent)'}, not {expected}; re-read and retry",
            source=self.source,
            key=key,
            expected=expected,
            actual=actual,
        )

    # -- delete, transactions, read (optional capabilities) --------------------------------

    def delete(self, key: str, expected_revision: Any = None) -> int:
        """Delete dotted ``key``: a one-op transaction."""
        return self.commit((WriteOp.delete(key, expected_revision),))

    def commit(self, ops: Sequence[WriteOp], force: bool = False) -> int:
        """Apply puts and deletes as ONE server revision, refused first by the kit."""
        ops = tuple(ops)
        if self.document is not None:
            return self._commit_document(ops, force)
        held: dict[str, list[str]] = {}
        for scope in {self.keys.write_scope(op.key) for op in ops}:
            _, entries = self._call(self.server.range, scope)
            held.update(self.keys.index(e.key for e in entries))
        kv.check_transaction(held.keys(), ops, source=self.source, force=force)
        puts: dict[str, bytes] = {}
        deletes: list[str] = []
        expected: dict[str, int] = {}
        for op in ops:
            where = held.get(op.key) or [self.keys.to_store(op.key)]
            if op.expected_revision is not None:
                expected[where[0]] = int(op.expected_revision)
            if op.action == "put":
                puts[where[0]] = kv.encode_value(op.value, source=self.source, key=op.key)
            else:
                deletes += held.get(op.key, [])
        ok, revision, stale = self._call(self.server.txn, puts, deletes, expected)
        if not ok:
            store_key, actual = next(iter(stale.items()))
            dotted = self.keys.to_dotted(store_key) or store_key
            raise self._conflict(dotted, store_key, expected[store_key], actual)
        return revision

    def _commit_document(self, ops: tuple[WriteOp, ...], force: bool) -> int:
        """One compare-and-swap of the document key; expected revisions are its own."""
        document = self.document or ""
        entry = self._call(self.server.get, document)
        actual = 0 if entry is None else entry.mod_revision
        for op in ops:
            if op.expected_revision is not None and int(op.expected_revision) != actual:
                raise self._conflict(op.key, document, int(op.expected_revision), actual)
        data = None
        if entry is not None:
            data = parse_document(entry.value, "json", source=self.source, path=document)
        payload = kv.commit_into_document(data, "json", ops, source=self.source, force=force)
        ok, revision = self._call(self.server.put, document, payload, expected=actual)
        if not ok:
            raise self._conflict(ops[0].key, document, actual, revision)
        return revision

    def read(self, key: str) -> tuple[Any, int]:
        """``(value, revision)`` of dotted ``key`` from the server; ``(MISSING, 0)`` if absent."""
        if self.document is not None:
            entry = self._call(self.server.get, self.document)
            if entry is None:
                return MISSING, 0
            node: Any = parse_document(entry.value, "json", source=self.source)
            for part in key.split("."):
                if not isinstance(node, Mapping) or part not in node:
                    return MISSING, entry.mod_revision
                node = node[part]
            return node, entry.mod_revision
        _, entries = self._call(self.server.range, self.keys.write_scope(key))
        held = self.keys.index(e.key for e in entries).get(key)
        found = self._call(self.server.get, held[0]) if held else None
        if found is None:
            return MISSING, 0
        return self._text(found.key, found.value), found.mod_revision

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the watch thread and join it. Idempotent."""
        self._stop.set()
        self.server.wake()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()


class _Resync(Exception):
    """The watch must read the whole prefix again."""


def _plain(value: Any) -> Any:
    """A parsed (read-only) document as plain dicts and lists, to modify."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _set_leaf(data: dict[str, Any], key: str, value: Any, *, source: str) -> None:
    """Set dotted ``key`` in a document, creating tables on the way (the caller has run
    ``kv.check_write_shape``, so no value is replaced by a table or the other way round)."""
    node = data
    *parents, leaf = key.split(".")
    if not all(parents) or not leaf:
        raise WriteError(f"{source}: {key!r} is not a dotted key such as db.port", source=source)
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


# -- the plugin --------------------------------------------------------------------------------


class KVDemoPlugin:
    """The plugin: serves ``kvdemo://SERVER/...`` specs for the servers it was given."""

    confhub_plugin_name = "kvdemo"

    def __init__(self, *servers: DemoServer) -> None:
        self.servers = {server.name: server for server in servers}

    @confhub.hookimpl
    def confhub_backend_schemes(self) -> list[confhub.BackendInfo]:
        return [
            confhub.BackendInfo(
                "kvdemo",
                "the kvdemo in-process KV server (kvdemo://SERVER/prefix/)",
                writable=True,
                watchable=True,
                volatile_options=VOLATILE_OPTIONS,
            )
        ]

    @confhub.hookimpl
    def confhub_make_backend(
        self, spec: SourceSpec, settings: confhub.BackendSettings
    ) -> DemoBackend | None:
        if spec.scheme != "kvdemo":
            return None
        kv.check_options(spec, OPTIONS, logger=log)  # a warning per unknown option, no error
        name = spec.location[2:].partition("/")[0]
        server = self.servers.get(name)
        if server is None:
            raise SpecError(
                f"{spec.display}: no kvdemo server named {name!r}; "
                f"known: {', '.join(sorted(self.servers)) or 'none'}",
                spec=spec.display,
            )
        return DemoBackend(spec, settings, server)

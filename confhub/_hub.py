"""The hub: loads sources, merges layers, publishes snapshots, notifies subscribers."""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

import attrs
import cattrs
import pluggy

from ._backend import Backend, BackendSettings, Update, can_watch, can_write
from ._binding import error_lines, make_converter, path_to_key
from ._errors import (
    BackendNotFoundError,
    ConfhubError,
    ConfigKeyError,
    ConfigValidationError,
    HubStateError,
    SourceFormatError,
    SourcePermissionError,
    SourceUnavailableError,
    StartupError,
    WriteError,
)
from ._layer import Layer, LayerDelta, too_many_keys
from ._merge import MISSING, Merged, merge_full, merge_update
from ._plugins import describe_plugins, make_plugin_manager
from ._redact import REDACTED, is_secret_key
from ._snapshot import Change, ErrorEvent, KeyChange, Snapshot, _UnusableSnapshot
from ._spec import Fallback, SourceLike, SourceSpec, as_slots

log = logging.getLogger("confhub")

T = TypeVar("T")


def _check_keys(spec: SourceSpec, layer: Layer) -> None:
    cap = spec.max_keys
    if len(layer.values) > cap:
        raise too_many_keys(spec.display, len(layer.values), cap)


class State(enum.Enum):
    """The lifecycle of a :class:`Hub`."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    CLOSED = "closed"


# -- health ----------------------------------------------------------------------------------


@attrs.frozen
class SourceHealth:
    """How one precedence slot is doing.

    ``state`` is one of:

    - ``"live"``: serving what the source holds now;
    - ``"stale"``: the source failed or sent content that was rejected; the last good
      layer is served (``last_error`` says why);
    - ``"cached"``: serving the on-disk copy of a source that could not be reached;
    - ``"fallback"``: serving an alternate member of a fallback group (``active``);
    - ``"absent"``: an optional source that contributes nothing;
    - ``"pending"``: not loaded yet.

    ``failed`` is true while the source's last attempt failed (``last_error`` says how):
    ``stale``, ``cached`` and a ``fallback`` always have it; an ``absent`` optional source has
    it when it could not be reached (not when it is merely empty).

    ``revision`` and ``fetched_at``/``age`` describe the layer being served.
    """

    source: str
    state: str
    active: str | None = None
    revision: Any = None
    fetched_at: float | None = None
    last_error: str | None = None
    since: float | None = None
    keys: int = 0

    @property
    def age(self) -> float | None:
        """Seconds since the served layer was fetched from its store."""
        return None if self.fetched_at is None else max(0.0, time.time() - self.fetched_at)

    @property
    def failed(self) -> bool:
        """Whether the source's last attempt failed (see ``last_error``)."""
        return self.last_error is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``confhub health --json`` contract)."""
        age = self.age
        return {
            "source": self.source,
            "state": self.state,
            "active": self.active,
            "revision": self.revision,
            "age_seconds": None if age is None else round(age, 3),
            "failed": self.failed,
            "last_error": self.last_error,
            "keys": self.keys,
        }


@attrs.frozen
class Health:
    """The hub's health: one :class:`SourceHealth` per slot, and whether any is degraded."""

    sources: tuple[SourceHealth, ...]
    generation: int

    @property
    def degraded(self) -> bool:
        """True when any source serves something other than its live content, or failed
        (an optional source that could not be reached counts; an empty one does not)."""
        return any(s.state not in ("live", "absent") or s.failed for s in self.sources)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``confhub health --json`` contract)."""
        return {
            "degraded": self.degraded,
            "generation": self.generation,
            "sources": [s.to_dict() for s in self.sources],
        }


# -- explain -------------------------------------------------------------------------------


@attrs.frozen
class Origin:
    """Where one layer's value of a key comes from."""

    source: str
    value: Any
    detail: str | None
    revision: Any
    effective: bool


@attrs.frozen
class Explanation:
    """Why a key has its value: the winning source and every layer that also sets it.

    Values of keys that look secret (``password``, ``token``, ``api_key`` ...) are replaced
    by ``"<redacted>"`` unless ``reveal=True`` was asked for.
    """

    key: str
    value: Any
    source: str
    detail: str | None
    revision: Any
    stale: bool
    state: str
    overridden: tuple[Origin, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``confhub explain --json`` contract)."""
        return {
            "key": self.key,
            "value": _jsonable(self.value),
            "source": self.source,
            "detail": self.detail,
            "revision": self.revision,
            "stale": self.stale,
            "state": self.state,
            "overridden": [
                {"source": o.source, "value": _jsonable(o.value), "detail": o.detail}
                for o in self.overridden
            ],
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# -- views and subscriptions ---------------------------------------------------------------


class View(Generic[T]):
    """A live typed view: ``view.current`` is always the latest valid bound instance.

    ``current`` is a plain attribute that the hub replaces when it publishes a snapshot
    (after binding succeeded), so reading it costs one attribute load.
    """

    __slots__ = ("__weakref__", "_fields", "_input", "cls", "current", "generation", "prefix")

    def __init__(self, cls: type[T], prefix: str | None, current: T, generation: int) -> None:
        self.cls = cls
        self.prefix = prefix
        self.current = current
        self.generation = generation
        # The nested input of the last binding, kept up to date with each change so that an
        # update re-binds from it instead of rebuilding the whole tree (None: rebuild).
        self._input: dict[str, Any] | None = None
        self._fields: frozenset[str] | None = (
            frozenset(a.name for a in attrs.fields(cls)) if attrs.has(cls) else None
        )

    def _relevant(self, changed: Sequence[tuple[str, Any, Any]]) -> list[tuple[str, Any]] | None:
        """The changes under this view as ``(relative key, new)``; ``None``: rebind all.

        Changes to keys the bound class does not declare are left out: cattrs ignores them.
        """
        prefix = self.prefix
        out: list[tuple[str, Any]] = []
        for key, _, new in changed:
            if prefix:
                if key == prefix or prefix.startswith(key + "."):
                    return None  # the table itself was replaced by a value, or back
                if not key.startswith(prefix + "."):
                    continue
                key = key[len(prefix) + 1 :]
            if self._fields is None or key.split(".", 1)[0] in self._fields:
                out.append((key, new))
        return out

    def _apply(self, changes: list[tuple[str, Any]]) -> dict[str, Any]:
        data = self._input
        assert data is not None
        for key, new in sorted(changes, key=lambda c: c[1] is not MISSING):
            parts = key.split(".")
            node = data
            if new is MISSING:
                trail = []
                for part in parts[:-1]:
                    trail.append((node, part))
                    child = node.get(part)
                    if not isinstance(child, dict):
                        break
                    node = child
                else:
                    node.pop(parts[-1], None)
                    for parent, part in reversed(trail):
                        if parent[part]:
                            break
                        del parent[part]
                continue
            for part in parts[:-1]:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
            node[parts[-1]] = new
        return data

    def __repr__(self) -> str:
        return f"<View {self.cls.__name__} generation={self.generation}>"


class Subscription:
    """A registered change callback; :meth:`cancel` stops further calls."""

    def __init__(
        self,
        hub: Hub,
        callback: Callable[[Change], Any] | None,
        prefix: str,
        on_error: Callable[[ErrorEvent], Any] | None,
        on_state: Callable[[SourceHealth], Any] | None = None,
    ) -> None:
        self._hub = hub
        self.on_state = on_state
        self.callback = callback
        self.prefix = prefix
        self.on_error = on_error
        self.on_close: Callable[[], Any] | None = None
        self.active = True

    def cancel(self) -> None:
        """Stop calling this subscription's callbacks (idempotent)."""
        if self.active:
            self.active = False
            self._hub._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


# -- slots ---------------------------------------------------------------------------------


class _Slot:
    """One precedence slot: its member specs, backends, and the layer it contributes."""

    def __init__(self, index: int, group: Fallback) -> None:
        self.index = index
        self.members = group.members
        self.display = group.display
        self.backends: list[Backend | None] = [None] * len(self.members)
        self.active: int | None = None  # which member serves
        self.layer: Layer | None = None  # published
        self.pending: Layer | None = None  # the active backend's latest state, if rejected
        self.state = "pending"
        self.last_error: BaseException | None = None
        # Why a preferred member is not serving, while an alternate (``active > 0``) does.
        self.down_error: BaseException | None = None
        self.since = time.time()
        self.poller: threading.Thread | None = None  # a poll= loop
        self.recoverer: threading.Thread | None = None  # retries a cached/alternate slot
        self.accepted: tuple[SourceSpec, Layer, Backend | None] | None = None
        # The store's state while it cannot be a layer (a leaf/parent clash): values, details.
        self.raw: tuple[dict[str, Any], dict[str, str]] | None = None
        self.accept_queued = False

    @property
    def optional(self) -> bool:
        return all(m.optional for m in self.members)

    @property
    def active_spec(self) -> SourceSpec:
        return self.members[self.active or 0]

    def health(self) -> SourceHealth:
        layer = self.layer
        error = self.last_error
        if error is None and self.active:  # on an alternate: the preferred member is down
            error = self.down_error
        return SourceHealth(
            source=self.display,
            state=self.state,
            active=self.active_spec.display if self.active is not None else None,
            revision=None if layer is None else layer.revision,
            fetched_at=None if layer is None else layer.fetched_at,
            last_error=None if error is None else str(error),
            since=self.since,
            keys=0 if layer is None else len(layer.values),
        )


_STOP = object()


def without_source(name: str, error: BaseException) -> str:
    """``error``'s message without a leading ``name: ``: backend errors start with their
    source's name, and a line that names the source already should say it once."""
    message = str(error)
    return message[len(name) + 2 :] if message.startswith(f"{name}: ") else message


class Hub:
    """Layered configuration from many sources, merged, typed, watched.

    ``sources`` lists where configuration comes from, lowest precedence first: spec strings
    (``"file:config.toml"``, ``"env:APP_"``, ``"etcd://host:2379/app/"``), :class:`SourceSpec`
    or :class:`Fallback` objects, and mappings or attrs instances of defaults. Nothing is
    read until :meth:`start` (or ``with hub:``).

    Reads (:meth:`get`, ``hub[key]``, :meth:`snapshot`, ``view.current``) take no lock and do
    no I/O: they read the current immutable snapshot. Updates from watchers build a new
    snapshot off to the side, validate it (every bound view, and the
    ``confhub_validate_snapshot`` hook), then publish it with one assignment; subscribers are
    then called on the hub's notifier thread, one at a time, in generation order.

    Keyword arguments:

    - ``plugins``: extra plugin objects or modules; ``block``: plugin names not to load;
      ``autoload``: discover entry-point plugins (default: yes, unless the environment
      variable ``CONFHUB_DISABLE_PLUGIN_AUTOLOAD`` is set).
    - ``cache_dir``: where remote sources keep their last good copy; default: the platform's
      user cache directory (``~/.cache/confhub``, or ``$CONFHUB_CACHE_DIR``); ``None``
      turns the cache off.
    - ``connect_timeout``: the default timeout of one attempt to reach a remote store
      (backends read it when the spec has no ``timeout=``); ``start_timeout``: the
      ceiling of the whole :meth:`start`.
    - ``retry_initial``/``retry_max``: the backoff (seconds, doubled with jitter, capped)
      of retries of a source served from cache or absent at start.
    - ``max_backlog``: when this many events wait behind slow subscribers, consecutive
      changes are merged (the last value of every key is still delivered).
    """

    def __init__(
        self,
        sources: Sequence[SourceLike],
        *,
        plugins: Iterable[Any] = (),
        block: Sequence[str] = (),
        autoload: bool | None = None,
        cache_dir: Any = MISSING,
        connect_timeout: float = 2.0,
        start_timeout: float = 10.0,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        max_backlog: int = 1000,
    ) -> None:
        self._slots = [_Slot(i, group) for i, group in enumerate(as_slots(sources))]
        self.cache_dir = cache_dir
        self.connect_timeout = connect_timeout
        self.start_timeout = start_timeout
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.max_backlog = max_backlog
        self.pm: pluggy.PluginManager = make_plugin_manager(plugins, block, autoload)
        self.converter: cattrs.Converter = make_converter()
        self.pm.hook.confhub_register_converters.call_historic(kwargs={"converter": self.converter})
        self._state = State.NEW
        self._lock = threading.RLock()
        self._snapshot: Snapshot = _UnusableSnapshot(
            "the hub is not started: use 'with hub:' or call hub.start() before reading"
        )
        self._generation = 0
        self._views: dict[tuple[type[Any], str | None], View[Any]] = {}
        self._subscribers: tuple[Subscription, ...] = ()
        self._events = _EventQueue(max_backlog)
        self._notifier: threading.Thread | None = None
        self._stop = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def state(self) -> State:
        """The lifecycle state."""
        return self._state

    def __enter__(self) -> Hub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Hub:
        """Load every source, publish the first snapshot and start watching.

        Raises :class:`StartupError` when a required source has no data anywhere,
        :class:`SourceFormatError` for broken content, :class:`BackendNotFoundError` for an
        unknown scheme, and :class:`HubStateError` when started twice or after close.
        """
        with self._lock:
            if self._state is not State.NEW:
                raise HubStateError(
                    f"Hub.start() called on a hub that is {self._state.value}; "
                    "a hub starts once: create a new Hub"
                )
            self._state = State.STARTING
        try:
            self.pm.hook.confhub_configure.call_historic(kwargs={"hub": self})
            deadline = time.monotonic() + self.start_timeout
            for slot in self._slots:
                self._load_slot(slot, deadline)
            merged = merge_full([s.layer for s in self._slots])
            snapshot = self._make_snapshot(merged, 1)
            self.pm.hook.confhub_validate_snapshot(snapshot=snapshot, previous=None)
        except BaseException:
            self._shutdown()
            raise
        with self._lock:
            self._generation = 1
            self._snapshot = snapshot
            self._state = State.RUNNING
        for slot in self._slots:
            if slot.layer is not None and slot.state in ("live", "fallback"):
                self._layer_accepted(slot, slot.layer)
        self._notifier = threading.Thread(
            target=self._notify_loop, name="confhub-notifier", daemon=True
        )
        self._notifier.start()
        for slot in self._slots:
            # Served from cache or by an alternate, or nothing could be loaded: retry (the
            # preferred members) until the store is back. An alternate is watched meanwhile.
            recover = slot.state in ("cached", "fallback") or (
                slot.active is None and any(getattr(b, "cacheable", False) for b in slot.backends)
            )
            if slot.state == "fallback" or not recover:
                self._start_watch(slot)
            if recover:
                slot.recoverer = threading.Thread(
                    target=self._recover_loop,
                    args=(slot,),
                    name=f"confhub-recover[{slot.display}]",
                    daemon=True,
                )
                slot.recoverer.start()
        return self

    def close(self) -> None:
        """Stop watchers and the notifier thread and join them. Idempotent.

        Reads after close raise :class:`HubStateError`; ``view.current`` keeps its last value.
        """
        with self._lock:
            if self._state is State.CLOSED:
                return
            was_running = self._state is State.RUNNING
            self._state = State.CLOSED
        self._shutdown()
        if was_running:
            try:
                self.pm.hook.confhub_unconfigure(hub=self)
            except Exception:
                log.exception("a plugin's confhub_unconfigure failed")

    def _shutdown(self) -> None:
        self._state = State.CLOSED
        self._stop.set()
        for slot in self._slots:
            for i, backend in enumerate(slot.backends):
                if backend is not None:
                    try:
                        backend.close()
                    except Exception:
                        log.exception("closing the backend of %s failed", slot.members[i].display)
            for thread in (slot.poller, slot.recoverer):
                if thread is not None and thread is not threading.current_thread():
                    thread.join(timeout=10)
            for backend in slot.backends:
                if backend is not None:
                    try:
                        backend.close()  # again: a recovery may have started a watch
                    except Exception:
                        log.exception("closing the backend of %s failed", slot.display)
        self._events.put(_STOP)
        notifier = self._notifier
        if notifier is not None and notifier is not threading.current_thread():
            notifier.join(timeout=10)
        self._snapshot = _UnusableSnapshot(
            "the hub is closed: reads need a running hub; create a new Hub"
        )
        for sub in self._subscribers:
            sub.active = False
        self._subscribers = ()

    def _check_running(self, what: str) -> None:
        if self._state is not State.RUNNING:
            raise HubStateError(
                f"{what} needs a running hub, but this hub is {self._state.value}; "
                "use 'with hub:' or hub.start()"
            )

    # -- loading ---------------------------------------------------------------------------
    def make_backend(self, spec: SourceSpec) -> Backend:
        """Create the backend object for ``spec`` through the plugins (no I/O)."""
        settings = BackendSettings(
            connect_timeout=self.connect_timeout,
            retry_initial=self.retry_initial,
            retry_max=self.retry_max,
            start_timeout=self.start_timeout,
            cache_enabled=self.cache_dir not in (None, False, "") and self.pm.has_plugin("cache"),
        )
        backend = self.pm.hook.confhub_make_backend(spec=spec, settings=settings, hub=self)
        if backend is None:
            installed = sorted(
                {info.scheme for infos in self.pm.hook.confhub_backend_schemes() for info in infos}
            )
            raise BackendNotFoundError(
                f"no installed backend handles {spec.scheme!r} (source {spec.display}); "
                f"installed schemes: {', '.join(installed)}; install the plugin that provides "
                f"it (for example 'pip install confhub-{spec.scheme}') or fix the spec",
                spec=spec.display,
                scheme=spec.scheme,
                installed=installed,
            )
        return backend  # type: ignore[no-any-return]

    def _load_live(self, spec: SourceSpec, backend: Backend, timeout: float) -> Layer:
        """Load through the hooks, bounded by ``timeout`` for remote backends."""
        if not getattr(backend, "cacheable", False):
            return self.pm.hook.confhub_load_layer(spec=spec, backend=backend)  # type: ignore[no-any-return]
        result: list[Any] = []

        def target() -> None:
            try:
                result.append(self.pm.hook.confhub_load_layer(spec=spec, backend=backend))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                result.append(exc)

        worker = threading.Thread(target=target, name=f"confhub-load[{spec.display}]", daemon=True)
        worker.start()
        worker.join(timeout)
        if not result:
            raise SourceUnavailableError(
                f"did not answer within {timeout:.2f}s (connect_timeout, or the "
                "start_timeout ceiling); check the store or raise the timeout",
                source=spec.display,
            )
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]  # type: ignore[no-any-return]

    def _load_slot(self, slot: _Slot, deadline: float) -> None:
        """Fill one slot: live members in order, then their caches; else absent or fail."""
        attempts: list[tuple[str, BaseException]] = []
        for spec in slot.members:
            _ = spec.max_keys  # a bad max_keys= is a SpecError now, not at an update
        for i, spec in enumerate(slot.members):
            backend = slot.backends[i] = self.make_backend(spec)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                attempts.append(
                    (
                        spec.display,
                        SourceUnavailableError(
                            f"not tried: the start ceiling of {self.start_timeout}s was reached",
                            source=spec.display,
                        ),
                    )
                )
                continue
            try:
                attempt = min(remaining, spec.option_float("timeout", self.connect_timeout))
                layer = self._load_live(spec, backend, attempt)
                _check_keys(spec, layer)  # SourceFormatError: refused like broken content
            except SourceUnavailableError as exc:
                attempts.append((spec.display, exc))
                self.pm.hook.confhub_source_failed(
                    spec=spec, error=exc, fallback=_next_name(slot, i) or "cache"
                )
                continue
            except SourcePermissionError as exc:
                # A refusal is an operator's error: do not hide it behind a cache.
                attempts.append((spec.display, exc))
                break
            slot.active = i
            slot.layer = layer
            slot.state = "live" if i == 0 else "fallback"
            if slot.optional and not layer.values:
                slot.state = "absent"  # an optional source that contributes nothing
            if attempts:
                slot.down_error = attempts[-1][1]
                log.warning(
                    "%s: serving the alternate %s (%s)", slot.display, spec.display, attempts[-1][1]
                )
            slot.since = time.time()
            return
        if not any(isinstance(e, SourcePermissionError) for _, e in attempts):
            for i, spec in enumerate(slot.members):
                layer = self.pm.hook.confhub_load_cached(spec=spec, backend=slot.backends[i])
                if layer is None:
                    continue
                cap = spec.max_keys
                if len(layer.values) > cap:
                    error = too_many_keys(spec.display, len(layer.values), cap)
                    log.warning("not serving the cached copy: %s", error)
                    continue
                slot.active = i
                slot.layer = layer
                slot.state = "cached"
                slot.last_error = attempts[-1][1] if attempts else None
                slot.since = time.time()
                log.warning(
                    "%s is unavailable (%s); serving its cached copy (revision %s, %.0fs old)",
                    slot.display,
                    slot.last_error,
                    layer.revision,
                    time.time() - layer.fetched_at,
                )
                return
        if slot.optional:
            slot.state = "absent"
            slot.last_error = attempts[-1][1] if attempts else None
            log.warning("%s is unavailable and optional; it contributes nothing", slot.display)
            return
        lines = "; ".join(f"{what}: {without_source(what, err)}" for what, err in attempts)
        refused = any(isinstance(e, SourcePermissionError) for _, e in attempts)
        cached = (
            " and has no usable cache"
            if not refused and any(getattr(b, "cacheable", False) for b in slot.backends)
            else ""
        )
        raise StartupError(
            f"required source {slot.display} could not be loaded ({lines}){cached}; "
            "start the store, add a fallback, or mark the source optional",
            source=slot.display,
            attempts=attempts,
        )

    def _recover_loop(self, slot: _Slot) -> None:
        """Retry a slot served from cache (or absent) with capped, jittered backoff; for a
        slot served by an alternate, retry the members it prefers and promote back to the
        first that answers (its full read is applied as one update: only effective changes
        are published), then stop watching the alternate."""
        delay = self.retry_initial
        alternate = slot.active if slot.state == "fallback" else None
        while not self._stop.wait(delay * random.uniform(0.5, 1.0)):  # noqa: S311 - jitter
            for i, spec in enumerate(slot.members):
                if alternate is not None and i >= alternate:
                    break
                backend = slot.backends[i]
                if backend is None:
                    continue
                try:
                    layer = self.pm.hook.confhub_load_layer(spec=spec, backend=backend)
                except (SourceUnavailableError, SourcePermissionError) as exc:
                    if alternate is not None:
                        slot.down_error = exc
                    continue
                except ConfhubError as exc:
                    if alternate is not None:
                        # The alternate serves well: a preferred member's broken content
                        # shows in health, and is no reason to mark the slot stale.
                        slot.down_error = exc
                    else:
                        self._on_update(slot, exc)
                    continue
                with self._lock:
                    if self._state is not State.RUNNING:
                        return
                    slot.active = i
                    slot.pending = slot.raw = None  # the alternate's, not this member's
                    self._on_update(slot, layer)
                    if slot.layer is layer:
                        slot.down_error = None
                        log.info("%s is back: serving %s live", slot.display, spec.display)
                if alternate is not None:
                    # Its watch is dropped (notify checks the member), then closed, outside
                    # the hub's lock: a backend may hold its own lock while it notifies.
                    old = slot.backends[alternate]
                    if old is not None:
                        old.close()
                self._start_watch(slot)
                return
            delay = min(delay * 2, self.retry_max)

    def _start_watch(self, slot: _Slot) -> None:
        if slot.active is None:
            return
        backend = slot.backends[slot.active]
        spec = slot.active_spec

        def notify(update: Update, _slot: _Slot = slot, _member: int = slot.active) -> None:
            with self._lock:
                if _slot.active != _member:
                    return  # a member this slot left (promoted back to a preferred one)
                self._on_update(_slot, update)

        if can_watch(backend):
            try:
                backend.watch(notify)  # type: ignore[union-attr]
            except ConfhubError as exc:
                self._on_update(slot, exc)
            return
        interval = spec.options.get("poll")
        if interval is None:
            return
        period = spec.option_float("poll", 0.0)
        slot.poller = threading.Thread(
            target=self._poll_loop,
            args=(slot, backend, period, notify),
            name=f"confhub-poll[{spec.display}]",
            daemon=True,
        )
        slot.poller.start()

    def _poll_loop(
        self, slot: _Slot, backend: Any, period: float, notify: Callable[[Update], None]
    ) -> None:
        while not self._stop.wait(period):
            try:
                notify(self.pm.hook.confhub_load_layer(spec=slot.active_spec, backend=backend))
            except ConfhubError as exc:
                notify(exc)

    # -- updates ---------------------------------------------------------------------------
    def _on_update(self, slot: _Slot, update: Update) -> None:
        """Apply one backend update: build, validate, publish, or keep last good."""
        with self._lock:
            if self._state is not State.RUNNING:
                return
            if isinstance(update, BaseException):
                self._source_error(slot, update)
                return
            base = slot.pending if slot.pending is not None else slot.layer
            via_raw = slot.raw is not None
            try:
                new_layer = self._next_layer(slot, base, update)
            except SourceFormatError as exc:
                self._source_error(slot, exc)
                return
            published = slot.layer
            if published is None:
                delta = (Layer.from_flat({}, source=slot.display)).diff(new_layer)
            elif base is published and isinstance(update, LayerDelta) and not via_raw:
                delta = update  # the fast path: the backend's delta is exactly the change
            else:
                delta = published.diff(new_layer)
            old = self._snapshot
            layers = old._layers
            merged, changed = merge_update(old._merged, layers, slot.index, new_layer, delta)
            slot_layers = list(layers)
            slot_layers[slot.index] = new_layer
            if not changed:
                # Nothing effective changed (masked, or same values): no new generation.
                self._snapshot = Snapshot(old.generation, merged, tuple(slot_layers), old._names)
                self._accept(slot, new_layer)
                return
            generation = self._generation + 1
            snapshot = Snapshot(generation, merged, tuple(slot_layers), old._names)
            try:
                bound = self._validate(snapshot, old, changed)
            except Exception as exc:  # noqa: BLE001 - any veto rejects the update, reported
                slot.pending = new_layer
                self._source_error(slot, exc, rejected=True)
                return
            self._generation = generation
            self._snapshot = snapshot
            for view, instance in bound:
                view.current = instance
                view.generation = generation
            self._accept(slot, new_layer)
            changed.sort(key=lambda c: c[0])
            change = Change(
                generation,
                tuple(KeyChange(k, o, n) for k, o, n in changed),
                slot.active_spec.display,
            )
            self._events.put(change)

    def _next_layer(self, slot: _Slot, base: Layer | None, update: Layer | LayerDelta) -> Layer:
        """The layer the backend now holds, or SourceFormatError if it cannot be one.

        A delta that makes a key both a leaf and a parent cannot be applied to a layer, nor
        can an update that takes the source above its ``max_keys=``; the store's state is
        then tracked as a plain dict (``slot.raw``) so that no later delta is lost, until a
        delta makes it a valid layer again.
        """
        spec = slot.active_spec
        cap = spec.max_keys
        if not isinstance(update, LayerDelta):
            slot.raw = None
            if len(update.values) > cap:
                # Later deltas apply to what the store holds, not to the last good layer.
                slot.raw = (dict(update.values), dict(update.details))
                raise too_many_keys(spec.display, len(update.values), cap)
            return update
        if base is None:
            base = Layer.from_flat({}, source=slot.display)
        if slot.raw is None:
            try:
                applied = base.apply(update, source=slot.display)
            except SourceFormatError:
                slot.raw = (dict(base.values), dict(base.details))
            else:
                if len(applied.values) <= cap:
                    return applied
                slot.raw = (dict(applied.values), dict(applied.details))
                raise too_many_keys(spec.display, len(applied.values), cap)
        values, details = slot.raw
        for key in update.deleted:
            if key not in update.set:
                values.pop(key, None)
                details.pop(key, None)
        values.update(update.set)
        details.update(update.details)
        if len(values) > cap:
            raise too_many_keys(spec.display, len(values), cap)
        layer = Layer.from_flat(
            values, source=slot.display, revision=update.revision, details=details
        )
        slot.raw = None
        return layer

    def _accept(self, slot: _Slot, layer: Layer) -> None:
        slot.layer = layer
        slot.pending = None
        state = "live" if not slot.active else "fallback"
        if slot.optional and not layer.values:
            state = "absent"
        if slot.state != state or slot.last_error is not None:
            log.info("%s is %s again", slot.display, state)
            slot.state = state
            slot.last_error = None
            slot.since = time.time()
            self._events.put(slot.health())
        self._layer_accepted(slot, layer)

    def _layer_accepted(self, slot: _Slot, layer: Layer) -> None:
        """Tell plugins (the cache) about an accepted layer, coalesced per slot.

        Only the latest layer of a slot matters to a cache, so a burst of updates queues
        one call, not one per update: the notifier's queue stays bounded by the slots.
        """
        slot.accepted = (slot.active_spec, layer, slot.backends[slot.active or 0])
        if slot.accept_queued:
            return
        slot.accept_queued = True

        def call() -> None:
            with self._lock:
                spec, latest, backend = slot.accepted  # type: ignore[misc]
                slot.accept_queued = False
            self.pm.hook.confhub_layer_accepted(spec=spec, layer=latest, backend=backend)

        self._events.put(call)

    def _source_error(self, slot: _Slot, error: BaseException, *, rejected: bool = False) -> None:
        changed_state = str(error) != str(slot.last_error)
        slot.last_error = error
        if slot.state == "live" or changed_state:
            slot.state = "stale" if slot.layer is not None else "absent"
            slot.since = time.time()
            message = without_source(slot.display, error)
            if rejected or isinstance(error, SourceFormatError):
                log.error(
                    "%s: update rejected, keeping the last good configuration: %s",
                    slot.display,
                    message,
                )
            else:
                log.warning("%s: %s; serving the last good configuration", slot.display, message)
            self.pm.hook.confhub_source_failed(
                spec=slot.active_spec,
                error=error,
                fallback="last good" if slot.layer is not None else None,
            )
            self._events.put(ErrorEvent(slot.display, error, self._generation))
            self._events.put(slot.health())

    def _validate(
        self, snapshot: Snapshot, previous: Snapshot, changed: Sequence[tuple[str, Any, Any]]
    ) -> list[tuple[View[Any], Any]]:
        """Re-bind the views the change touches, then ask the validators.

        A view whose declared fields did not change keeps its instance (cattrs ignores
        undeclared keys, so binding again would give an equal one).
        """
        bound = []
        try:
            for view in self._views.values():
                relevant = view._relevant(changed)
                if relevant is not None and not relevant:
                    continue
                if relevant is None or view._input is None:
                    view._input = None
                    data = _plain(_subtree(snapshot._tree(), view.prefix))
                    view._input = data
                else:
                    data = view._apply(relevant)
                bound.append((view, self._structure(snapshot, view.cls, view.prefix, data)))
            self.pm.hook.confhub_validate_snapshot(snapshot=snapshot, previous=previous)
        except BaseException:
            for view in self._views.values():
                view._input = None  # holds the rejected state: rebuild on the next update
            raise
        return bound

    def _make_snapshot(self, merged: Merged, generation: int) -> Snapshot:
        return Snapshot(
            generation,
            merged,
            tuple(s.layer for s in self._slots),
            tuple(s.display for s in self._slots),
        )

    # -- reads -----------------------------------------------------------------------------
    def get(self, key: str, default: Any = MISSING) -> Any:
        """Return the effective value of dotted ``key`` (a read-only mapping for a table).

        Raises :class:`ConfigKeyError` (a ``KeyError``) when no source provides it and no
        ``default`` was given. Takes no lock and does no I/O.
        """
        snap = self._snapshot
        try:
            return snap._values[key]
        except KeyError:
            return snap._lookup(key, default)

    def __getitem__(self, key: str) -> Any:
        snap = self._snapshot
        try:
            return snap._values[key]
        except KeyError:
            return snap._lookup(key, MISSING)

    def __contains__(self, key: str) -> bool:
        return key in self._snapshot

    def snapshot(self) -> Snapshot:
        """Return the current snapshot (immutable; carries ``generation``)."""
        snap = self._snapshot
        if snap.generation < 0:
            snap._lookup("", MISSING)  # raises the state error
        return snap

    @property
    def generation(self) -> int:
        """The generation of the current snapshot."""
        return self._snapshot.generation

    # -- typed binding ---------------------------------------------------------------------
    def _bind(self, snapshot: Snapshot, cls: type[T], prefix: str | None) -> T:
        return self._structure(snapshot, cls, prefix, _subtree(snapshot._tree(), prefix))

    def _structure(self, snapshot: Snapshot, cls: type[T], prefix: str | None, data: Any) -> T:
        try:
            return self.converter.structure(data, cls)
        except Exception as exc:
            lines = [self._annotate(snapshot, line, prefix) for line in error_lines(exc)]
            raise ConfigValidationError(
                f"configuration does not fit {cls.__qualname__}:\n  " + "\n  ".join(lines),
                errors=lines,
            ) from exc

    def _annotate(self, snapshot: Snapshot, line: str, prefix: str | None) -> str:
        """Add the source of the bad value to a ``... @ $.db.port`` line."""
        _, _, path = line.rpartition(" @ ")
        key = path_to_key(path)
        if prefix:
            key = f"{prefix}.{key}" if key else prefix
        if is_secret_key(key):
            # The message may quote the value (``got 'hunter2'``): never for a secret.
            line = f"invalid value (redacted: the key looks secret) @ {path}"
        index = snapshot.origin_index(key)
        if index is None:
            return line
        layer = snapshot._layers[index]
        detail = layer.detail(key) if layer is not None else None
        where = self._slots[index].display + (f" ({detail})" if detail else "")
        return f"{line} (from {where})"

    def bind(self, cls: type[T], *, prefix: str | None = None) -> T:
        """Return an instance of attrs class ``cls`` built from the current snapshot.

        ``prefix`` binds a sub-table (``prefix="db"``). Raises
        :class:`ConfigValidationError` listing every bad path (``expected int @ $.db.port``).
        """
        return self._bind(self.snapshot(), cls, prefix)

    def view(self, cls: type[T], *, prefix: str | None = None) -> View[T]:
        """Return the live :class:`View` of ``cls`` (one per class and prefix).

        From now on every update is bound to ``cls`` before it is published: an update
        that does not fit is rejected and the last good configuration stays.
        """
        with self._lock:
            self._check_running("hub.view()")
            key = (cls, prefix)
            view = self._views.get(key)
            if view is None:
                snap = self._snapshot
                data = _plain(_subtree(snap._tree(), prefix))
                view = View(cls, prefix, self._structure(snap, cls, prefix, data), snap.generation)
                view._input = data
                self._views[key] = view
            return view

    # -- subscriptions ---------------------------------------------------------------------
    def subscribe(
        self,
        callback: Callable[[Change], Any] | None = None,
        *,
        prefix: str = "",
        on_error: Callable[[ErrorEvent], Any] | None = None,
        on_state: Callable[[SourceHealth], Any] | None = None,
    ) -> Subscription:
        """Call ``callback(change)`` for every published change at or below ``prefix``.

        Callbacks run on the hub's notifier thread, one at a time, in generation order; the
        :class:`Change` they get holds only keys under ``prefix``. A raising callback is
        logged and does not stop the others. ``on_error(event)`` is called with an
        :class:`ErrorEvent` when an update was rejected or a source failed, and
        ``on_state(health)`` with the new :class:`SourceHealth` whenever a source changes
        state (live -> stale -> live, cached -> live ...).
        """
        if self._state is State.CLOSED:
            raise HubStateError("hub.subscribe() on a closed hub; create a new Hub")
        sub = Subscription(self, callback, prefix, on_error, on_state)
        with self._lock:
            self._subscribers = (*self._subscribers, sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subscribers = tuple(s for s in self._subscribers if s is not sub)

    async def changes(self, *, prefix: str = "") -> AsyncIterator[Change]:
        """Yield each published :class:`Change` at or below ``prefix``, asynchronously.

        ``async for change in hub.changes(prefix="db"): ...``. The iteration ends when the
        hub closes. Changes are queued without bound for a slow consumer.
        """
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[Change | None] = asyncio.Queue()

        def push(item: Change | None) -> None:
            try:
                loop.call_soon_threadsafe(inbox.put_nowait, item)
            except RuntimeError:  # the loop closed
                pass

        sub = self.subscribe(push, prefix=prefix)
        sub.on_close = lambda: push(None)
        try:
            while True:
                item = await inbox.get()
                if item is None:
                    return
                yield item
        finally:
            sub.cancel()

    def _notify_loop(self) -> None:
        while True:
            item = self._events.get()
            if item is _STOP or self._stop.is_set():
                # Closing: changes still queued are not delivered, but the plugins' calls
                # (one per slot at most: the cache's write of the last accepted layer) are
                # run, so that the last published configuration is not missing from disk.
                for pending in (item, *self._events.drain()):
                    if pending is not _STOP and _is_call(pending):
                        self._deliver(pending)
                for sub in self._subscribers:
                    if sub.on_close is not None:
                        sub.on_close()
                return
            self._deliver(item)

    def _deliver(self, item: Any) -> None:
        if _is_call(item):
            try:
                item()
            except Exception:
                log.exception("a confhub plugin failed after an update; ignored")
            return
        for sub in self._subscribers:
            if not sub.active:
                continue
            try:
                if isinstance(item, Change):
                    if sub.callback is not None:
                        part = item.filtered(sub.prefix)
                        if part is not None:
                            sub.callback(part)
                elif isinstance(item, SourceHealth):
                    if sub.on_state is not None:
                        sub.on_state(item)
                elif sub.on_error is not None:
                    sub.on_error(item)
            except Exception:
                log.exception(
                    "subscriber %r raised while handling generation %s; "
                    "the other subscribers still run",
                    getattr(sub.callback, "__qualname__", sub.callback),
                    getattr(item, "generation", "?"),
                )
        if isinstance(item, Change):
            try:
                self.pm.hook.confhub_snapshot_published(change=item)
            except Exception:
                log.exception("a plugin's confhub_snapshot_published failed; ignored")

    # -- health and explain ----------------------------------------------------------------
    def health(self) -> Health:
        """Return the state of every source (works in any lifecycle state)."""
        return Health(tuple(s.health() for s in self._slots), max(self._snapshot.generation, 0))

    @property
    def sources(self) -> tuple[str, ...]:
        """The display names of the precedence slots, lowest first."""
        return tuple(s.display for s in self._slots)

    def explain(self, key: str, *, reveal: bool = False) -> Explanation:
        """Explain where ``key``'s value comes from, and which layers it overrides.

        Raises :class:`ConfigKeyError` when no source provides a leaf at ``key``.
        """
        snap = self.snapshot()
        index = snap.origin_index(key)
        if index is None:
            snap[key]  # raises ConfigKeyError with hints, or returns a table
            raise ConfigKeyError(
                key,
                f"{key!r} is a table, not a value; explain one of its keys, such as "
                f"{next(k for k in snap.flat() if k.startswith(key + '.'))!r}",
            )
        secret = is_secret_key(key) and not reveal
        overridden = []
        for i in range(len(snap._layers) - 1, -1, -1):
            layer = snap._layers[i]
            if i == index or layer is None or key not in layer.values:
                continue
            overridden.append(
                Origin(
                    self._slots[i].display,
                    REDACTED if secret else layer.values[key],
                    layer.detail(key),
                    layer.revision,
                    False,
                )
            )
        layer = snap._layers[index]
        assert layer is not None
        slot = self._slots[index]
        return Explanation(
            key=key,
            value=REDACTED if secret else snap._values[key],
            source=slot.active_spec.display if slot.active is not None else slot.display,
            detail=layer.detail(key),
            revision=layer.revision,
            stale=slot.state in ("stale", "cached"),
            state=slot.state,
            overridden=tuple(overridden),
        )

    def explain_all(self, *, reveal: bool = False) -> list[Explanation]:
        """Explain every effective key, sorted."""
        snap = self.snapshot()
        return [self.explain(k, reveal=reveal) for k in sorted(snap.flat())]

    # -- writes ----------------------------------------------------------------------------
    def write(
        self, key: str, value: Any, *, source: str | None = None, expected_revision: Any = MISSING
    ) -> Any:
        """Write ``key`` to a writable source (the highest one, or the one named ``source``).

        With ``expected_revision`` the write is a compare-and-swap on the key's revision
        (0 means "must not exist"); a lost race raises :class:`WriteConflictError`.
        Returns the new revision. The change reaches readers through the watch.
        """
        self._check_running("hub.write()")
        for slot in reversed(self._slots):
            if source is not None and source not in (
                slot.display,
                *[m.display for m in slot.members],
            ):
                continue
            backend = slot.backends[slot.active or 0]
            if backend is not None and can_write(backend):
                return backend.write(  # type: ignore[attr-defined]
                    key, value, None if expected_revision is MISSING else expected_revision
                )
        raise WriteError(
            "no writable source"
            + (f" named {source!r}" if source else "")
            + f" among {', '.join(self.sources)}; files and env are read-only here",
            source=source or "",
            key=key,
        )

    def backends(self) -> list[dict[str, Any]]:
        """Describe the installed backend plugins (scheme, distribution, version)."""
        return describe_plugins(self.pm)

    def __repr__(self) -> str:
        return (
            f"<Hub {self._state.value} sources={list(self.sources)!r} generation={self.generation}>"
        )


class _EventQueue:
    """The notifier's queue: FIFO, and bounded by merging changes when it grows.

    When more than ``limit`` events wait (slow or blocked subscribers), every run of
    consecutive changes is merged into one: the last value of every key is still
    delivered, generations in between are skipped, and memory stays bounded by the number
    of distinct keys rather than the number of updates.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self.coalesced = 0

    def put(self, item: Any) -> None:
        with self._cond:
            self._items.append(item)
            if len(self._items) > self.limit:
                before = len(self._items)
                self._items = collections.deque(_coalesce_runs(self._items))
                self.coalesced += before - len(self._items)
            self._cond.notify()

    def get(self) -> Any:
        with self._cond:
            while not self._items:
                self._cond.wait()
            return self._items.popleft()

    def qsize(self) -> int:
        return len(self._items)

    def drain(self) -> list[Any]:
        """Remove and return everything queued."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items


def _is_call(item: Any) -> bool:
    """Whether a queued item is a plugin call rather than an event for subscribers."""
    return callable(item) and not isinstance(item, (Change, ErrorEvent, SourceHealth))


def _coalesce_runs(items: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    run: list[Change] = []
    for item in [*items, _STOP_RUN]:
        if isinstance(item, Change):
            run.append(item)
            continue
        if run:
            merged = _merge_changes(run)
            if merged is not None:
                out.append(merged)
            run = []
        if item is not _STOP_RUN:
            out.append(item)
    return out


_STOP_RUN = object()


def _merge_changes(run: list[Change]) -> Change | None:
    """One change equivalent to ``run`` applied in order (``None`` if it nets to nothing)."""
    if len(run) == 1:
        return run[0]
    first_old: dict[str, Any] = {}
    last_new: dict[str, Any] = {}
    sources: dict[str, None] = {}
    for change in run:
        sources[change.source] = None
        for c in change.changes:
            first_old.setdefault(c.key, c.old)
            last_new[c.key] = c.new
    kept = tuple(
        KeyChange(k, first_old[k], last_new[k])
        for k in sorted(last_new)
        if first_old[k] is not last_new[k] and first_old[k] != last_new[k]
    )
    if not kept:
        return None
    return Change(run[-1].generation, kept, ", ".join(sources))


def _subtree(tree: Any, prefix: str | None) -> Any:
    """The part of a nested mapping at dotted ``prefix`` (an empty dict if absent)."""
    if prefix:
        for part in prefix.split("."):
            tree = tree.get(part, {}) if hasattr(tree, "get") else {}
    return tree


def _plain(tree: Any) -> Any:
    """A mutable plain-dict copy of a nested read-only mapping."""
    if hasattr(tree, "items"):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


def _next_name(slot: _Slot, i: int) -> str | None:
    return slot.members[i + 1].display if i + 1 < len(slot.members) else None

"""The hub: the facade that wires the stages of the pipeline together.

The stages, in the order data flows through them (``docs/architecture.md``)::

    specs -> Slot (``_slot``) -> start-up chain, recovery, polling (``_fallback``)
          -> backends notify -> Publisher (``_publish``): next layer -> merge -> validate/bind
          -> swap -> Dispatcher (``_dispatch``: subscribers) and Persister (``_persist``: the cache)

``Hub`` owns the current snapshot and wires the stages; its ``Lifecycle`` (``_lifecycle``)
holds the state, the lock that serialises updates and the steps of start and close; every
step of an update is a named method of ``Publisher.publish``'s chain.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, TypeVar

import cattrs
import pluggy

from . import _aio
from ._backend import Backend, BackendSettings, is_strict
from ._binding import Binder, LazyConverter, View
from ._cache import layers_wanted, volatile_options
from ._dispatch import Dispatcher, Subscription
from ._errors import (
    HubStateError,
)
from ._explain import Explanation, explain
from ._fleet import hub_share, share_source
from ._fromconfig import hub_arguments
from ._health import Health, SourceHealth
from ._lifecycle import Lifecycle, State
from ._merge import MISSING
from ._persist import Persister
from ._plugins import describe_plugins, make_backend, make_plugin_manager
from ._probes import Readiness, readiness
from ._publish import Publisher
from ._slot import Slot, backend_named, writable_backend
from ._snapshot import Change, ErrorEvent, Snapshot, UnusableSnapshot
from ._spec import SourceLike, SourceSpec, as_slots
from ._strict import UnknownPolicy
from ._writes import UPDATE_RETRIES, Transaction, Updated, Writer

log = logging.getLogger("confhub")

T = TypeVar("T")


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
    - ``share``: ``"host"`` makes the processes of this host that open the same remote
      source with the same cache directory share one store connection and watch (one
      leader, the others follow: ``docs/fleet.md``); default ``$CONFHUB_SHARE``, else none.
      A source's ``?share=host`` or ``?share=none`` wins.
    - ``max_backlog``: when more events than this wait behind slow subscribers, the waiting
      changes are merged (the last value of every key is still delivered) and only the
      latest error and state event per source is kept: bounded by sources and keys.
    - ``unknown``: what :meth:`bind` and :meth:`view` do with keys the bound class does
      not declare, unless they say: ``"forbid"`` (the default), ``"warn"`` or ``"ignore"``.
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
        share: str | None = None,
        unknown: UnknownPolicy = "forbid",
    ) -> None:
        self._slots = [Slot(i, group) for i, group in enumerate(as_slots(sources))]
        self.cache_dir = cache_dir
        self.connect_timeout = connect_timeout
        self.start_timeout = start_timeout
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.max_backlog = max_backlog
        self.share = hub_share(share)
        self.pm: pluggy.PluginManager = make_plugin_manager(plugins, block, autoload)
        self._converter = LazyConverter(  # built on first need: the ``converter`` property
            lambda converter: self.pm.hook.confhub_register_converters.call_historic(
                kwargs={"converter": converter}
            )
        )
        self._binder = Binder(
            lambda: self.converter,
            unknown=unknown,
            lenient=lambda: frozenset(
                s.index for s in self._slots if not is_strict(s.active_backend)
            ),
        )
        lock = threading.RLock()
        self._snapshot: Snapshot = UnusableSnapshot(
            "the hub is not started: use 'with hub:' or call hub.start() before reading"
        )
        self._dispatcher = Dispatcher(
            max_backlog,
            lambda change, seconds: self.pm.hook.confhub_snapshot_published(
                change=change, subscriber_seconds=seconds
            ),
        )
        self._persister = Persister(
            self.pm.hook.confhub_layer_accepted,
            layers_wanted(self.pm.hook.confhub_layer_accepted),
        )
        self._publisher = Publisher(
            self._binder,
            self._dispatcher,
            self._persister,
            validate=self.pm.hook.confhub_validate_snapshot,
            source_failed=self.pm.hook.confhub_source_failed,
            current=lambda: self._snapshot,
            swap=self._set_snapshot,
            running=lambda: self._life.state is State.RUNNING,
            lock=lock,
        )
        self._writer = Writer(self._slots, self.make_backend)
        self._life = Lifecycle(
            self._slots,
            self._dispatcher,
            self._persister,
            self._publisher,
            lock=lock,
            hook=self.pm.hook,
            configure=lambda: self.pm.hook.confhub_configure.call_historic(kwargs={"hub": self}),
            unconfigure=lambda: self.pm.hook.confhub_unconfigure(hub=self),
            settings=self._settings,
            make_backend=self.make_backend,
            swap=self._set_snapshot,
            close=self.close,
        )

    @property
    def converter(self) -> cattrs.Converter:
        """The hub's own cattrs converter, built on first need: the first :meth:`bind`,
        :meth:`view`, the start of a ``defaults`` source, or this
        attribute read. Building it calls ``confhub_register_converters`` on every plugin
        (historic: a plugin registered later is called at registration); an error a plugin
        raises there surfaces from that first need, and from every later one."""
        return self._converter.get()

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> Hub:
        """A hub on the sources of ``confhub.toml`` / ``[tool.confhub]`` in pyproject.toml
        (or ``path``, or ``$CONFHUB_CONFIG``): the file the ``confhub`` command reads, so
        the app and the CLI on a host read the same sources and cache directory.
        ``overrides`` are ``Hub`` keyword arguments (``sources=`` too) that win over the
        file's. :class:`ConfigFileError` names the file, the key and the fix."""
        return cls(**hub_arguments(path, overrides))

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def state(self) -> State:
        """The lifecycle state."""
        return self._life.state

    def __enter__(self) -> Hub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def astart(self) -> Hub:
        """:meth:`start` on a worker thread, so the event loop keeps running; cancelled, it
        closes the hub and waits for both before re-raising (``confhub._aio.run_start``)."""
        return await _aio.run_start(self.start, self.close)

    async def aclose(self) -> None:
        """:meth:`close` on a worker thread; it finishes even if the caller is cancelled."""
        await _aio.run_close(self.close)

    async def __aenter__(self) -> Hub:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self) -> Hub:
        """Load every source, publish the first snapshot and start watching.

        Raises :class:`StartupError` when a required source has no data anywhere,
        :class:`SourceFormatError` for broken content, :class:`BackendNotFoundError` for an
        unknown scheme, and :class:`HubStateError` when started twice or after close, or
        when :meth:`close` was called while it ran (start stops at its next step, closes
        what it opened, and the hub stays closed).
        """
        self._life.start()
        return self

    def close(self) -> None:
        """Stop watchers and the notifier thread and join them. Idempotent.

        Reads after close raise :class:`HubStateError`; ``view.current`` keeps its last value.
        Called while :meth:`start` runs (a signal handler), it closes what start opened so
        far and makes start stop at its next step and raise :class:`HubStateError`.
        """
        self._life.close()

    def _set_snapshot(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def _check_running(self, what: str) -> None:
        if self._life.state is not State.RUNNING:
            raise HubStateError(
                f"{what} needs a running hub, but this hub is {self._life.state.value}; "
                "use 'with hub:' or hub.start()"
            )

    # -- sources ---------------------------------------------------------------------------
    def _settings(self) -> BackendSettings:
        cache_enabled = self.cache_dir not in (None, False, "") and self.pm.has_plugin("cache")
        return BackendSettings(
            connect_timeout=self.connect_timeout,
            retry_initial=self.retry_initial,
            retry_max=self.retry_max,
            start_timeout=self.start_timeout,
            cache_enabled=cache_enabled,
        )

    def make_backend(self, spec: SourceSpec) -> Backend:
        """Create the backend object for ``spec`` through the plugins (no I/O)."""
        settings = self._settings()
        backend = make_backend(self.pm, spec, settings, hub=self)
        return share_source(
            backend,
            spec,
            mode=self.share,
            cache_dir=self.cache_dir,
            volatile=lambda: volatile_options(self.pm.hook),
            open_backend=lambda: make_backend(self.pm, spec, settings, hub=self),
            timeout=self.connect_timeout,
        )

    # -- reads -----------------------------------------------------------------------------
    def get(self, key: str, default: Any = MISSING) -> Any:
        """Return the effective value of dotted ``key`` (a read-only mapping for a table).

        Raises :class:`ConfigKeyError` (a ``KeyError``) when no source provides it and no
        ``default`` was given. Takes no lock and does no I/O.
        """
        snap = self._snapshot
        try:
            return snap.memo[key]
        except KeyError:
            return snap.read(key, default)

    def __getitem__(self, key: str) -> Any:
        snap = self._snapshot
        try:
            return snap.memo[key]
        except KeyError:
            return snap.read(key, MISSING)

    def __contains__(self, key: str) -> bool:
        return key in self._snapshot

    def snapshot(self) -> Snapshot:
        """Return the current snapshot (immutable; carries ``generation``)."""
        return self._snapshot.ensure_usable()

    @property
    def generation(self) -> int:
        """The generation of the current snapshot."""
        return self._snapshot.generation

    # -- typed binding ---------------------------------------------------------------------
    def bind(
        self, cls: type[T], *, prefix: str | None = None, unknown: UnknownPolicy | None = None
    ) -> T:
        """Return an instance of ``cls`` (attrs, dataclass, pydantic model, TypedDict) built
        from the current snapshot.

        ``prefix`` binds a sub-table (``prefix="db"``). Raises
        :class:`ConfigValidationError` listing every bad path (``expected int @ $.db.port``),
        :class:`UnknownKeyError` for keys ``cls`` does not declare unless ``unknown`` (or
        the hub's ``unknown=``) is ``"warn"`` or ``"ignore"``.
        """
        return self._binder.bind(self.snapshot(), cls, prefix, unknown)

    def view(
        self, cls: type[T], *, prefix: str | None = None, unknown: UnknownPolicy | None = None
    ) -> View[T]:
        """Return the live :class:`View` of ``cls`` (one per class, prefix and policy).

        From now on every update is bound to ``cls`` before it is published: an update
        that does not fit (a bad value, a key ``cls`` does not declare under the
        ``"forbid"`` policy) is rejected and the last good configuration stays.
        """
        with self._life.lock:
            self._check_running("hub.view()")
            return self._binder.view(self._snapshot, cls, prefix, unknown)

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
        if self._life.state is State.CLOSED:
            raise HubStateError("hub.subscribe() on a closed hub; create a new Hub")
        return self._dispatcher.subscribe(callback, prefix, on_error, on_state)

    def changes(self, *, prefix: str = "", since: Snapshot | None = None) -> AsyncIterator[Change]:
        """Yield each published :class:`Change` at or below ``prefix``, asynchronously.

        ``async for change in hub.changes(prefix="db"): ...``. The iteration ends when the
        hub closes (also one that never ran: closed before start, or whose start failed).
        Changes are queued without bound for a slow consumer. ``since``: a snapshot the
        consumer already has (``snap = hub.snapshot()``, sent first); the stream then starts
        right after it, with one catch-up change if the hub moved on meanwhile: nothing is
        missed or repeated (``confhub._aio.stream``).
        """
        return _aio.stream(self.subscribe, self.snapshot, prefix=prefix, since=since)

    def events(
        self, *, prefix: str = "", changes: bool = True, errors: bool = True, states: bool = True
    ) -> AsyncIterator[Change | ErrorEvent | SourceHealth]:
        """Like :meth:`changes`, with the :class:`ErrorEvent` and :class:`SourceHealth`
        events that ``subscribe(on_error=, on_state=)`` gets, in delivery order."""
        stream = _aio.stream
        return stream(self.subscribe, self.snapshot, prefix=prefix, changes=changes,
                      errors=errors, states=states)  # fmt: skip

    # -- health and explain ----------------------------------------------------------------
    def health(self) -> Health:
        """Return the state of every source (works in any lifecycle state)."""
        return Health(tuple(s.health() for s in self._slots), max(self._snapshot.generation, 0))

    def readiness(self, *, max_stale: float | None = None) -> Readiness:
        """Whether this service should receive traffic: running, every source serving
        (from its cache too: see ``confhub._probes``); ``max_stale`` seconds: also not
        ready when a stale or cached copy is older."""
        return readiness(self._life.state.value, self.health(), max_stale=max_stale)

    @property
    def sources(self) -> tuple[str, ...]:
        """The display names of the precedence slots, lowest first."""
        return tuple(s.display for s in self._slots)

    def explain(self, key: str, *, reveal: bool = False) -> Explanation:
        """Explain where ``key``'s value comes from, and which layers it overrides.

        Raises :class:`ConfigKeyError` when no source provides a leaf at ``key``.
        """
        snap = self.snapshot()
        return explain(snap, [s.health() for s in self._slots], key, reveal=reveal)

    def explain_all(self, *, reveal: bool = False) -> list[Explanation]:
        """Explain every effective key, sorted."""
        snap = self.snapshot()
        sources = [s.health() for s in self._slots]
        return [explain(snap, sources, k, reveal=reveal) for k in sorted(snap.flat())]

    # -- diagnostics -----------------------------------------------------------------------
    def backend_for(self, source: str) -> Backend:
        """The backend serving ``source`` (a slot's display name, or a fallback member's),
        for diagnostics and tests (``confhub.testing.backend_of``); the hub owns it.
        :class:`KeyError` for an unknown source, :class:`HubStateError` before start."""
        return backend_named(self._slots, source)

    @property
    def backlog(self) -> int:
        """How many events (changes, errors, state changes) wait for the subscribers."""
        return self._dispatcher.depth

    # -- writes ----------------------------------------------------------------------------
    def write(
        self, key: str, value: Any, *, source: str | None = None, expected_revision: Any = MISSING
    ) -> Any:
        """Write ``key`` to a writable source (the highest one, or the one named ``source``).

        With ``expected_revision`` the write is a compare-and-swap on the key's revision
        (0 means "must not exist"); a lost race raises :class:`WriteConflictError`.
        Returns the new revision. The change reaches readers through the watch.

        ``source`` may name a member of a :class:`Fallback` group: the write goes to that
        member even while another one serves (through a backend opened for this write), and
        ``expected_revision`` is that member's. Naming the group writes to the serving one.
        """
        self._check_running("hub.write()")
        backend, opened = writable_backend(self._slots, source, key, self.make_backend)
        try:
            return backend.write(  # type: ignore[attr-defined]
                key, value, None if expected_revision is MISSING else expected_revision
            )
        finally:
            if opened:
                backend.close()

    def delete(
        self, key: str, *, source: str | None = None, expected_revision: Any = MISSING
    ) -> Any:
        """Delete ``key``'s value from a writable source (chosen as :meth:`write` does);
        returns the revision after it. Nothing there is no error; a table there is a
        :class:`WriteError` (delete its keys). ``expected_revision`` as in :meth:`write`."""
        self._check_running("hub.delete()")
        return self._writer.delete(key, source, expected_revision)

    def transaction(self, *, source: str | None = None) -> Transaction:
        """A :class:`Transaction`: puts and deletes (each with an optional expected
        revision) that ``commit()`` applies in ONE store transaction, or not at all. A
        source that cannot do that (files, env) refuses it with a :class:`WriteError`."""
        self._check_running("hub.transaction()")
        return Transaction(lambda ops, force: self._commit(source, ops, force), source)

    def _commit(self, source: str | None, ops: Sequence[Any], force: bool) -> Any:
        self._check_running("Transaction.commit()")
        return self._writer.commit(source, ops, force)

    def update(
        self,
        key: str,
        fn: Callable[[Any], Any],
        *,
        source: str | None = None,
        retries: int = UPDATE_RETRIES,
    ) -> Updated:
        """Read-modify-write: write ``fn(current)`` to ``key`` (``MISSING`` when absent) as a
        compare-and-swap on the revision read from the store, re-reading and calling ``fn``
        again after a :class:`WriteConflictError`, at most ``retries`` times. Returns
        :class:`Updated` (with ``attempts``); the last conflict is raised, naming the count."""
        self._check_running("hub.update()")
        return self._writer.update(key, fn, source, retries)

    def backends(self) -> list[dict[str, Any]]:
        """Describe the installed backend plugins (scheme, distribution, version)."""
        return describe_plugins(self.pm)

    def __repr__(self) -> str:
        state = self._life.state.value
        return f"<Hub {state} sources={list(self.sources)!r} generation={self.generation}>"

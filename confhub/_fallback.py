"""Fallback: filling a slot at start, recovering it while running, and polling it.

- :func:`load_slot` is the start-up chain of one slot (:func:`load_slots`: of all): its
  live members in order (each bounded by its timeout and the start ceiling), then their
  caches, then ``absent`` for an optional slot or :class:`StartupError` naming every attempt.
- :class:`Recoverer` retries the preferred members of a slot served from cache, by an
  alternate, or by nothing, with capped, jittered backoff, until one answers.
- :class:`Poller` re-reads a backend that cannot watch, every ``poll=`` seconds.
- :func:`watch` starts whichever of ``backend.watch`` or a poller the active member needs.
- :class:`Follower` wires these to a running hub: what to start for each slot after
  start-up, and the promotion back to a preferred member.

Each thread takes the hub's stop event and is kept in ``slot.threads``, joined by
``Slot.close``. The plugin hooks (``pm.hook``) are passed in as ``hook``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ._backend import Backend, Notify, Update, can_watch, is_cacheable
from ._errors import (
    ConfhubError,
    HubStateError,
    SourceFormatError,
    SourcePermissionError,
    SourceUnavailableError,
    StartupError,
    without_source,
)
from ._health import SlotState, log_fields
from ._layer import Layer, too_many_keys
from ._slot import Slot, check_keys
from ._spec import SourceSpec
from ._startretry import StartRetries
from .kv import Backoff

log = logging.getLogger("confhub")


# -- start-up --------------------------------------------------------------------------------


def load_bounded(hook: Any, spec: SourceSpec, backend: Backend, timeout: float) -> Layer:
    """Load through the hooks on a worker thread, bounded by ``timeout``.

    Every backend: a remote store that does not answer, and a file on a hung network mount
    (a read stuck in the kernel, which nothing can interrupt) alike. The worker of a load
    that overran is left to finish on its own (a daemon thread, its result dropped).
    """
    result: list[Any] = []

    def target() -> None:
        try:
            result.append(hook.confhub_load_layer(spec=spec, backend=backend))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            result.append(exc)

    worker = threading.Thread(target=target, name=f"confhub-load[{spec.display}]", daemon=True)
    worker.start()
    worker.join(timeout)
    if not result:
        if not is_cacheable(backend):
            raise SourceUnavailableError(
                f"the read did not finish within {timeout:.2f}s (the "
                "start_timeout ceiling): a file on a hung network mount? check the mount, "
                "or raise start_timeout",
                source=spec.display,
            )
        raise SourceUnavailableError(
            f"did not answer within {timeout:.2f}s (connect_timeout, or the "
            "start_timeout ceiling); check the store or raise the timeout",
            source=spec.display,
        )
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]  # type: ignore[no-any-return]


def closed_during_start() -> HubStateError:
    """The error of a :meth:`Hub.start` that :meth:`Hub.close` interrupted."""
    return HubStateError(
        "the hub was closed while it was starting (Hub.close() during Hub.start()); "
        "everything start() opened is closed: create a new Hub to start again"
    )


def load_slots(
    slots: list[Slot],
    hook: Any,
    make_backend: Callable[[SourceSpec], Backend],
    *,
    connect_timeout: float,
    start_timeout: float,
    stop: threading.Event | None = None,
    backoff: Backoff | None = None,
) -> None:
    """Fill every slot in order (see :func:`load_slot`), all within ``start_timeout``.

    ``stop`` set (the hub was closed meanwhile) ends the chain before its next slot with
    :class:`HubStateError`; a load under way is not interrupted. ``backoff`` spaces the
    rounds of a required slot that nothing could serve (:mod:`confhub._startretry`).
    """
    deadline = time.monotonic() + start_timeout
    for slot in slots:
        if stop is not None and stop.is_set():
            raise closed_during_start()
        load_slot(
            slot,
            hook,
            make_backend,
            deadline=deadline,
            connect_timeout=connect_timeout,
            start_timeout=start_timeout,
            retries=StartRetries(deadline, backoff or Backoff(0.5, 30.0), stop),
        )


def load_slot(
    slot: Slot,
    hook: Any,
    make_backend: Callable[[SourceSpec], Backend],
    *,
    deadline: float,
    connect_timeout: float,
    start_timeout: float,
    retries: StartRetries | None = None,
) -> None:
    """Fill ``slot``: live members in order, then their caches; else absent or fail. A
    required slot that nothing served tries again while ``retries`` allows."""
    for spec in slot.members:
        _ = spec.max_keys  # validates max_keys=: a bad one is a SpecError at start
    while True:
        attempts: list[tuple[str, BaseException]] = []  # of the last round
        if _try_live_members(
            slot, hook, make_backend, attempts, deadline, connect_timeout, start_timeout
        ):
            return
        refused = any(isinstance(e, SourcePermissionError) for _, e in attempts)
        if not refused and _try_caches(slot, hook, attempts):
            return
        broken = [e for _, e in attempts if isinstance(e, SourceFormatError)]
        if broken:
            raise broken[0]  # no cache: fail as before, with the store's own words
        if refused or slot.optional or not _worth_retrying(slot, attempts):
            break
        if retries is None or not retries.again():
            break
    _absent_or_fail(slot, attempts, refused, retries)


def _worth_retrying(slot: Slot, attempts: list[tuple[str, BaseException]]) -> bool:
    """Whether another round could help: only for a remote (``cacheable``) store (a missing
    file is reported at once), and not when a backend said it cannot (a TLS certificate
    failure: ``SourceUnavailableError.retry_at_start``)."""
    remote = any(is_cacheable(b) for b in slot.backends if b is not None)
    return remote and all(getattr(e, "retry_at_start", True) for _, e in attempts)


def _try_live_members(
    slot: Slot,
    hook: Any,
    make_backend: Callable[[SourceSpec], Backend],
    attempts: list[tuple[str, BaseException]],
    deadline: float,
    connect_timeout: float,
    start_timeout: float,
) -> bool:
    """Try each member live, in order; serve the first that answers (True)."""
    for i, spec in enumerate(slot.members):
        backend = slot.backends[i]
        if backend is None:  # made once: a retry round reuses it (and its connections)
            backend = slot.backends[i] = make_backend(spec)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            attempts.append(
                (
                    spec.display,
                    SourceUnavailableError(
                        f"not tried: the start ceiling of {start_timeout}s was reached",
                        source=spec.display,
                    ),
                )
            )
            continue
        try:
            # A remote store has connect_timeout (or its timeout=) per attempt; a local
            # source (a file) only the start ceiling.
            attempt = (
                min(remaining, spec.option_float("timeout", connect_timeout))
                if is_cacheable(backend)
                else remaining
            )
            layer = load_bounded(hook, spec, backend, attempt)
            check_keys(spec, layer)  # SourceFormatError: refused like broken content
        except SourceUnavailableError as exc:
            attempts.append((spec.display, exc))
            following = slot.members[i + 1].display if i + 1 < len(slot.members) else None
            hook.confhub_source_failed(spec=spec, error=exc, fallback=following or "cache")
            continue
        except SourcePermissionError as exc:
            # A refusal is an operator's error: do not hide it behind a cache.
            attempts.append((spec.display, exc))
            return False
        except SourceFormatError as exc:
            if not is_cacheable(backend):
                raise  # a broken file fails the start, naming the key and the fix
            # A store holding content this hub cannot accept (a leaf/parent clash, an
            # invalid document): like an unreachable one, try what follows, then the
            # caches; the Recoverer promotes the member once the content is fixed.
            attempts.append((spec.display, exc))
            following = slot.members[i + 1].display if i + 1 < len(slot.members) else None
            hook.confhub_source_failed(spec=spec, error=exc, fallback=following or "cache")
            continue
        slot.serve(i, layer, attempts[-1][1] if attempts else None)
        if attempts:
            log.warning(
                "%s: serving the alternate %s (%s)",
                slot.display,
                spec.display,
                attempts[-1][1],
                extra=log_fields(slot.display, SlotState.FALLBACK, layer.revision),
            )
        return True
    return False


def _try_caches(slot: Slot, hook: Any, attempts: list[tuple[str, BaseException]]) -> bool:
    """Serve the first member's cached copy that the plugins have (True)."""
    for i, spec in enumerate(slot.members):
        layer = hook.confhub_load_cached(spec=spec, backend=slot.backends[i])
        if layer is None:
            continue
        cap = spec.max_keys
        if len(layer.values) > cap:
            error = too_many_keys(spec.display, len(layer.values), cap)
            log.warning("not serving the cached copy: %s", error, extra=log_fields(slot.display))
            continue
        slot.serve_cached(i, layer, attempts[-1][1] if attempts else None)
        log.warning(
            "%s %s (%s); serving its cached copy (revision %s, %.0fs old)",
            slot.display,
            "holds content it cannot accept"
            if isinstance(slot.last_error, SourceFormatError)
            else "is unavailable",
            slot.last_error,
            layer.revision,
            time.time() - layer.fetched_at,
            extra=log_fields(slot.display, SlotState.CACHED, layer.revision),
        )
        return True
    return False


def _absent_or_fail(
    slot: Slot,
    attempts: list[tuple[str, BaseException]],
    refused: bool,
    retries: StartRetries | None = None,
) -> None:
    """Nothing answered: an optional slot is absent; a required one raises StartupError."""
    if slot.optional:
        slot.serve_nothing(attempts[-1][1] if attempts else None)
        log.warning(
            "%s is unavailable and optional; it contributes nothing",
            slot.display,
            extra=log_fields(slot.display, SlotState.ABSENT),
        )
        return
    lines = "; ".join(f"{what}: {without_source(what, err)}" for what, err in attempts)
    cached = (
        " and has no usable cache"
        if not refused and any(is_cacheable(b) for b in slot.backends if b is not None)
        else ""
    )
    tried = f" {retries.describe()}" if retries is not None else ""
    raise StartupError(
        f"required source {slot.display} could not be loaded{tried} ({lines}){cached}; "
        "start the store, add a fallback, raise start_timeout, or mark the source optional",
        source=slot.display,
        attempts=attempts,
        rounds=1 if retries is None else retries.rounds,
    )


# -- running -------------------------------------------------------------------------------


class Recoverer(threading.Thread):
    """Retries a slot's preferred members until one answers, then hands it to ``promote``.

    A slot served from cache (or absent) retries every member; a slot served by an
    alternate retries the members before it. ``promote(member, layer, alternate)`` applies
    the answer (the hub publishes it as one update and moves the watch); ``report(error)``
    reports broken content of a slot with no alternate serving.
    """

    def __init__(
        self,
        slot: Slot,
        hook: Any,
        *,
        stop: threading.Event,
        initial: float,
        maximum: float,
        promote: Callable[[int, Layer, int | None], None],
        report: Callable[[BaseException], None],
    ) -> None:
        super().__init__(name=f"confhub-recover[{slot.display}]", daemon=True)
        self.slot = slot
        self.hook = hook
        self.stop = stop
        self.initial = initial
        self.maximum = maximum
        self.promote = promote
        self.report = report
        #: The alternate serving when recovery began (``None``: cache or nothing serves).
        self.alternate = slot.active if slot.state is SlotState.FALLBACK else None

    def run(self) -> None:
        backoff = Backoff(self.initial, max(self.initial, self.maximum))
        attempt = 0
        while not self.stop.wait(backoff.delay(attempt)):
            answer = self._try_preferred()
            if answer is not None:
                self.promote(answer[0], answer[1], self.alternate)
                return
            attempt += 1

    def _try_preferred(self) -> tuple[int, Layer] | None:
        slot = self.slot
        for i, spec in enumerate(slot.members):
            if self.alternate is not None and i >= self.alternate:
                break
            backend = slot.backends[i]
            if backend is None:
                continue
            try:
                return i, self.hook.confhub_load_layer(spec=spec, backend=backend)
            except (SourceUnavailableError, SourcePermissionError) as exc:
                if self.alternate is not None:
                    slot.note_preferred_down(exc)
            except ConfhubError as exc:
                if self.alternate is not None:
                    # The alternate serves well: a preferred member's broken content
                    # shows in health, and is no reason to mark the slot stale.
                    slot.note_preferred_down(exc)
                else:
                    self.report(exc)
        return None


class Poller(threading.Thread):
    """Re-reads a backend that cannot watch every ``period`` seconds; ``notify`` gets each
    layer (the hub publishes only effective changes) or the error."""

    def __init__(
        self,
        spec: SourceSpec,
        backend: Backend,
        hook: Any,
        *,
        period: float,
        notify: Notify,
        stop: threading.Event,
    ) -> None:
        super().__init__(name=f"confhub-poll[{spec.display}]", daemon=True)
        self.spec = spec
        self.backend = backend
        self.hook = hook
        self.period = period
        self.notify = notify
        self.stop = stop

    def run(self) -> None:
        while not self.stop.wait(self.period):
            try:
                self.notify(self.hook.confhub_load_layer(spec=self.spec, backend=self.backend))
            except ConfhubError as exc:
                self.notify(exc)


def watch(slot: Slot, hook: Any, notify: Notify, stop: threading.Event) -> None:
    """Follow the active member: its ``watch``, else a :class:`Poller` when the spec has
    ``poll=``, else nothing (read once). A ``ConfhubError`` from ``watch`` propagates."""
    if slot.active is None:
        return
    backend = slot.backends[slot.active]
    assert backend is not None
    if can_watch(backend):
        backend.watch(notify)  # type: ignore[attr-defined]
        return
    spec = slot.active_spec
    if spec.options.get("poll") is None:
        return
    poller = Poller(
        spec, backend, hook, period=spec.option_float("poll", 0.0), notify=notify, stop=stop
    )
    slot.threads.append(poller)
    poller.start()


# -- following a running slot ----------------------------------------------------------------


class Follower:
    """Keeps the slots of a running hub following their stores: a watch or a poller on the
    member that serves, and a :class:`Recoverer` for a slot served from cache, by an
    alternate, or by nothing.

    ``on_update(slot, update)`` is the hub's entry to its pipeline (it takes ``lock``, the
    hub's re-entrant lock, itself); ``running()`` says whether the hub still runs.
    """

    def __init__(
        self,
        hook: Any,
        *,
        lock: threading.RLock,
        stop: threading.Event,
        on_update: Callable[[Slot, Update], None],
        running: Callable[[], bool],
        retry_initial: float,
        retry_max: float,
    ) -> None:
        self.hook = hook
        self.lock = lock
        self.stop = stop
        self.on_update = on_update
        self.running = running
        self.retry_initial = retry_initial
        self.retry_max = retry_max

    def follow(self, slot: Slot) -> None:
        """Start following ``slot`` as start-up left it. Served from cache or by an
        alternate, or nothing could be loaded: retry the preferred members until the store
        is back. An alternate is watched meanwhile."""
        recovering = slot.recovering
        if slot.state is SlotState.FALLBACK or not recovering:
            self.watch(slot)
        if recovering:
            recoverer = Recoverer(
                slot,
                self.hook,
                stop=self.stop,
                initial=self.retry_initial,
                maximum=self.retry_max,
                promote=lambda member, layer, alternate: self.promote(
                    slot, member, layer, alternate
                ),
                report=lambda error: self.on_update(slot, error),
            )
            slot.threads.append(recoverer)
            recoverer.start()

    def watch(self, slot: Slot) -> None:
        """Follow the slot's active member; its updates go to ``on_update``."""
        if slot.active is None:
            return

        def notify(update: Update, _slot: Slot = slot, _member: int = slot.active) -> None:
            with self.lock:
                if _slot.active != _member:
                    return  # a member this slot left (promoted back to a preferred one)
                self.on_update(_slot, update)

        try:
            watch(slot, self.hook, notify, self.stop)
        except ConfhubError as exc:
            self.on_update(slot, exc)

    def promote(self, slot: Slot, member: int, layer: Layer, alternate: int | None) -> None:
        """A preferred member is back: publish its full read as one update (only effective
        changes are published), then watch it and drop the alternate that served."""
        with self.lock:
            if not self.running():
                return
            slot.promote(member)
            self.on_update(slot, layer)
            if slot.layer is layer:
                slot.promoted()
        if alternate is not None:
            # Its watch is dropped (notify checks the member), then closed, outside the
            # hub's lock: a backend may hold its own lock while it notifies.
            old = slot.backends[alternate]
            if old is not None:
                old.close()
        self.watch(slot)

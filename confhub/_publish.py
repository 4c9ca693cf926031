"""The update pipeline: one backend update through next layer -> merge -> validate/bind ->
accept -> swap -> dispatch, under the hub's lock.

:class:`Publisher` is given what it needs, not the hub: the :class:`Binder`, the
:class:`Dispatcher`, the :class:`Persister`, the validate and source-failed hooks, the hub's
lock and two callables for the current snapshot (read it, publish one). The hub keeps the
snapshot in its own attribute so reads stay one attribute load.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from ._backend import Update
from ._binding import Binder, View
from ._dispatch import Dispatcher
from ._errors import SourceFormatError
from ._layer import Layer, LayerDelta
from ._merge import merge_update
from ._persist import Persister
from ._snapshot import Change, ErrorEvent, KeyChange, Snapshot

if TYPE_CHECKING:
    from ._slot import Slot


@attrs.frozen
class _Candidate:
    """A snapshot built off to the side by :meth:`Publisher.publish`, not yet published."""

    snapshot: Snapshot
    changed: list[tuple[str, Any, Any]]


class Publisher:
    """Every step of an update is a named method of :meth:`publish`'s chain.

    ``validate(snapshot=, previous=)`` is the ``confhub_validate_snapshot`` hook (raise:
    veto); ``source_failed(spec=, error=, fallback=)`` the ``confhub_source_failed`` hook;
    ``current()`` returns the published snapshot and ``swap(snapshot)`` publishes one;
    ``running()`` says whether the hub still runs. ``lock`` is the hub's re-entrant lock
    (renewed in a forked child through :meth:`after_fork`).
    """

    def __init__(
        self,
        binder: Binder,
        dispatcher: Dispatcher,
        persister: Persister,
        *,
        validate: Callable[..., Any],
        source_failed: Callable[..., Any],
        current: Callable[[], Snapshot],
        swap: Callable[[Snapshot], None],
        running: Callable[[], bool],
        lock: threading.RLock,
    ) -> None:
        self._binder = binder
        self._dispatcher = dispatcher
        self._persister = persister
        self._validate_hook = validate
        self._source_failed = source_failed
        self._current = current
        self._set_current = swap
        self._running = running
        self._lock = lock

    def after_fork(self, lock: threading.RLock) -> None:
        """In a forked child: the hub's new lock."""
        self._lock = lock

    def on_update(self, slot: Slot, update: Update) -> None:
        """One backend update: an error is reported, a layer or delta is published."""
        with self._lock:
            if not self._running():
                return
            if isinstance(update, BaseException):
                self._report_failure(slot, update)
            else:
                self.publish(slot, update)

    def publish(self, slot: Slot, update: Layer | LayerDelta) -> None:
        """next layer -> merge -> validate/bind -> accept -> swap -> dispatch (under the lock)."""
        try:
            layer, delta = slot.next_layer(update)
        except SourceFormatError as exc:
            self._report_failure(slot, exc)
            return
        candidate = self._merge(slot, layer, delta)
        if not candidate.changed:
            # Nothing effective changed (masked, or same values): no new generation.
            self._set_current(candidate.snapshot)
            self._accept(slot, layer)
            return
        try:
            bound = self._validate(candidate)
        except Exception as exc:  # noqa: BLE001 - any veto rejects the update, reported
            slot.reject(layer)
            self._report_failure(slot, exc, rejected=True)
            return
        # The slot's state first: a reader who sees the new values sees its health too.
        self._accept(slot, layer)
        self._swap(candidate.snapshot, bound)
        self._dispatch(slot, candidate, layer.fetched_at)

    def _merge(self, slot: Slot, layer: Layer, delta: LayerDelta) -> _Candidate:
        """The snapshot with ``slot``'s layer replaced, and the effective changes."""
        old = self._current()
        merged, changed = merge_update(old.merged, old.layers, slot.index, layer, delta)
        layers = list(old.layers)
        layers[slot.index] = layer
        generation = old.generation + 1 if changed else old.generation
        return _Candidate(Snapshot(generation, merged, tuple(layers), old.names), changed)

    def _validate(self, candidate: _Candidate) -> list[tuple[View[Any], Any]]:
        """Re-bind the views the change touches, then ask the validators (raise: veto)."""
        try:
            bound = self._binder.rebind(candidate.snapshot, candidate.changed)
            self._validate_hook(snapshot=candidate.snapshot, previous=self._current())
        except BaseException:
            self._binder.forget()  # the views' kept input holds the rejected state
            raise
        return bound

    def _swap(self, snapshot: Snapshot, bound: list[tuple[View[Any], Any]]) -> None:
        """Publish: one assignment for readers, one per view."""
        self._set_current(snapshot)
        self._binder.commit(bound, snapshot.generation)

    def _dispatch(self, slot: Slot, candidate: _Candidate, fetched_at: float | None) -> None:
        changes = tuple(
            KeyChange(k, o, n) for k, o, n in sorted(candidate.changed, key=lambda c: c[0])
        )
        self._dispatcher.put(
            Change(candidate.snapshot.generation, changes, slot.active_spec.display, fetched_at)
        )

    def _accept(self, slot: Slot, layer: Layer) -> None:
        """``layer`` is what ``slot`` serves now: report a state change, persist it."""
        if slot.accept(layer):
            self._dispatcher.put(slot.health())
        self.persist(slot, layer)

    def persist(self, slot: Slot, layer: Layer) -> None:
        """Queue ``layer`` for the plugins (the cache), coalesced per slot, off this thread."""
        self._persister.offer(slot.index, slot.active_spec, layer, slot.active_backend)

    def _report_failure(self, slot: Slot, error: BaseException, *, rejected: bool = False) -> None:
        if not slot.fail(error, rejected=rejected):
            return  # reported already: once per state change, not once per retry
        fallback = "last good" if slot.layer is not None else None
        self._source_failed(spec=slot.active_spec, error=error, fallback=fallback)
        self._dispatcher.put(ErrorEvent(slot.display, error, self._current().generation))
        self._dispatcher.put(slot.health())

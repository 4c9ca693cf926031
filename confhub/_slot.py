"""The slot: one precedence position, its member sources, and its state machine.

A :class:`Slot` holds the members of one precedence position (one source, or the members
of a :class:`Fallback` group), their backends, the layer the slot contributes, and its
:class:`SlotState`. Every change of what it serves (``active``, ``layer``, ``pending``,
``state``, the errors) is one of the named transitions below; the hub calls them under its
lock and decides what to publish and report. The start-up chain (``confhub._fallback``) fills
``backends`` and adds the slot's threads to ``threads``; :meth:`Slot.close` ends both.

States and transitions::

    pending --serve--> live | fallback | absent      (start: a member answered)
    pending --serve_cached--> cached                 (start: only a cache answered)
    pending --serve_nothing--> absent                (start: optional, nothing answered)
    any --unload--> pending                          (start interrupted by close)
    live/fallback --inherit--> stale                 (a forked child re-reads: ``_forks``)
    any --fail--> stale (a layer is served) | absent (none is)
    any --accept--> live | fallback | absent         (a layer passed validation)
    fallback/cached --promote(i)--> (then accept)    (recovery: a preferred member is back)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from ._backend import Backend, can_write, is_cacheable, sharing_of
from ._errors import (
    ConfhubError,
    HubStateError,
    SourceFormatError,
    SourcePermissionError,
    SourceUnavailableError,
    SpecError,
    WriteError,
    without_source,
)
from ._health import SlotState, SourceHealth, log_fields
from ._layer import Layer, LayerDelta, too_many_keys
from ._spec import Fallback, SourceSpec

log = logging.getLogger("confhub")


def check_keys(spec: SourceSpec, layer: Layer) -> None:
    """Raise :func:`too_many_keys` when ``layer`` holds more keys than ``spec`` allows."""
    cap = spec.max_keys
    if len(layer.values) > cap:
        raise too_many_keys(spec.display, len(layer.values), cap)


class Slot:
    """One precedence slot: its member specs, backends, and the layer it contributes."""

    def __init__(self, index: int, group: Fallback) -> None:
        self.index = index
        self.members: tuple[SourceSpec, ...] = tuple(group.members)
        self.display = group.display
        #: One backend per member, created at start (``None`` until then).
        self.backends: list[Backend | None] = [None] * len(self.members)
        #: Which member serves (``None``: none does).
        self.active: int | None = None
        #: The published layer.
        self.layer: Layer | None = None
        #: The active member's latest layer when validation rejected it: the next delta
        #: applies to it, not to the published layer.
        self.pending: Layer | None = None
        self.state = SlotState.PENDING
        #: Why the slot is not live (``None`` when it is).
        self.last_error: BaseException | None = None
        #: Why a preferred member is not serving while an alternate (``active > 0``) does.
        self.preferred_error: BaseException | None = None
        self.since = time.time()
        #: The store's state while it cannot be a layer (a leaf/parent clash, too many keys):
        #: values and details, kept so that no later delta is lost.
        self.unapplied: tuple[dict[str, Any], dict[str, str]] | None = None
        #: Threads working for this slot (its poller, its recoverer), joined by :meth:`close`.
        self.threads: list[threading.Thread] = []
        #: The structured kind (:func:`failure_kind`) of the failure reported last.
        self.reported: Hashable = None

    # -- reading -----------------------------------------------------------------------------
    @property
    def optional(self) -> bool:
        """Whether every member is optional (the slot may contribute nothing)."""
        return all(m.optional for m in self.members)

    @property
    def active_spec(self) -> SourceSpec:
        """The serving member's spec (the first member when none serves)."""
        return self.members[self.active or 0]

    @property
    def active_backend(self) -> Backend | None:
        """The serving member's backend (the first member's when none serves)."""
        return self.backends[self.active or 0]

    @property
    def recovering(self) -> bool:
        """Whether the slot should retry its preferred members: it is served from cache or
        by an alternate, or nothing could be loaded from a remote member."""
        return self.state in (SlotState.CACHED, SlotState.FALLBACK) or (
            self.active is None and any(is_cacheable(b) for b in self.backends if b is not None)
        )

    def health(self) -> SourceHealth:
        """This slot's :class:`SourceHealth`."""
        layer = self.layer
        error = self.last_error
        if error is None and self.active:  # on an alternate: the preferred member is down
            error = self.preferred_error
        return SourceHealth(
            source=self.display,
            state=self.state,
            active=self.active_spec.display if self.active is not None else None,
            revision=None if layer is None else layer.revision,
            fetched_at=None if layer is None else layer.fetched_at,
            last_error=None if error is None else str(error),
            since=self.since,
            keys=0 if layer is None else len(layer.values),
            sharing=sharing_of(self.active_backend),
        )

    # -- start-up transitions ----------------------------------------------------------------
    def serve(self, member: int, layer: Layer, preferred_error: BaseException | None) -> None:
        """A member answered at start: serve its layer (``live``, ``fallback`` or ``absent``)."""
        self.active = member
        self.layer = layer
        self.state = self._serving_state(layer)
        self.preferred_error = preferred_error
        self.since = time.time()

    def serve_cached(self, member: int, layer: Layer, error: BaseException | None) -> None:
        """Only the cache of ``member`` answered at start: serve it (``cached``)."""
        self.active = member
        self.layer = layer
        self.state = SlotState.CACHED
        self.last_error = error
        self.reported = None if error is None else failure_kind(error)
        self.since = time.time()

    def serve_nothing(self, error: BaseException | None) -> None:
        """An optional slot that could not be loaded contributes nothing (``absent``)."""
        self.state = SlotState.ABSENT
        self.last_error = error
        self.reported = None if error is None else failure_kind(error)

    def unload(self) -> None:
        """A start that :meth:`Hub.close` interrupted: nothing was served (``pending``)."""
        self.active = None
        self.layer = self.pending = None
        self.state = SlotState.PENDING
        self.since = time.time()

    def inherit(self, error: BaseException) -> None:
        """This slot arrived in a forked child without its watch: until it is re-read it is
        ``stale`` (a ``cached``/``absent``/``stale`` one keeps its state), ``error`` says why.
        Called from an at-fork handler: assignments only, no log (the resumer logs). The
        failure is left unreported so that the resumer's report of it is news."""
        if self.state in (SlotState.LIVE, SlotState.FALLBACK):
            self.state = SlotState.STALE
            self.since = time.time()
        self.last_error = error
        self.reported = None

    # -- running transitions -----------------------------------------------------------------
    def next_layer(self, update: Layer | LayerDelta) -> tuple[Layer, LayerDelta]:
        """The layer the active member now holds and its change from the published layer;
        :class:`SourceFormatError` if the store's state cannot be a layer.

        A backend's delta is the change itself when it applies to the published layer
        (the fast path); otherwise the change is the diff of the two layers.
        """
        base = self.pending if self.pending is not None else self.layer
        exact = base is self.layer and self.unapplied is None
        layer = self._apply(update)
        published = self.layer
        if published is None:
            return layer, Layer.from_flat({}, source=self.display).diff(layer)
        if exact and isinstance(update, LayerDelta):
            return layer, update
        return layer, published.diff(layer)

    def _apply(self, update: Layer | LayerDelta) -> Layer:
        """The layer the active member now holds, or :class:`SourceFormatError`.

        A delta that makes a key both a leaf and a parent cannot be applied to a layer, nor
        can an update that takes the source above its ``max_keys=``; the store's state is
        then tracked as a plain dict (:attr:`unapplied`) so that no later delta is lost,
        until a delta makes it a valid layer again.
        """
        spec = self.active_spec
        cap = spec.max_keys
        if not isinstance(update, LayerDelta):
            self.unapplied = None
            if len(update.values) > cap:
                # Later deltas apply to what the store holds, not to the last good layer.
                self.unapplied = (dict(update.values), dict(update.details))
                raise too_many_keys(spec.display, len(update.values), cap)
            return update
        base = self.pending if self.pending is not None else self.layer
        if base is None:
            base = Layer.from_flat({}, source=self.display)
        if self.unapplied is None:
            try:
                applied = base.apply(update, source=self.display)
            except SourceFormatError:
                self.unapplied = (dict(base.values), dict(base.details))
            else:
                if len(applied.values) <= cap:
                    return applied
                self.unapplied = (dict(applied.values), dict(applied.details))
                raise too_many_keys(spec.display, len(applied.values), cap)
        values, details = self.unapplied
        for key in update.deleted:
            if key not in update.set:
                values.pop(key, None)
                details.pop(key, None)
        values.update(update.set)
        details.update(update.details)
        if len(values) > cap:
            raise too_many_keys(spec.display, len(values), cap)
        layer = Layer.from_flat(
            values, source=self.display, revision=update.revision, details=details
        )
        self.unapplied = None
        return layer

    def accept(self, layer: Layer) -> bool:
        """``layer`` passed validation and is published; returns whether the state changed
        (or a failure ended), so that the hub reports the new health."""
        self.layer = layer
        self.pending = None
        state = self._serving_state(layer)
        if self.state == state and self.last_error is None:
            return False
        log.info(
            "%s is %s again",
            self.display,
            state,
            extra=log_fields(self.display, state, layer.revision),
        )
        self.state = state
        self.last_error = None
        self.reported = None
        self.since = time.time()
        return True

    def reject(self, layer: Layer) -> None:
        """Validation refused ``layer``: keep it as the base of the next delta."""
        self.pending = layer

    def fail(self, error: BaseException, *, rejected: bool = False) -> bool:
        """The active member failed with ``error`` (``rejected``: validation refused its
        update); returns whether that is news (a new state or a different error), so that
        it is logged and reported once per change, not once per retry."""
        kind = failure_kind(error, rejected=rejected)
        news = self.last_error is None or kind != self.reported
        self.reported = kind
        self.last_error = error
        if self.state != SlotState.LIVE and not news:
            return False
        self.state = SlotState.STALE if self.layer is not None else SlotState.ABSENT
        self.since = time.time()
        message = without_source(self.display, error)
        fields = log_fields(self.display, self.state, getattr(self.layer, "revision", None))
        if rejected or isinstance(error, SourceFormatError):
            log.error(
                "%s: update rejected, keeping the last good configuration: %s",
                self.display,
                message,
                extra=fields,
            )
        else:
            log.warning(
                "%s: %s; serving the last good configuration", self.display, message, extra=fields
            )
        return True

    def promote(self, member: int) -> None:
        """Recovery: ``member`` (preferred to the one serving) answered; its full read is
        applied next, as one update. The alternate's pending state is not this member's."""
        self.active = member
        self.pending = self.unapplied = None

    def promoted(self) -> None:
        """The promoted member's read was published: it serves again (:meth:`accept`
        logged the one "is live again" line)."""
        self.preferred_error = None

    def note_preferred_down(self, error: BaseException) -> None:
        """A preferred member is still down (an alternate keeps serving)."""
        self.preferred_error = error

    def _serving_state(self, layer: Layer) -> SlotState:
        if self.optional and not layer.values:
            return SlotState.ABSENT  # an optional source that contributes nothing
        return SlotState.LIVE if not self.active else SlotState.FALLBACK

    # -- closing -----------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Close every backend, join this slot's threads, then close the backends again
        (a recovery that was promoting may have started a watch meanwhile)."""
        self._close_backends()
        for thread in self.threads:
            if thread is not threading.current_thread():
                thread.join(timeout=timeout)
        self._close_backends()

    def _close_backends(self) -> None:
        for member, backend in zip(self.members, self.backends, strict=True):
            if backend is not None:
                try:
                    backend.close()
                except Exception:
                    log.exception("closing the backend of %s failed", member.display)


def failure_kind(error: BaseException, *, rejected: bool = False) -> Hashable:
    """What makes two failures "the same" for the report-once rule: a structured kind, never
    the whole message (it carries revisions, times, retry details).

    An outage is one kind however its retries' messages vary. Broken content is its error
    type, key and line; a binding refusal is its error lines without their ``(from ...)``
    part (which names the revision), so the same bad value written again is not news and a
    different one is. An exception confhub did not raise has no structure: its text is used.
    """
    if isinstance(error, (SourceUnavailableError, SourcePermissionError)) and not rejected:
        return (type(error),)
    if not isinstance(error, ConfhubError):
        return (type(error), rejected, str(error))
    lines = tuple(line.rpartition(" (from ")[0] or line for line in getattr(error, "errors", ()))
    return (type(error), rejected, getattr(error, "key", None), getattr(error, "line", None), lines)


# -- finding a slot's backend ------------------------------------------------------------------


def _as_named(slots: Sequence[Slot], source: str) -> str:
    """``source`` as the hub names it: a display name as is, or a spec as it was written
    (``"etcd://u:pw@h:2379/app/?timeout=2"``) by its display name, when that names a source.
    Anything else is returned unchanged (the caller's error lists the names)."""
    known = {s.display for s in slots} | {m.display for s in slots for m in s.members}
    if source in known:
        return source
    try:
        display = SourceSpec.parse(source).display
    except (SpecError, ValueError):
        return source
    return display if display in known else source


def backend_named(slots: Sequence[Slot], source: str) -> Backend:
    """The backend serving ``source``: a slot's display name (its active member's backend)
    or a member's. :class:`KeyError` if no source is called so; :class:`HubStateError`
    before start, when the backends do not exist yet."""
    source = _as_named(slots, source)
    for slot in slots:
        names = [m.display for m in slot.members]
        if source == slot.display:
            backend = slot.active_backend
        elif source in names:
            backend = slot.backends[names.index(source)]
        else:
            continue
        if backend is None:
            raise HubStateError(f"the backend of {source} is created at start; start the hub")
        return backend
    raise KeyError(f"no source named {source!r}; sources: {', '.join(s.display for s in slots)}")


def writable_backend(
    slots: Sequence[Slot],
    source: str | None,
    key: str,
    open_member: Callable[[SourceSpec], Backend],
) -> tuple[Backend, bool]:
    """The backend a write of ``key`` goes to, and whether it was opened for this one write
    (the caller closes it then). :class:`WriteError` when there is none.

    Without ``source``: the highest writable slot's serving member. ``source`` naming a slot
    (a plain source, or a :class:`Fallback` group by its name): that slot's serving member.
    ``source`` naming one member of a group: that member, whichever member serves; when
    another one does, its backend comes from ``open_member`` (no member is ever written in
    the place of another, and ``expected_revision`` is checked against its own revisions).
    """
    if source is not None:
        source = _as_named(slots, source)
    for slot in reversed(slots):
        names = [m.display for m in slot.members]
        if source is not None and source != slot.display:
            if source not in names:
                continue
            member = names.index(source)
            if len(names) > 1 and member != slot.active:
                opened = open_member(slot.members[member])
                if can_write(opened):
                    return opened, True
                opened.close()
                continue
        backend = slot.active_backend
        if backend is not None and can_write(backend):
            return backend, False
    raise WriteError(
        "no writable source"
        + (f" named {source!r}" if source else "")
        + f" among {', '.join(s.display for s in slots)}; files and env are read-only here",
        source=source or "",
        key=key,
    )

"""Health: the state of each precedence slot, as values the hub reports.

:class:`SlotState` names the states a slot moves through (the transitions live on
``confhub._slot.Slot``); :class:`SourceHealth` is one slot's report and :class:`Health` the
hub's. All three are plain values: they import nothing else from confhub.
"""

from __future__ import annotations

import enum
import time
from typing import Any

import attrs


class SlotState(enum.StrEnum):
    """What a precedence slot serves. A ``str``: it compares equal to its value."""

    #: Serving what the source holds now.
    LIVE = "live"
    #: The source failed or sent content that was rejected; the last good layer is served.
    STALE = "stale"
    #: Serving the on-disk copy of a source that could not be reached.
    CACHED = "cached"
    #: Serving an alternate member of a fallback group.
    FALLBACK = "fallback"
    #: An optional source that contributes nothing.
    ABSENT = "absent"
    #: Not loaded yet.
    PENDING = "pending"

    @property
    def stale(self) -> bool:
        """Whether what is served may be older than the store (``stale`` or ``cached``)."""
        return self in (SlotState.STALE, SlotState.CACHED)


@attrs.frozen
class SourceHealth:
    """How one precedence slot is doing.

    ``state`` is a :class:`SlotState` (a ``str``: ``health.state == "live"`` works), one of:

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
    state: SlotState = attrs.field(converter=SlotState)
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
            "state": self.state.value,
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
        return any(
            s.state not in (SlotState.LIVE, SlotState.ABSENT) or s.failed for s in self.sources
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``confhub health --json`` contract)."""
        return {
            "degraded": self.degraded,
            "generation": self.generation,
            "sources": [s.to_dict() for s in self.sources],
        }


def log_fields(
    source: str, state: Any = None, revision: Any = None, generation: int | None = None
) -> dict[str, Any]:
    """The ``extra`` of a confhub log record: ``source`` (the display name, credentials
    redacted), ``state``, ``revision`` and ``generation`` (``None`` where not known), so a JSON
    log handler can index them. Never a value, never a secret."""
    return {
        "source": source,
        "state": None if state is None else str(state),
        "revision": None if revision is None else str(revision),
        "generation": generation,
    }

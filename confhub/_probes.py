"""Readiness: whether a running service should receive traffic, from its hub's health.

The meaning, for an orchestrator's readiness probe (Kubernetes ``readinessProbe``):

- Ready while the hub runs and every source serves something: ``live``, ``fallback``,
  ``cached``, ``stale`` or ``absent`` (an optional source). A pod that started from its cache
  during a store outage is ready: holding it unready would turn a store outage into an
  outage of the service, which is what the cache is there to prevent. Being degraded is
  reported (``degraded``), not held against it.
- Not ready while the hub is not running (starting, never started, closed) or a source
  has not been loaded yet. A required source that failed with no cached copy never gets
  this far: ``start()`` raises :class:`StartupError`, the hub does not run, the probe says
  not ready (and a web integration fails the app's start-up, so the orchestrator restarts it).
- ``max_stale`` (seconds, off by default) is for the services that must not serve old
  configuration: a ``stale`` or ``cached`` source whose served copy is older than that makes
  the service unready.

A plain value (:class:`Readiness`), built from the hub's state and :class:`Health`.
"""

from __future__ import annotations

from typing import Any

import attrs

from ._health import Health, SlotState


@attrs.frozen
class Readiness:
    """Whether the service is ready, why not (``reasons``), and the health it was read from."""

    ready: bool
    state: str
    reasons: tuple[str, ...]
    health: Health

    def __bool__(self) -> bool:
        return self.ready

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``ready``, ``state``, ``reasons``, then ``health.to_dict()``."""
        return {
            "ready": self.ready,
            "state": self.state,
            "reasons": list(self.reasons),
            **self.health.to_dict(),
        }


def readiness(state: str, health: Health, *, max_stale: float | None = None) -> Readiness:
    """The :class:`Readiness` of a hub in lifecycle ``state`` (``"running"``...) with
    ``health`` (see the module docstring for the rules)."""
    reasons: list[str] = []
    if state != "running":
        reasons.append(f"the hub is {state}, not running")
    for source in health.sources:
        if source.state is SlotState.PENDING:
            reasons.append(f"{source.source} is not loaded yet")
        elif max_stale is not None and source.state.stale:
            age = source.age
            if age is None or age > max_stale:
                shown = "unknown" if age is None else f"{age:.0f} s"
                reasons.append(
                    f"{source.source} is {source.state.value} (copy age {shown}, over "
                    f"max_stale={max_stale:g} s): {source.last_error or 'no error recorded'}"
                )
    return Readiness(not reasons, state, tuple(reasons), health)

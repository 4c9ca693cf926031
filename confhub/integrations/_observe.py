"""What the metrics integrations share: a hub plugin that counts what the hooks report.

:class:`HubObserver` is a confhub plugin (pass it in ``Hub(..., plugins=[...])``): its hook
implementations and one error subscription turn the hub's events into calls of four methods
that an adapter (Prometheus, OpenTelemetry) implements, and :meth:`HubObserver.sources` reads
the hub's health for the gauges an adapter exports when it is scraped. It imports no metrics
library.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import attrs

from .._backend import hookimpl
from .._errors import ConfigValidationError, PluginError, SourceFormatError
from .._health import SlotState

if TYPE_CHECKING:
    from .._dispatch import Subscription
    from .._hub import Hub
    from .._snapshot import Change, ErrorEvent

#: Histogram buckets (seconds) of the update delay and of the subscribers' time.
DELAY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@attrs.frozen
class SourceSample:
    """One source as a scrape sees it (from ``hub.health()``)."""

    source: str
    state: SlotState
    #: When the layer served was read (``time.time()``), or ``None`` before the first read.
    fetched_at: float | None
    #: Seconds since the cached copy served was read, only while the state is ``cached``.
    cache_age: float | None


class HubObserver:
    """Base class of the metrics plugins: one instance observes one hub.

    Subclasses implement :meth:`applied`, :meth:`rejected`, :meth:`failed` and
    :meth:`published`, and may override :meth:`attached` / :meth:`detached`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hub: Hub | None = None
        self._subscription: Subscription | None = None

    # -- hooks -----------------------------------------------------------------------------
    @hookimpl
    def confhub_configure(self, hub: Hub) -> None:
        with self._lock:
            if self._hub is not None and self._hub is not hub:
                raise PluginError(
                    f"{type(self).__name__} already observes {self._hub!r}; "
                    "create one metrics plugin per hub"
                )
            self._hub = hub
        self._subscription = hub.subscribe(on_error=self._on_error)
        self.attached()

    @hookimpl
    def confhub_unconfigure(self, hub: Hub) -> None:
        if hub is not self._hub:
            return
        if self._subscription is not None:
            self._subscription.cancel()
        self.detached()
        with self._lock:
            self._hub = None

    @hookimpl
    def confhub_snapshot_published(self, change: Change, subscriber_seconds: float) -> None:
        delay = None if change.fetched_at is None else max(0.0, time.time() - change.fetched_at)
        for source in change.source.split(", "):
            self.applied(source)
        self.published(delay, subscriber_seconds)

    def _on_error(self, event: ErrorEvent) -> None:
        if isinstance(event.error, SourceFormatError | ConfigValidationError):
            self.rejected(event.source)
        else:
            self.failed(event.source)

    # -- what a scrape reads ---------------------------------------------------------------
    @property
    def hub(self) -> Hub | None:
        """The hub observed, or ``None`` before it starts and after it closed."""
        return self._hub

    def sources(self) -> Iterator[SourceSample]:
        """One sample per source of the hub observed (none when no hub is attached)."""
        hub = self._hub
        if hub is None:
            return
        now = time.time()
        for health in hub.health().sources:
            age = None
            if health.state is SlotState.CACHED and health.fetched_at is not None:
                age = max(0.0, now - health.fetched_at)
            yield SourceSample(health.source, health.state, health.fetched_at, age)

    def generation(self) -> int | None:
        hub = self._hub
        return None if hub is None else hub.generation

    # -- for subclasses --------------------------------------------------------------------
    def attached(self) -> None:
        """The hub started; register exporters here."""

    def detached(self) -> None:
        """The hub closed; unregister exporters here."""

    def applied(self, source: str) -> None:
        """An update of ``source`` was published."""
        raise NotImplementedError

    def rejected(self, source: str) -> None:
        """An update of ``source`` was rejected (bad content or failed validation)."""
        raise NotImplementedError

    def failed(self, source: str) -> None:
        """``source`` could not be read (unreachable, refused); the last good copy serves."""
        raise NotImplementedError

    def published(self, delay: float | None, subscriber_seconds: float) -> None:
        """A change was published: ``delay`` from reading the update to calling the
        subscribers (``None`` if unknown), and the time the subscribers took."""
        raise NotImplementedError

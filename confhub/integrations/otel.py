"""OpenTelemetry metrics of a hub, through ``opentelemetry-api`` only (``pip install
confhub[otel]``): the application chooses and configures the SDK and its exporters.

::

    from confhub.integrations.otel import OpenTelemetryMetrics

    hub = confhub.Hub(sources, plugins=[OpenTelemetryMetrics()])   # one instance per hub

Instruments (attributes ``confhub.source`` and, for the state, ``confhub.state``):

===================================  ===============  =====================================
``confhub.updates.applied``          counter          updates published, by source
``confhub.updates.rejected``         counter          updates rejected (the last good stays)
``confhub.source.failures``          counter          reads that failed, once per failure
``confhub.source.state``             gauge            1 for the state each source is in
``confhub.source.last_update``       gauge (s)        when the layer served was read (Unix time)
``confhub.source.cache_age``         gauge (s)        age of the cached copy served
``confhub.generation``               gauge            the generation served
``confhub.update.delay``             histogram (s)    reading an update -> subscribers called
``confhub.subscriber.duration``      histogram (s)    the subscribers' time per change
===================================  ===============  =====================================
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from .._health import SlotState
from ._observe import HubObserver, SourceSample

__all__ = ["OpenTelemetryMetrics"]


class OpenTelemetryMetrics(HubObserver):
    """A confhub plugin recording one hub's metrics with the OpenTelemetry metrics API.

    ``meter_provider``: the provider to take the meter from (default: the global one the
    application configured). ``prefix`` starts every instrument name.
    """

    def __init__(
        self, meter_provider: MeterProvider | None = None, *, prefix: str = "confhub"
    ) -> None:
        super().__init__()
        meter = metrics.get_meter(
            "confhub", importlib.metadata.version("confhub"), meter_provider=meter_provider
        )
        self._applied = meter.create_counter(
            f"{prefix}.updates.applied", unit="{update}", description="Updates published."
        )
        self._rejected = meter.create_counter(
            f"{prefix}.updates.rejected",
            unit="{update}",
            description="Updates rejected; the last good configuration stays.",
        )
        self._failed = meter.create_counter(
            f"{prefix}.source.failures", unit="{failure}", description="Reads that failed."
        )
        self._delay = meter.create_histogram(
            f"{prefix}.update.delay",
            unit="s",
            description="From reading an update from its source to calling the subscribers.",
        )
        self._callbacks = meter.create_histogram(
            f"{prefix}.subscriber.duration",
            unit="s",
            description="Time the subscribers took per change.",
        )
        gauges: list[tuple[str, str, str, Callable[[CallbackOptions], Iterable[Observation]]]] = [
            ("source.state", "1", "1 for the state the source is in.", self._states),
            ("source.last_update", "s", "When the layer served was read.", self._last_update),
            ("source.cache_age", "s", "Age of the cached copy served.", self._cache_age),
            ("generation", "1", "Generation of the snapshot served.", self._generation),
        ]
        for name, unit, description, callback in gauges:
            meter.create_observable_gauge(
                f"{prefix}.{name}", callbacks=[callback], unit=unit, description=description
            )

    # -- HubObserver -----------------------------------------------------------------------
    def applied(self, source: str) -> None:
        self._applied.add(1, {"confhub.source": source})

    def rejected(self, source: str) -> None:
        self._rejected.add(1, {"confhub.source": source})

    def failed(self, source: str) -> None:
        self._failed.add(1, {"confhub.source": source})

    def published(self, delay: float | None, subscriber_seconds: float) -> None:
        if delay is not None:
            self._delay.record(delay)
        self._callbacks.record(subscriber_seconds)

    # -- observable gauges -----------------------------------------------------------------
    def _states(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(
                int(sample.state is state),
                {"confhub.source": sample.source, "confhub.state": state.value},
            )
            for sample in self.sources()
            for state in SlotState
        ]

    def _last_update(self, options: CallbackOptions) -> Iterable[Observation]:
        return _per_source(self.sources(), lambda s: s.fetched_at)

    def _cache_age(self, options: CallbackOptions) -> Iterable[Observation]:
        return _per_source(self.sources(), lambda s: s.cache_age)

    def _generation(self, options: CallbackOptions) -> Iterable[Observation]:
        generation = self.generation()
        return [] if generation is None else [Observation(generation)]


def _per_source(
    samples: Iterable[SourceSample], value: Callable[[SourceSample], float | None]
) -> list[Observation]:
    observed = ((sample.source, value(sample)) for sample in samples)
    return [Observation(v, {"confhub.source": s}) for s, v in observed if v is not None]

"""Prometheus metrics of a hub, through ``prometheus_client`` (``pip install confhub[prometheus]``).

::

    from confhub.integrations.prometheus import PrometheusMetrics

    hub = confhub.Hub(sources, plugins=[PrometheusMetrics()])   # one instance per hub

The plugin registers a collector in ``registry`` (the default registry unless given) when the
hub starts and unregisters it when the hub closes. Exported (``source`` is the source's display
name, credentials redacted):

===========================================  =========  ==========================================
``confhub_updates_applied_total``            counter    updates published, by ``source``
``confhub_updates_rejected_total``           counter    updates rejected (bad content, failed
                                                        validation; the last good one stays)
``confhub_source_failures_total``            counter    reads that failed (store unreachable...),
                                                        once per failure, not per retry
``confhub_source_state``                     gauge      1 for the state each source is in
                                                        (``state`` label: live, stale, cached...)
``confhub_source_last_update_timestamp_seconds``  gauge  when the layer served was read
``confhub_source_cache_age_seconds``         gauge      age of the cached copy served (while cached)
``confhub_generation``                       gauge      the generation of the snapshot served
``confhub_update_delay_seconds``             histogram  from reading an update to calling the
                                                        subscribers
``confhub_subscriber_callback_seconds``      histogram  the time the subscribers took per change
===========================================  =========  ==========================================
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .._health import SlotState
from ._observe import DELAY_BUCKETS, HubObserver

__all__ = ["PrometheusMetrics"]


class _Histogram:
    """Bucket counts and a sum, exported as a histogram family at each scrape."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return HistogramMetricFamily(name, documentation, buckets=cumulative, sum_value=self.total)


class PrometheusMetrics(HubObserver, Collector):
    """A confhub plugin exporting one hub's metrics to Prometheus (see the module's table).

    ``registry``: where the collector registers while the hub runs (default: the global
    ``prometheus_client.REGISTRY``). ``namespace`` prefixes every metric name.
    """

    def __init__(
        self, registry: CollectorRegistry = REGISTRY, *, namespace: str = "confhub"
    ) -> None:
        super().__init__()
        self._registry = registry
        self._ns = namespace
        self._counts: dict[str, Counter[str]] = {
            "applied": Counter(),
            "rejected": Counter(),
            "failed": Counter(),
        }
        self._delay = _Histogram(DELAY_BUCKETS)
        self._callbacks = _Histogram(DELAY_BUCKETS)
        self._metrics_lock = threading.Lock()

    # -- HubObserver -----------------------------------------------------------------------
    def attached(self) -> None:
        self._registry.register(self)

    def detached(self) -> None:
        self._registry.unregister(self)

    def applied(self, source: str) -> None:
        with self._metrics_lock:
            self._counts["applied"][source] += 1

    def rejected(self, source: str) -> None:
        with self._metrics_lock:
            self._counts["rejected"][source] += 1

    def failed(self, source: str) -> None:
        with self._metrics_lock:
            self._counts["failed"][source] += 1

    def published(self, delay: float | None, subscriber_seconds: float) -> None:
        with self._metrics_lock:
            if delay is not None:
                self._delay.observe(delay)
            self._callbacks.observe(subscriber_seconds)

    # -- Collector -------------------------------------------------------------------------
    def describe(self) -> list[Metric]:
        """The metric names (no samples): the registry refuses a second collector of them."""
        ns, kinds = self._ns, ("updates_applied", "updates_rejected", "source_failures")
        families: list[Metric] = [CounterMetricFamily(f"{ns}_{k}", "") for k in kinds]
        families += [
            HistogramMetricFamily(f"{ns}_{name}", "")
            for name in ("update_delay_seconds", "subscriber_callback_seconds")
        ]
        families += [
            GaugeMetricFamily(f"{ns}_{name}", "")
            for name in (
                "source_state",
                "source_last_update_timestamp_seconds",
                "source_cache_age_seconds",
                "generation",
            )
        ]
        return families

    def collect(self) -> Iterator[Metric]:
        ns = self._ns
        samples = list(self.sources())
        with self._metrics_lock:
            for kind, name, documentation in (
                ("applied", "updates_applied", "Updates of a source published."),
                ("rejected", "updates_rejected", "Updates rejected; the last good one stays."),
                ("failed", "source_failures", "Reads of a source that failed."),
            ):
                family = CounterMetricFamily(f"{ns}_{name}", documentation, labels=["source"])
                counts = self._counts[kind]
                for source in sorted({s.source for s in samples} | set(counts)):
                    family.add_metric([source], counts[source])
                yield family
            delay = self._delay.family(
                f"{ns}_update_delay_seconds",
                "From reading an update from its source to calling the subscribers.",
            )
            callbacks = self._callbacks.family(
                f"{ns}_subscriber_callback_seconds", "Time the subscribers took per change."
            )
        yield delay
        yield callbacks
        state = GaugeMetricFamily(
            f"{ns}_source_state", "1 for the state the source is in.", labels=["source", "state"]
        )
        updated = GaugeMetricFamily(
            f"{ns}_source_last_update_timestamp_seconds",
            "When the layer served was read (Unix time).",
            labels=["source"],
        )
        cache_age = GaugeMetricFamily(
            f"{ns}_source_cache_age_seconds",
            "Age of the cached copy served, while the source is served from the cache.",
            labels=["source"],
        )
        for sample in samples:
            for value in SlotState:
                state.add_metric([sample.source, value.value], float(sample.state is value))
            if sample.fetched_at is not None:
                updated.add_metric([sample.source], sample.fetched_at)
            if sample.cache_age is not None:
                cache_age.add_metric([sample.source], sample.cache_age)
        yield from (state, updated, cache_age)
        generation = self.generation()
        if generation is not None:
            yield GaugeMetricFamily(
                f"{ns}_generation", "Generation of the snapshot served.", value=generation
            )

"""Metrics plugins: a real Prometheus exposition (``prometheus_client``'s HTTP server) scraped
over HTTP and parsed, and OpenTelemetry metrics read through the SDK's in-memory reader, both
fed by a hub on a real watched file and on a store that goes down (served from the cache)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from confhub import Change, ErrorEvent, Hub, PluginError
from confhub.integrations.prometheus import PrometheusMetrics
from confhub.testing import MemoryStore

pytestmark = pytest.mark.timeout(60)


class Events:
    """Waits on a hub's changes and error events (bounded)."""

    def __init__(self, hub: Hub) -> None:
        self._cond = threading.Condition()
        self.changes: list[Change] = []
        self.errors: list[ErrorEvent] = []
        hub.subscribe(self._change, on_error=self._error)

    def _change(self, change: Change) -> None:
        with self._cond:
            self.changes.append(change)
            self._cond.notify_all()

    def _error(self, event: ErrorEvent) -> None:
        with self._cond:
            self.errors.append(event)
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], bool], what: str) -> None:
        """Until ``predicate()`` (checked on each event and every 50 ms), at most 20 s."""
        with self._cond:
            for _ in range(400):
                if self._cond.wait_for(predicate, timeout=0.05):
                    return
            raise AssertionError(f"{what}: not within 20 s")


@pytest.fixture
def exposition() -> Iterator[tuple[CollectorRegistry, Callable[[], dict[str, Any]]]]:
    """A registry served by prometheus_client's own HTTP server on a loopback port, and a
    scrape function returning ``{(name, labels...): value}`` parsed from the exposition."""
    registry = CollectorRegistry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"

    def scrape() -> dict[Any, float]:
        text = httpx.get(url, timeout=10).text
        samples: dict[Any, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, *sorted(sample.labels.items()))] = sample.value
        return samples

    try:
        yield registry, scrape
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_prometheus_exposition_follows_a_watched_file(
    tmp_path: Path, exposition: tuple[CollectorRegistry, Callable[[], dict[Any, float]]]
) -> None:
    registry, scrape = exposition
    config = tmp_path / "app.toml"
    config.write_text("[db]\nport = 1\n", encoding="utf-8")
    source = f"file:{config}"
    with Hub([source], plugins=[PrometheusMetrics(registry)], autoload=False) as hub:
        events = Events(hub)
        samples = scrape()
        assert samples[("confhub_source_state", ("source", source), ("state", "live"))] == 1
        assert samples[("confhub_source_state", ("source", source), ("state", "stale"))] == 0
        assert samples[("confhub_updates_applied_total", ("source", source))] == 0
        assert samples[("confhub_generation",)] == hub.generation
        read_at = samples[("confhub_source_last_update_timestamp_seconds", ("source", source))]

        config.write_text("[db]\nport = 2\n", encoding="utf-8")
        events.wait(lambda: len(events.changes) == 1, "the change")
        samples = scrape()
        assert samples[("confhub_updates_applied_total", ("source", source))] == 1
        assert samples[("confhub_update_delay_seconds_count",)] == 1
        assert samples[("confhub_subscriber_callback_seconds_count",)] == 1
        assert samples[("confhub_generation",)] == hub.generation == 2
        later = samples[("confhub_source_last_update_timestamp_seconds", ("source", source))]
        assert later >= read_at

        config.write_text('[db]\nport = "unterminated\n', encoding="utf-8")
        events.wait(lambda: len(events.errors) == 1, "the rejection")
        samples = scrape()
        assert samples[("confhub_updates_rejected_total", ("source", source))] == 1
        assert samples[("confhub_updates_applied_total", ("source", source))] == 1
        assert samples[("confhub_source_state", ("source", source), ("state", "stale"))] == 1
        assert samples[("confhub_source_state", ("source", source), ("state", "live"))] == 0
    # Closed: the collector left the registry, so a new hub can register its own.
    assert not [key for key in scrape() if key[0].startswith("confhub_")]
    config.write_text("[db]\nport = 3\n", encoding="utf-8")
    with Hub([source], plugins=[PrometheusMetrics(registry)], autoload=False):
        assert ("confhub_generation",) in scrape()


def test_prometheus_reports_failures_and_cache_age(
    tmp_path: Path, exposition: tuple[CollectorRegistry, Callable[[], dict[Any, float]]]
) -> None:
    registry, scrape = exposition
    store = MemoryStore("app", {"db": {"port": 1}})
    options: dict[str, Any] = {"autoload": False, "cache_dir": tmp_path, "retry_initial": 0.01}
    with Hub(["memory:app"], plugins=[store], **options):
        pass  # warms the cache
    store.fail()
    metrics = PrometheusMetrics(registry)
    with Hub(["memory:app"], plugins=[store, metrics], **options) as hub:
        assert hub.health().sources[0].state == "cached"
        samples = scrape()
        key = ("source", "memory:app")
        assert samples[("confhub_source_state", key, ("state", "cached"))] == 1
        assert samples[("confhub_source_cache_age_seconds", key)] >= 0
        events = Events(hub)
        store.recover()
        events.wait(lambda: hub.health().sources[0].state == "live", "live again")
        samples = scrape()
        assert ("confhub_source_cache_age_seconds", key) not in samples
        assert samples[("confhub_source_state", key, ("state", "live"))] == 1
        store.fail()
        events.wait(lambda: len(events.errors) == 1, "the failure")
        assert scrape()[("confhub_source_failures_total", key)] == 1


def test_one_metrics_plugin_per_hub_and_per_registry(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    config = tmp_path / "a.toml"
    config.write_text("a = 1\n", encoding="utf-8")
    metrics = PrometheusMetrics(registry)
    with Hub([f"file:{config}"], plugins=[metrics], autoload=False):
        with pytest.raises(ValueError, match="Duplicated"):
            Hub([f"file:{config}"], plugins=[PrometheusMetrics(registry)], autoload=False).start()
        with pytest.raises(PluginError, match="one metrics plugin per hub"):
            Hub([f"file:{config}"], plugins=[metrics], autoload=False).start()


def _otel_points(reader: Any) -> dict[Any, Any]:
    """``{(instrument, attributes...): value or histogram count}`` from the SDK's reader."""
    points: dict[Any, Any] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = (metric.name, *sorted(point.attributes.items()))
                    points[key] = getattr(point, "value", None)
                    if points[key] is None:
                        points[key] = point.count
    return points


def test_opentelemetry_metrics_through_the_sdk(tmp_path: Path) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from confhub.integrations.otel import OpenTelemetryMetrics

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    config = tmp_path / "app.toml"
    config.write_text("[db]\nport = 1\n", encoding="utf-8")
    source = f"file:{config}"
    attrs = ("confhub.source", source)
    try:
        metrics = OpenTelemetryMetrics(provider)
        with Hub([source], plugins=[metrics], autoload=False) as hub:
            events = Events(hub)
            points = _otel_points(reader)
            assert points[("confhub.source.state", attrs, ("confhub.state", "live"))] == 1
            assert points[("confhub.source.state", attrs, ("confhub.state", "cached"))] == 0
            assert points[("confhub.generation",)] == 1
            config.write_text("[db]\nport = 2\n", encoding="utf-8")
            events.wait(lambda: len(events.changes) == 1, "the change")
            config.write_text("[db]\nport = [\n", encoding="utf-8")
            events.wait(lambda: len(events.errors) == 1, "the rejection")
            points = _otel_points(reader)
            assert points[("confhub.updates.applied", attrs)] == 1
            assert points[("confhub.updates.rejected", attrs)] == 1
            assert points[("confhub.update.delay",)] == 1  # one histogram point recorded
            assert points[("confhub.subscriber.duration",)] == 1
            assert points[("confhub.source.state", attrs, ("confhub.state", "stale"))] == 1
            assert points[("confhub.generation",)] == 2
        # Closed: the gauges observe nothing; the counters keep their totals.
        points = _otel_points(reader)
        assert not [k for k in points if k[0] in ("confhub.source.state", "confhub.generation")]
    finally:
        provider.shutdown()


def test_import_confhub_imports_no_metrics_library() -> None:
    """The integrations are optional: ``import confhub`` never imports their libraries."""
    import subprocess
    import sys

    code = (
        "import sys, confhub, confhub.integrations;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('prometheus_client', 'opentelemetry')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"

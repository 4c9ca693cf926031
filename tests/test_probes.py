"""hub.readiness(): ready when every source serves (its cache too), not before start or
after a failed one; max_stale holds back a service serving an old copy."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from confhub import Hub, Readiness, StartupError
from confhub.testing import MemoryStore


def _hub(store: MemoryStore, cache_dir: Path | None) -> Hub:
    return Hub(
        [{"a": "0"}, f"memory:{store.name}"],
        plugins=[store],
        cache_dir=cache_dir,
        autoload=False,
        retry_initial=30.0,  # the store stays down for the whole test
    )


def _from_cache(store: MemoryStore, cache_dir: Path) -> Hub:
    """A hub started from its cache: one run fills it, then the store goes down."""
    with _hub(store, cache_dir):
        pass
    store.fail()
    return _hub(store, cache_dir).start()


def test_a_running_hub_with_live_sources_is_ready(tmp_path: Path) -> None:
    """Every source live: ready, not degraded, no reasons."""
    with _hub(MemoryStore("app", {"a": "1"}), tmp_path) as hub:
        ready = hub.readiness()
    assert isinstance(ready, Readiness)
    assert ready.ready
    assert bool(ready)
    assert ready.reasons == ()
    assert ready.to_dict()["degraded"] is False


def test_a_hub_started_from_its_cache_during_an_outage_is_ready(tmp_path: Path) -> None:
    """The store down at start, the cache serving: ready (and reported degraded)."""
    hub = _from_cache(MemoryStore("app", {"a": "1"}), tmp_path)
    try:
        ready = hub.readiness()
    finally:
        hub.close()
    assert ready.ready
    assert ready.health.degraded
    body = ready.to_dict()
    assert body["sources"][1]["state"] == "cached"
    assert body["ready"] is True


def test_a_required_source_down_without_a_cache_is_not_ready(tmp_path: Path) -> None:
    """No copy anywhere: start fails, and the hub is never ready."""
    store = MemoryStore("app", {"a": "1"})
    store.fail()
    hub = _hub(store, tmp_path)
    with pytest.raises(StartupError):
        hub.start()
    ready = hub.readiness()
    assert not ready.ready
    assert ready.reasons == ("the hub is closed, not running", "memory:app is not loaded yet")


def test_a_hub_not_started_yet_is_not_ready() -> None:
    """Before start: not ready, and every source is reported pending."""
    hub = _hub(MemoryStore("app", {"a": "1"}), None)
    ready = hub.readiness()
    assert not ready.ready
    assert ready.reasons[0] == "the hub is new, not running"
    assert "memory:app is not loaded yet" in ready.reasons
    hub.close()


def test_max_stale_holds_back_a_service_serving_an_old_copy(tmp_path: Path) -> None:
    """With max_stale, a cached copy older than it makes the service unready; a copy
    younger than it does not."""
    hub = _from_cache(MemoryStore("app", {"a": "1"}), tmp_path)
    try:
        age = hub.health().sources[1].age
        assert age is not None
        time.sleep(0.01)  # the copy ages past `age` (a strict bound below)
        old = hub.readiness(max_stale=age)
        young = hub.readiness(max_stale=age + 3600)
    finally:
        hub.close()
    assert not old.ready
    assert "memory:app is cached" in old.reasons[0]
    assert "max_stale" in old.reasons[0]
    assert young.ready

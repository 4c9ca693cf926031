"""Health values: a slot's state is a str enum that keeps the old strings and JSON."""

from __future__ import annotations

import json

from confhub import Hub
from confhub.testing import MemoryStore


def test_state_compares_equal_to_the_old_strings_and_dumps_unchanged() -> None:
    """SourceHealth.state == "live", and health --json's dict carries the plain string."""
    store = MemoryStore("app", {"a": "1"})
    with Hub(["memory:app"], plugins=[store], autoload=False, cache_dir=None) as hub:
        health = hub.health()
        state = health.sources[0].state
        assert state == "live"
        assert isinstance(state, str)
        row = health.to_dict()["sources"][0]
        assert type(row["state"]) is str
        assert json.loads(json.dumps(health.to_dict()))["sources"][0]["state"] == "live"
        store.fail()
        assert hub.health().sources[0].state == "stale"
        assert hub.explain("a").state == "stale"
        assert hub.explain("a").stale

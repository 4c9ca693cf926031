"""The read fast path (``hub.get``, ``hub[...]``, ``snapshot.get``): answers from one
snapshot, never a value of an earlier one, the same for leaves, tables and missing keys."""

from __future__ import annotations

import pytest

import confhub
from confhub import ConfigKeyError, HubStateError
from confhub.testing import MemoryStore


def test_a_read_after_an_update_sees_the_new_value() -> None:
    store = MemoryStore("m", {"a.b.c": 1, "a.b.d": 2})
    with confhub.Hub(["memory:m"], plugins=[store], autoload=False) as hub:
        before = hub.snapshot()
        for _ in range(3):  # read more than once: later reads are served from the memo
            assert hub.get("a.b.c") == 1
            assert hub["a.b.c"] == 1
        store.set("a.b.c", 10)
        assert hub.get("a.b.c") == 10
        assert hub["a.b.c"] == 10
        assert hub.snapshot()["a.b.c"] == 10
        assert before.get("a.b.c") == 1  # an old snapshot keeps its value
        assert before["a.b.c"] == 1


def test_tables_defaults_and_missing_keys_read_as_before() -> None:
    store = MemoryStore("m", {"a.b.c": 1})
    with confhub.Hub(["memory:m"], plugins=[store], autoload=False) as hub:
        for _ in range(2):
            assert dict(hub.get("a.b")) == {"c": 1}
            assert hub.get("nope", 5) == 5
            assert hub.snapshot().get("nope") is None
            with pytest.raises(ConfigKeyError):
                hub.get("nope")
            with pytest.raises(ConfigKeyError):
                hub["a.b.x"]


def test_many_distinct_keys_read_correctly() -> None:
    """More keys than the memo holds: the rest are read from the snapshot as they were."""
    flat = {f"s{i // 100}.k{i % 100}": i for i in range(10_000)}
    store = MemoryStore("m", flat)
    with confhub.Hub(["memory:m"], plugins=[store], autoload=False) as hub:
        for _ in range(2):
            for key, value in flat.items():
                assert hub.get(key) == value


def test_reads_before_start_and_after_close_raise_the_state_error() -> None:
    store = MemoryStore("m", {"a": 1})
    hub = confhub.Hub(["memory:m"], plugins=[store], autoload=False)
    with pytest.raises(HubStateError):
        hub.get("a")
    hub.start()
    assert hub.get("a") == 1
    hub.close()
    with pytest.raises(HubStateError):
        hub.get("a")
    with pytest.raises(HubStateError):
        hub["a"]

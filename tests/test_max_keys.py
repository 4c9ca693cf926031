"""``?max_keys=``: every source's key count is capped, at start and on every update.

Reliability scenario 38 (a million keys under a prefix): a document is bounded by its parser
(``MAX_NODES``); a key-value layer by this option, enforced by the hub for every backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from core_testlib import wait_for

from confhub import ErrorEvent, Hub, SourceFormatError, SpecError
from confhub._spec import DEFAULT_MAX_KEYS
from confhub.testing import MemoryStore


def keys(n: int, prefix: str = "k") -> dict[str, str]:
    return {f"{prefix}{i}": str(i) for i in range(n)}


def test_start_refuses_a_source_above_max_keys_naming_count_and_fix() -> None:
    store = MemoryStore("app", keys(5))
    hub = Hub(["memory:app?max_keys=4"], plugins=[store], autoload=False)
    with pytest.raises(SourceFormatError) as info:
        hub.start()
    message = str(info.value)
    assert "memory:app" in message
    assert "5 keys" in message
    assert "max_keys=4" in message
    assert "raise ?max_keys=" in message
    assert info.value.source == "memory:app"


def test_a_source_at_max_keys_exactly_loads() -> None:
    store = MemoryStore("app", keys(4))
    with Hub(["memory:app?max_keys=4"], plugins=[store], autoload=False) as hub:
        assert hub.get("k3") == "3"


def test_an_update_crossing_max_keys_is_rejected_and_a_later_one_applies() -> None:
    """The last good layer is kept; the store's state is still tracked, so nothing is lost."""
    store = MemoryStore("app", keys(3))
    with Hub(["memory:app?max_keys=4"], plugins=[store], autoload=False) as hub:
        errors: list[ErrorEvent] = []
        hub.subscribe(on_error=errors.append)
        store.transaction({"k3": "3", "k4": "4"})  # 5 keys
        wait_for(lambda: errors, what="the rejection")
        assert "5 keys" in str(errors[0].error)
        assert "max_keys=4" in str(errors[0].error)
        assert hub.get("k2") == "2"
        assert hub.get("k3", None) is None  # the last good layer: nothing of the refused update
        health = hub.health().sources[0]
        assert health.state == "stale"
        assert "max_keys" in (health.last_error or "")
        store.set("k5", "5")  # 6 keys: still refused
        store.delete("k0", "k1")  # 4 keys: applies, with k3..k5 from the refused updates
        wait_for(lambda: hub.get("k5", None) == "5", what="the update under the cap")
        assert hub.get("k3") == "3"
        assert hub.get("k0", None) is None
        assert hub.health().sources[0].state == "live"
        store.set("k2", "two")  # and the source goes on normally
        wait_for(lambda: hub.get("k2") == "two")


def test_a_polled_full_layer_above_max_keys_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"a": 1, "b": 2}')
    with Hub([f"{path}?max_keys=2&poll=0.05"], autoload=False) as hub:
        errors: list[ErrorEvent] = []
        hub.subscribe(on_error=errors.append)
        path.write_text('{"a": 1, "b": 2, "c": 3}')
        wait_for(lambda: errors, what="the rejection")
        assert "3 keys" in str(errors[0].error)
        assert hub.get("c", None) is None
        path.write_text('{"a": 10, "c": 3}')
        wait_for(lambda: hub.get("a") == 10, what="the file under the cap")
        assert hub.get("b", None) is None


@pytest.mark.parametrize("bad", ["0", "-1", "many", "1.5", "true"])
def test_a_bad_max_keys_is_a_spec_error(bad: Any) -> None:
    store = MemoryStore("app", keys(1))
    hub = Hub([f"memory:app?max_keys={bad}"], plugins=[store], autoload=False)
    with pytest.raises(SpecError, match="max_keys"):
        hub.start()


def test_the_default_cap_allows_the_documented_sizes() -> None:
    # The etcd benchmark loads 100,000 keys; the parser caps a document at MAX_NODES.
    from confhub._parsers import MAX_NODES

    assert DEFAULT_MAX_KEYS == MAX_NODES >= 100_000

"""The history checker itself, on hand-made good and bad histories (no store, no hub)."""

from __future__ import annotations

from typing import Any

import pytest
from history import Delivery, History, HistoryViolation, Sample, Subscriber, check_history, vhash

from confhub import Hub
from confhub.testing import MemoryStore


def store(*revisions: dict[str, Any]) -> History:
    """A history whose store committed ``revisions`` (numbered from 1)."""
    h = History("hand-made")
    for rev, changes in enumerate(revisions, start=1):
        h.commit(rev, changes)
    return h


def deliver(
    h: History, start: dict[str, Any], *changes: tuple[int, dict[str, tuple[Any, Any]]],
    start_generation: int = 1,
) -> Subscriber:  # fmt: skip
    """Add a subscriber that started at ``start`` and received ``changes``."""
    sub = Subscriber("sub", start_generation, {k: vhash(v) for k, v in start.items()})
    for gen, keys in changes:
        sub.changes.append(
            (gen, "src", tuple(
                Delivery(gen, k, vhash(o), vhash(n), "src") for k, (o, n) in sorted(keys.items())
            ))
        )  # fmt: skip
    h.subscribers.append(sub)
    return sub


def props(h: History) -> set[str]:
    return check_history(h).properties()


def test_a_complete_history_passes() -> None:
    """Every revision delivered once, in order, txn keys together: no violation."""
    h = store({"a": "1"}, {"a": "2", "b": "1"}, {"b": None}, {"a": "3"})
    deliver(
        h, {"a": "1"},
        (2, {"a": ("1", "2"), "b": (None, "1")}),
        (3, {"b": ("1", None)}),
        (4, {"a": ("2", "3")}),
    )  # fmt: skip
    h.check()


def test_a_coalesced_window_may_skip_superseded_values() -> None:
    """Values overwritten inside one delivered window (a catch-up batch) may be skipped."""
    h = store({"a": "1"}, {"a": "2"}, {"a": "3"}, {"b": "x"})
    deliver(h, {"a": "1"}, (2, {"a": ("1", "3"), "b": (None, "x")}))
    h.check()


def test_generations_going_back_are_out_of_order() -> None:
    """A generation lower than the previous one is an ordering violation."""
    h = store({"a": "1"}, {"a": "2"}, {"a": "3"})
    deliver(h, {"a": "1"}, (3, {"a": ("1", "2")}), (2, {"a": ("2", "3")}))
    assert "ordered" in props(h)


def test_values_delivered_against_commit_order_are_caught() -> None:
    """Revision 3's value, then revision 2's: the key went back in time."""
    h = store({"a": "1"}, {"a": "2"}, {"a": "3"})
    deliver(h, {"a": "1"}, (2, {"a": ("1", "3")}), (3, {"a": ("3", "2")}))
    assert "ordered" in props(h)


def test_a_value_never_committed_is_caught() -> None:
    """A delivered value the store never held is reported."""
    h = store({"a": "1"}, {"a": "2"})
    deliver(h, {"a": "1"}, (2, {"a": ("1", "bogus")}))
    assert "ordered" in props(h)


def test_a_repeated_generation_is_a_duplicate() -> None:
    """The same generation delivered twice is a duplicate."""
    h = store({"a": "1"}, {"a": "2"}, {"a": "3"})
    deliver(h, {"a": "1"}, (2, {"a": ("1", "2")}), (2, {"a": ("1", "2")}), (3, {"a": ("2", "3")}))
    assert "duplicates" in props(h)


def test_one_revision_delivered_twice_is_a_duplicate() -> None:
    """A key's value of one revision announced in two generations is a duplicate."""
    h = store({"a": "1"}, {"a": "2"})
    deliver(h, {"a": "1"}, (2, {"a": ("1", "2")}), (3, {"a": ("2", "2")}))
    assert "duplicates" in props(h)


def test_a_transaction_split_across_generations_is_not_atomic() -> None:
    """Two keys of one revision first seen in different generations break atomicity."""
    h = store({"a": "1", "b": "1"}, {"a": "2", "b": "2"})
    deliver(h, {"a": "1", "b": "1"}, (2, {"a": ("1", "2")}), (3, {"b": ("1", "2")}))
    assert "atomic" in props(h)


def test_a_skipped_revision_is_a_gap() -> None:
    """A value whose revision a generation covered but never showed is a gap."""
    h = store({"a": "1"}, {"a": "2"}, {"b": "1"}, {"a": "3"})
    # Generation 2 covers revisions 2..3 (b of 3 shown) without showing a=2; a=3 comes later.
    deliver(h, {"a": "1"}, (2, {"b": (None, "1")}), (3, {"a": ("1", "3")}))
    assert "gap" in props(h)


def test_a_last_value_never_delivered_is_a_gap_and_no_convergence() -> None:
    """The store's last write never reaching the subscriber fails gap and convergence."""
    h = store({"a": "1"}, {"a": "2"})
    deliver(h, {"a": "1"})
    assert {"gap", "convergence"} <= props(h)


def test_a_torn_read_is_caught() -> None:
    """A reader served keys from two different snapshots at one generation is reported."""
    h = store({"a": "1", "b": "1"}, {"a": "2", "b": "2"})
    deliver(h, {"a": "1", "b": "1"}, (2, {"a": ("1", "2"), "b": ("1", "2")}))
    h.samples.append(Sample("r", 2, 2, {"a": vhash("2"), "b": vhash("1")}, True))
    assert props(h) == {"reads"}


def test_a_reader_going_back_a_generation_is_caught() -> None:
    """Per-reader generations never go backwards."""
    h = store({"a": "1"}, {"a": "2"})
    deliver(h, {"a": "1"}, (2, {"a": ("1", "2")}))
    h.samples += [
        Sample("r", 2, 2, {"a": vhash("2")}, True),
        Sample("r", 1, 1, {"a": vhash("1")}, True),
    ]
    assert props(h) == {"reads"}


def test_consistent_reads_pass() -> None:
    """Reads matching the snapshot of their generation pass."""
    h = store({"a": "1", "b": "1"}, {"a": "2", "b": "2"})
    deliver(h, {"a": "1", "b": "1"}, (2, {"a": ("1", "2"), "b": ("1", "2")}))
    h.samples += [
        Sample("r", 1, 1, {"a": vhash("1"), "b": vhash("1")}, True),
        Sample("r", 1, 2, {"a": vhash("2")}, False),
        Sample("r", 2, 2, {"a": vhash("2"), "b": vhash("2")}, True),
    ]
    h.check()


def test_final_hub_state_must_match_the_store() -> None:
    """The hub's final snapshot is compared with the store's final state."""
    h = store({"a": "1"})
    deliver(h, {"a": "1"})
    h.final_hub = {"a": vhash("other")}
    assert props(h) == {"convergence"}


def test_the_report_is_readable() -> None:
    """The raised message names the property, the key and the revision."""
    h = store({"a": "1"}, {"a": "2"}, {"a": "3"})
    deliver(h, {"a": "1"}, (2, {"a": ("1", "3")}), (3, {"a": ("3", "2")}))
    with pytest.raises(HistoryViolation) as info:
        h.check()
    text = str(info.value)
    assert "[ordered]" in text
    assert "revision 2" in text
    assert "a=" in text


def test_recorded_from_a_real_hub() -> None:
    """attach/sample record a live hub over the in-memory store; the history checks out."""
    mem = MemoryStore("app", {"a": "0"})
    h = History("memory")
    h.commit(1, {"a": "0"})
    with Hub(["memory:app"], plugins=[mem], cache_dir=None) as hub:
        h.attach(hub)
        stop = h.start_readers(2, lambda r: h.sample_snapshot(r, hub, ["a", "b"]))
        try:
            for i in range(1, 50):
                rev = mem.transaction({"a": str(i), "b": str(i)})
                h.commit(rev, {"a": str(i), "b": str(i)})
        finally:
            stop()
        h.store_state({"a": "49", "b": "49"})
        from history import wait_until

        wait_until(lambda: h.subscribers[0].changes and h.subscribers[0].changes[-1][0] == 50, 5)
        h.hub_state(hub)
    report = h.check()
    assert report.stats["main.generations"] == 49

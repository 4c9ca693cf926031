"""The documented test hooks of confhub.testing: backend_of and queue_depth."""

from __future__ import annotations

import threading

import pytest
from core_testlib import wait_for

from confhub import Change, Fallback, Hub, HubStateError
from confhub.testing import MemoryBackend, MemoryStore, backend_of, queue_depth


def test_backend_of_finds_a_slot_and_a_fallback_member() -> None:
    """A slot's name gives its serving backend; a member's name gives that member's."""
    primary, alternate = MemoryStore("a", {"k": "1"}), MemoryStore("b", {"k": "2"})
    primary.fail()
    hub = Hub(
        [Fallback("memory:a", "memory:b", name="store")],
        plugins=[primary, alternate],
        autoload=False,
        cache_dir=None,
    )
    with pytest.raises(HubStateError):
        backend_of(hub, "store")  # backends are made at start
    with hub:
        serving = backend_of(hub, "store")
        assert isinstance(serving, MemoryBackend)
        assert serving.store is alternate
        member = backend_of(hub, "memory:a")
        assert isinstance(member, MemoryBackend)
        assert member.store is primary
        with pytest.raises(KeyError, match="store"):
            backend_of(hub, "memory:nope")


def test_queue_depth_counts_events_behind_a_blocked_subscriber() -> None:
    """Events wait while a subscriber blocks, and drain once it returns."""
    store = MemoryStore("app", {"k": "0"})
    release = threading.Event()
    entered = threading.Event()

    def blocked(change: Change) -> None:
        entered.set()
        release.wait(10)

    with Hub(["memory:app"], plugins=[store], autoload=False, cache_dir=None) as hub:
        assert queue_depth(hub) == 0
        hub.subscribe(blocked)
        store.set("k", "1")
        assert entered.wait(5)
        store.set("k", "2")
        store.set("k", "3")
        assert queue_depth(hub) == 2
        release.set()
        wait_for(lambda: queue_depth(hub) == 0)

"""Accepted layers reach the cache off the delivery path: subscribers never wait on disk."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from core_testlib import wait_for

from confhub import Change, Hub, Layer, SourceSpec, hookimpl
from confhub.testing import MemoryStore


class BlockingAcceptor:
    """A plugin whose ``confhub_layer_accepted`` blocks until released (a stuck disk)."""

    confhub_plugin_name = "blocking-acceptor"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.revisions: list[Any] = []

    @hookimpl
    def confhub_layer_accepted(self, spec: SourceSpec, layer: Layer) -> None:
        self.entered.set()
        self.release.wait(10)
        self.revisions.append(layer.revision)


def test_subscriber_is_delivered_while_the_cache_write_is_blocked(tmp_path: Path) -> None:
    """A change reaches subscribers while a confhub_layer_accepted call is still blocked."""
    store = MemoryStore("app", {"a": "1"})
    acceptor = BlockingAcceptor()
    got: list[Change] = []
    with Hub(["memory:app"], plugins=[store, acceptor], autoload=False, cache_dir=tmp_path) as hub:
        hub.subscribe(got.append)
        assert acceptor.entered.wait(5)  # the start-up layer's call is now blocked
        store.set("a", "2")
        wait_for(lambda: got, what="a delivery while the cache write is blocked")
        assert got[0].get("a") is not None
        assert not acceptor.revisions  # still blocked: the delivery did not wait for it
        acceptor.release.set()


def test_calls_are_coalesced_per_source_and_flushed_on_close(tmp_path: Path) -> None:
    """Behind a blocked call only the latest accepted layer is passed on, before close returns."""
    store = MemoryStore("app", {"a": "0"})
    acceptor = BlockingAcceptor()
    with Hub(["memory:app"], plugins=[store, acceptor], autoload=False, cache_dir=None) as hub:
        assert acceptor.entered.wait(5)
        for n in range(1, 50):
            store.set("a", str(n))
        assert hub.get("a") == "49"
        acceptor.release.set()
    # The start-up layer, then the latest one; the 48 in between were skipped.
    assert acceptor.revisions == [1, store.revision]


def test_the_last_accepted_layer_is_on_disk_after_close(tmp_path: Path) -> None:
    """An update accepted just before close is in the cache a later start serves from."""
    store = MemoryStore("app", {"a": "1"})
    with Hub(["memory:app"], plugins=[store], autoload=False, cache_dir=tmp_path) as hub:
        store.set("a", "2")
        assert hub.get("a") == "2"
    store.fail()
    with Hub(["memory:app"], plugins=[store], autoload=False, cache_dir=tmp_path) as hub:
        assert hub.health().sources[0].state == "cached"
        assert hub.get("a") == "2"

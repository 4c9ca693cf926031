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


class Recorder:
    """A plugin recording the sources whose layers reach ``confhub_layer_accepted``."""

    confhub_plugin_name = "recorder"

    def __init__(self) -> None:
        self.sources: list[str] = []

    @hookimpl
    def confhub_layer_accepted(self, spec: SourceSpec, layer: Layer) -> None:
        self.sources.append(spec.display)


def _persist_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "confhub-persist"]


def test_layers_no_plugin_takes_start_no_persist_thread(tmp_path: Path) -> None:
    """A file's layers are not cached: with only the cache plugin listening, a started hub
    hands them to no thread (none starts); a plugin of its own still gets every one."""
    path = tmp_path / "app.json"
    path.write_text('{"a": 1}')
    before = len(_persist_threads())
    with Hub([f"file:{path}"], autoload=False, cache_dir=tmp_path / "cache") as hub:
        assert hub.get("a") == 1
        assert len(_persist_threads()) == before
    recorder = Recorder()
    with Hub([f"file:{path}"], plugins=[recorder], autoload=False, cache_dir=tmp_path) as hub:
        wait_for(lambda: recorder.sources)
        assert len(_persist_threads()) == before + 1
    assert recorder.sources == [f"file:{path}"]
    # A cached source (the in-memory store is one) still reaches the cache.
    store = MemoryStore("app", {"a": "1"})
    with Hub(["memory:app"], plugins=[store], autoload=False, cache_dir=tmp_path / "c2"):
        pass
    assert list((tmp_path / "c2").iterdir())

"""A three-member cluster losing its leader while writes continue."""

from __future__ import annotations

import threading
import time

from etcd_testlib import FAST, Recorder, apply, assert_history_valid

from confhub_etcd._client import EtcdClient, EtcdError, WatchBatch
from confhub_etcd.testing import EtcdCluster


def _server_history(endpoints: list[str], prefix: str, start: int, end: int) -> list[WatchBatch]:
    """The server's own event history for the prefix, from a fresh watch at ``start``."""
    from confhub_etcd._client import PrefixSnapshot  # noqa: PLC0415

    history = Recorder()
    with (
        EtcdClient(endpoints) as fresh,
        fresh.watch_prefix(
            prefix, history.on_batch, snapshot=PrefixSnapshot(start - 1, ()), backoff=FAST
        ),
    ):
        history.wait_revision(end)
    return history.batches


def test_leader_loss_during_writes_loses_nothing(cluster: EtcdCluster) -> None:
    """Kill the leader the watcher is connected to while a writer keeps writing: the watcher
    fails over and its event history equals the server's, with every confirmed write."""
    leader = cluster.leader()
    endpoints = cluster.endpoints
    ordered = [endpoints[leader]] + [e for i, e in enumerate(endpoints) if i != leader]
    recorder = Recorder()
    confirmed: dict[str, str] = {}
    stop = threading.Event()

    def write_loop(client: EtcdClient) -> None:
        i = 0
        while not stop.is_set():
            key, value = f"/cl/k{i % 40:02d}", f"v{i}"
            try:
                client.put(key, value)
                confirmed[key] = value
                i += 1
            except EtcdError:
                time.sleep(0.02)  # uncertain outcome: the history check covers it

    with (
        EtcdClient(ordered, timeout=1.0) as client,
        EtcdClient(list(reversed(ordered)), timeout=1.0) as writer_client,
    ):
        snapshot = client.read_prefix("/cl/")
        with client.watch_prefix(
            "/cl/",
            recorder.on_batch,
            recorder.on_state,
            snapshot=snapshot,
            backoff=FAST,
            progress_interval=0.3,
            liveness_timeout=1.5,
        ) as watcher:
            recorder.wait_for(lambda: "connected" in recorder.state_names())
            assert watcher.endpoint == endpoints[leader]
            writer = threading.Thread(target=write_loop, args=(writer_client,))
            writer.start()
            try:
                time.sleep(0.5)
                cluster.kill(leader)
                time.sleep(2.0)
            finally:
                stop.set()
                writer.join(10)
            final = writer_client.put("/cl/final", "1")
            recorder.wait_revision(final, timeout=15)
            assert watcher.endpoint != endpoints[leader]
        survivors = [e for i, e in enumerate(endpoints) if i != leader]
        server = _server_history(survivors, "/cl/", snapshot.revision + 1, final)

    assert "disconnected" in recorder.state_names()
    assert_history_valid(recorder.batches)
    mine = [(e.mod_revision, e.key, e.value) for e in recorder.events]
    theirs = [(e.mod_revision, e.key, e.value) for b in server for e in b.events]
    assert mine == theirs
    state = apply({}, recorder.batches)
    for key, value in confirmed.items():
        assert state[key.encode()] == value.encode()
    assert len(mine) > 20
    cluster.start(leader)


def test_quorum_loss_cancels_watch_via_hasleader(cluster: EtcdCluster) -> None:
    """With two of three members gone, the survivor cancels the hasleader watch ('no leader')
    instead of leaving it hanging; after the members return the watch resumes without a gap."""
    survivor = cluster.leader()
    others = [i for i in range(3) if i != survivor]
    recorder = Recorder()
    with EtcdClient([cluster.endpoints[survivor]], timeout=1.0) as client:
        snapshot = client.read_prefix("/q/")
        with client.watch_prefix(
            "/q/",
            recorder.on_batch,
            recorder.on_state,
            snapshot=snapshot,
            backoff=FAST,
            progress_interval=5.0,  # liveness far away: the cancel must come from the server
        ):
            recorder.wait_for(lambda: "connected" in recorder.state_names())
            before = client.put("/q/a", "1")
            recorder.wait_revision(before)
            for i in others:
                cluster.kill(i)
            started = time.monotonic()
            recorder.wait_for(lambda: "disconnected" in recorder.state_names(), timeout=10)
            assert time.monotonic() - started < 5.0
            lost = next(s for s in recorder.states if s.state.value == "disconnected")
            assert lost.error is not None
            for i in others:
                cluster.start(i)
            after = client.put("/q/b", "2")
            recorder.wait_revision(after, timeout=15)
    assert_history_valid(recorder.batches)
    assert [e.key for e in recorder.events] == [b"/q/a", b"/q/b"]

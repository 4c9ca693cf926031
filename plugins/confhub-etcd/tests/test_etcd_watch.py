"""The resilient prefix watcher against a real single etcd member."""

from __future__ import annotations

import time

from etcd_testlib import FAST, Recorder, apply, assert_history_valid

from confhub_etcd._client import Backoff, EtcdClient, EventKind
from confhub_etcd.testing import EtcdServer


def test_initial_load_then_changes(client: EtcdClient, recorder: Recorder) -> None:
    """Without a snapshot the watcher loads the prefix first, then streams changes."""
    client.put("/w/a", "1")
    client.put("/x/outside", "1")
    with client.watch_prefix("/w/", recorder.on_batch, recorder.on_state, backoff=FAST) as w:
        recorder.wait_for(lambda: len(recorder.batches) == 1)
        first = recorder.batches[0]
        assert first.resync and first.compact_revision == 0
        assert [(e.kind, e.key) for e in first.events] == [(EventKind.PUT, b"/w/a")]
        revision = client.put("/w/b", "2")
        client.put("/x/outside", "2")
        recorder.wait_revision(revision)
        assert w.revision == revision
    assert recorder.state_names() == ["connected", "closed"]


def test_multi_key_transaction_is_one_batch(client: EtcdClient, recorder: Recorder) -> None:
    """All events of one transaction arrive in one callback call."""
    snapshot = client.read_prefix("/w/")
    with client.watch_prefix("/w/", recorder.on_batch, snapshot=snapshot, backoff=FAST):
        revision = client.put_many({f"/w/k{i:02d}": str(i) for i in range(50)}, delete=["/w/none"])
        recorder.wait_revision(revision)
    assert len(recorder.batches) == 1
    batch = recorder.batches[0]
    assert batch.revision == revision and not batch.resync
    assert len(batch.events) == 50
    assert {e.mod_revision for e in batch.events} == {revision}


def test_deletes_are_delivered(client: EtcdClient, recorder: Recorder) -> None:
    """A delete arrives as a DELETE event with an empty value."""
    client.put("/w/a", "1")
    snapshot = client.read_prefix("/w/")
    with client.watch_prefix("/w/", recorder.on_batch, snapshot=snapshot, backoff=FAST):
        revision = client.delete("/w/a")
        recorder.wait_revision(revision)
    (event,) = recorder.events
    assert (event.kind, event.key, event.value, event.mod_revision) == (
        EventKind.DELETE,
        b"/w/a",
        b"",
        revision,
    )


def test_kill_and_restart_mid_watch_loses_nothing(
    etcd: EtcdServer, client: EtcdClient, recorder: Recorder
) -> None:
    """etcd SIGKILLed and restarted; writes made while the watch is down all arrive, once,
    in order, and the watcher reports one disconnect and one reconnect."""
    snapshot = client.read_prefix("/w/")
    slow = Backoff(initial=0.5, maximum=0.5, jitter=0.0)
    writer = EtcdClient(etcd.endpoints, timeout=2.0)
    with (
        writer,
        client.watch_prefix(
            "/w/",
            recorder.on_batch,
            recorder.on_state,
            snapshot=snapshot,
            backoff=slow,
            progress_interval=0.3,
        ) as watcher,
    ):
        for i in range(10):
            writer.put(f"/w/before{i}", str(i))
        last_before = writer.put_many({"/w/txn1": "a", "/w/txn2": "b"})
        # Killed only once the stream is up and caught up: a kill before the watch's create
        # response arrives has no "connected" to report (seen on a loaded machine).
        recorder.wait_revision(last_before)
        etcd.kill()
        etcd.start()
        # The watcher is still backing off: these land while it is disconnected.
        for i in range(20):
            writer.put(f"/w/during{i % 5}", str(i))
        last = writer.put_many({"/w/txn1": "c", "/w/txn2": "d"}, delete=["/w/before0"])
        recorder.wait_revision(last)
        assert watcher.revision == last
        assert watcher.duplicates_dropped == 0
    assert_history_valid(recorder.batches)
    assert apply({}, recorder.batches) == {
        kv.key: kv.value for kv in client.read_prefix("/w/").items
    }
    revisions = [e.mod_revision for e in recorder.events]
    assert revisions == list(range(snapshot.revision + 1, last + 1)) or (
        sorted(set(revisions)) == list(range(snapshot.revision + 1, last + 1))
    )
    assert recorder.state_names() == ["connected", "disconnected", "connected", "closed"]
    assert "etcd at" in str(recorder.states[1].error)


def test_compaction_while_behind_resyncs_with_deletes(
    etcd: EtcdServer, client: EtcdClient, recorder: Recorder
) -> None:
    """A watcher whose resume revision was compacted reloads and emits puts AND deletes."""
    client.put_many({"/w/keep": "1", "/w/change": "1", "/w/drop": "1"})
    snapshot = client.read_prefix("/w/")
    # The watcher starts behind: the history after its snapshot is compacted away.
    client.put("/w/change", "2")
    client.delete("/w/drop")
    client.put("/w/new", "1")
    client.put("/w/change", "3")
    compacted = etcd.compact()
    with client.watch_prefix(
        "/w/", recorder.on_batch, recorder.on_state, snapshot=snapshot, backoff=FAST
    ) as watcher:
        recorder.wait_for(lambda: any(b.resync for b in recorder.batches))
        after = client.put("/w/later", "1")
        recorder.wait_revision(after)
        assert watcher.resyncs == 1
    resync = recorder.batches[0]
    assert resync.resync and resync.compact_revision == compacted
    assert resync.revision >= compacted
    changes = {(e.kind, e.key, e.value) for e in resync.events}
    assert changes == {
        (EventKind.PUT, b"/w/change", b"3"),
        (EventKind.PUT, b"/w/new", b"1"),
        (EventKind.DELETE, b"/w/drop", b""),
    }
    assert "resynced" in recorder.state_names()
    assert apply({kv.key: kv.value for kv in snapshot.items}, recorder.batches) == {
        kv.key: kv.value for kv in client.read_prefix("/w/").items
    }


def test_compaction_during_outage_resyncs(
    etcd: EtcdServer, client: EtcdClient, recorder: Recorder
) -> None:
    """Killed mid-watch; while the watcher backs off, keys change and history is compacted;
    on reconnect it resyncs instead of jumping silently."""
    client.put_many({"/w/a": "1", "/w/b": "1"})
    slow = Backoff(initial=3.0, maximum=3.0, jitter=0.0)
    with client.watch_prefix(
        "/w/", recorder.on_batch, recorder.on_state, backoff=slow, progress_interval=0.3
    ):
        recorder.wait_for(lambda: "connected" in recorder.state_names())
        etcd.kill()
        etcd.start()
        etcd.delete("/w/a")
        etcd.put("/w/c", "1")
        compacted = etcd.compact()
        recorder.wait_for(lambda: any(b.compact_revision for b in recorder.batches))
    resync = next(b for b in recorder.batches if b.compact_revision)
    assert resync.compact_revision == compacted
    assert {(e.kind, e.key) for e in resync.events} == {
        (EventKind.DELETE, b"/w/a"),
        (EventKind.PUT, b"/w/c"),
    }


def test_paused_server_is_detected_and_recovered(
    etcd: EtcdServer, client: EtcdClient, recorder: Recorder
) -> None:
    """A SIGSTOPped etcd (half-open connection) is declared lost by the liveness check, and
    after SIGCONT the watch resumes without a gap."""
    snapshot = client.read_prefix("/w/")
    with client.watch_prefix(
        "/w/",
        recorder.on_batch,
        recorder.on_state,
        snapshot=snapshot,
        backoff=FAST,
        progress_interval=0.2,
        liveness_timeout=1.0,
    ):
        recorder.wait_for(lambda: "connected" in recorder.state_names())
        etcd.pause()
        # The liveness check notices the paused member (without it the stream would wait
        # forever); the wait is a hang guard, not a pace (was: < 3.0 s).
        recorder.wait_for(lambda: "disconnected" in recorder.state_names(), timeout=60)
        etcd.resume()
        revision = etcd.put("/w/after", "1")
        recorder.wait_revision(revision)
    assert recorder.state_names()[:3] == ["connected", "disconnected", "connected"]


def test_down_server_reports_once_and_does_not_spin(
    etcd: EtcdServer, client: EtcdClient, recorder: Recorder
) -> None:
    """While etcd stays down, repeated failures produce one state report and backoff grows."""
    backoff = Backoff(initial=0.05, maximum=0.4, jitter=0.0)
    with client.watch_prefix(
        "/w/", recorder.on_batch, recorder.on_state, backoff=backoff, progress_interval=0.3
    ) as watcher:
        recorder.wait_for(lambda: "connected" in recorder.state_names())
        etcd.stop()
        time.sleep(2.0)
        attempts = watcher.reconnects
        # 0.05+0.1+0.2+0.4+0.4... stays well below a spin even with connect time included.
        assert 2 <= attempts <= 12
        assert recorder.state_names() == ["connected", "disconnected"]
        etcd.start()
        revision = etcd.put("/w/back", "1")
        recorder.wait_revision(revision)
    assert recorder.state_names() == ["connected", "disconnected", "connected", "closed"]


def test_callback_errors_are_counted_not_fatal(client: EtcdClient) -> None:
    """A raising callback does not kill the watcher; later batches still arrive."""
    seen: list[int] = []

    def callback(batch) -> None:  # type: ignore[no-untyped-def]
        seen.append(batch.revision)
        if len(seen) == 2:
            raise RuntimeError("consumer bug")

    with client.watch_prefix("/w/", callback, backoff=FAST) as watcher:
        client.put("/w/a", "1")
        last = client.put("/w/b", "2")
        deadline = time.monotonic() + 5
        while (not seen or seen[-1] < last) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert seen[-1] == last
        assert watcher.callback_errors == 1


def test_close_is_idempotent_and_start_twice_fails(client: EtcdClient) -> None:
    """Lifecycle misuse gets clear errors; close can be called repeatedly."""
    import pytest  # noqa: PLC0415

    from confhub_etcd._client import EtcdClosedError, PrefixWatcher  # noqa: PLC0415

    watcher = PrefixWatcher(client, "/w/", lambda batch: None, backoff=FAST)
    watcher.start()
    with pytest.raises(RuntimeError, match="already started"):
        watcher.start()
    watcher.close()
    watcher.close()
    assert not watcher.running
    with pytest.raises(EtcdClosedError):
        watcher.start()
    client.close()
    with pytest.raises(EtcdClosedError):
        client.get("/w/a")


def test_client_close_ends_a_watcher_read_in_flight(etcd: EtcdServer, recorder: Recorder) -> None:
    """Closing the client ends at once the read its watcher is blocked in (a paused etcd,
    a long deadline), so the thread is joined instead of outliving close()."""
    client = EtcdClient(etcd.endpoints, timeout=30.0)
    try:
        client.put("/w/a", "1")
        etcd.pause()
        watcher = client.watch_prefix("/w/", recorder.on_batch, recorder.on_state, backoff=FAST)
        time.sleep(0.3)  # the initial read is now waiting on the paused member
        started = time.monotonic()
        client.close()
        assert time.monotonic() - started < 30.0  # not the read's 30 s deadline
        assert not watcher.running
        assert recorder.state_names() == ["closed"]
    finally:
        client.close()
        etcd.resume()

"""A hub inherited across fork() resumes in the child; spawn starts afresh (real processes).

Each child reports over a pipe; every wait is bounded. The etcd scenarios use a real etcd
(paused with SIGSTOP to hold the child's re-read back).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from children import report, spawned_hub, wait_for
from confhub_consul.testing import ConsulTestServer
from confhub_etcd.testing import EtcdServer

import confhub

FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")


def receive(conn: Connection, timeout: float = 60.0) -> Any:
    assert conn.poll(timeout), "the child did not report in time"
    return conn.recv()


def wait_live(hub: confhub.Hub, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not all(s.state == "live" for s in hub.health().sources):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def follow_file(hub: confhub.Hub, conn: Connection) -> None:
    wait_live(hub)
    conn.send(report(hub))
    wait_for(hub, "flag", "two")
    conn.send(report(hub))
    hub.close()


def test_a_forked_child_follows_a_file_changed_after_the_fork(tmp_path: Path) -> None:
    """The child re-watches the file in its own process: a later change reaches it."""
    cfg = tmp_path / "app.toml"
    cfg.write_text('flag = "one"\n')
    with confhub.Hub([f"file:{cfg}"], cache_dir=None) as hub:
        ours, theirs = FORK.Pipe()
        child = FORK.Process(target=follow_file, args=(hub, theirs))
        child.start()
        first = receive(ours)
        assert first["pid"] != os.getpid()
        assert (first["flag"], first["state"], first["sources"][0]["state"]) == (
            "one",
            "running",
            "live",
        )
        cfg.write_text('flag = "two"\n')
        second = receive(ours)
        child.join(30)
        assert (second["flag"], second["sources"][0]["state"]) == ("two", "live")
        assert child.exitcode == 0


def idle(conn: Connection) -> None:
    conn.poll(60)  # never touches the hub; exits when told (or after 60 s)


def test_a_forked_child_that_never_reads_still_gets_its_callbacks(tmp_path: Path) -> None:
    """A subscriber inherited by a child that never calls the hub is called there."""
    cfg = tmp_path / "app.toml"
    cfg.write_text('flag = "one"\n')
    seen = FORK.SimpleQueue()
    with confhub.Hub([f"file:{cfg}"], cache_dir=None) as hub:
        hub.subscribe(lambda change: seen.put((os.getpid(), {c.key: c.new for c in change})))
        ours, theirs = FORK.Pipe()
        child = FORK.Process(target=idle, args=(theirs,))
        child.start()
        try:
            cfg.write_text('flag = "two"\n')
            deadline = time.monotonic() + 30
            from_child: list[dict[str, Any]] = []
            while not from_child and time.monotonic() < deadline:
                while not seen.empty():
                    pid, changes = seen.get()
                    if pid == child.pid:
                        from_child.append(changes)
                time.sleep(0.05)
            assert from_child
            assert from_child[-1] == {"flag": "two"}
        finally:
            ours.send("exit")
            child.join(30)


def close_at_once(hub: confhub.Hub, conn: Connection) -> None:
    hub.close()
    conn.send(hub.state.value)


def test_closing_an_inherited_hub_in_a_child_leaves_the_parent_watching(tmp_path: Path) -> None:
    """The child never closes what it shares with the parent (the file watch goes on)."""
    cfg = tmp_path / "app.toml"
    cfg.write_text('flag = "one"\n')
    with confhub.Hub([f"file:{cfg}"], cache_dir=None) as hub:
        ours, theirs = FORK.Pipe()
        child = FORK.Process(target=close_at_once, args=(hub, theirs))
        child.start()
        assert receive(ours) == "closed"
        child.join(30)
        cfg.write_text('flag = "two"\n')
        assert wait_for(hub, "flag", "two")


def follow_etcd(hub: confhub.Hub, conn: Connection) -> None:
    conn.send(report(hub))  # at once: the store is paused, the re-read cannot finish
    wait_for(hub, "flag", "two")
    wait_live(hub)
    conn.send(report(hub))
    wait_for(hub, "flag", "three")
    conn.send(report(hub))
    hub.close()


def test_a_forked_child_is_stale_until_it_reread_etcd_then_watches(etcd: EtcdServer) -> None:
    """Between the fork and its own read of etcd a child says stale, never live; then it
    serves what etcd holds and follows later puts through its own watch."""
    etcd.put("/app/flag", "one")
    spec = f"etcd://{etcd.endpoint}/app/"
    # A short backoff: the child's re-read is retried soon after etcd is resumed.
    options = {"connect_timeout": 0.5, "retry_initial": 0.05, "retry_max": 0.5}
    with confhub.Hub([spec], cache_dir=None, **options) as hub:
        etcd.pause()
        try:
            ours, theirs = FORK.Pipe()
            child = FORK.Process(target=follow_etcd, args=(hub, theirs))
            child.start()
            first = receive(ours)
        finally:
            etcd.resume()
        source = first["sources"][0]
        assert (first["flag"], first["state"], source["state"]) == ("one", "running", "stale")
        assert "fork()" in source["last_error"]
        etcd.put("/app/flag", "two")
        second = receive(ours)
        assert (second["flag"], second["sources"][0]["state"]) == ("two", "live")
        etcd.put("/app/flag", "three")
        third = receive(ours)
        child.join(30)
        assert third["flag"] == "three"
        assert child.exitcode == 0
        assert wait_for(hub, "flag", "three")  # the parent's own watch was never disturbed


def test_a_spawned_child_builds_its_own_hub(tmp_path: Path) -> None:
    """multiprocessing spawn: nothing is inherited; the child's own hub follows the file."""
    cfg = tmp_path / "app.toml"
    cfg.write_text('flag = "one"\n')
    ours, theirs = SPAWN.Pipe()
    child = SPAWN.Process(target=spawned_hub, args=([f"file:{cfg}"], theirs))
    child.start()
    try:
        first = receive(ours)
        assert (first["flag"], first["sources"][0]["state"]) == ("one", "live")
        cfg.write_text('flag = "two"\n')
        assert receive(ours)["flag"] == "two"
    finally:
        child.join(30)
    assert child.exitcode == 0


def follow_consul(hub: confhub.Hub, conn: Connection) -> None:
    wait_live(hub)
    conn.send(report(hub))
    wait_for(hub, "flag", "two")
    conn.send(report(hub))
    hub.close()


def test_a_forked_child_follows_consul_on_its_own_connection() -> None:
    """The Consul backend in a child: a new HTTP client, its own blocking queries."""
    with ConsulTestServer(default_query_time=2, max_query_time=3) as consul:
        consul.put("app/flag", "one")
        spec = f"consul://{consul.address}/app/"
        with confhub.Hub([spec], cache_dir=None) as hub:
            ours, theirs = FORK.Pipe()
            child = FORK.Process(target=follow_consul, args=(hub, theirs))
            child.start()
            first = receive(ours)
            assert (first["flag"], first["sources"][0]["state"]) == ("one", "live")
            consul.put("app/flag", "two")
            second = receive(ours)
            child.join(30)
            assert (second["flag"], second["sources"][0]["state"]) == ("two", "live")
            assert child.exitcode == 0

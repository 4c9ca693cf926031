"""Host-shared etcd sources (``share="host"``) with real processes and a real etcd: the
election, takeover after ``kill -9``, late and slow followers, and what the store holds."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confhub import BackendSettings, Layer, LayerDelta, SourceSpec
from fleet_testlib import Worker, tcp_connections, watch_streams

from confhub_etcd._backend import make_backend
from confhub_etcd.testing import EtcdServer


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Worker processes a test starts; every one is stopped after it."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.close()


def _start(workers: list[Worker], spec: str, cache: Path, count: int) -> list[Worker]:
    new = [Worker(spec, cache) for _ in range(count)]
    workers.extend(new)
    for worker in new:
        worker.ready()
    return new


def _roles(group: list[Worker]) -> dict[int, dict]:
    return {w.pid: w.health()["sharing"] for w in group}


def _leader(group: list[Worker]) -> Worker:
    roles = _roles(group)
    leaders = [w for w in group if roles[w.pid]["role"] == "leader"]
    assert len(leaders) == 1, roles
    followers = [w for w in group if w is not leaders[0]]
    assert all(
        roles[w.pid] == {"role": "follower", "leader_pid": leaders[0].pid, "reason": None}
        for w in followers
    ), roles
    return leaders[0]


def _wait_value(group: list[Worker], key: str, value: str) -> None:
    for worker in group:
        worker.wait_for(lambda line: line.get("set", {}).get(key) == value)


def test_one_leader_and_a_new_one_after_kill(etcd: EtcdServer, tmp_path: Path, workers) -> None:
    """N processes elect exactly one leader; kill -9 of it leaves exactly one new leader
    among the survivors, which all keep receiving changes."""
    etcd.put("/app/a", "0")
    group = _start(workers, f"etcd://{etcd.endpoint}/app/", tmp_path / "cache", 4)
    leader = _leader(group)
    etcd.put("/app/a", "1")
    _wait_value(group, "a", "1")
    leader.kill()
    leader.proc.wait(10)
    survivors = [w for w in group if w is not leader]
    etcd.put("/app/a", "2")
    _wait_value(survivors, "a", "2")
    new_leader = _leader(survivors)
    assert new_leader.pid != leader.pid


def test_takeover_resumes_after_the_last_revision(
    etcd: EtcdServer, tmp_path: Path, workers
) -> None:
    """Puts made while the group has no leader reach every survivor exactly once, and no
    survivor's generation ever goes back."""
    etcd.put("/app/a", "0")
    group = _start(workers, f"etcd://{etcd.endpoint}/app/", tmp_path / "cache", 3)
    leader = _leader(group)
    leader.kill()
    for value in ("x1", "x2", "x3"):
        etcd.put("/app/a", value)
    survivors = [w for w in group if w is not leader]
    _wait_value(survivors, "a", "x3")
    etcd.put("/app/b", "after")
    _wait_value(survivors, "b", "after")
    _leader(survivors)
    for worker in survivors:
        # etcd may send the three puts in one catch-up response (one change to x3): what
        # counts is that none is seen twice or out of order, and the last one arrives.
        seen = worker.values_of("a")
        assert seen[-1] == "x3"
        assert seen == sorted(set(seen)), seen
        assert worker.values_of("b") == ["after"]
        generations = worker.generations()
        assert generations == sorted(set(generations)), generations


def test_late_follower_gets_the_current_state_at_once(
    etcd: EtcdServer, tmp_path: Path, workers
) -> None:
    """A process that joins a running group starts with the latest state the leader saw."""
    etcd.put("/app/a", "0")
    spec = f"etcd://{etcd.endpoint}/app/"
    (first,) = _start(workers, spec, tmp_path / "cache", 1)
    for i in range(5):
        etcd.put("/app/a", f"v{i}")
    first.wait_for(lambda line: line.get("set", {}).get("a") == "v4")
    late = Worker(spec, tmp_path / "cache")
    workers.append(late)
    assert late.ready()["values"]["a"] == "v4"
    assert late.health()["sharing"]["role"] == "follower"


def test_stopped_follower_never_blocks_the_leader(
    etcd: EtcdServer, tmp_path: Path, workers
) -> None:
    """A SIGSTOPped follower does not slow the others; continued, it skips to the latest."""
    etcd.put("/app/n", "0")
    group = _start(workers, f"etcd://{etcd.endpoint}/app/", tmp_path / "cache", 3)
    leader = _leader(group)
    slow, other = [w for w in group if w is not leader]
    slow.kill(signal.SIGSTOP)
    try:
        for i in range(1, 41):
            etcd.put("/app/n", str(i))
        _wait_value([leader, other], "n", "40")
        assert len(leader.values_of("n")) == 40  # the leader saw every put while slow slept
    finally:
        slow.kill(signal.SIGCONT)
    _wait_value([slow], "n", "40")
    assert len(slow.values_of("n")) < 40  # it skipped to the latest
    assert slow.values_of("n")[-1] == "40"


def test_followers_hold_no_store_connection(etcd: EtcdServer, tmp_path: Path, workers) -> None:
    """The store holds one watch stream for the group, and only the leader is connected."""
    etcd.put("/app/a", "0")
    before = watch_streams(etcd.client_urls[0])
    group = _start(workers, f"etcd://{etcd.endpoint}/app/", tmp_path / "cache", 4)
    leader = _leader(group)
    port = int(etcd.endpoint.rsplit(":", 1)[1])
    etcd.put("/app/a", "1")
    _wait_value(group, "a", "1")
    assert watch_streams(etcd.client_urls[0]) - before == 1
    assert tcp_connections(leader.pid, port) >= 1
    for follower in (w for w in group if w is not leader):
        assert tcp_connections(follower.pid, port) == 0


def test_follower_writes_go_to_the_store(etcd: EtcdServer, tmp_path: Path, workers) -> None:
    """A follower's write reaches the store, and returns to every member through the leader;
    the follower holds no connection afterwards."""
    etcd.put("/app/a", "0")
    group = _start(workers, f"etcd://{etcd.endpoint}/app/", tmp_path / "cache", 2)
    leader = _leader(group)
    (follower,) = [w for w in group if w is not leader]
    follower.send("write b written")
    follower.wait_for(lambda line: "wrote" in line)
    _wait_value(group, "b", "written")
    port = int(etcd.endpoint.rsplit(":", 1)[1])
    deadline = time.monotonic() + 10
    while tcp_connections(follower.pid, port) and time.monotonic() < deadline:
        time.sleep(0.05)  # the write's connection closes with its backend
    assert tcp_connections(follower.pid, port) == 0


def test_cli_health_says_the_role(etcd: EtcdServer, tmp_path: Path, workers) -> None:
    """``CONFHUB_SHARE=host confhub health --json`` joins the group as a follower and names
    the leader."""
    etcd.put("/app/a", "0")
    spec = f"etcd://{etcd.endpoint}/app/"
    (leader,) = _start(workers, spec, tmp_path / "cache", 1)
    env = {**os.environ, "CONFHUB_SHARE": "host"}
    command = [sys.executable, "-m", "confhub", "-s", spec, "--cache-dir", str(tmp_path / "cache")]
    done = subprocess.run(
        [*command, "health", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    source = json.loads(done.stdout)["sources"][0]
    assert source["sharing"] == {"role": "follower", "leader_pid": leader.pid, "reason": None}
    text = subprocess.run(
        [*command, "health"], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert f"role=follower leader_pid={leader.pid}" in text.stdout


def test_a_forked_child_does_not_keep_a_dead_leader_alive(
    etcd: EtcdServer, tmp_path: Path, workers
) -> None:
    """A child the leader forked inherits its lock and sockets; when the leader is killed,
    the child's copies do not hide its death: a live process takes over (the follower, or
    the child, whose hub joins the group afresh once it re-reads), and the follower sees
    the next put through it."""
    etcd.put("/app/a", "0")
    group = _start(workers, f"etcd://{etcd.endpoint}/app/", tmp_path / "cache", 2)
    leader = _leader(group)
    (follower,) = [w for w in group if w is not leader]
    leader.send("fork 120")
    child = leader.wait_for(lambda line: "forked" in line)["forked"]
    try:
        leader.kill()
        leader.proc.wait(10)
        etcd.put("/app/a", "after")
        _wait_value([follower], "a", "after")
        sharing = follower.health()["sharing"]
        assert sharing["role"] == "leader" or sharing["leader_pid"] == child, sharing
    finally:
        os.kill(child, signal.SIGKILL)


def test_etcd_backend_resumes_after_a_revision(etcd: EtcdServer) -> None:
    """``EtcdBackend.resume(layer)`` makes the next watch start right after the layer's
    revision without a read: a put made before the watch arrives once, as a delta."""
    etcd.put("/app/a", "1")
    spec = SourceSpec.parse(f"etcd://{etcd.endpoint}/app/")
    first = make_backend(spec, BackendSettings())
    try:
        layer = first.load()
    finally:
        first.close()
    etcd.put("/app/b", "during")  # made while nobody watched
    second = make_backend(spec, BackendSettings())
    updates: queue.Queue[object] = queue.Queue()
    try:
        assert second.resume(layer)
        second.watch(updates.put)
        got = updates.get(timeout=30)
        assert isinstance(got, LayerDelta)
        assert dict(got.set) == {"b": "during"}
        assert got.revision == layer.revision + 1
        etcd.put("/app/a", "2")
        assert dict(updates.get(timeout=30).set) == {"a": "2"}
        assert updates.empty()
    finally:
        second.close()
    unknown = make_backend(spec, BackendSettings())
    assert not unknown.resume(Layer.from_flat({}, source="x", revision=None))
    unknown.close()

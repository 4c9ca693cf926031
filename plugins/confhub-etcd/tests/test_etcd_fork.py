"""A forked child never reuses the parent's gRPC channel."""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Any

import pytest
from confhub import Hub
from etcd_testlib import FAST, Recorder

from confhub_etcd._client import (
    EtcdClient,
    EtcdForkError,
    EtcdUnavailable,
    PrefixWatcher,
)
from confhub_etcd.testing import CallHook, EtcdServer, rpc_error, simulate_fork

_FD_GENERATION = "Stream removed (sendmsg: Wrong file descriptor generation)"


def _child(client: EtcdClient, watcher: PrefixWatcher, results: Any) -> None:
    try:
        item, _ = client.get("/fork/a")
        revision = client.put("/fork/child", str(os.getpid()))
        try:
            watcher.start()
            forked = "no error"
        except EtcdForkError as exc:
            forked = str(exc)
        recorder = Recorder()
        with client.watch_prefix("/fork/", recorder.on_batch, backoff=FAST):
            recorder.wait_for(lambda: bool(recorder.batches), timeout=5)
        results.put(
            ("ok", item.value if item else None, revision, forked, len(recorder.batches[0].events))
        )
    except BaseException as exc:  # report anything to the parent
        results.put(("error", repr(exc)))


def _run_forked(target: Any, *args: Any) -> tuple[int, tuple[Any, ...]]:
    """Run ``target(*args, results)`` in a child made by fork(); it must be done within 10 s
    (reliability scenario 15's bound) and report ``("ok", ...)``. Returns (pid, report)."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    process = context.Process(target=target, args=(*args, results))
    started = time.monotonic()
    process.start()
    process.join(10)
    if process.is_alive():
        process.kill()
        process.join(5)
        raise AssertionError("the forked child hung")
    assert time.monotonic() - started < 10
    assert process.exitcode == 0, process.exitcode
    outcome = results.get(timeout=5)
    assert outcome[0] == "ok", outcome
    assert process.pid is not None
    return process.pid, outcome


# Python 3.12+ warns that fork() in a threaded process may deadlock; that risk is what we test.
@pytest.mark.filterwarnings("ignore:This process.*multi-threaded:DeprecationWarning")
def test_child_after_fork_gets_a_working_client(client: EtcdClient) -> None:
    """After the parent used the client (and runs a watcher), a forked child can read, write
    and watch with new channels, is told clearly that the parent's watcher is not its own,
    and the parent keeps working."""
    client.put("/fork/a", "1")
    recorder = Recorder()
    with client.watch_prefix("/fork/", recorder.on_batch, backoff=FAST) as watcher:
        recorder.wait_for(lambda: bool(recorder.batches))
        _, outcome = _run_forked(_child, client, watcher)
        _, value, child_revision, forked, initial_keys = outcome
        assert value == b"1"
        assert "parent process" in forked
        assert initial_keys == 2
        after = client.put("/fork/parent", "1")
        recorder.wait_revision(after)
        keys = {e.key for e in recorder.events}
        assert b"/fork/child" in keys and b"/fork/parent" in keys
        assert child_revision < after


class _FailFirst:
    """A ``CallHook.before`` that fails the next ``method`` call (armed by ``arm``) with
    ``details``, as gRPC fails the first call in a forked child."""

    def __init__(self, method: str, details: str) -> None:
        self.method = method
        self.details = details
        self.armed = False

    def arm(self, details: str | None = None) -> None:
        self.details = details or self.details
        self.armed = True

    def __call__(self, method: str, request: Any) -> None:
        if method == self.method and self.armed:
            self.armed = False
            raise rpc_error(self.details)


def _forked_client(
    etcd: EtcdServer, method: str, details: str
) -> tuple[EtcdClient, CallHook, _FailFirst]:
    """A client reset as in a forked child whose first ``method`` call fails."""
    fail = _FailFirst(method, details)
    hook = CallHook(before=fail)
    client = EtcdClient(etcd.endpoints, timeout=2.0, interceptors=[hook])
    simulate_fork(client)
    fail.arm()
    return client, hook, fail


def test_first_call_after_fork_is_retried_once_on_a_fresh_channel(etcd: EtcdServer) -> None:
    """The child's first call failing in gRPC's fd layer is retried at once, and the grace
    is spent: a later failure is not retried."""
    etcd.put("/fork/a", "1")
    client, hook, fail = _forked_client(etcd, "Range", _FD_GENERATION)
    with client:
        item, _ = client.get("/fork/a")
        assert item is not None and item.value == b"1"
        assert hook.calls == ["Range", "Range"]
        fail.arm()
        with pytest.raises(EtcdUnavailable):
            client.get("/fork/a")


def test_first_write_after_fork_is_retried_only_when_nothing_was_sent(etcd: EtcdServer) -> None:
    """A write is retried after fork only when the error proves it never left the process."""
    client, _, fail = _forked_client(etcd, "Put", "Socket closed")
    with client:
        with pytest.raises(EtcdUnavailable, match="Socket closed"):
            client.put("/fork/w", "1")
        simulate_fork(client)
        fail.arm(_FD_GENERATION)
        assert client.put("/fork/w", "2") > 0


def test_first_watch_after_fork_is_retried_unreported(etcd: EtcdServer) -> None:
    """A watcher whose first call in a child is the watch stream gets the same grace: no
    spurious DISCONNECTED, and the changes arrive."""
    client, hook, _ = _forked_client(etcd, "Watch", _FD_GENERATION)
    with client:
        snapshot = client.read_prefix("/fork/")  # spends nothing: a Range, not the Watch
        simulate_fork(client)
        recorder = Recorder()
        with client.watch_prefix(
            "/fork/", recorder.on_batch, recorder.on_state, snapshot=snapshot, backoff=FAST
        ):
            recorder.wait_for(lambda: "connected" in recorder.state_names())
            revision = client.put("/fork/b", "1")
            recorder.wait_revision(revision)
    assert hook.calls.count("Watch") == 2
    assert recorder.state_names() == ["connected", "closed"]


def _hub_child(spec: str, parent_hub: Any, results: Any) -> None:
    try:
        inherited = parent_hub.get("a")  # the parent's snapshot: no I/O, no lock held
        with Hub([spec], cache_dir=None) as hub:
            seen: list[Any] = []
            hub.subscribe(seen.append)
            hub.write("child", str(os.getpid()))
            deadline = time.monotonic() + 5
            while not any(c.get("child") for c in seen) and time.monotonic() < deadline:
                time.sleep(0.01)
            told = any(c.get("child") for c in seen)
            results.put(("ok", inherited, hub.get("a"), hub.get("child", None), told))
    except BaseException as exc:  # report anything to the parent
        results.put(("error", repr(exc)))


@pytest.mark.filterwarnings("ignore:This process.*multi-threaded:DeprecationWarning")
def test_hub_in_a_forked_child_reads_writes_and_watches(etcd: EtcdServer) -> None:
    """Reliability scenario 15 through hubs: a worker forked from a process whose hub is
    watching etcd reads the inherited snapshot, starts its own hub (new channels), writes and
    is told of its write, all within 10 s; the parent's hub carries on."""
    etcd.put("/fork/a", "1")
    spec = f"etcd://{etcd.endpoint}/fork/"
    with Hub([spec], cache_dir=None) as hub:
        pid, outcome = _run_forked(_hub_child, spec, hub)
        _, inherited, fresh, written, told = outcome
        assert (inherited, fresh, written, told) == ("1", "1", str(pid), True)
        deadline = time.monotonic() + 5  # the parent's watch saw the child's write too
        while hub.get("child", None) != str(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert hub.get("child", None) == str(pid)
        etcd.put("/fork/a", "2")
        while hub.get("a") != "2" and time.monotonic() < deadline + 5:
            time.sleep(0.01)
        assert hub.get("a") == "2"

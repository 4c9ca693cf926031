"""A forked child never reuses the parent's gRPC channel."""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Any

import pytest
from etcd_testlib import FAST, Recorder

from confhub_etcd._client import EtcdClient, EtcdForkError, PrefixWatcher


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
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        process = context.Process(target=_child, args=(client, watcher, results))
        started = time.monotonic()
        process.start()
        process.join(20)
        if process.is_alive():
            process.kill()
            process.join(5)
            raise AssertionError("the forked child hung")
        assert process.exitcode == 0
        assert time.monotonic() - started < 20
        outcome = results.get(timeout=5)
        assert outcome[0] == "ok", outcome
        _, value, child_revision, forked, initial_keys = outcome
        assert value == b"1"
        assert "parent process" in forked
        assert initial_keys == 2
        after = client.put("/fork/parent", "1")
        recorder.wait_revision(after)
        keys = {e.key for e in recorder.events}
        assert b"/fork/child" in keys and b"/fork/parent" in keys
        assert child_revision < after

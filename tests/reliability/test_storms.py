"""Storms: many processes starting at once, a store that stays down, counted attempts.

A required source keeps trying until the start ceiling (``start_timeout``), with the hub's
jittered backoff, and its :class:`StartupError` says how many rounds it made; while a store
is down each source's attempts stay within what the configured backoff allows. Every bound
here comes from counts and the configured delays, never from the machine's speed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from confhub_etcd.testing import EtcdServer

import confhub

JITTER = 0.5  # confhub.kv.Backoff's default


def most_attempts(window: float, initial: float, maximum: float) -> int:
    """The most attempts a backoff allows in ``window`` seconds from its first attempt:
    one at once, then one after each shortest possible delay (``(1 - jitter)`` of
    ``min(maximum, initial * 2**n)``) that still fits."""
    attempts, elapsed, n = 1, 0.0, 0
    while True:
        elapsed += (1 - JITTER) * min(maximum, initial * 2**n)
        if elapsed > window:
            return attempts
        attempts += 1
        n += 1


class Counter:
    """A plugin counting the hub's reads of each source and its reported failures."""

    def __init__(self) -> None:
        self.loads = 0
        self.failures = 0
        self.lock = threading.Lock()

    @confhub.hookimpl(wrapper=True)
    def confhub_load_layer(self, spec: confhub.SourceSpec, backend: Any) -> Any:
        with self.lock:
            self.loads += 1
        return (yield)

    @confhub.hookimpl
    def confhub_source_failed(self, spec: confhub.SourceSpec, error: Any, fallback: Any) -> None:
        with self.lock:
            self.failures += 1


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_required_source_retries_until_the_ceiling_and_counts_its_attempts() -> None:
    """Nothing answers: the start makes several rounds, each spaced by the backoff, and
    its StartupError says how many (as many as the failures the plugins were told of)."""
    counter = Counter()
    hub = confhub.Hub(
        [f"etcd://127.0.0.1:{closed_port()}/app/"],
        plugins=[counter],
        cache_dir=None,
        connect_timeout=0.2,
        start_timeout=3.0,
        retry_initial=0.1,
        retry_max=0.4,
    )
    with pytest.raises(confhub.StartupError) as raised:
        hub.start()
    rounds = raised.value.rounds
    assert 2 <= rounds <= most_attempts(3.0, 0.1, 0.4)
    assert rounds == counter.failures == counter.loads
    assert f"after {rounds} attempts in" in str(raised.value)


def test_an_optional_source_is_decided_at_once() -> None:
    """An optional source that does not answer is absent after one round (no retries)."""
    counter = Counter()
    spec = f"etcd://127.0.0.1:{closed_port()}/app/?optional=true"
    hub = confhub.Hub([spec], plugins=[counter], cache_dir=None, connect_timeout=0.2)
    with hub:
        assert hub.health().sources[0].state == "absent"
        assert counter.failures == 1


def test_a_start_outlasts_a_store_that_answers_late(etcd: EtcdServer) -> None:
    """A store that does not answer the first rounds (paused) still gets the hub started
    once it answers within start_timeout."""
    etcd.put("/app/flag", "one")
    counter = Counter()
    hub = confhub.Hub(
        [f"etcd://{etcd.endpoint}/app/"],
        plugins=[counter],
        cache_dir=None,
        connect_timeout=0.3,
        start_timeout=60.0,
        retry_initial=0.1,
        retry_max=0.5,
    )
    etcd.pause()
    starting = threading.Thread(target=hub.start, name="test-start")
    try:
        try:
            starting.start()
            deadline = time.monotonic() + 30  # a hang guard: rounds come every ~0.3-0.8 s
            while counter.failures < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert counter.failures >= 2  # two rounds failed: one attempt would have ended it
            assert hub.state is not confhub.State.RUNNING  # still starting, not given up
        finally:
            etcd.resume()
            starting.join(60)
        assert hub.state is confhub.State.RUNNING
        assert hub["flag"] == "one"
    finally:
        hub.close()  # whatever failed above: no hub, thread or watch outlives the test


def test_a_source_down_at_start_is_retried_within_its_backoff() -> None:
    """While the store stays down, a hub's reads of it stay within the configured backoff."""
    counter = Counter()
    spec = f"etcd://127.0.0.1:{closed_port()}/app/?optional=true"
    hub = confhub.Hub(
        [spec],
        plugins=[counter],
        cache_dir=None,
        connect_timeout=0.2,
        retry_initial=0.05,
        retry_max=0.2,
    )
    with hub:
        start = time.monotonic()
        before = counter.loads
        time.sleep(2.0)
        window = time.monotonic() - start
        made = counter.loads - before
    assert 2 <= made <= most_attempts(window, 0.05, 0.2)


def test_a_lost_watch_reconnects_within_its_backoff(etcd: EtcdServer) -> None:
    """A running hub whose etcd stops retries its watch no faster than its backoff allows."""
    etcd.put("/app/flag", "one")
    spec = f"etcd://{etcd.endpoint}/app/?retry_initial=0.05&retry_max=0.2"
    with confhub.Hub([spec], cache_dir=None, connect_timeout=0.3) as hub:
        watcher = hub.backend_for(hub.sources[0]).watcher  # type: ignore[attr-defined]
        before = watcher.reconnects
        start = time.monotonic()
        etcd.stop()
        try:
            time.sleep(2.0)
            made = watcher.reconnects - before
            window = time.monotonic() - start
        finally:
            etcd.start()
        assert 2 <= made <= most_attempts(window, 0.05, 0.2)


CHILD = """
import json, os, sys, time
from pathlib import Path
import confhub
import confhub_etcd  # imported before the barrier: the processes start their hubs together
go = Path(sys.argv[2])
(go.parent / f"ready-{os.getpid()}").touch()
deadline = time.monotonic() + 120
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.01)
began = time.monotonic()
try:
    with confhub.Hub([sys.argv[1]], cache_dir=None, start_timeout=60.0) as hub:
        print(json.dumps({"ok": True, "flag": hub["flag"], "took": time.monotonic() - began}))
except confhub.StartupError as exc:
    print(json.dumps({"ok": False, "rounds": exc.rounds, "error": str(exc)}))
"""


def test_thirty_two_processes_start_at_once_on_one_etcd(etcd: EtcdServer, tmp_path: Path) -> None:
    """32 processes start a hub at the same moment: every one starts. Each attempt is the
    default connect_timeout (2 s); the ceiling is raised to 60 s so that what the test
    depends on is the retries, not this machine's speed (one attempt each, as before, left
    most of them failed on a busy machine whatever the ceiling)."""
    etcd.put("/app/flag", "one")
    go = tmp_path / "go"
    env = {**os.environ}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, f"etcd://{etcd.endpoint}/app/", str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for _ in range(32)
    ]
    try:
        deadline = time.monotonic() + 120  # every interpreter imported confhub: start together
        while len(list(tmp_path.glob("ready-*"))) < len(procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        go.touch()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=180)
            text = out.decode().strip()
            line = text.splitlines()[-1] if text else err.decode()[-2000:]
            failed = {"ok": False, "error": line}
            results.append(json.loads(line) if line.startswith("{") else failed)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    failed = [r for r in results if not r["ok"] or r.get("flag") != "one"]
    assert not failed, failed

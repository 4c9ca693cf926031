"""One outage is one report and one recovery: hub events, log lines and ``confhub watch``."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from confhub import Hub, SourceUnavailableError
from confhub.testing import MemoryStore


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.01)


def down(store: MemoryStore, why: str) -> None:
    store.fail(SourceUnavailableError(f"memory:{store.name} is down ({why})", source="memory:app"))


def test_an_outage_whose_messages_vary_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Retries that fail with different messages are one outage: one event, one WARNING."""
    store = MemoryStore("app", {"a": "1"})
    errors: list[Any] = []
    states: list[str] = []
    with (
        caplog.at_level(logging.INFO, logger="confhub"),
        Hub(["memory:app"], plugins=[store], cache_dir=tmp_path) as hub,
    ):
        hub.subscribe(on_error=errors.append, on_state=lambda h: states.append(h.state))
        for why in ("connection refused", "deadline exceeded", "no leader"):
            down(store, why)
        wait_for(lambda: hub.health().sources[0].last_error, what="the failure")
        store.recover()
        wait_for(lambda: states[-1:] == ["live"], what="live again")
        # The last error is still the latest one (health shows what is happening now).
        assert hub.health().sources[0].state == "live"
    assert len(errors) == 1, [str(e.error) for e in errors]
    assert states == ["stale", "live"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


def test_a_recovery_from_the_cache_logs_one_info_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A source served from the cache that comes back logs one INFO line, not two."""
    store = MemoryStore("app", {"a": "1"})
    with Hub(["memory:app"], plugins=[store], cache_dir=tmp_path):
        pass  # writes the cache
    store.fail()
    with (
        caplog.at_level(logging.INFO, logger="confhub"),
        Hub(["memory:app"], plugins=[store], cache_dir=tmp_path, retry_initial=0.05) as hub,
    ):
        assert hub.health().sources[0].state == "cached"
        caplog.clear()
        store.recover()
        wait_for(lambda: hub.health().sources[0].state == "live", what="live again")
        time.sleep(0.2)  # any second line would be logged by now (same thread, same lock)
    infos = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.INFO and r.name == "confhub" and "memory:app" in r.getMessage()
    ]
    assert len(infos) == 1, infos


def test_watch_prints_one_unavailable_line_and_one_back_line() -> None:
    """``confhub watch`` on a Consul source: an outage (500s, then 503s) is one stderr line
    naming it, and its end one line saying the source is back."""
    testing = pytest.importorskip("confhub_consul.testing")
    with testing.ConsulTestServer(default_query_time=2, max_query_time=3) as server:
        server.put("app/db/host", "h1")
        address = server.address
        spec = f"consul://{address}/app/?retry_initial=0.05&retry_max=0.2"
        proc = subprocess.Popen(
            [sys.executable, "-m", "confhub", "-s", spec, "watch", "--count", "2",
             "--timeout", "120"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        err: list[str] = []
        out: list[str] = []
        readers = [
            threading.Thread(target=lambda: err.extend(iter(proc.stderr.readline, ""))),  # type: ignore[union-attr]
            threading.Thread(target=lambda: out.extend(iter(proc.stdout.readline, ""))),  # type: ignore[union-attr]
        ]
        for t in readers:
            t.start()
        try:
            wait_for(lambda: any("watching" in line for line in err), what="the banner")
            n = 0
            while not out:  # the watch is set up once a change arrives
                n += 1
                server.put("app/db/host", f"h1-{n}")
                time.sleep(0.2)
            fault = server.inject_status(500, times=None, body="No cluster leader")
            wait_for(lambda: len(err) > 1, what="the outage line")
            fault.clear()
            before = server.request_count("/v1/kv/")
            fault = server.inject_status(503, times=None, body="rate limited")
            wait_for(lambda: server.request_count("/v1/kv/") > before + 3, what="retries")
            fault.clear()
            wait_for(lambda: any("back" in line for line in err), what="the back line")
            server.put("app/db/host", "h3")
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for t in readers:
                t.join(10)
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == 0, err
    lines = [line.rstrip("\n") for line in err if "watching" not in line]
    assert len(lines) == 2, lines
    assert "unavailable" in lines[0]
    assert "No cluster leader" in lines[0]
    assert lines[0].startswith(f"confhub: consul://{address}/app/ is unavailable")
    assert "back" in lines[1]
    assert "'h3'" in out[-1]

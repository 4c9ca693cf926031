"""examples/fastapi_etcd as a real service: uvicorn in its own process, a real etcd, HTTP.

The test changes the configuration in etcd under the running service and checks what the
service answers; every wait is bounded, and the server process is always stopped.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confhub.testing import free_ports

from confhub_etcd.testing import EtcdServer

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "fastapi_etcd"
HANG = 30.0  # a bound on every wait: reached only when something is broken
PREFIX = "/example/"


def _until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + HANG
    while True:
        with contextlib.suppress(httpx.TransportError):
            result = check()
            if result:
                return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {HANG} s")
        time.sleep(0.05)


@contextlib.contextmanager
def _service(etcd: EtcdServer, cache_dir: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """uvicorn serving the example on a free port; stopped (SIGINT, then kill) on exit."""
    [port] = free_ports()
    env = {
        **os.environ,
        "EXAMPLE_ETCD": etcd.endpoint,
        "EXAMPLE_PREFIX": PREFIX,
        "CONFHUB_CACHE_DIR": str(cache_dir),
    }
    args = [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1"]
    args += ["--port", str(port), "--timeout-graceful-shutdown", "5"]
    proc = subprocess.Popen(
        args, cwd=EXAMPLE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _until(lambda: proc.poll() is not None or httpx.get(f"{url}/readyz", timeout=2).is_success,
               "the service answering /readyz")  # fmt: skip
        if proc.poll() is not None:
            raise AssertionError(f"uvicorn exited with {proc.returncode}: {_output(proc)}")
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=HANG)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=HANG)
        if proc.stdout is not None:
            proc.stdout.close()


def _output(proc: subprocess.Popen[str]) -> str:
    return proc.stdout.read() if proc.stdout is not None else ""


def _sse(lines: Iterator[str]) -> tuple[str, str]:
    """The next server-sent event's (kind, data) from an iterator of lines."""
    kind = data = ""
    for line in lines:
        if line.startswith("event: "):
            kind = line[len("event: ") :]
        elif line.startswith("data: "):
            data = line[len("data: ") :]
        elif not line and kind:
            return kind, data
    raise AssertionError("the event stream ended")


def test_the_fastapi_example_follows_etcd_and_rides_out_an_outage(tmp_path: Path) -> None:
    """A flag flipped in etcd reaches /greet and the /events stream; with etcd killed the
    service keeps its config, reports the source stale and stays ready; it stops cleanly."""
    with EtcdServer() as etcd:
        etcd.put(f"{PREFIX}greeting", "hi")
        with (
            _service(etcd, tmp_path) as (url, proc),
            httpx.Client(base_url=url, timeout=HANG) as client,
        ):
            assert client.get("/greet").json() == {"text": "hi!", "beta": False}
            with client.stream("GET", "/events") as events:
                lines = events.iter_lines()
                kind, data = _sse(lines)
                assert kind == "state"
                assert '"greeting": "hi"' in data
                etcd.put(f"{PREFIX}feature/beta", "true")
                kind, data = _sse(lines)
                assert (kind, data) == ("change", '{"feature.beta": "true"}')
            # The change event came from the hub: the next request sees the new config.
            assert client.get("/greet").json() == {"text": "hi (beta)", "beta": True}

            etcd.kill()
            health = _until(
                lambda: (h := client.get("/healthz").json())["degraded"] and h,
                "the etcd source reported stale",
            )
            assert health["sources"][1]["state"] == "stale"
            ready = client.get("/readyz")
            assert ready.status_code == 200
            assert client.get("/greet").json()["beta"] is True
            etcd.start()
            _until(lambda: not client.get("/healthz").json()["degraded"], "etcd live again")
        assert proc.returncode == 0, _output(proc)


def test_the_fastapi_example_starts_from_its_cache_while_etcd_is_down(tmp_path: Path) -> None:
    """Started once (the cache fills), then again with etcd down: the service starts from
    its cache, is ready, and serves the cached values."""
    with EtcdServer() as etcd:
        etcd.put(f"{PREFIX}feature/beta", "true")
        with _service(etcd, tmp_path) as (url, _):
            assert httpx.get(f"{url}/greet", timeout=HANG).json()["beta"] is True
        etcd.kill()
        with _service(etcd, tmp_path) as (url, _), httpx.Client(base_url=url, timeout=HANG) as c:
            ready = c.get("/readyz")
            greet = c.get("/greet").json()
        assert ready.status_code == 200
        assert ready.json()["sources"][1]["state"] == "cached"
        assert greet["beta"] is True


def test_the_fastapi_example_refuses_to_start_without_etcd_or_cache(tmp_path: Path) -> None:
    """etcd down and no cached copy: the service does not start (uvicorn exits non-zero,
    naming the source)."""
    with EtcdServer() as etcd:
        etcd.kill()
        [port] = free_ports()
        env = {**os.environ, "EXAMPLE_ETCD": etcd.endpoint, "CONFHUB_CACHE_DIR": str(tmp_path)}
        result = subprocess.run(
            [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port)],
            cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert result.returncode != 0
    assert "etcd://" in result.stdout + result.stderr


def test_the_examples_own_tests_pass_with_the_pytest_plugins(pytester: pytest.Pytester) -> None:
    """examples/fastapi_etcd/test_app.py (the example of docs/testing.md) passes when run
    as users run it: pytest with confhub's and confhub-etcd's plugins, in a subprocess."""
    for name in ("app.py", "test_app.py"):
        (pytester.path / name).write_text((EXAMPLE / name).read_text(encoding="utf-8"))
    installed = {ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    plugins = ("confhub.pytest_plugin", "confhub_etcd.pytest_plugin")
    args = [arg for m in plugins if m not in installed for arg in ("-p", m)]
    result = pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)

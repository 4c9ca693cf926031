"""examples/flask_file as a real service: Flask's server in its own process, real HTTP.

The test edits the configuration file under the running app and checks what it answers;
every wait is bounded and the server process is always stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from confhub.testing import free_ports

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flask_file"
HANG = 30.0  # a bound on every wait: reached only when something is broken



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


def _write(path: Path, text: str) -> None:
    """Save as editors do: a new file renamed over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


@contextlib.contextmanager
def _flask(config: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``flask --app app run`` on a free port; stopped (SIGINT, then kill) on exit."""
    [port] = free_ports()
    env = {**os.environ, "EXAMPLE_CONFIG": str(config)}
    args = [sys.executable, "-m", "flask", "--app", "app", "run"]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        args, cwd=EXAMPLE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _until(
            lambda: proc.poll() is not None or httpx.get(f"{url}/readyz", timeout=2).is_success,
            "the app answering /readyz",
        )
        if proc.poll() is not None:
            raise AssertionError(f"flask exited with {proc.returncode}: {_output(proc)}")
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


def test_the_flask_example_follows_its_file_and_keeps_the_last_good_config(
    tmp_path: Path,
) -> None:
    """An edit reaches /greet; a broken save is refused (the last good config serves, the
    file is reported stale, the app stays ready); fixing the file makes it live again."""
    config = tmp_path / "config.toml"
    _write(config, 'greeting = "hi"\n')
    with _flask(config) as (url, _proc), httpx.Client(base_url=url, timeout=HANG) as client:
        assert client.get("/greet").json() == {"text": "hi"}
        _write(config, 'greeting = "hi"\nshout = true\n')
        _until(lambda: client.get("/greet").json() == {"text": "HI"}, "the edit served")

        _write(config, 'greeting = "hi"\nshout = "not a bool\n')  # broken TOML
        health = _until(
            lambda: (h := client.get("/healthz").json())["degraded"] and h,
            "the broken file reported",
        )
        assert health["sources"][1]["state"] == "stale"
        assert client.get("/greet").json() == {"text": "HI"}
        assert client.get("/readyz").status_code == 200

        _write(config, 'greeting = "back"\n')
        _until(lambda: client.get("/greet").json() == {"text": "back"}, "the fix served")
        assert client.get("/healthz").json()["degraded"] is False


def test_the_flask_example_refuses_to_start_on_a_missing_file(tmp_path: Path) -> None:
    """No configuration file: the app does not start, and says which file is missing."""
    env = {**os.environ, "EXAMPLE_CONFIG": str(tmp_path / "absent.toml")}
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "run", "--port", str(free_ports()[0])],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "absent.toml" in result.stdout + result.stderr


def test_the_testing_guide_shows_the_fastapi_examples_tests_as_they_are() -> None:
    """docs/testing.md quotes examples/fastapi_etcd/test_app.py (which a test runs) verbatim:
    the example in the docs cannot drift from the one that passes."""
    code = (EXAMPLE.parent / "fastapi_etcd" / "test_app.py").read_text(encoding="utf-8")
    body = code.split('"""\n\n', 1)[1]
    guide = (EXAMPLE.parents[1] / "docs" / "testing.md").read_text(encoding="utf-8")
    assert f"```python\n{body}```" in guide

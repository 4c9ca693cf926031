"""Run a worker server (gunicorn, uvicorn) of ``examples/gunicorn/app.py`` and ask its workers.

:class:`Server` starts the command in a session of its own on a free loopback port and
stops it (SIGTERM to its process group, then SIGKILL) on exit. :meth:`Server.workers_until`
sends rounds of concurrent requests that each hold their worker a moment, so that every
worker answers, until each of ``count`` workers gave an answer that satisfies a predicate.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "examples" / "gunicorn"
BIN = Path(sys.executable).parent

Answer = dict[str, Any]


def gunicorn(port: int, *, workers: int, preload: bool, worker_class: str = "sync") -> list[str]:
    """The gunicorn command line of the example, with its config file (the confhub hooks)."""
    app = "app:asgi_app" if "uvicorn" in worker_class else "app:wsgi_app"
    return [
        str(BIN / "gunicorn"),
        "-c",
        str(APP_DIR / "gunicorn.conf.py"),
        "--chdir",
        str(APP_DIR),
        "-b",
        f"127.0.0.1:{port}",
        "-w",
        str(workers),
        "-k",
        worker_class,
        "--no-control-socket",
        "--graceful-timeout",
        "5",
        *(["--preload"] if preload else []),
        app,
    ]


def uvicorn(port: int, *, workers: int) -> list[str]:
    """``uvicorn --workers N`` of the example's ASGI app."""
    return [
        str(BIN / "uvicorn"),
        "--app-dir",
        str(APP_DIR),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "app:asgi_app",
    ]


class Server:
    """A server process started by a test; a context manager that always stops it."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], port: int, log: Path) -> None:
        self.argv = list(argv)
        self.env = {**os.environ, **env, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
        self.url = f"http://127.0.0.1:{port}/"
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log()}")
            try:
                self.ask()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not answer within 60s:\n{self.log()}") from None
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> int | None:
        """SIGTERM to the server's process group, SIGKILL after 15 s; the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(15)
        try:  # workers left behind by a crashed master
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def ask(self, hold: float = 0.0) -> Answer:
        with urllib.request.urlopen(f"{self.url}?hold={hold}", timeout=10) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def workers_until(
        self, count: int, predicate: Callable[[Answer], bool], *, timeout: float = 60.0
    ) -> dict[int, Answer]:
        """Ask until each of ``count`` distinct workers answered with ``predicate`` true;
        their last answers by pid. Raises AssertionError (with what was seen) after
        ``timeout``."""
        latest: dict[int, Answer] = {}
        deadline = time.monotonic() + timeout
        with ThreadPoolExecutor(2 * count) as pool:
            while True:
                for answer in pool.map(lambda _: self.ask(hold=0.2), range(2 * count)):
                    latest[answer["pid"]] = answer
                good = {pid: a for pid, a in latest.items() if predicate(a)}
                if len(good) >= count:
                    return good
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{len(good)} of {count} workers satisfied the condition within "
                        f"{timeout}s; last answers: {latest}\n{self.log()}"
                    )

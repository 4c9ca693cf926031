"""Helpers of the host-sharing tests: hub worker processes, etcd's metrics, and the TCP
connections a process holds (read from /proc)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("fleet_worker.py")


class Worker:
    """One ``fleet_worker.py`` process; its stdout lines are collected as dicts."""

    def __init__(self, spec: str, cache_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), spec, str(cache_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.pid = self.proc.pid
        self.lines: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(json.loads(line))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict:
        """The first line matching ``predicate`` (AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if predicate(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"worker {self.pid}: no matching line in {self.lines}")
                self._cond.wait(min(left, 0.5))

    def ready(self, timeout: float = 30.0) -> dict:
        return self.wait_for(lambda line: "ready" in line, timeout)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def health(self) -> dict:
        """The source's health as the worker reports it now."""
        with self._cond:
            seen = len(self.lines)
        self.send("health")
        line = self.wait_for(lambda line: "health" in line and self.lines.index(line) >= seen, 30.0)
        return line["health"]["sources"][0]

    def values_of(self, key: str) -> list[Any]:
        """Every new value of ``key`` this worker's subscriber was called with, in order."""
        with self._cond:
            return [line["set"][key] for line in self.lines if key in line.get("set", {})]

    def generations(self) -> list[int]:
        with self._cond:
            return [line["change"] for line in self.lines if "change" in line]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.proc.send_signal(sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._reader.join(5)


def etcd_metrics(client_url: str) -> dict[str, float]:
    """etcd's own ``/metrics`` (Prometheus text), unlabelled and summed by name."""
    with urllib.request.urlopen(f"{client_url}/metrics", timeout=5) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        try:
            found[name] = found.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return found


def watch_streams(client_url: str) -> int:
    """How many watch streams etcd holds open now."""
    return int(etcd_metrics(client_url).get("etcd_debugging_mvcc_watch_stream_total", 0))


def tcp_connections(pid: int, port: int) -> int:
    """How many established TCP connections process ``pid`` holds to ``port``."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for row in path.read_text().splitlines()[1:]:
            fields = row.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port and inode in inodes:
                count += 1
    return count

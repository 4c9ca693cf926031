"""close() from a SIGTERM handler while start() waits on a slow etcd (issue 14, item 7), in a
real process: start() must not come back afterwards with the hub running, its watchers alive
and later file changes never applied (a zombie); it raises HubStateError and leaves nothing.

The store is a real etcd frozen with SIGSTOP (connections are accepted, nothing answers), so
start() is inside its etcd load when the signal arrives; the etcd is thawed after the handler
ran, so the load then completes (before the fix, start() then returned with the hub running).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from confhub_etcd.testing import EtcdServer

HANG = 60.0  # a backstop against a hang, never a pace

CHILD = r"""
import json, signal, sys, threading, time
from confhub import Hub, HubStateError

path, source = sys.argv[1], sys.argv[2]
hub = Hub([source, f"file:{path}?settle=0.01"], cache_dir=None, connect_timeout=30,
          start_timeout=60)

def on_term(signum, frame):
    hub.close()
    print("closed", flush=True)

signal.signal(signal.SIGTERM, on_term)

def tell_when_loading():
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(t.name.startswith("confhub-load[etcd") for t in threading.enumerate()):
            print("loading", flush=True)
            return
        time.sleep(0.01)

threading.Thread(target=tell_when_loading, daemon=True).start()
try:
    hub.start()
    outcome = "started"
except HubStateError as exc:
    outcome = f"HubStateError: {exc}"
with open(path, "w") as fh:
    fh.write('name = "two"\n')
time.sleep(0.5)  # a running file watcher would apply the change by now
try:
    name = hub.get("name")
except HubStateError:
    name = None
threads = sorted(t.name for t in threading.enumerate() if t.name.startswith("confhub"))
print(json.dumps({
    "outcome": outcome,
    "state": hub.state.value,
    "sources": [s.state for s in hub.health().sources],
    "name": name,
    "threads": threads,
}), flush=True)
"""


def test_sigterm_handler_closing_the_hub_during_a_slow_start_leaves_no_zombie(
    tmp_path: Path,
) -> None:
    path = tmp_path / "app.toml"
    path.write_text('name = "one"\n')
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    with EtcdServer() as etcd:
        etcd.put("/app/port", "5432")
        etcd.pause()
        try:
            # Optional, and before the file: start() would go on to the file after it.
            source = f"etcd://{etcd.endpoint}/app/?timeout=30&optional=true"
            proc = subprocess.Popen(
                [sys.executable, str(script), str(path), source],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            lines: list[str] = []
            assert proc.stdout is not None
            reader = threading.Thread(
                target=lambda: lines.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
                name="test-reader",
            )
            reader.start()
            try:
                _wait(lambda: "loading\n" in lines, "the etcd load under way", proc)
                proc.send_signal(signal.SIGTERM)
                _wait(lambda: "closed\n" in lines, "the handler's close()", proc)
            finally:
                etcd.resume()  # the load now completes: start() goes on from there
            proc.wait(HANG)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(HANG)
            proc.stdout.close()  # type: ignore[union-attr]
            stderr = proc.stderr.read()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == 0, stderr
    report = json.loads(lines[-1])
    assert report["outcome"].startswith(
        "HubStateError: the hub was closed while it was starting"
    ), report
    assert report["state"] == "closed"
    assert "live" not in report["sources"], report
    assert report["name"] is None  # a closed hub answers nothing, stale or not
    assert report["threads"] == [], report


def _wait(predicate: object, what: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + HANG
    while not predicate():  # type: ignore[operator]
        assert proc.poll() is None, f"the child exited before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)

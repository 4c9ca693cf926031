"""Storms: many hubs on one etcd through a restart, at start, and against a dead store.

Runs a real single-member etcd on loopback (``confhub_etcd.testing.EtcdServer``); hubs run
in separate worker processes (this module with ``--worker``) with the default configuration
(cache on, in the default cache directory) except where a row says otherwise, as a user's
hubs run. The cache's writes have their own thread, off every path measured here, so the
rows have no ``cache_dir=None`` twin; a starter that cannot reach etcd may start from the
cache the earlier rows wrote, as a user's hub would.

1. **Reconnect spread after a store restart**: 100 hubs (4 processes x 25), each watching
   one prefix. etcd is stopped for ``DOWN`` seconds and started again; each hub's time back
   is when its subscriber gets the ``live`` state event. Reported: first, median, p90 and
   last hub back after etcd answers again, and the spread (last - first), for the default
   backoff (jitter 0.5) against the floor of the same hubs with the jitter turned off (the
   lockstep a fixed backoff gives). Also each hub's watch attempts while etcd was down,
   against the most the configured backoff allows.
2. **Start storm**: ``STARTERS`` processes start a hub on one etcd at the same moment
   (default options: ``connect_timeout`` 2 s, ``start_timeout`` 10 s). Reported: how many
   started, and how many needed more than one round (their ``confhub_source_failed``
   count).
3. **Requests while down**: one hub whose etcd never answers (a listener that accepts and
   closes each connection, counting them), for ``WINDOW`` seconds after start: the hub's
   reads (``confhub_load_layer`` calls) and TCP connections, against the bound of the
   configured backoff.

Run: ``.venv/bin/python -m benchmarks.bench_storm [--quick]``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from confhub_etcd.testing import EtcdServer

import confhub

from ._table import header, parse_args, versions

HUBS_PER_PROCESS = 25
PROCESSES = 4
DOWN = 4.0
STARTERS = 50
WINDOW = 20.0


def most_attempts(window: float, initial: float, maximum: float, jitter: float = 0.5) -> int:
    """The most attempts a jittered doubling backoff allows in ``window`` seconds."""
    attempts, elapsed, n = 1, 0.0, 0
    while True:
        elapsed += (1 - jitter) * min(maximum, initial * 2**n)
        if elapsed > window:
            return attempts
        attempts += 1
        n += 1


# -- worker processes -------------------------------------------------------------------------


def worker_restart(spec: str, hubs: int, jitter: str, out: Path) -> None:
    """Run ``hubs`` hubs; print "ready"; on stdin "report", print each hub's times."""
    if jitter == "off":
        import confhub_etcd._config as etcd_config

        from confhub.kv import Backoff

        etcd_config.Backoff = lambda **kw: Backoff(jitter=0.0, **kw)  # type: ignore[misc,assignment]
    back: list[list[float]] = [[] for _ in range(hubs)]
    opened = []
    for i in range(hubs):

        def on_state(health: confhub.SourceHealth, i: int = i) -> None:
            if health.state == "live":
                back[i].append(time.time())

        hub = confhub.Hub([spec]).start()
        hub.subscribe(on_state=on_state)
        opened.append(hub)
    print("ready", flush=True)
    sys.stdin.readline()  # "report"
    reconnects = [h.backend_for(h.sources[0]).watcher.reconnects for h in opened]  # type: ignore[attr-defined]
    out.write_text(json.dumps({"back": back, "reconnects": reconnects}))
    for hub in opened:
        hub.close()


STARTER = """
import json, os, sys, time
from pathlib import Path
import confhub
class Count:
    failures = 0
    @confhub.hookimpl
    def confhub_source_failed(self, spec, error, fallback):
        Count.failures += 1
go = Path(sys.argv[2])
(go.parent / f"ready-{os.getpid()}").touch()
deadline = time.monotonic() + 300
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.01)
t = time.monotonic()
try:
    with confhub.Hub([sys.argv[1]], plugins=[Count()]) as hub:
        print(json.dumps({"ok": True, "failures": Count.failures, "took": time.monotonic() - t}))
except confhub.StartupError as exc:
    print(json.dumps({"ok": False, "failures": Count.failures, "rounds": exc.rounds}))
"""


# -- the runs ---------------------------------------------------------------------------------


def restart_run(etcd: EtcdServer, jitter: str, tmp: Path) -> dict[str, Any]:
    spec = f"etcd://{etcd.endpoint}/storm/"
    procs = []
    for p in range(PROCESSES):
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.bench_storm",
                    "--worker",
                    spec,
                    str(HUBS_PER_PROCESS),
                    jitter,
                    str(tmp / f"{jitter}-{p}.json"),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    etcd.stop()
    time.sleep(DOWN)
    etcd.start(0)
    up = time.time()
    time.sleep(DOWN * 3)  # the slowest hub's next attempt is at most retry_max away
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("report\n")
        proc.stdin.flush()
    for proc in procs:
        proc.wait(120)
    backs: list[float] = []
    reconnects: list[int] = []
    missing = 0
    for p in range(PROCESSES):
        data = json.loads((tmp / f"{jitter}-{p}.json").read_text())
        for times in data["back"]:
            after = [t - up for t in times if t > up - 0.5]
            if after:
                backs.append(min(after))
            else:
                missing += 1
        reconnects.extend(data["reconnects"])
    backs.sort()
    return {
        "hubs": len(backs) + missing,
        "missing": missing,
        "first": backs[0],
        "median": statistics.median(backs),
        "p90": backs[int(0.9 * (len(backs) - 1))],
        "last": backs[-1],
        "spread": backs[-1] - backs[0],
        "reconnects_mean": statistics.mean(reconnects),
        "reconnects_max": max(reconnects),
    }


def start_storm(etcd: EtcdServer, count: int, tmp: Path) -> dict[str, Any]:
    spec = f"etcd://{etcd.endpoint}/storm/"
    go = tmp / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, spec, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(count)
    ]
    deadline = time.monotonic() + 300
    while len(list(tmp.glob("ready-*"))) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        results.append(json.loads(out.strip().splitlines()[-1]))
    started = [r for r in results if r["ok"]]
    return {
        "count": count,
        "started": len(started),
        "retried": sum(1 for r in results if r["failures"] > 0),
        "most_rounds": 1 + max(r["failures"] for r in results),
        "took_max": max((r["took"] for r in started), default=float("nan")),
    }


def dead_store(window: float) -> dict[str, Any]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    port = listener.getsockname()[1]
    connects = [0]
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            connects[0] += 1
            conn.close()

    loads = [0]

    class Count:
        @confhub.hookimpl(wrapper=True)
        def confhub_load_layer(self, spec: Any, backend: Any) -> Any:
            loads[0] += 1
            return (yield)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    hub = confhub.Hub([f"etcd://127.0.0.1:{port}/app/?optional=true"], plugins=[Count()])
    with hub:
        time.sleep(window)
    stop.set()
    thread.join(5)
    listener.close()
    return {
        "loads": loads[0],
        "connects": connects[0],
        "bound": most_attempts(window, hub.retry_initial, hub.retry_max),
    }


def main() -> None:
    # The hubs' WARNING lines (one per hub per outage) would drown the tables.
    logging.getLogger("confhub").setLevel(logging.ERROR)
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_restart(sys.argv[2], int(sys.argv[3]), sys.argv[4], Path(sys.argv[5]))
        return
    args = parse_args(__doc__ or "")
    global PROCESSES, STARTERS, WINDOW
    if args.quick:
        PROCESSES, STARTERS, WINDOW = 2, 20, 10.0
    header("bench_storm: many hubs on one etcd")
    print(versions(["confhub", "grpcio"]))
    import tempfile

    with tempfile.TemporaryDirectory() as d, EtcdServer() as etcd:
        tmp = Path(d)
        etcd.put("/storm/flag", "one")
        rows = {j: restart_run(etcd, j, tmp) for j in ("off", "on")}
        print(
            f"\n### Reconnect after a {DOWN:.0f} s etcd outage, {rows['on']['hubs']} hubs "
            f"({PROCESSES} processes), seconds after etcd answers again\n"
        )
        print(
            "| backoff | hubs back | first | median | p90 | last | spread | spread vs floor "
            "| watch attempts while down, mean / max (bound) |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        bound = most_attempts(DOWN, 0.2, 10.0)
        for j, label in (("off", "no jitter (floor)"), ("on", "**default (jitter 0.5)**")):
            r = rows[j]
            ratio = r["spread"] / rows["off"]["spread"] if rows["off"]["spread"] else float("inf")
            print(
                f"| {label} | {r['hubs'] - r['missing']}/{r['hubs']} | {r['first']:.2f} | "
                f"{r['median']:.2f} | {r['p90']:.2f} | {r['last']:.2f} | {r['spread']:.2f} | "
                f"{ratio:.1f}x | {r['reconnects_mean']:.1f} / {r['reconnects_max']} "
                f"({bound}) |"
            )
        storm = start_storm(etcd, STARTERS, tmp)
        print(f"\n### {storm['count']} processes start a hub at once (default options)\n")
        print("| started | needed more than one round | most rounds | slowest start |")
        print("|---|---|---|---|")
        print(
            f"| {storm['started']}/{storm['count']} | {storm['retried']} | "
            f"{storm['most_rounds']} | {storm['took_max']:.2f} s |"
        )
    dead = dead_store(WINDOW)
    print(f"\n### One hub, etcd never answers, {WINDOW:.0f} s (default options)\n")
    print("| reads (confhub_load_layer) | bound of the backoff | TCP connections |")
    print("|---|---|---|")
    print(f"| {dead['loads']} | {dead['bound']} | {dead['connects']} |")


if __name__ == "__main__":
    main()

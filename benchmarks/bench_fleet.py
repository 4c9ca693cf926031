"""Fleet scale: many hub processes on one host and one etcd, with and without ``share="host"``.

For 1, 10, 50 and 100 hub processes (``--quick``: 1 and 10), each a separate Python process
with one hub on ``etcd://.../bench/`` and one subscriber:

- **put -> every subscriber**: a put of one key, until the slowest process's callback has
  it (each process stamps ``time.monotonic_ns()``, one clock for the whole host); median and
  p99 over the rounds. Floor: the same put seen by one unshared process in the same run.
- **what the store holds**: watch streams and watchers from etcd's own ``/metrics``
  (``etcd_debugging_mvcc_watch_stream_total``, ``etcd_debugging_mvcc_watcher_total``), and
  the TCP connections the processes hold to etcd (``/proc/<pid>/fd`` and ``/proc/<pid>/net/tcp``).
- **resident memory** per process (``VmRSS``): unshared, the leader, the followers.
- **leader kill -9** while the others follow: time from the kill until a put made right
  after it has reached every survivor; floor: one resumed watch (a new etcd client, a watch
  from a revision just before a put already made, until the put arrives: etcd sends a
  resumed watch's backlog from its unsynced-watcher loop, every 100 ms) measured in the
  same run, plus 100 ms. Each survivor's
  generations must only grow, and every value it saw must be one the store held.

Processes start with ``connect_timeout=10``/``start_timeout=120`` (many starting at once on 2
cores take longer than the defaults' one attempt: issue 10 item 3), cache on in a fresh
directory (a group meets in its cache directory).
Run: ``.venv/bin/python -m benchmarks.bench_fleet [--quick]``.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from ._table import Row, header, p99, print_table, versions

SIZES = (1, 10, 50, 100)
QUICK_SIZES = (1, 10)
ROUNDS = 30
QUICK_ROUNDS = 5
SPACING = 0.1
TAKEOVER_MARGIN_NS = 100_000_000
FOLLOWER_RSS_TARGET = 0.8


# -- the worker process --------------------------------------------------------------------


def worker(spec: str, cache_dir: str, share: str) -> None:
    """One hub process: prints ``ready``, then ``value generation t_ns`` per change."""
    import confhub

    hub = confhub.Hub(
        [spec],
        cache_dir=cache_dir,
        share=share,
        connect_timeout=10.0,
        start_timeout=120.0,
    )
    hub.start()
    out = threading.Lock()

    def on_change(change: confhub.Change) -> None:
        t = time.monotonic_ns()
        for c in change.changes:
            if c.key == "k":
                with out:
                    sys.stdout.write(f"v {c.new} {change.generation} {t}\n")
                    sys.stdout.flush()

    hub.subscribe(on_change)
    sharing = hub.health().sources[0].sharing
    role = sharing.role if sharing is not None else "unshared"
    sys.stdout.write(f"ready {os.getpid()} {role}\n")
    sys.stdout.flush()
    for line in sys.stdin:
        if line.strip() == "quit":
            break
    hub.close()


# -- the parent ----------------------------------------------------------------------------


class Proc:
    """A worker process and what it printed."""

    def __init__(self, spec: str, cache_dir: Path, share: str, board: Board) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.bench_fleet",
                "--worker",
                spec,
                str(cache_dir),
                share,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid
        self.role = ""
        self.board = board
        self.generations: list[int] = []
        self.values: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            words = line.split()
            if words[0] == "ready":
                self.role = words[2]
                self.board.ready(self)
            elif words[0] == "v":
                self.values.append(words[1])
                self.generations.append(int(words[2]))
                self.board.seen(self, words[1], int(words[3]))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


class Board:
    """When each process saw each value."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.readies = 0
        self.times: dict[str, dict[int, int]] = {}

    def ready(self, proc: Proc) -> None:
        with self.cond:
            self.readies += 1
            self.cond.notify_all()

    def seen(self, proc: Proc, value: str, t: int) -> None:
        with self.cond:
            self.times.setdefault(value, {})[proc.pid] = t
            self.cond.notify_all()

    def wait_ready(self, count: int, timeout: float) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.readies >= count, timeout):
                raise RuntimeError(f"only {self.readies} of {count} hub processes started")

    def wait_value(self, value: str, pids: set[int], timeout: float) -> dict[int, int]:
        with self.cond:
            ok = self.cond.wait_for(lambda: pids <= self.times.get(value, {}).keys(), timeout)
            if not ok:
                missing = pids - self.times.get(value, {}).keys()
                raise RuntimeError(f"{len(missing)} processes never saw {value}")
            return dict(self.times[value])


def etcd_metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name_part, _, value = line.rpartition(" ")
            name = name_part.split("{", 1)[0]
            try:
                found[name] = found.get(name, 0.0) + float(value)
            except ValueError:
                pass
    return found


def tcp_connections(pid: int, port: int) -> int:
    """Established TCP connections of ``pid`` to ``port``."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        rows = []
        for table in ("tcp", "tcp6"):
            path = Path(f"/proc/{pid}/net/{table}")
            if path.exists():
                rows += path.read_text().splitlines()[1:]
    except OSError:
        return 0
    count = 0
    for row in rows:
        fields = row.split()
        if (
            fields[3] == "01"
            and int(fields[2].rsplit(":", 1)[1], 16) == port
            and fields[9] in inodes
        ):
            count += 1
    return count


def start_group(spec: str, cache: Path, share: str, count: int) -> tuple[list[Proc], Board]:
    board = Board()
    procs: list[Proc] = []
    # In waves of 10: the start storm itself is issue 10 item 3's business, not measured here.
    for first in range(0, count, 10):
        wave = [Proc(spec, cache, share, board) for _ in range(min(10, count - first))]
        procs += wave
        board.wait_ready(len(procs), 180)
    return procs, board


def put_rounds(store: Any, procs: list[Proc], board: Board, rounds: int, tag: str) -> list[float]:
    """The put -> slowest subscriber latency (ns) of each round (``store``: an etcd server,
    or a ``(put, )`` callable taking the value)."""
    put = store if callable(store) else (lambda value: store.put("/bench/k", value))
    pids = {p.pid for p in procs}
    slowest = []
    for i in range(rounds):
        value = f"{tag}-{i}"
        t0 = time.monotonic_ns()
        put(value)
        times = board.wait_value(value, pids, 60)
        slowest.append(max(times.values()) - t0)
        time.sleep(SPACING)
    return slowest


def resumed_watch(endpoint: str, revision: int) -> int:
    """A new client and a watch resumed after ``revision``, until its first event (ns)."""
    from confhub_etcd._client import EtcdClient
    from confhub_etcd._types import PrefixSnapshot
    from confhub_etcd._watcher import PrefixWatcher

    got = threading.Event()
    t0 = time.monotonic_ns()
    with EtcdClient([endpoint], timeout=5.0) as client:
        watcher = PrefixWatcher(
            client, "/bench/", lambda batch: got.set(), snapshot=PrefixSnapshot(revision, ())
        )
        watcher.start()
        got.wait(10)
        elapsed = time.monotonic_ns() - t0
        watcher.close()
    return elapsed


def reconnect_floor(etcd: Any, repeat: int) -> tuple[float, float]:
    """One store reconnect as a new leader makes it (ns, medians): a new client, and a watch
    resumed from a revision just before a put already made (etcd sends such a watch's
    backlog from its unsynced-watcher loop, every 100 ms), until the put arrives. Measured
    twice: in a fresh process (the new leader's case: its first gRPC call initialises
    gRPC) and in this one (gRPC warm)."""
    cold, warm = [], []
    for i in range(repeat):
        before = etcd.put("/bench/floor", f"f{i}-a")
        etcd.put("/bench/floor", f"f{i}-b")
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_fleet", "--floor", etcd.endpoint, f"{before}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        cold.append(int(done.stdout.split()[-1]))
        warm.append(resumed_watch(etcd.endpoint, before))
    etcd.delete("/bench/floor")
    return statistics.median(cold), statistics.median(warm)


def fmt_mib(kib: float) -> str:
    return f"{kib / 1024:.0f} MiB"


def run(quick: bool) -> None:
    from confhub_etcd.testing import EtcdServer

    sizes = QUICK_SIZES if quick else SIZES
    rounds = QUICK_ROUNDS if quick else ROUNDS
    header("bench_fleet: many hub processes, one etcd, with and without share='host'")
    print(versions(["confhub", "grpcio"]))
    print()
    latency_rows: list[Row] = []
    store_rows: list[str] = []
    memory_rows: list[str] = []
    floor_ns: float | None = None
    with EtcdServer() as etcd, tempfile.TemporaryDirectory() as tmp:
        url = etcd.client_urls[0]
        port = int(etcd.endpoint.rsplit(":", 1)[1])
        spec = f"etcd://{etcd.endpoint}/bench/"
        etcd.put("/bench/k", "start")
        results: dict[tuple[str, int], list[float]] = {}
        for count in sizes:
            for share in ("none", "host"):
                cache = Path(tmp) / f"cache-{share}-{count}"
                base = etcd_metrics(url)
                procs, board = start_group(spec, cache, share, count)
                try:
                    put_rounds(etcd, procs, board, 2, f"warm-{share}-{count}")
                    slowest = put_rounds(etcd, procs, board, rounds, f"{share}-{count}")
                    results[(share, count)] = slowest
                    metrics = etcd_metrics(url)
                    streams = metrics.get("etcd_debugging_mvcc_watch_stream_total", 0) - base.get(
                        "etcd_debugging_mvcc_watch_stream_total", 0
                    )
                    watchers = metrics.get("etcd_debugging_mvcc_watcher_total", 0) - base.get(
                        "etcd_debugging_mvcc_watcher_total", 0
                    )
                    conns = [tcp_connections(p.pid, port) for p in procs]
                    leaders = [p for p in procs if p.role == "leader"]
                    followers = [p for p in procs if p.role == "follower"]
                    connected = sum(
                        1 for p, c in zip(procs, conns, strict=True) if c and p.role == "follower"
                    )
                    store_rows.append(
                        f"| {count} | {share} | {streams:.0f} | {watchers:.0f} | {sum(conns)} | "
                        f"{connected} |"
                    )
                    rss = [p.rss_kib() for p in procs]
                    if share == "none":
                        memory_rows.append(
                            f"| {count} | none | {fmt_mib(statistics.median(rss))} | - | - | "
                            f"{fmt_mib(sum(rss))} |"
                        )
                    else:
                        lead = fmt_mib(leaders[0].rss_kib()) if leaders else "-"
                        foll = (
                            fmt_mib(statistics.median(p.rss_kib() for p in followers))
                            if followers
                            else "-"
                        )
                        memory_rows.append(
                            f"| {count} | host | - | {lead} | {foll} | {fmt_mib(sum(rss))} |"
                        )
                finally:
                    for p in procs:
                        p.close()
                if floor_ns is None:
                    floor_ns = statistics.median(slowest)
        assert floor_ns is not None
        for count in sizes:
            none = results[("none", count)]
            host = results[("host", count)]
            for share, samples, target in (("none", none, None), ("host", host, None)):
                latency_rows.append(
                    Row(
                        f"{count} processes, share={share}",
                        statistics.median(samples),
                        "1 process, unshared",
                        statistics.median(samples) / floor_ns,
                        target,
                        p99(samples),
                    )
                )
            latency_rows.append(
                Row(
                    f"{count} processes: host / none (p50; p99 in note)",
                    statistics.median(host),
                    f"{count} processes, share=none",
                    statistics.median(host) / statistics.median(none),
                    1.0,
                    p99(host),
                    note=f"p99 ratio {p99(host) / p99(none):.2f}x",
                )
            )
        print_table("put -> the slowest subscriber of N processes", latency_rows, latency=True)
        print("## What the store holds (etcd /metrics; /proc TCP connections to etcd)")
        print()
        print(
            "| processes | share | watch streams | watchers | TCP connections "
            "| followers connected |"
        )
        print("|---|---|---|---|---|---|")
        print("\n".join(store_rows))
        print()
        print("## Resident memory (VmRSS)")
        print()
        print("| processes | share | per process (median) | leader | follower (median) | all |")
        print("|---|---|---|---|---|---|")
        print("\n".join(memory_rows))
        print()
        follower_ratio = _follower_memory_ratio(memory_rows)
        if follower_ratio is not None:
            print(
                f"follower / unshared process RSS at {sizes[-1]} processes: "
                f"{follower_ratio:.2f}x (target <= {FOLLOWER_RSS_TARGET}x: "
                f"{'PASS' if follower_ratio <= FOLLOWER_RSS_TARGET else 'MISS'})"
            )
            print()
        failover(etcd, spec, Path(tmp) / "cache-failover", sizes[-1], 3 if quick else 5)
    consul_rows(quick, rounds)


def consul_rows(quick: bool, rounds: int) -> None:
    """The put rows against the in-repo Consul test server (one process serving every
    blocking query; no consul binary here): latency, and the connections it holds."""
    from confhub_consul.testing import ConsulTestServer

    sizes = QUICK_SIZES if quick else (1, 10, 50)
    rows: list[Row] = []
    held: list[str] = []
    with ConsulTestServer() as server, tempfile.TemporaryDirectory() as tmp:
        server.put("bench/k", "start")
        spec = f"consul://{server.address}/bench/"
        results: dict[tuple[str, int], list[float]] = {}
        for count in sizes:
            for share in ("none", "host"):
                procs, board = start_group(spec, Path(tmp) / f"c-{share}-{count}", share, count)
                try:
                    put = lambda value: server.put("bench/k", value)  # noqa: E731
                    put_rounds(put, procs, board, 2, f"cwarm-{share}-{count}")
                    results[(share, count)] = put_rounds(
                        put, procs, board, rounds, f"c-{share}-{count}"
                    )
                    conns = [tcp_connections(p.pid, server.port) for p in procs]
                    followers = sum(
                        1 for p, c in zip(procs, conns, strict=True) if c and p.role == "follower"
                    )
                    held.append(f"| {count} | {share} | {sum(conns)} | {followers} |")
                finally:
                    for p in procs:
                        p.close()
        floor = statistics.median(results[("none", sizes[0])])
        for count in sizes:
            none, host = results[("none", count)], results[("host", count)]
            rows.append(
                Row(
                    f"{count} processes, share=none",
                    statistics.median(none),
                    "1 process, unshared",
                    statistics.median(none) / floor,
                    p99_ns=p99(none),
                )
            )
            rows.append(
                Row(
                    f"{count} processes, share=host",
                    statistics.median(host),
                    f"{count} processes, share=none",
                    statistics.median(host) / statistics.median(none),
                    1.0,
                    p99(host),
                    note=f"p99 ratio {p99(host) / p99(none):.2f}x",
                )
            )
    print_table(
        "Consul test server: put -> the slowest subscriber of N processes", rows, latency=True
    )
    print("## Consul test server: connections the processes hold to it (/proc)")
    print()
    print("| processes | share | TCP connections | followers connected |")
    print("|---|---|---|---|")
    print("\n".join(held))
    print()


def _follower_memory_ratio(rows: list[str]) -> float | None:
    last_none = last_host = None
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        if cells[1] == "none":
            last_none = cells[2]
        elif cells[4] != "-":
            last_host = cells[4]
    if last_none is None or last_host is None:
        return None
    return float(last_host.split()[0]) / float(last_none.split()[0])


def failover(etcd: Any, spec: str, cache: Path, count: int, kills: int) -> None:
    """kill -9 the leader of ``count`` shared processes, ``kills`` times."""
    floor, warm = reconnect_floor(etcd, 5)
    procs, board = start_group(spec, cache, "host", count)
    samples = []
    violations = 0
    try:
        steady = statistics.median(put_rounds(etcd, procs, board, 10, "failover-warm"))
        for round_ in range(kills):
            leaders = [p for p in procs if p.role == "leader"] or [procs[0]]
            leader = leaders[0]
            survivors = [p for p in procs if p is not leader and p.proc.poll() is None]
            value = f"after-kill-{round_}"
            t0 = time.monotonic_ns()
            leader.proc.send_signal(signal.SIGKILL)
            etcd.put("/bench/k", value)
            times = board.wait_value(value, {p.pid for p in survivors}, 60)
            samples.append(max(times.values()) - t0)
            leader.proc.wait(10)
            procs = survivors
            # The survivors' roles as they report them: ask nobody; the new leader is the one
            # holding a store connection.
            port = int(etcd.endpoint.rsplit(":", 1)[1])
            new = [p for p in procs if tcp_connections(p.pid, port)]
            for p in procs:
                p.role = "leader" if p in new[:1] else "follower"
            # Replace the dead one so the group keeps its size.
            started = board.readies
            procs.append(Proc(spec, cache, "host", board))
            board.wait_ready(started + 1, 60)
            time.sleep(0.5)
        for p in procs:
            if p.generations != sorted(set(p.generations)):
                violations += 1
            if any(
                not v.startswith(("failover-", "after-kill-", "start", "host-", "none-", "warm-"))
                for v in p.values
            ):
                violations += 1
    finally:
        for p in procs:
            p.close()
    rows = [
        Row(
            f"kill -9 the leader of {count}: put -> every survivor",
            statistics.median(samples),
            "new client's resumed watch + 100 ms",
            statistics.median(samples) / (floor + TAKEOVER_MARGIN_NS),
            1.0,
            max(samples),
            note=f"resumed watch {floor / 1e6:.1f} ms in a new process ({warm / 1e6:.1f} ms "
            f"with gRPC warm); put -> slowest of {count} before the kills: "
            f"{steady / 1e6:.1f} ms; {kills} kills; p99 column = worst; "
            f"generation/value violations: {violations}",
        )
    ]
    print_table("Leader failover", rows, latency=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--floor":
        print(resumed_watch(sys.argv[2], int(sys.argv[3])))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4])
        return
    if "--failover" in sys.argv[1:]:  # only the takeover rows, with N processes
        from confhub_etcd.testing import EtcdServer

        count = int(sys.argv[sys.argv.index("--failover") + 1])
        with EtcdServer() as etcd, tempfile.TemporaryDirectory() as tmp:
            etcd.put("/bench/k", "start")
            failover(etcd, f"etcd://{etcd.endpoint}/bench/", Path(tmp) / "cache", count, 5)
        return
    quick = "--quick" in sys.argv[1:]
    run(quick)


if __name__ == "__main__":
    main()

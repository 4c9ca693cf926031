"""Consul backend: change propagation and initial load, against the raw client's own floor.

- **Propagation**: an HTTP PUT of a key under the prefix, until a ``hub.subscribe``
  callback sees it. Floor: a bare py-consul blocking-query loop (``kv.get(key, index=...,
  wait=...)``) on the same key, measured from the same kind of PUT. The two watchers run
  in alternating blocks of 50 updates, each alone, so a slow patch of the machine hits
  both alike. Before each PUT the watcher's query is parked on the server, and updates are
  at least 25 ms apart (40/s, under the backend's default rate limit of 50 requests/s).
- **Initial load**: ``ConsulBackend.load()`` of 10,000 keys (base64 + UTF-8 decoding, key
  mapping, the leaf/parent check, the frozen layer) against py-consul's recursive
  ``kv.get`` of the same prefix (base64 decoding only). ``Hub.start()`` (load plus merge
  and snapshot) is shown for information.

Hubs run the default configuration (the spec as a user writes it, cache on in the default
cache directory); the propagation rows labelled ``cache_dir=None`` alternate with them, block
by block, with the cache off. (``plugins=[_plugin], autoload=False`` only names the plugin
instead of finding it through its entry point.)
All against the in-repo ``ConsulTestServer`` on loopback (no consul binary here).
Run: ``.venv/bin/python -m benchmarks.bench_consul [--quick]``.
"""

from __future__ import annotations

import http.client
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import consul
from confhub_consul import _plugin
from confhub_consul._backend import ConsulBackend
from confhub_consul.testing import ConsulTestServer

import confhub

from ._table import Row, header, p99, parse_args, print_table, time_calls, versions

MEDIAN_MARGIN_NS = 2_000_000  # propagation: median <= floor + 2 ms
P99_TARGET = 1.5
LOAD_TARGET = 1.5
SPACING = 0.025
BLOCK = 50


class Putter:
    """PUTs over one keep-alive HTTP connection (the same for both watchers)."""

    def __init__(self, server: ConsulTestServer) -> None:
        self.conn = http.client.HTTPConnection(server.host, server.port, timeout=10)

    def put(self, key: str, value: str) -> None:
        self.conn.request("PUT", f"/v1/kv/{key}", body=value.encode())
        resp = self.conn.getresponse()
        resp.read()
        assert resp.status == 200

    def close(self) -> None:
        self.conn.close()


class RawWatcher:
    """The floor: py-consul's blocking query in a loop, as a user would write it."""

    def __init__(self, server: ConsulTestServer, key: str) -> None:
        self.client = consul.Consul(host=server.host, port=server.port)
        self.key = key
        self.seen: dict[str, int] = {}
        self.cond = threading.Condition()
        self.stop = False
        index, _ = self.client.kv.get(key)
        self.index = index
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop:
            index, entry = self.client.kv.get(self.key, index=self.index, wait="30s")
            t = time.perf_counter_ns()
            if index != self.index and entry is not None:
                self.index = index
                with self.cond:
                    self.seen[entry["Value"].decode()] = t
                    self.cond.notify_all()

    def close(self, putter: Putter) -> None:
        self.stop = True
        putter.put(self.key, "stop")
        self.thread.join(10)
        self.client.http.session.close()


class HubWatcher:
    """confhub: a hub on the prefix, a subscriber recording when each value arrives."""

    def __init__(self, server: ConsulTestServer, prefix: str, *, cache: bool = True) -> None:
        # The default configuration: the spec as a user writes it, the cache on (in the
        # default cache directory); cache=False is the cache-off row (cache_dir=None).
        options: dict[str, Any] = {} if cache else {"cache_dir": None}
        self.hub = confhub.Hub(
            [f"consul://{server.address}/{prefix}/"], plugins=[_plugin], autoload=False, **options
        ).start()
        self.seen: dict[str, int] = {}
        self.cond = threading.Condition()
        self.hub.subscribe(self.on_change)

    def on_change(self, change: Any) -> None:
        t = time.perf_counter_ns()
        with self.cond:
            for kc in change.changes:
                self.seen[str(kc.new)] = t
            self.cond.notify_all()

    def close(self, putter: Putter) -> None:
        self.hub.close()


def measure(
    server: ConsulTestServer,
    putter: Putter,
    key: str,
    watcher: RawWatcher | HubWatcher,
    n: int,
    tag: str,
) -> list[int]:
    out = []
    for i in range(n):
        value = f"{tag}-{i}"
        server.wait_for_blocked(1, timeout=10)
        time.sleep(SPACING)
        t0 = time.perf_counter_ns()
        putter.put(key, value)
        with watcher.cond:
            ok = watcher.cond.wait_for(lambda v=value: v in watcher.seen, 10)
        assert ok, f"{tag}: update {value} never arrived"
        out.append(watcher.seen[value] - t0)
    return out


def bench_propagation(quick: bool) -> list[Row]:
    total = 60 if quick else 300
    lat: dict[str, list[int]] = {"raw": [], "default": [], "cache off": []}
    with ConsulTestServer() as server:
        putter = Putter(server)
        server.put("bench/prop/key", "start")
        for _ in range(5):  # unrelated keys under the prefix, as a real config has
            server.put(f"bench/prop/other{_}", "x")
        rounds = max(1, total // BLOCK)
        for r in range(rounds):
            for name in lat:
                w: RawWatcher | HubWatcher = (
                    RawWatcher(server, "bench/prop/key")
                    if name == "raw"
                    else HubWatcher(server, "bench/prop", cache=name == "default")
                )
                lat[name] += measure(server, putter, "bench/prop/key", w, BLOCK, f"{name}{r}")
                w.close(putter)
        putter.close()
    raw = lat["raw"]
    raw_med, raw_p99 = statistics.median(raw), p99(raw)
    rows = [
        Row(
            "py-consul blocking loop (floor)",
            raw_med,
            p99_ns=raw_p99,
            note=f"{len(raw)} updates",
        )
    ]
    for name, label in (("default", "default hub, cache on"), ("cache off", "cache_dir=None")):
        hub = lat[name]
        hub_med, hub_p99 = statistics.median(hub), p99(hub)
        med_ok = hub_med <= raw_med + MEDIAN_MARGIN_NS
        targets = name == "default"  # the targets are the default configuration's
        rows += [
            Row(
                f"confhub subscriber, {label}: median",
                hub_med,
                floor="raw median",
                ratio=hub_med / raw_med,
                target=(raw_med + MEDIAN_MARGIN_NS) / raw_med if targets else None,
                p99_ns=hub_p99,
                note=f"+{(hub_med - raw_med) / 1000:.0f} us over the floor"
                + (f"; target median <= floor + 2 ms: {'PASS' if med_ok else 'MISS'}"
                   if targets else ""),
            ),
            Row(
                f"confhub subscriber, {label}: p99",
                hub_p99,
                floor="raw p99",
                ratio=hub_p99 / raw_p99,
                target=P99_TARGET if targets else None,
                p99_ns=hub_p99,
                note=f"{len(hub)} updates",
            ),
        ]
    return rows


def bench_load(quick: bool) -> list[Row]:
    n_keys = 10_000
    repeat = 5 if quick else 21
    with ConsulTestServer() as server:
        server.put_many(
            {f"bench/load/s{i // 100}/k{i % 100}": f"value-{i}" for i in range(n_keys)}
        )
        client = consul.Consul(host=server.host, port=server.port)
        spec = confhub.SourceSpec.parse(f"consul://{server.address}/bench/load/")
        backend = ConsulBackend(spec)

        def raw() -> None:
            _, entries = client.kv.get("bench/load/", recurse=True)
            assert len(entries) == n_keys

        def load() -> None:
            assert len(backend.load().values) == n_keys

        def start() -> None:
            with confhub.Hub(  # the default configuration (cache on)
                [f"consul://{server.address}/bench/load/"], plugins=[_plugin], autoload=False
            ) as hub:
                assert hub.get("s0.k0") == "value-0"

        cases: dict[str, Callable[[], None]] = {"raw": raw, "load": load, "start": start}
        samples: dict[str, list[int]] = {k: [] for k in cases}
        for fn in cases.values():
            fn()
        for _ in range(repeat):  # interleaved rounds
            for name, fn in cases.items():
                samples[name] += time_calls(fn, repeat=1, warmup=0)
        backend.close()
        client.http.session.close()
    med = {k: statistics.median(v) for k, v in samples.items()}
    return [
        Row("py-consul kv.get(recurse=True) (floor)", med["raw"], note=f"{n_keys} keys"),
        Row(
            "ConsulBackend.load()",
            med["load"],
            floor="raw",
            ratio=med["load"] / med["raw"],
            target=LOAD_TARGET,
            note=f"{repeat} interleaved rounds",
        ),
        Row(
            "Hub.start() incl. merge, snapshot (default hub, cache on)",
            med["start"],
            floor="raw",
            ratio=med["start"] / med["raw"],
            note="information",
        ),
    ]


def main() -> None:
    args = parse_args(__doc__ or "")
    header("Consul backend")
    print(versions(["confhub", "confhub-consul", "py-consul"]))
    print()
    print_table("Consul: PUT -> subscriber callback", bench_propagation(args.quick), latency=True)
    print_table("Consul: initial load, 10,000 keys", bench_load(args.quick))


if __name__ == "__main__":
    main()

"""The cache and fallback: start with the store down, and the cost of cache writes.

1. Start with the store down (it hangs: the worst case) and a warm cache, against the
   configured ``connect_timeout`` (which bounds each attempt): target at most the
   timeout + 100 ms.
2. The cost of one cache write per update (temp file, fsync, rename, directory fsync),
   against the update's own apply cost (merge, validate, publish), for a 1,000-key layer.
   Cache writes run on the notifier thread, coalesced per source, so they do not delay
   publication; this row shows what they cost the machine.
3. A change to subscriber callback through the hub alone (MemoryStore), the default hub
   (cache on) against ``cache_dir=None``: what the cache costs a delivery today.

Run: ``.venv/bin/python -m benchmarks.bench_cache [--quick]``.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from confhub import Hub, Layer, SourceSpec
from confhub._cache import Cache
from confhub.testing import MemoryStore

from ._table import Row, header, p99, parse_args, print_table

START_MARGIN_NS = 100_000_000


def bench_start(quick: bool) -> list[Row]:
    timeout = 0.2
    runs = 3 if quick else 15
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        store = MemoryStore("bench", {f"s{i}": {"k": str(i)} for i in range(1000)})
        with Hub(["memory:bench"], plugins=[store], autoload=False, cache_dir=tmp):
            pass
        store.delay = timeout * 3  # the store hangs longer than the ceiling
        for _ in range(runs):
            began = time.perf_counter_ns()
            hub = Hub(
                ["memory:bench"],
                plugins=[store],
                autoload=False,
                cache_dir=tmp,
                connect_timeout=timeout,
                retry_initial=60,
            )
            hub.start()
            samples.append(time.perf_counter_ns() - began)
            assert hub.health().sources[0].state == "cached"
            hub.close()
        time.sleep(timeout * 3)  # let the abandoned loads finish
    floor = timeout * 1e9
    median = statistics.median(samples)
    return [
        Row(
            "start, store hanging, warm cache (1,000 keys)",
            median,
            floor=f"connect_timeout {timeout * 1000:.0f} ms",
            ratio=median / floor,
            target=(floor + START_MARGIN_NS) / floor,
            p99_ns=p99(samples),
            note=f"over the ceiling by {(median - floor) / 1e6:.1f} ms (target <= 100 ms)",
        )
    ]


def bench_write(quick: bool) -> list[Row]:
    n = 1000
    rounds = 20 if quick else 200
    store = MemoryStore("bench", {f"s{i // 100}": {f"k{i % 100}": str(i)} for i in range(n)})
    applies, writes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Cache(Path(tmp))
        spec = SourceSpec.parse("memory:bench")
        # The cache off here on purpose: the floor is the apply alone, without the hub's own
        # cache writes competing with the ones this row times.
        with Hub(["memory:bench"], plugins=[store], autoload=False, cache_dir=None) as hub:
            for i in range(rounds):
                began = time.perf_counter_ns()
                store.set("s0.k0", f"v{i}")  # delivered and applied synchronously
                applies.append(time.perf_counter_ns() - began)
                layer: Layer = hub.snapshot()._layers[0]  # type: ignore[assignment]
                began = time.perf_counter_ns()
                cache.write(spec, layer)
                writes.append(time.perf_counter_ns() - began)
    floor = statistics.median(applies)
    median = statistics.median(writes)
    return [
        Row("apply one change (1,000-key layer)", floor, floor="-", p99_ns=p99(applies)),
        Row(
            "cache write of that layer (fsync x2)",
            median,
            floor="apply",
            ratio=median / floor,
            p99_ns=p99(writes),
            note="off the update path: on the notifier thread, coalesced",
        ),
    ]


def bench_propagation(quick: bool) -> list[Row]:
    """A change to subscriber callback through the hub alone (a ``MemoryStore`` delivers
    on the caller's thread; the callback runs on the notifier thread), for a 1,000-key
    layer: the default hub (cache on, default cache directory) against ``cache_dir=None``,
    alternating in blocks. What the cache costs a delivery, without a store's own latency."""
    n = 1000
    per_block = 20 if quick else 100
    blocks = 1 if quick else 3
    lat: dict[str, list[int]] = {"default": [], "cache off": []}
    done = threading.Event()
    stamp = [0]

    def callback(change: Any) -> None:
        stamp[0] = time.perf_counter_ns()
        done.set()

    for block in range(blocks):
        for name in lat:
            store = MemoryStore(
                f"prop{block}", {f"s{i // 100}": {f"k{i % 100}": str(i)} for i in range(n)}
            )
            options: dict[str, Any] = {} if name == "default" else {"cache_dir": None}
            with Hub([f"memory:prop{block}"], plugins=[store], autoload=False, **options) as hub:
                hub.subscribe(callback)
                for i in range(per_block + 5):
                    done.clear()
                    began = time.perf_counter_ns()
                    store.set("s0.k0", f"{name}-{block}-{i}")
                    if not done.wait(10):
                        raise RuntimeError("no callback within 10 s")
                    if i >= 5:
                        lat[name].append(stamp[0] - began)
                    time.sleep(0.002)  # updates apart, as a store delivers them
    off = statistics.median(lat["cache off"])
    med = statistics.median(lat["default"])
    return [
        Row("change -> subscriber, cache_dir=None (floor)", off, p99_ns=p99(lat["cache off"]),
            note=f"{len(lat['cache off'])} changes"),
        Row("change -> subscriber, default hub (cache on)", med, floor="cache off",
            ratio=med / off, p99_ns=p99(lat["default"]),
            note=f"+{(med - off) / 1000:.0f} us: the cache write shares the notifier thread"),
    ]


def main() -> None:
    args = parse_args(__doc__ or "")
    logging.getLogger("confhub").setLevel(logging.ERROR)  # the fallbacks are on purpose
    header("cache and fallback")
    print_table("Start with the store down", bench_start(args.quick), latency=True)
    print_table("Cache write cost per update", bench_write(args.quick), latency=True)
    print_table(
        "Delivery with the cache on and off (MemoryStore, 1,000 keys)",
        bench_propagation(args.quick),
        latency=True,
    )


if __name__ == "__main__":
    main()

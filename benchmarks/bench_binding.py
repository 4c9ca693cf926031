"""What strict binding costs: one update re-bound to a live view, strict against not.

A view of a class that declares every key of the configuration (sections of 100 int
fields), fed one-key ``LayerDelta`` updates by ``confhub.testing.MemoryStore``, timed as
``Publisher.on_update`` (merge, re-bind the view, publish). The floor is the same view under
``unknown="ignore"``, which re-binds without looking for unknown keys (binding before strict
binding); ``unknown="forbid"`` (the default) also walks the view's input against the class's
shape. The ratio is what the walk adds to an update. The hubs run the default
configuration (cache on, in the default cache directory: a ``MemoryStore`` is cacheable, so
each update is also offered to the cache's own thread); a ``cache_dir=None`` row of the
strict hub is beside them. A second table times the walk alone
(``confhub._strict.inspect``) against cattrs' ``structure`` of the same input.

Run: ``.venv/bin/python -m benchmarks.bench_binding [--quick]``.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import attrs

import confhub
from confhub import LayerDelta
from confhub._bindtypes import shape_of
from confhub._strict import inspect
from confhub.testing import MemoryStore

from ._table import Row, header, p99, parse_args, print_table

#: The strict walk may add at most this much to a view's update (ratio against "ignore").
STRICT_TARGET = 1.5


def _config_class(sections: int) -> type:
    section = attrs.make_class("Section", {f"k{i}": attrs.field(type=int) for i in range(100)})
    return attrs.make_class(
        "Config", {f"s{i}": attrs.field(type=section) for i in range(sections)}, frozen=True
    )


def _data(sections: int) -> dict[str, Any]:
    return {f"s{i}.k{k}": i * 100 + k for i in range(sections) for k in range(100)}


def bench_update(quick: bool) -> list[Row]:
    rows = []
    for keys in (100, 10_000):
        sections = keys // 100
        cls = _config_class(sections)
        medians: dict[str, tuple[float, list[int]]] = {}
        # Interleave the hubs round by round, so a slow patch hits them alike. The default
        # hub (cache on) for both policies; the strict one again with the cache off.
        variants: dict[str, tuple[str, dict[str, Any]]] = {
            "ignore": ("ignore", {}),
            "forbid": ("forbid", {}),
            "forbid, cache off": ("forbid", {"cache_dir": None}),
        }
        hubs = {}
        for name, (policy, options) in variants.items():
            label = name.replace(", ", "-").replace(" ", "")
            store = MemoryStore(f"b-{label}", _data(sections))
            hub = confhub.Hub(
                [f"memory:b-{label}"], plugins=[store], autoload=False,
                connect_timeout=60, start_timeout=120, **options,
            ).start()
            hub.view(cls, unknown=policy)
            hubs[name] = hub
        samples: dict[str, list[int]] = {name: [] for name in variants}
        counter = iter(range(10**9))
        rounds = 30 if quick else 300
        try:
            for _ in range(rounds + 10):
                for name, hub in hubs.items():
                    slot = hub._slots[0]
                    value = next(counter) + 1_000_000
                    delta = LayerDelta(set={"s0.k0": value}, revision=value)
                    t0 = time.perf_counter_ns()
                    hub._publisher.on_update(slot, delta)
                    samples[name].append(time.perf_counter_ns() - t0)
                    assert hub.get("s0.k0") == value
        finally:
            for hub in hubs.values():
                hub.close()
        for name in samples:
            kept = samples[name][10:]  # the first rounds warm up
            medians[name] = (statistics.median(kept), kept)
        floor = medians["ignore"][0]
        rows.append(Row(f"update, {keys:,}-key view, unknown=\"ignore\" (floor)", floor,
                        "ignore", 1.0, p99_ns=p99(medians["ignore"][1]),
                        note=f"{rounds} updates"))
        rows.append(Row(f"update, {keys:,}-key view, unknown=\"forbid\"", medians["forbid"][0],
                        "ignore", medians["forbid"][0] / floor, STRICT_TARGET,
                        p99_ns=p99(medians["forbid"][1]), note=f"{rounds} updates"))
        off = medians["forbid, cache off"]
        rows.append(Row(f"update, {keys:,}-key view, unknown=\"forbid\", cache_dir=None", off[0],
                        "ignore", off[0] / floor, p99_ns=p99(off[1]),
                        note="the cache off: no offer to its thread"))
    return rows


def bench_walk(quick: bool) -> list[Row]:
    rows = []
    converter = confhub.Hub([], autoload=False).converter
    for keys in (100, 10_000):
        sections = keys // 100
        cls = _config_class(sections)
        shape = shape_of(cls)
        data = {f"s{i}": {f"k{k}": i * 100 + k for k in range(100)} for i in range(sections)}
        rounds = 20 if quick else 200
        walk, structure = [], []
        for _ in range(rounds):
            t0 = time.perf_counter_ns()
            found = inspect(data, shape, None, unknown=True)
            walk.append(time.perf_counter_ns() - t0)
            t0 = time.perf_counter_ns()
            converter.structure(data, cls)
            structure.append(time.perf_counter_ns() - t0)
            assert not found.unknown
        floor = statistics.median(structure)
        rows.append(Row(f"cattrs structure, {keys:,} keys (floor)", floor, "structure", 1.0,
                        note=f"{rounds} rounds"))
        rows.append(Row(f"strict walk, {keys:,} keys", statistics.median(walk), "structure",
                        statistics.median(walk) / floor, note=f"{rounds} rounds"))
    return rows


def main() -> None:
    args = parse_args(__doc__ or "")
    logging.getLogger("confhub").setLevel(logging.ERROR)
    header("strict binding")
    print_table("One update re-bound to a live view", bench_update(args.quick), latency=True)
    print_table("The strict walk alone, against cattrs' structure", bench_walk(args.quick))


if __name__ == "__main__":
    main()

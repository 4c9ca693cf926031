"""File sources: loading a big file, rebuilding after one change, save-to-callback latency.

1. Loading a 10,000-key TOML, JSON or YAML file through ``Hub([...]).start()``, against the
   floor of reading and parsing the same file alone (``tomllib.loads`` / ``json.loads`` /
   PyYAML's ``CSafeLoader``). A default ``Hub()`` row (entry-point plugins loaded) is shown
   beside the ``autoload=False`` rows; file sources are not cacheable, so the cache plays no
   part in any file row.
2. Rebuilding after one changed key: the time from a backend delivering an update to the
   snapshot being published (``Publisher.on_update``, called directly on a running hub fed by a
   ``MemoryStore``), for a 100,000-key layer against the floor of a 10-key layer. The hub is
   the default (cache on: a ``MemoryStore`` is cacheable); ``cache_dir=None`` rows beside.
   And a 10,000-key file saved with one key changed: the file backend's reload plus the
   hub's apply (diff, merge, publish), against the floor of reading and parsing the file.
3. File save (an ``os.replace`` rename) to subscriber callback, median and p99, against the
   floor of the same measurement with a bare watchdog ``Observer`` on the same directory.

Run: ``.venv/bin/python -m benchmarks.bench_file [--quick]``.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

import confhub
from confhub import LayerDelta
from confhub._backends._watch import DEFAULT_SETTLE
from confhub._layer import Layer, flatten
from confhub._merge import merge_full
from confhub._parsers import parse_document
from confhub.testing import MemoryStore

from ._table import Row, header, p99, parse_args, print_table, versions

LOAD_TARGET = 1.5
#: Issue 9 item 7: the whole load of a 10,000-key file against its parser (JSON's is C).
LOAD_TARGETS = {"toml": 1.5, "yaml": 1.5, "json": 3.0}
REBUILD_TARGET = 3.0
LATENCY_TARGET = 3.0


def make_data(n: int, per_section: int = 100) -> dict[str, dict[str, Any]]:
    """``n`` leaves in sections of ``per_section``, with mixed value types."""
    data: dict[str, dict[str, Any]] = {}
    for i in range(n):
        kind = i % 4
        value: Any = (i, f"value-{i}", i / 7, i % 3 == 0)[kind]
        data.setdefault(f"s{i // per_section}", {})[f"k{i % per_section}"] = value
    return data


def to_toml(data: dict[str, dict[str, Any]]) -> str:
    lines = []
    for section, table in data.items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            lines.append(f"{key} = {json.dumps(value)}")  # ints, floats, bools, strings
        lines.append("")
    return "\n".join(lines)


# -- 1. loading ------------------------------------------------------------------------------


def _yaml_floor() -> tuple[str, Callable[[str], Any]]:
    """The YAML floor: PyYAML's ``CSafeLoader`` (libyaml) when it has one."""
    import yaml

    if hasattr(yaml, "CSafeLoader"):
        return "CSafeLoader", lambda text: yaml.load(text, Loader=yaml.CSafeLoader)
    return "SafeLoader (no libyaml)", yaml.safe_load


def bench_load(tmp: Path, *, rounds: int) -> list[Row]:
    import yaml

    data = make_data(10_000)
    files = {"toml": tmp / "big.toml", "json": tmp / "big.json", "yaml": tmp / "big.yaml"}
    files["toml"].write_text(to_toml(data))
    files["json"].write_text(json.dumps(data, indent=1))
    files["yaml"].write_text(yaml.safe_dump(data, sort_keys=False))
    assert tomllib.loads(files["toml"].read_text()) == json.loads(files["json"].read_text())
    yaml_name, yaml_loads = _yaml_floor()
    assert yaml_loads(files["yaml"].read_text()) == data
    parsers: dict[str, tuple[str, Callable[[str], Any]]] = {
        "toml": ("tomllib.loads", tomllib.loads),
        "json": ("json.loads", json.loads),
        "yaml": (yaml_name, yaml_loads),
    }

    rows = []
    for fmt, path in files.items():
        parse, loads = parsers[fmt]

        def floor(path: Path = path, loads: Callable[[str], Any] = loads) -> None:
            loads(path.read_bytes().decode("utf-8"))

        def start(spec: str, *, default: bool = False) -> Callable[[], None]:
            def run() -> None:
                t0 = time.perf_counter_ns()
                hub = confhub.Hub([spec]) if default else confhub.Hub([spec], autoload=False)
                if not default:
                    t0 = time.perf_counter_ns()  # construction is its own row
                hub.start()
                run.elapsed = time.perf_counter_ns() - t0  # type: ignore[attr-defined]
                hub.close()  # not timed: closing joins the watcher threads
            return run

        parsed = loads(path.read_text())
        flat = flatten(parsed, source="bench")
        layer = Layer.from_flat(flat, source="bench")
        content = path.read_bytes()
        cases: dict[str, Callable[[], Any]] = {
            "floor": floor,
            "Hub(...)": lambda path=path: confhub.Hub([f"file:{path}"], autoload=False),
            "start": start(f"file:{path}"),
            "start, watch=false": start(f"file:{path}?watch=false"),
            "parse_document": lambda content=content, fmt=fmt: parse_document(
                content, fmt, source="bench"
            ),
            "flatten": lambda parsed=parsed: flatten(parsed, source="bench"),
            "Layer.from_flat": lambda flat=flat: Layer.from_flat(flat, source="bench"),
            "merge_full": lambda layer=layer: merge_full([layer]),
            "default Hub": start(f"file:{path}", default=True),
        }
        samples: dict[str, list[int]] = {name: [] for name in cases}
        for fn in cases.values():
            fn()  # warm-up
        for _ in range(rounds):
            for name, fn in cases.items():
                t0 = time.perf_counter_ns()
                fn()
                elapsed = time.perf_counter_ns() - t0
                samples[name].append(getattr(fn, "elapsed", elapsed))
        med = {name: statistics.median(s) for name, s in samples.items()}
        f = med["floor"]
        label = f"{fmt}: "
        rows += [
            Row(f"{label}floor: read + {parse}", f, parse, 1.0),
            Row(f"{label}Hub([file]).start() (watching)", med["Hub(...)"] + med["start"], parse,
                (med["Hub(...)"] + med["start"]) / f, LOAD_TARGETS[fmt],
                note="Hub() construction + start()"),
            Row(f"{label}  of which Hub(...) construction", med["Hub(...)"], parse,
                med["Hub(...)"] / f, note="plugin manager (the converter: on first bind)"),
            Row(f"{label}  of which start()", med["start"], parse, med["start"] / f,
                note="load, merge, snapshot, watcher threads"),
            Row(f"{label}  start() with ?watch=false", med["start, watch=false"], parse,
                med["start, watch=false"] / f, note="no watcher threads"),
            Row(f"{label}  part: parse_document(bytes)", med["parse_document"], parse,
                med["parse_document"] / f, note="decode, parse, strictness and bounds checks"),
            Row(f"{label}  part: flatten(parsed)", med["flatten"], parse, med["flatten"] / f,
                note="nested -> dotted keys, freeze leaves"),
            Row(f"{label}  part: Layer.from_flat", med["Layer.from_flat"], parse,
                med["Layer.from_flat"] / f, note="read-only copy, parent counts, clash check"),
            Row(f"{label}  part: merge_full([layer])", med["merge_full"], parse,
                med["merge_full"] / f, note="effective view from scratch"),
            Row(f"{label}Hub([file]).start(), default Hub() (autoload)", med["default Hub"],
                parse, med["default Hub"] / f,
                note="entry-point plugins loaded; no cache: file sources are not cacheable"),
        ]
    return rows


# -- 2. rebuild after one change -------------------------------------------------------------


@attrs.frozen
class Section:
    k0: int


@attrs.frozen
class ViewCfg:
    s0: Section


def bench_rebuild(*, quick: bool) -> list[Row]:
    rows: list[Row] = []
    budget_ns = 300_000_000 if quick else 4_000_000_000
    floors: dict[str, float] = {}
    for variant in ("delta", "layer", "delta+view", "delta, cache off"):
        for n in (10, 100_000):
            flat = {f"s{i // 100}.k{i % 100}": i for i in range(n)}
            store = MemoryStore("b", flat)
            # The default hub: a MemoryStore is cacheable, so the cache is on (its writes run
            # on the notifier thread, beside the timed apply); the last variant turns it off.
            options: dict[str, Any] = {"cache_dir": None} if "cache off" in variant else {}
            # Timeouts raised: loading 100,000 keys can take longer than the default 2 s on a
            # busy machine, and the load is not what this measures.
            hub = confhub.Hub(
                ["memory:b"], plugins=[store], autoload=False,
                connect_timeout=60, start_timeout=120, **options,
            ).start()
            try:
                if variant == "delta+view":
                    # ViewCfg reads one key of the 100,000: the other sections are not its
                    # keys, so it binds under unknown="ignore" (the strict default refuses
                    # them); benchmarks/bench_binding.py measures what strictness costs.
                    hub.view(ViewCfg, unknown="ignore")
                slot = hub._slots[0]
                counter = iter(range(10**9))

                def update(hub: Any = hub, slot: Any = slot, counter: Any = counter,
                           variant: str = variant) -> int:
                    # Build the update outside the timed part: that is the backend's work.
                    i = next(counter) + 1_000_000
                    delta = LayerDelta(set={"s0.k0": i}, revision=i)
                    upd: Any = delta
                    if variant == "layer":
                        upd = slot.layer.apply(delta, source="memory:b")
                    t0 = time.perf_counter_ns()
                    hub._publisher.on_update(slot, upd)
                    elapsed = time.perf_counter_ns() - t0
                    assert hub.get("s0.k0") == i
                    return elapsed

                one = update()
                repeat = max(20, min(3000, budget_ns // max(one, 1)))
                if quick:
                    repeat = min(repeat, 50)
                samples = [update() for _ in range(max(5, repeat // 10))]  # warm-up
                samples = [update() for _ in range(repeat)]
            finally:
                hub.close()
            med = statistics.median(samples)
            what = {
                "delta": "LayerDelta (KV backends)",
                "layer": "whole Layer (file/env/poll)",
                "delta+view": "LayerDelta, one bound view",
                "delta, cache off": "LayerDelta, cache_dir=None",
            }[variant]
            if n == 10:
                floors[variant] = med
                rows.append(Row(f"{what}: 10 keys (floor)", med, "10-key layer", 1.0,
                                p99_ns=p99(samples), note=f"{repeat} updates"))
            else:
                rows.append(Row(f"{what}: 100,000 keys", med, "10-key layer",
                                med / floors[variant],
                                None if "cache off" in variant else REBUILD_TARGET,
                                p99_ns=p99(samples), note=f"{repeat} updates"))
    return rows


# -- 2b. a file changed in one key: reload and publish -----------------------------------------


def bench_reload(tmp: Path, *, rounds: int) -> list[Row]:
    """What a save of a 10,000-key file with one changed key costs the hub, against the
    floor of reading and parsing the file alone (the issue's "rebuilding after one change"):
    the file backend's ``load()`` (read, parse, bounds, flatten, layer) and the hub's apply
    of the new layer (diff against the old one, merge, publish)."""
    data = make_data(10_000)
    rows = []
    for fmt in ("toml", "json"):
        path = tmp / f"reload.{fmt}"
        loads: Callable[[str], Any] = tomllib.loads if fmt == "toml" else json.loads
        dump: Callable[[Any], str] = to_toml if fmt == "toml" else json.dumps
        path.write_text(dump(data))
        hub = confhub.Hub([f"file:{path}?watch=false"], autoload=False).start()
        try:
            slot = hub._slots[0]
            backend = slot.backends[0]
            assert backend is not None
            floor_ns: list[int] = []
            reload_ns: list[int] = []
            for i in range(rounds * 3):
                data["s0"]["k0"] = 1_000_000 + i
                path.write_text(dump(data))  # the save: not timed
                t0 = time.perf_counter_ns()
                loads(path.read_bytes().decode("utf-8"))
                floor_ns.append(time.perf_counter_ns() - t0)
                t0 = time.perf_counter_ns()
                hub._publisher.on_update(slot, backend.load())
                reload_ns.append(time.perf_counter_ns() - t0)
                assert hub.get("s0.k0") == 1_000_000 + i
        finally:
            hub.close()
        floor, med = statistics.median(floor_ns), statistics.median(reload_ns)
        parse = "tomllib.loads" if fmt == "toml" else "json.loads"
        rows += [
            Row(f"{fmt}: floor: read + {parse}", floor, parse, 1.0),
            Row(
                f"{fmt}: load() + apply (diff, merge, publish)",
                med,
                parse,
                med / floor,
                LOAD_TARGET if fmt == "toml" else None,
                p99_ns=p99(reload_ns),
                note="one key changed of 10,000",
            ),
        ]
    return rows


# -- 3. save-to-callback latency -------------------------------------------------------------


def _saves(path: Path, count: int, done: threading.Event, stamp: list[int]) -> list[int]:
    """Rename-save ``path`` ``count`` times; return each save's ns to the recorded callback."""
    tmp = path.with_name(".incoming.tmp")
    out = []
    for i in range(count):
        tmp.write_text(f"[app]\nsave = {i}\nname = \"bench\"\n")
        done.clear()
        t0 = time.perf_counter_ns()
        os.replace(tmp, path)
        if not done.wait(10):
            raise RuntimeError(f"no callback within 10 s for save {i} of {path}")
        out.append(stamp[0] - t0)
        time.sleep(0.002)  # let the directory's trailing events drain before the next save
    return out


def latency_raw(directory: Path, count: int) -> list[int]:
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    path = directory / "app.toml"
    path.write_text("[app]\nsave = -1\n")
    done = threading.Event()
    stamp = [0]

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            dest = os.fsdecode(getattr(event, "dest_path", "") or "")
            if os.path.basename(dest) == path.name:
                stamp[0] = time.perf_counter_ns()
                done.set()

    observer = Observer()
    observer.schedule(Handler(), str(directory), recursive=False)
    observer.start()
    try:
        time.sleep(0.1)
        return _saves(path, count, done, stamp)
    finally:
        observer.stop()
        observer.join()


def latency_hub(directory: Path, count: int, settle: float | None) -> list[int]:
    path = directory / "app.toml"
    path.write_text("[app]\nsave = -1\n")
    done = threading.Event()
    stamp = [0]

    def callback(change: confhub.Change) -> None:
        stamp[0] = time.perf_counter_ns()
        done.set()

    spec = f"file:{path}" + ("" if settle is None else f"?settle={settle}")
    # The default hub (file sources are not cacheable: the cache is not involved).
    with confhub.Hub([spec]) as hub:
        hub.subscribe(callback)
        time.sleep(0.1)
        return _saves(path, count, done, stamp)


def bench_latency(tmp: Path, *, count: int) -> list[Row]:
    warm = max(3, count // 20)
    directory = tmp / "watched"
    directory.mkdir()
    latency_raw(directory, warm)
    raw = latency_raw(directory, count)
    latency_hub(directory, warm, None)
    default = latency_hub(directory, count, None)
    zero = latency_hub(directory, count, 0)
    floor = statistics.median(raw)
    settle_ns = DEFAULT_SETTLE * 1e9
    med_default = statistics.median(default)
    med_zero = statistics.median(zero)
    return [
        Row("floor: bare watchdog Observer", floor, "raw event", 1.0, p99_ns=p99(raw),
            note=f"{count} saves"),
        Row(f"hub, default settle ({DEFAULT_SETTLE:g} s)", med_default, "raw event",
            med_default / floor, p99_ns=p99(default), note="includes the settle wait"),
        Row("  same, minus the settle wait", med_default - settle_ns, "raw event",
            (med_default - settle_ns) / floor, LATENCY_TARGET,
            p99_ns=p99(default) - settle_ns, note="settle is configured, not overhead"),
        Row("hub, ?settle=0", med_zero, "raw event", med_zero / floor, LATENCY_TARGET,
            p99_ns=p99(zero), note=f"{count} saves"),
    ]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    header("confhub file benchmark")
    print(
        f"{versions(['confhub', 'watchdog', 'immutables', 'PyYAML'])}; loads: Hub(autoload=False)"
        " plus a default Hub() row; latency: the default Hub(); rebuild: cache on (default)"
        " plus cache_dir=None rows"
    )
    rounds = 3 if args.quick else 21
    count = 20 if args.quick else 300
    if args.quick:
        print("QUICK RUN: too few repetitions for the numbers to mean anything")
    print()
    with tempfile.TemporaryDirectory(prefix="confhub-bench-") as name:
        tmp = Path(name)
        print_table(
            f"Loading a 10,000-key file (median of {rounds} interleaved rounds)",
            bench_load(tmp, rounds=rounds),
        )
        print_table(
            "Rebuild after one changed key (Publisher.on_update to snapshot published)",
            bench_rebuild(quick=args.quick), latency=True,
        )
        print_table(
            f"A 10,000-key file saved with one key changed: reload to published "
            f"(median of {rounds * 3})",
            bench_reload(tmp, rounds=rounds), latency=True,
        )
        print_table(
            f"File save (os.replace) to subscriber callback ({count} saves each)",
            bench_latency(tmp, count=count), latency=True,
        )


if __name__ == "__main__":
    main()

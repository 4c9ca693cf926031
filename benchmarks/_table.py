"""Shared helpers for the benchmarks: timing loops, statistics, and the result table.

Every benchmark compares against a *floor* measured in the same run, so the numbers that
matter are ratios; absolute nanoseconds only describe the machine they ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
import timeit
from collections.abc import Callable, Sequence
from typing import Any

import attrs


@attrs.define
class Row:
    """One line of a result table."""

    name: str
    median_ns: float | None
    floor: str = ""
    ratio: float | None = None
    target: float | None = None  # the highest acceptable ratio, if this row has a target
    p99_ns: float | None = None
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.target is None or self.ratio is None:
            return "-"
        return "PASS" if self.ratio <= self.target else "MISS"


def na_row(name: str, reason: str) -> Row:
    """A row for something that could not be measured (a peer that is not installed)."""
    return Row(name, None, note=f"n/a ({reason})")


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true",
        help="a smoke run with few repetitions (CI uses it; the numbers mean little)",
    )
    return parser.parse_args()


def header(title: str) -> None:
    """Print the command that produced this output and the machine it ran on."""
    command = " ".join(shlex.quote(a) for a in getattr(sys, "orig_argv", sys.argv))
    print(f"# {title}")
    print(f"$ {command}")
    print(
        f"python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()} {platform.machine()}, "
        f"nproc={os.cpu_count()}"
    )
    print()


def versions(names: Sequence[str]) -> str:
    """``name version`` for each installed distribution, or ``name missing``."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in names:
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            out.append(f"{name} missing")
    return ", ".join(out)


def time_statements(
    cases: dict[str, tuple[str, dict[str, Any]]],
    *,
    number: int,
    rounds: int,
    warmup: int = 3,
    batch_budget_ns: int = 50_000_000,
) -> dict[str, tuple[float, int]]:
    """Median ns per execution of each statement, timeit-style, and the batch size used.

    ``cases`` maps a name to ``(statement, globals)``. Each statement is compiled into a
    timeit loop (so all cases pay the same loop overhead), and the cases are run
    interleaved, one batch each per round, so that a slow patch of the machine hits all of
    them alike. A batch is ``number`` executions, fewer for a statement so slow that
    ``number`` would take longer than ``batch_budget_ns``. Returns, per case, the median
    over ``rounds`` batches and the batch size.
    """
    timers = {
        name: timeit.Timer(stmt, globals=env, timer=time.perf_counter_ns)
        for name, (stmt, env) in cases.items()
    }
    sizes = {}
    for name, timer in timers.items():
        timer.timeit(10)
        per_call = max(1.0, timer.timeit(10) / 10)
        sizes[name] = max(1, min(number, int(batch_budget_ns / per_call)))
        for _ in range(warmup):
            timer.timeit(sizes[name])
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            samples[name].append(timer.timeit(sizes[name]) / sizes[name])
    return {name: (statistics.median(s), sizes[name]) for name, s in samples.items()}


def time_calls(fn: Callable[[], Any], *, repeat: int, warmup: int) -> list[int]:
    """Run ``fn`` ``warmup`` + ``repeat`` times; return the ns of each timed call."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        out.append(time.perf_counter_ns() - t0)
    return out


def p99(samples: Sequence[float]) -> float:
    """The 99th percentile (nearest rank; the maximum below 100 samples)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, -(-99 * len(ordered) // 100) - 1))]


def fmt_ns(ns: float | None) -> str:
    if ns is None:
        return "-"
    if ns < 10_000:
        return f"{ns:.1f} ns"
    if ns < 10_000_000:
        return f"{ns / 1000:.1f} us"
    return f"{ns / 1_000_000:.1f} ms"


def print_table(title: str, rows: Sequence[Row], *, latency: bool = False) -> None:
    """Print rows as a Markdown table (pasteable into docs/benchmarks.md)."""
    cols = ["case", "median"] + (["p99"] if latency else []) + [
        "floor", "ratio", "target", "result", "note"
    ]
    body = []
    for r in rows:
        line = [r.name, fmt_ns(r.median_ns) if r.median_ns is not None else "n/a"]
        if latency:
            line.append(fmt_ns(r.p99_ns))
        line += [
            r.floor or "-",
            "-" if r.ratio is None else f"{r.ratio:.2f}x",
            "-" if r.target is None else f"<= {r.target:g}x",
            r.verdict,
            r.note,
        ]
        body.append(line)
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    print(f"## {title}")
    print()
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in body:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
    print()
    sys.stdout.flush()

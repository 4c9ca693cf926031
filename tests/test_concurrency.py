"""Readers on many threads while updates stream in: no torn reads, no going back."""

from __future__ import annotations

import threading
import time

import attrs

from confhub import Hub
from confhub.testing import MemoryStore


@attrs.frozen
class Pair:
    a: int
    b: int


def test_readers_never_see_torn_snapshots() -> None:
    """Keys written together in one transaction are always read together."""
    store = MemoryStore("app", {"pair": {"a": "0", "b": "0"}})
    stop = threading.Event()
    problems: list[str] = []

    with Hub(["memory:app"], plugins=[store], autoload=False) as hub:
        view = hub.view(Pair, prefix="pair")

        def reader() -> None:
            last_generation = 0
            while not stop.is_set():
                snap = hub.snapshot()
                a, b = snap["pair.a"], snap["pair.b"]
                if a != b:
                    problems.append(f"torn snapshot: a={a} b={b}")
                if snap.generation < last_generation:
                    problems.append("generation went backwards")
                last_generation = snap.generation
                current = view.current
                if current.a != current.b:
                    problems.append(f"torn view: {current}")
                hub.get("pair.a")

        readers = [threading.Thread(target=reader) for _ in range(8)]
        for t in readers:
            t.start()
        deadline = time.monotonic() + 1.5
        n = 0
        while time.monotonic() < deadline:
            n += 1
            store.transaction({"pair.a": str(n), "pair.b": str(n)})
        stop.set()
        for t in readers:
            t.join(10)
        assert not problems, problems[:5]
        assert hub.get("pair.a") == str(n)
        assert view.current == Pair(n, n)

"""asyncio: astart/aclose/async with off the loop, hub.events(), hub.changes(since=...)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from confhub import MISSING, Change, ErrorEvent, Hub, HubStateError, SourceHealth, State
from confhub.testing import MemoryStore

HANG = 10.0  # a bound on every wait: reached only when the code under test is broken


def _hub(store: MemoryStore, **options: Any) -> Hub:
    return Hub([{"a": "0"}, f"memory:{store.name}"], plugins=[store], cache_dir=None, **options)


async def _next(items: AsyncIterator[Any]) -> Any:
    return await asyncio.wait_for(anext(items), HANG)


async def _subscribed(items: AsyncIterator[Any]) -> asyncio.Future[Any]:
    """The next item of ``items`` as a future, once its iterator has subscribed and waits."""
    future = asyncio.ensure_future(anext(items))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not future.done()
    return future


def test_async_with_starts_and_closes_the_hub() -> None:
    """``async with hub`` starts the hub (reads work inside) and closes it on exit."""
    store = MemoryStore("app", {"a": "1"})
    hub = _hub(store)

    async def main() -> str:
        async with hub as running:
            assert running is hub
            assert hub.state is State.RUNNING
            return str(hub.get("a"))

    assert asyncio.run(main()) == "1"
    assert hub.state is State.CLOSED


def test_astart_does_not_block_the_event_loop() -> None:
    """While a slow store is being read by astart(), other tasks on the loop keep running."""
    store = MemoryStore("app", {"a": "1"})
    store.delay = 0.3
    hub = _hub(store)
    ticks: list[int] = []

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            ticks.append(store.loads)  # how many loads had finished at each tick
            await asyncio.sleep(0.01)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(ticker(stop))
        await hub.astart()
        stop.set()
        await task
        await hub.aclose()

    asyncio.run(main())
    # The loop ticked while the load was still running (a blocking start allows one tick).
    assert ticks.count(0) > 1
    assert hub.state is State.CLOSED


def test_cancelled_astart_closes_the_hub_and_leaves_no_thread() -> None:
    """Cancelling astart() mid-start closes the hub; it waits for the start thread to end."""
    store = MemoryStore("app", {"a": "1"})
    store.delay = 0.3
    hub = _hub(store)
    loading = threading.Event()
    original = store.load

    def load() -> Any:
        loading.set()
        return original()

    store.load = load  # type: ignore[method-assign]

    async def main() -> None:
        task = asyncio.ensure_future(hub.astart())
        await asyncio.get_running_loop().run_in_executor(None, loading.wait, HANG)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, HANG)

    asyncio.run(main())
    assert hub.state is State.CLOSED
    with pytest.raises(HubStateError):
        hub.get("a")


def test_events_yield_errors_and_state_changes() -> None:
    """hub.events() yields the ErrorEvent and the SourceHealth of a failing, then recovering
    source, and the change, in delivery order."""
    store = MemoryStore("app", {"a": "1"})

    async def main(hub: Hub) -> list[Any]:
        events = hub.events()
        first = await _subscribed(events)
        store.fail()
        got = [await asyncio.wait_for(first, HANG), await _next(events)]
        store.set("a", "2")  # not delivered while failed; recover() resyncs
        store.recover()
        got += [await _next(events), await _next(events)]
        await events.aclose()  # type: ignore[attr-defined]
        return got

    with _hub(store) as hub:
        got = asyncio.run(main(hub))
    assert isinstance(got[0], ErrorEvent)
    assert got[0].source == "memory:app"
    assert isinstance(got[1], SourceHealth)
    assert got[1].state == "stale"
    kinds = {type(got[2]), type(got[3])}
    assert kinds == {Change, SourceHealth}
    state = next(e for e in got[2:] if isinstance(e, SourceHealth))
    change = next(e for e in got[2:] if isinstance(e, Change))
    assert state.state == "live"
    assert change.keys == ("a",)


def test_events_can_leave_out_changes() -> None:
    """events(changes=False) yields the state events only, not the changes around them."""
    store = MemoryStore("app", {"a": "1"})

    async def main(hub: Hub) -> Any:
        events = hub.events(changes=False)
        first = await _subscribed(events)
        store.set("a", "2")
        store.fail()
        return await asyncio.wait_for(first, HANG)

    with _hub(store) as hub:
        assert isinstance(asyncio.run(main(hub)), ErrorEvent)


def test_events_end_when_the_hub_closes() -> None:
    """An events() iteration ends when the hub is closed under it."""
    store = MemoryStore("app", {"a": "1"})
    hub = _hub(store).start()

    async def main() -> None:
        events = hub.events()
        waiting = await _subscribed(events)
        await hub.aclose()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, HANG)

    asyncio.run(main())


def test_changes_since_the_current_snapshot_start_right_after_it() -> None:
    """changes(since=snap) with snap current yields the next generation first, nothing older."""
    store = MemoryStore("app", {"a": "1"})

    async def main(hub: Hub) -> list[Change]:
        snap = hub.snapshot()
        changes = hub.changes(since=snap)
        first = await _subscribed(changes)
        store.set("a", "2")
        store.set("a", "3")
        return [await asyncio.wait_for(first, HANG), await _next(changes)]

    with _hub(store) as hub:
        start = hub.generation
        got = asyncio.run(main(hub))
    assert [c.generation for c in got] == [start + 1, start + 2]
    assert [c.get("a").new for c in got] == ["2", "3"]  # type: ignore[union-attr]


def test_changes_since_an_older_snapshot_catch_up_first() -> None:
    """Changes published between the snapshot a consumer holds and the stream's start come
    as one catch-up change (old -> current values), then the live ones; none is missed."""
    store = MemoryStore("app", {"a": "1", "b": "1"})

    async def main(hub: Hub) -> list[Change]:
        snap = hub.snapshot()  # the state an SSE endpoint sent first
        store.set("a", "2")  # published before the stream subscribes
        store.delete("b")
        store.set("c", "1")
        changes = hub.changes(since=snap)
        first = await _next(changes)
        store.set("a", "3")
        return [first, await _next(changes)]

    with _hub(store) as hub:
        start = hub.generation
        catch_up, live = asyncio.run(main(hub))
        assert catch_up.generation == start + 3
        assert {(c.key, c.old, c.new) for c in catch_up} == {
            ("a", "1", "2"),
            ("b", "1", MISSING),
            ("c", MISSING, "1"),
        }
        assert "catch-up" in catch_up.source
        assert live.generation == start + 4
        assert live.get("a").new == "3"  # type: ignore[union-attr]


def test_changes_since_keep_to_the_prefix() -> None:
    """The catch-up change of changes(prefix=..., since=...) holds only keys under prefix."""
    store = MemoryStore("app", {"db": {"port": "1"}, "x": "1"})

    async def main(hub: Hub) -> Change:
        snap = hub.snapshot()
        store.transaction({"db.port": "2", "x": "2"})
        return await _next(hub.changes(prefix="db", since=snap))

    with _hub(store) as hub:
        assert asyncio.run(main(hub)).keys == ("db.port",)


def test_every_change_reaches_a_stream_started_from_a_snapshot_while_updates_stream() -> None:
    """Under a steady stream of updates from another thread, the snapshot a consumer sends
    first plus its changes(since=) stream add up to the store's final value, and the
    generations it sees strictly increase (no change missed, none repeated)."""
    store = MemoryStore("app", {"n": "0"})
    total = 200

    def writer() -> None:
        for i in range(1, total + 1):
            store.set("n", str(i))

    async def main(hub: Hub) -> tuple[int, list[int], str]:
        thread = threading.Thread(target=writer)
        thread.start()
        await asyncio.sleep(0)
        snap = hub.snapshot()
        value = str(snap["n"])
        generations = [snap.generation]
        changes = hub.changes(since=snap)
        try:
            while value != str(total):
                change = await _next(changes)
                generations.append(change.generation)
                value = change.get("n").new  # type: ignore[union-attr]
        finally:
            await asyncio.get_running_loop().run_in_executor(None, thread.join, HANG)
        return snap.generation, generations, value

    with _hub(store) as hub:
        _, generations, value = asyncio.run(main(hub))
    assert value == str(total)
    assert generations == sorted(set(generations))

"""Lifecycle and bounds: close() during start(), changes() of a hub that never ran, and a
queue bounded by sources and keys when a source flaps (issue 14, items 7-9)."""

from __future__ import annotations

import asyncio
import logging
import threading
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from core_testlib import wait_for

from confhub import (
    Change,
    ConfigValidationError,
    ErrorEvent,
    Hub,
    HubStateError,
    StartupError,
    hookimpl,
)
from confhub.testing import MemoryStore, queue_depth

HANG = 60.0  # a backstop against a hang, never a pace


@attrs.frozen
class Port:
    port: int


# -- item 7: close() during a slow start() ----------------------------------------------------


def _start_in_thread(hub: Hub) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            hub.start()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="test-start")
    thread.start()
    return thread, errors


def _loading(display: str) -> bool:
    return any(t.name == f"confhub-load[{display}]" for t in threading.enumerate())


@pytest.mark.parametrize("slow_first", [False, True])
def test_close_during_a_slow_start_leaves_nothing_running(tmp_path: Path, slow_first: bool) -> None:
    """close() while start() waits on a slow store makes start() raise HubStateError and
    leaves the hub closed: no thread, no watch, later file changes not applied."""
    path = tmp_path / "app.toml"
    path.write_text('name = "one"\n')
    store = MemoryStore("slow", {"port": 1})
    store.delay = 1.0
    specs = [f"file:{path}", "memory:slow"]
    hub = Hub(specs[::-1] if slow_first else specs, plugins=[store], cache_dir=None)
    thread, errors = _start_in_thread(hub)
    wait_for(lambda: _loading("memory:slow"), timeout=HANG, what="the slow load")
    hub.close()
    thread.join(HANG)
    assert not thread.is_alive()
    assert len(errors) == 1, errors
    assert isinstance(errors[0], HubStateError), errors
    assert "closed while it was starting" in str(errors[0])
    assert hub.state.value == "closed"
    assert all(s.state != "live" for s in hub.health().sources), hub.health()
    path.write_text('name = "two"\n')
    with pytest.raises(HubStateError):
        hub.get("name")
    # The autouse guard fails the test if a watcher or notifier thread is left.


def test_a_hub_closed_during_start_cannot_be_started_again() -> None:
    """A hub whose start was interrupted stays closed: start() again is a HubStateError."""
    store = MemoryStore("slow", {"port": 1})
    store.delay = 0.5
    hub = Hub(["memory:slow"], plugins=[store], cache_dir=None)
    thread, errors = _start_in_thread(hub)
    wait_for(lambda: _loading("memory:slow"), timeout=HANG, what="the slow load")
    hub.close()
    thread.join(HANG)
    assert len(errors) == 1
    assert isinstance(errors[0], HubStateError)
    with pytest.raises(HubStateError, match="closed"):
        hub.start()


def test_close_from_the_starting_thread_stops_start(tmp_path: Path) -> None:
    """close() called on the thread that runs start() (as a signal handler is) makes start()
    raise HubStateError and leaves no watcher behind."""
    path = tmp_path / "app.toml"
    path.write_text('name = "one"\n')

    class CloseOnValidate:
        @hookimpl
        def confhub_validate_snapshot(self, snapshot: Any, previous: Any) -> None:
            if previous is None:
                hub.close()

    hub = Hub([f"file:{path}"], plugins=[CloseOnValidate()], cache_dir=None)
    with pytest.raises(HubStateError, match="closed while it was starting"):
        hub.start()
    assert hub.state.value == "closed"


# -- item 8: changes() of a hub that never ran --------------------------------------------------


async def _next(changes: AsyncIterator[Change]) -> Any:
    return await asyncio.wait_for(anext(changes), HANG)


async def _waiting(changes: AsyncIterator[Change]) -> asyncio.Future[Any]:
    """The next item of ``changes``, as a future whose iterator has subscribed and waits."""
    future = asyncio.ensure_future(anext(changes))
    for _ in range(10):  # let the iterator run up to its wait
        await asyncio.sleep(0)
    assert not future.done()
    return future


def test_changes_end_when_the_hub_is_closed_before_it_started() -> None:
    """An iterator waiting on a hub that never started ends when the hub closes."""
    hub = Hub([{"a": 1}], cache_dir=None)

    async def main() -> None:
        changes = hub.changes()
        waiting = await _waiting(changes)
        hub.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, HANG)

    asyncio.run(main())


def test_changes_end_when_start_fails() -> None:
    """An iterator waiting while start() fails ends (the notifier thread never ran)."""
    hub = Hub(["file:/nonexistent/confhub/app.toml"], cache_dir=None)

    async def main() -> None:
        changes = hub.changes()
        waiting = await _waiting(changes)
        with pytest.raises(StartupError):
            hub.start()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, HANG)

    asyncio.run(main())


def test_changes_of_a_closed_hub_end_at_once() -> None:
    """Iterating changes() of a hub already closed ends at once."""
    hub = Hub([{"a": 1}], cache_dir=None)
    hub.close()

    async def main() -> None:
        with pytest.raises(StopAsyncIteration):
            await _next(hub.changes())

    asyncio.run(main())


# -- item 9: a flapping source behind a blocked subscriber ---------------------------------------


class _Blocked:
    """A subscriber that blocks the notifier until released, then records what it gets."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.changes: list[Change] = []
        self.errors: list[ErrorEvent] = []

    def on_change(self, change: Change) -> None:
        self.release.wait(HANG)
        self.changes.append(change)

    def on_error(self, event: ErrorEvent) -> None:
        self.release.wait(HANG)
        self.errors.append(event)


def test_a_flapping_source_keeps_the_queue_bounded_by_sources_and_keys() -> None:
    """3,000 good and 3,000 rejected updates behind a blocked subscriber keep the queue
    within a bound set by the sources and keys, and the last value of every key arrives."""
    keys = [f"k{i}" for i in range(20)]
    store = MemoryStore("app", {"port": 0, **dict.fromkeys(keys, 0)})
    max_backlog = 100
    # One source: its merged change, one error event per error type, its state.
    bound = max_backlog + 2 * (1 + 2 + 1)
    blocked = _Blocked()
    with Hub(["memory:app"], plugins=[store], cache_dir=None, max_backlog=max_backlog) as hub:
        hub.view(Port, unknown="ignore")  # the k* keys are not Port's
        hub.subscribe(blocked.on_change, on_error=blocked.on_error)
        deepest = 0
        try:
            for i in range(1, 3001):
                store.transaction({"port": i, keys[i % len(keys)]: i})
                store.set("port", f"bad-{i}")  # a distinct bad value: news every time
                deepest = max(deepest, queue_depth(hub))
                assert deepest <= bound, f"{deepest} events queued after {i} rounds"
        finally:
            blocked.release.set()
        wait_for(lambda: queue_depth(hub) == 0, timeout=HANG, what="the backlog delivered")
        store.set("port", 7)  # a marker: everything before it was delivered once it arrives
        wait_for(
            lambda: any(_new(c, "port") == 7 for c in blocked.changes[-1:]),
            timeout=HANG,
            what="the marker",
        )
    last: dict[str, Any] = {}
    for change in blocked.changes:
        for key_change in change.changes:
            last[key_change.key] = key_change.new
    assert last == {"port": 7, **{k: hub_last(k, keys) for k in keys}}
    assert blocked.errors, "the rejections were reported"


def _new(change: Change, key: str) -> Any:
    found = change.get(key)
    return None if found is None else found.new


def hub_last(key: str, keys: list[str]) -> int:
    """The last round (of 1..3000) that wrote ``key``."""
    index = keys.index(key)
    return max(i for i in range(1, 3001) if i % len(keys) == index)


def test_queued_rejections_retain_memory_bounded_by_the_config_size() -> None:
    """Rejected updates of a 5,000-key config queued behind a blocked subscriber retain
    memory bounded by the config's size, not by the number of rejections (no traceback)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        data = {
            f"section{i // 100}": {f"key{i}": f"value-{i}" for i in range(i, i + 100)}
            for i in range(0, 5000, 100)
        }
        config_size = tracemalloc.get_traced_memory()[0] - before
        store = MemoryStore("app", {"port": 0, **data})
        blocked = _Blocked()
        with Hub(["memory:app"], plugins=[store], cache_dir=None, max_backlog=1000) as hub:
            hub.view(Port, unknown="ignore")  # the sections are not Port's
            hub.subscribe(blocked.on_change, on_error=blocked.on_error)
            try:
                store.set("port", 1)  # the notifier now blocks in on_change
                start = tracemalloc.get_traced_memory()[0]
                for i in range(60):
                    store.set("port", f"bad-{i}")
                retained = tracemalloc.get_traced_memory()[0] - start
            finally:
                blocked.release.set()
            wait_for(lambda: len(blocked.errors) >= 1 and queue_depth(hub) == 0, timeout=HANG)
    finally:
        tracemalloc.stop()
    assert retained < 4 * config_size, (retained, config_size)
    assert all(event.error.__traceback__ is None for event in blocked.errors)
    assert isinstance(blocked.errors[-1].error, ConfigValidationError)


def test_the_same_bad_value_written_again_is_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same bad value written five times is one ERROR line and one event; a different
    bad value is another."""
    store = MemoryStore("app", {"port": 1})
    errors: list[ErrorEvent] = []
    with (
        caplog.at_level(logging.INFO, logger="confhub"),
        Hub(["memory:app"], plugins=[store], cache_dir=None) as hub,
    ):
        hub.view(Port)
        hub.subscribe(on_error=errors.append)
        for _ in range(5):
            store.set("port", "abc")
        store.set("port", "abd")
        wait_for(lambda: len(errors) >= 2, timeout=HANG, what="two error events")
        store.set("port", 2)
        wait_for(lambda: hub.get("port") == 2, timeout=HANG, what="the good value")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(lines) == 2, lines
    assert "'abc'" in lines[0]
    assert "'abd'" in lines[1]
    assert len(errors) == 2, [str(e.error) for e in errors]

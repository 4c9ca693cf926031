"""Helpers for the backend tests: hubs on the etcd plugin and bounded waits on their events."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from confhub import Change, ErrorEvent, Hub

#: Spec options that keep fault tests short: fast reconnects and a quick liveness probe.
FAST_OPTS = "retry_initial=0.05&retry_max=0.3&progress_interval=0.5"


def spec(endpoints: str | Sequence[str], prefix: str = "/app/", opts: str = FAST_OPTS) -> str:
    hosts = endpoints if isinstance(endpoints, str) else ",".join(endpoints)
    return f"etcd://{hosts}{prefix}" + (f"?{opts}" if opts else "")


def make_hub(sources: list[Any], cache: Path | None = None, **kwargs: Any) -> Hub:
    kwargs.setdefault("connect_timeout", 1.0)
    kwargs.setdefault("start_timeout", 5.0)
    kwargs.setdefault("retry_initial", 0.1)
    kwargs.setdefault("retry_max", 0.5)
    return Hub(sources, cache_dir=cache, **kwargs)


class Events:
    """Subscribes to a hub; records Changes and ErrorEvents; waits are bounded."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.changes: list[Change] = []
        self.errors: list[ErrorEvent] = []
        self._cond = threading.Condition()
        hub.subscribe(self._on_change, on_error=self._on_error)

    def _on_change(self, change: Change) -> None:
        with self._cond:
            self.changes.append(change)
            self._cond.notify_all()

    def _on_error(self, event: ErrorEvent) -> None:
        with self._cond:
            self.errors.append(event)
            self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 15.0, what: str = ""
    ) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{what or 'condition'} not met within {timeout}s; "
                        f"changes={self.changes[-5:]}, errors={self.errors[-3:]}, "
                        f"health={self.hub.health().to_dict()}"
                    )
                self._cond.wait(min(left, 0.05))

    def wait_value(self, key: str, value: Any, timeout: float = 15.0) -> None:
        self.wait_for(lambda: self.hub.get(key, None) == value, timeout, f"{key} == {value!r}")

    def wait_change(self, key: str, value: Any, timeout: float = 15.0) -> None:
        """Until a delivered Change sets ``key`` to ``value`` (the hub's value can be new a
        moment before the notifier thread delivers its Change: wait for this before reading
        ``changes``)."""
        self.wait_for(
            lambda: value in [c.new for ch in self.changes for c in ch.changes if c.key == key],
            timeout,
            f"a change setting {key} to {value!r}",
        )

    def wait_state(self, state: str, index: int = -1, timeout: float = 15.0) -> None:
        self.wait_for(
            lambda: self.hub.health().sources[index].state == state, timeout, f"state {state}"
        )

    def new_values(self, key: str) -> list[Any]:
        with self._cond:
            return [c.new for ch in self.changes for c in ch.changes if c.key == key]


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or 'condition'} not met within {timeout}s")
        time.sleep(0.02)

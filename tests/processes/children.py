"""Targets of the multiprocessing tests (importable by a spawned interpreter)."""

from __future__ import annotations

import os
import time
from multiprocessing.connection import Connection
from typing import Any

import confhub


def wait_for(hub: confhub.Hub, key: str, value: Any, timeout: float = 30.0) -> bool:
    """Poll ``hub[key]`` until it is ``value`` (bounded)."""
    deadline = time.monotonic() + timeout
    while hub.get(key, None) != value:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def report(hub: confhub.Hub) -> dict[str, Any]:
    """What a child tells its parent about its hub."""
    return {
        "pid": os.getpid(),
        "state": hub.state.value,
        "flag": hub.get("flag", None),
        "sources": [s.to_dict() for s in hub.health().sources],
    }


def spawned_hub(sources: list[str], conn: Connection) -> None:
    """A spawned child builds its own hub, reports, waits for ``flag == "two"``, reports."""
    with confhub.Hub(sources, cache_dir=None) as hub:
        conn.send(report(hub))
        wait_for(hub, "flag", "two")
        conn.send(report(hub))

"""Helpers shared by the core tests (imported by name: tests/ is on sys.path via its conftest)."""

from __future__ import annotations

import time
from typing import Any


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.005) -> Any:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)

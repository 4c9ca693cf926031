"""Helpers shared by the core tests (imported by name: tests/ is on sys.path via its conftest)."""

from __future__ import annotations

import time
from typing import Any


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.005, what: str = "") -> Any:
    """Poll ``predicate`` until it is truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or predicate} not met within {timeout}s")
        time.sleep(interval)

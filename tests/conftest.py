"""Shared fixtures and guards for the core tests."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import settings

# The gate (.ci/run sets HYPOTHESIS_PROFILE=ci) runs the property tests on a fixed set of
# examples, so a landing is never decided by which inputs one run happened to draw; every
# other run (python3 dev.py test on a laptop) explores new ones, as Hypothesis does by default.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _no_thread_leaks() -> Iterator[None]:
    """Fail a test that leaves a thread running (every hub joins its threads on close)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not leaked, f"threads leaked: {[t.name for t in leaked]}"


@pytest.fixture(autouse=True)
def _env_guard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Restore os.environ after each test; point the default cache at a fresh directory."""
    saved = dict(os.environ)
    os.environ["CONFHUB_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache") / "confhub")
    yield
    os.environ.clear()
    os.environ.update(saved)

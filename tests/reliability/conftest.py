"""Fixtures and guards of the reliability suite (real etcd, the Consul test server).

Scenarios marked ``slow`` run only with ``CONFHUB_SLOW=1`` (the default run stays short);
the thread-leak guard of ``tests/conftest.py`` applies here too.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# The suite's helper modules (history, faults) sit next to the tests; no package.
sys.path.insert(0, str(Path(__file__).parent))

from confhub_consul.testing import ConsulTestServer
from confhub_etcd.testing import EtcdCluster, EtcdServer

SLOW = os.environ.get("CONFHUB_SLOW") == "1"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("slow") is not None and not SLOW:
        pytest.skip(
            "slow scenario: run with CONFHUB_SLOW=1 (e.g. CONFHUB_SLOW=1 "
            "python -m pytest tests/reliability)"
        )


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    """A fresh single-member etcd on loopback."""
    with EtcdServer() as server:
        yield server


@pytest.fixture
def cluster() -> Iterator[EtcdCluster]:
    """A fresh three-member etcd cluster on loopback."""
    with EtcdCluster(3) as c:
        yield c


@pytest.fixture
def consul() -> Iterator[ConsulTestServer]:
    """The in-repo Consul test server, with short blocking-query times."""
    with ConsulTestServer(default_query_time=2, max_query_time=3) as server:
        yield server


@pytest.fixture(autouse=True)
def _no_confhub_threads_left() -> Iterator[None]:
    """No confhub, proxy, reader or writer thread outlives its scenario.

    (The parent conftest's guard checks every thread; this one names the culprits.)
    """
    yield
    deadline = time.monotonic() + 5
    while True:
        left = [
            t.name
            for t in threading.enumerate()
            if t.name.startswith(("confhub", "test-")) and t.is_alive()
        ]
        if not left:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"threads left running: {left}")
        time.sleep(0.05)

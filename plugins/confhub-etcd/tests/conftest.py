"""Fixtures running a real etcd (``confhub_etcd.testing``); nothing here ever skips.

A missing etcd binary raises ``EtcdNotFoundError`` from the fixture, which errors the test:
CI must fail, not pass vacuously, when etcd is absent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from etcd_testlib import Recorder

from confhub_etcd._client import EtcdClient
from confhub_etcd.testing import EtcdCluster, EtcdServer


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    """A fresh single-member etcd for one test."""
    with EtcdServer() as server:
        yield server


@pytest.fixture
def client(etcd: EtcdServer) -> Iterator[EtcdClient]:
    """A client of the ``etcd`` fixture with a 2 s deadline."""
    with EtcdClient(etcd.endpoints, timeout=2.0) as c:
        yield c


@pytest.fixture
def cluster() -> Iterator[EtcdCluster]:
    """A fresh three-member etcd cluster for one test."""
    with EtcdCluster(3) as c:
        yield c


@pytest.fixture(autouse=True)
def _no_leaked_confhub_threads() -> Iterator[None]:
    """Every hub, watcher and recovery thread a test started is gone after it."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = [
            t
            for t in threading.enumerate()
            if t not in before and t.name.startswith("confhub") and t.is_alive()
        ]
        if not leaked:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"threads leaked: {leaked}")
        time.sleep(0.05)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()

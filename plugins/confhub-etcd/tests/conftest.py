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
def _no_leaked_watch_threads() -> Iterator[None]:
    """Every test must join the watcher threads it started."""
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        leaked = [t for t in threading.enumerate() if t.name.startswith("confhub-etcd-watch")]
        if not leaked:
            return
        time.sleep(0.05)
    pytest.fail(f"watcher threads leaked: {leaked}")


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()

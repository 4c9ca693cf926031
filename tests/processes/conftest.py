"""Fixtures of the process tests: real servers, real forks, a real etcd.

Every server a test starts runs in its own session and is stopped (its process group, by
the id of the process the test started) at teardown; every wait is bounded.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The helper module sits next to the tests; no package.
sys.path.insert(0, str(Path(__file__).parent))

from confhub_etcd.testing import EtcdServer


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    """A fresh single-member etcd on loopback."""
    with EtcdServer() as server:
        yield server

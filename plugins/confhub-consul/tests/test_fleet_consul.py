"""Host-shared Consul sources (``share="host"``) on the in-repo Consul test server: two hubs
of one process form a group (the group's lock is a ``flock``, so they exclude each other like
two processes). Consul has no ``Backend.resume``: a new leader reads the prefix in full."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import confhub
import pytest

from confhub_consul.testing import ConsulTestServer


@pytest.fixture
def server() -> Iterator[ConsulTestServer]:
    with ConsulTestServer(default_query_time=2, max_query_time=3) as srv:
        yield srv


def _until(predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
    return found


def _role(hub: confhub.Hub) -> str | None:
    sharing = hub.health().sources[0].sharing
    return None if sharing is None else sharing.role


def test_consul_group_follows_and_takes_over(server: ConsulTestServer, tmp_path: Path) -> None:
    """One hub leads, the other follows its changes; when the leader closes, the follower
    leads (a full read) and keeps receiving changes."""
    server.put("myapp/a", "1")
    spec = f"consul://{server.address}/myapp/"
    leader = confhub.Hub([spec], cache_dir=tmp_path, share="host").start()
    follower = confhub.Hub([spec], cache_dir=tmp_path, share="host").start()
    try:
        assert (_role(leader), _role(follower)) == ("leader", "follower")
        server.put("myapp/a", "2")
        _until(lambda: follower["a"] == "2")
        leader.close()
        _until(lambda: _role(follower) == "leader")
        server.put("myapp/a", "3")
        _until(lambda: follower["a"] == "3")
    finally:
        follower.close()
        leader.close()

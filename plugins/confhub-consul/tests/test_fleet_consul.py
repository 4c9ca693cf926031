"""Host-shared Consul sources (``share="host"``) on the in-repo Consul test server: two hubs
of one process form a group (the group's lock is a ``flock``, so they exclude each other like
two processes). A new leader resumes the blocking query from the group's last index."""

from __future__ import annotations

import logging
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


def test_consul_group_follows_and_takes_over(
    server: ConsulTestServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One hub leads, the other follows its changes; when the leader closes, the follower
    leads, resuming from the group's last index: a put and a delete made meanwhile arrive,
    once."""
    server.put("myapp/a", "1")
    spec = f"consul://{server.address}/myapp/"
    leader = confhub.Hub([spec], cache_dir=tmp_path, share="host").start()
    follower = confhub.Hub([spec], cache_dir=tmp_path, share="host").start()
    try:
        assert (_role(leader), _role(follower)) == ("leader", "follower")
        server.put("myapp/a", "2")
        _until(lambda: follower["a"] == "2")
        seen: list[tuple[str, Any]] = []
        follower.subscribe(lambda change: seen.extend((c.key, c.new) for c in change.changes))
        server.put("myapp/gone", "x")
        _until(lambda: follower.get("gone", None) == "x")
        with caplog.at_level(logging.INFO, "confhub.fleet"):
            leader.close()
            server.put("myapp/a", "3")
            server.delete("myapp/gone")
            _until(lambda: follower["a"] == "3" and "gone" not in follower)
        assert "resuming the store's watch after revision" in caplog.text
        assert _role(follower) == "leader"
        assert seen.count(("a", "3")) == 1
    finally:
        follower.close()
        leader.close()

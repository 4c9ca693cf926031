"""Host-shared sources (``share="host"``) in one process: two hubs on one in-memory store
form a group (the group's lock is a ``flock``, so two hubs of one process exclude each other
like two processes). Real files, real sockets; the cross-process behaviour with a real etcd is
in ``plugins/confhub-etcd/tests/test_fleet.py``."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import confhub
from confhub import Hub
from confhub.testing import MemoryStore


def _until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found:
            return found
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore("fleet", {"a": "1"})


@pytest.fixture
def hubs(store: MemoryStore, tmp_path: Path) -> Iterator[Callable[..., Hub]]:
    """Start hubs sharing ``memory:fleet`` in one cache directory; closed after the test."""
    made: list[Hub] = []

    def make(spec: str = "memory:fleet", **kwargs: Any) -> Hub:
        kwargs.setdefault("cache_dir", tmp_path / "cache")
        kwargs.setdefault("share", "host")
        hub = Hub([spec], plugins=[store], autoload=False, **kwargs)
        made.append(hub)
        return hub.start()

    yield make
    for hub in reversed(made):
        hub.close()


def _sharing(hub: Hub) -> confhub.Sharing:
    sharing = hub.health().sources[0].sharing
    assert sharing is not None
    return sharing


def _state_file(tmp_path: Path) -> Path:
    (path,) = (tmp_path / "cache").glob("*.fleet.state")
    return path


def test_followers_never_touch_the_store(hubs, store: MemoryStore) -> None:
    """One hub leads (one load, one watch); the follower gets every change through it."""
    leader, follower = hubs(), hubs()
    assert _sharing(leader) == confhub.Sharing("leader", os.getpid())
    assert _sharing(follower) == confhub.Sharing("follower", os.getpid())
    assert (store.loads, store.watch_count) == (1, 1)
    seen: list[confhub.Change] = []
    follower.subscribe(seen.append)
    store.set("a", "2")
    _until(lambda: follower["a"] == "2")
    _until(lambda: seen)
    assert [c.key for c in seen[0].changes] == ["a"]
    assert follower.explain("a").revision == store.revision
    assert store.watch_count == 1


def test_the_follower_leads_when_the_leader_closes(hubs, store: MemoryStore) -> None:
    """Closing the leader frees the lock: the follower takes over and keeps serving."""
    leader, follower = hubs(), hubs()
    leader.close()
    # The memory store does not replay: wait until the new leader's watch is registered.
    _until(lambda: _sharing(follower).role == "leader" and store.watch_count == 1)
    store.set("a", "3")
    _until(lambda: follower["a"] == "3")
    assert store.watch_count == 1


def test_a_follower_reports_the_leaders_trouble(hubs, store: MemoryStore) -> None:
    """The store failing for the leader makes the follower stale with the leader's error,
    and live again when the leader recovers."""
    leader, follower = hubs(), hubs()
    store.fail()
    _until(lambda: follower.health().sources[0].state == "stale")
    error = follower.health().sources[0].last_error
    assert error is not None
    assert "MemoryStore.fail" in error
    assert "leader" in error
    store.recover()
    _until(lambda: follower.health().sources[0].state == "live")
    assert leader.health().sources[0].state == "live"


def test_a_follower_write_goes_to_the_store(hubs, store: MemoryStore) -> None:
    """A follower writes to the store itself; the change comes back through the leader."""
    leader, follower = hubs(), hubs()
    follower.write("b", "x")
    assert store.data["b"] == "x"
    _until(lambda: leader.get("b", None) == "x" and follower.get("b", None) == "x")


def test_a_follower_deletes_and_commits_through_the_store(hubs, store: MemoryStore) -> None:
    """A follower's delete and transaction reach the store (through a backend opened for
    the call), and come back to both hubs through the leader."""
    leader, follower = hubs(), hubs()
    store.set("gone", "x")
    _until(lambda: follower.get("gone", None) == "x")
    follower.delete("gone")
    with follower.transaction() as txn:
        txn.put("c", "1")
        txn.put("d", "2")
    assert "gone" not in store.data
    assert (store.data["c"], store.data["d"]) == ("1", "2")
    _until(lambda: all(h.get("d", None) == "2" and "gone" not in h for h in (leader, follower)))
    assert store.watch_count == 1


def test_a_garbage_state_file_is_never_published(
    hubs, store: MemoryStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A state file cut short (a leader that died mid-write without the rename) is refused
    with a warning; the follower keeps its last good state and takes the next good one."""
    _leader, follower = hubs(), hubs()
    state = _state_file(tmp_path)
    good = state.read_bytes()
    state.write_bytes(good[: len(good) // 2])
    with caplog.at_level(logging.WARNING, "confhub.fleet"):
        _until(lambda: "truncated" in caplog.text, timeout=15)
    assert follower["a"] == "1"
    store.set("a", "4")
    _until(lambda: follower["a"] == "4")


def test_a_state_caught_mid_write_is_never_published(
    hubs, store: MemoryStore, tmp_path: Path
) -> None:
    """A state whose write never completed (the leader died in it: an odd write counter)
    is never taken, even with a valid checksum; the next complete state is."""
    from confhub._fleetstate import state_image

    hubs()
    follower = hubs()
    seen: list[Any] = []
    follower.subscribe(lambda change: seen.extend(c.new for c in change.changes))
    state = _state_file(tmp_path)
    body = _payload(state)
    body["layer"]["data"]["a"] = "half-written"
    body["seq"] += 100
    state.write_bytes(state_image(json.dumps(body).encode(), counter=7))
    store.set("a", "4")
    _until(lambda: follower["a"] == "4")
    assert "half-written" not in seen


def _payload(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    return json.loads(raw[64:])  # the header is 64 bytes (confhub._fleetstate)


def _tampered(path: Path, value: str, fmt: int | None = None) -> bytes:
    """The state file of ``path`` with ``a`` set to ``value``: well-formed, with a valid
    checksum and a later sequence number, in format ``fmt`` (default: this confhub's)."""
    from confhub._fleetstate import FORMAT, state_image

    body = _payload(path)
    body["layer"]["data"]["a"] = value
    body["seq"] += 100
    return state_image(json.dumps(body).encode(), fmt=FORMAT if fmt is None else fmt)


@pytest.mark.parametrize("tamper", ["group-writable", "foreign-owner"])
def test_a_state_file_others_could_write_is_never_read(
    hubs, tmp_path: Path, caplog: pytest.LogCaptureFixture, tamper: str
) -> None:
    """A state file writable by others, or owned by another user, is refused loudly even
    when its content is well-formed."""
    if tamper == "foreign-owner" and os.getuid() != 0:
        pytest.skip("changing a file's owner needs root")
    hubs()
    follower = hubs()
    state = _state_file(tmp_path)
    planted = state.with_name("planted.tmp")
    planted.write_bytes(_tampered(state, "injected"))
    if tamper == "group-writable":
        os.chmod(planted, 0o664)
    else:
        os.chmod(planted, 0o600)
        os.chown(planted, 65534, 65534)
    os.replace(planted, state)
    with caplog.at_level(logging.WARNING, "confhub.fleet"):
        _until(lambda: str(state) in caplog.text, timeout=15)
    assert "owned by uid" in caplog.text or "writable by other users" in caplog.text
    assert follower["a"] == "1"


def test_an_unsafe_directory_is_not_shared(
    hubs, store: MemoryStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache directory other users may write is refused for sharing: the hub reads the
    store itself and says why."""
    directory = tmp_path / "open"
    directory.mkdir()
    os.chmod(directory, 0o777)
    with caplog.at_level(logging.WARNING, "confhub.fleet"):
        hub = hubs(cache_dir=directory)
    sharing = _sharing(hub)
    assert sharing.role == "unshared"
    assert sharing.reason is not None
    assert "writable by other users" in sharing.reason
    assert "share='host' is not in effect" in caplog.text
    assert hub["a"] == "1"
    assert store.watch_count == 1


def test_no_cache_directory_means_unshared(hubs) -> None:
    """Sharing needs a cache directory to meet in; without one the hub says so."""
    hub = hubs(cache_dir=None)
    sharing = _sharing(hub)
    assert sharing.role == "unshared"
    assert "cache_dir" in (sharing.reason or "")


def test_another_state_format_detaches_the_follower(
    hubs, store: MemoryStore, tmp_path: Path
) -> None:
    """A follower that finds a state format it does not read (another confhub version)
    stops following and reads the store itself, saying so in health."""
    hubs()
    follower = hubs()
    state = _state_file(tmp_path)
    planted = state.with_name("planted.tmp")
    planted.write_bytes(_tampered(state, "other", fmt=99))
    os.chmod(planted, 0o600)
    os.replace(planted, state)
    # Detached, it watches the store itself (the memory store does not replay: wait for it).
    _until(lambda: _sharing(follower).role == "unshared" and store.watch_count == 2, timeout=15)
    assert "format 99" in (_sharing(follower).reason or "")
    store.set("a", "5")
    _until(lambda: follower["a"] == "5")


def test_share_from_the_spec_and_the_environment(hubs, monkeypatch: pytest.MonkeyPatch) -> None:
    """``?share=host`` on a source, and ``CONFHUB_SHARE=host``, turn sharing on;
    ``?share=none`` turns it off for one source."""
    first = hubs("memory:fleet?share=host", share=None)
    assert _sharing(first).role == "leader"
    monkeypatch.setenv("CONFHUB_SHARE", "host")
    second = Hub(["memory:fleet"], plugins=[], autoload=False)
    assert second.share == "host"
    off = hubs("memory:fleet?share=none", share=None)
    assert off.health().sources[0].sharing is None


def test_a_bad_share_value_names_the_choices() -> None:
    """``share=`` takes ``host`` or ``none``; anything else is a SpecError saying so."""
    with pytest.raises(confhub.SpecError, match="share='host'"):
        Hub(["memory:fleet"], autoload=False, share="cluster")


def test_health_json_says_the_role(hubs) -> None:
    """``health().to_dict()`` (``confhub health --json``) carries the role and leader pid."""
    hubs()
    follower = hubs()
    found = follower.health().to_dict()["sources"][0]["sharing"]
    assert found == {"role": "follower", "leader_pid": os.getpid(), "reason": None}


def test_close_joins_every_thread(hubs) -> None:
    """A follower's and a leader's threads end when their hubs close."""
    leader, follower = hubs(), hubs()
    names = {t.name for t in threading.enumerate()}
    assert any(n.startswith("confhub-follow") for n in names)
    assert any(n.startswith("confhub-beacon") for n in names)
    follower.close()
    leader.close()
    _until(
        lambda: (
            not any(
                t.name.startswith(("confhub-follow", "confhub-beacon"))
                for t in threading.enumerate()
            )
        )
    )

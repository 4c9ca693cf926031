"""hub.delete, hub.transaction and hub.update against the Consul test server (issue 13 item 5)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import confhub
import pytest
from confhub import MISSING, SourceFormatError, WriteConflictError, WriteError

from confhub_consul.testing import ConsulTestServer

FAST = "wait=1&timeout=1&retry_initial=0.05&retry_max=0.3"


@pytest.fixture
def server() -> Iterator[ConsulTestServer]:
    with ConsulTestServer(default_query_time=2, max_query_time=3) as srv:
        yield srv


def spec(srv: ConsulTestServer, path: str = "myapp/", extra: str = "") -> str:
    return f"consul://{srv.address}/{path}?{FAST}" + (f"&{extra}" if extra else "")


def hub_for(*sources: Any, cache_dir: Path | None = None) -> confhub.Hub:
    return confhub.Hub(
        list(sources), cache_dir=cache_dir, connect_timeout=1.0, retry_initial=0.05, retry_max=0.3
    )


def until(predicate: Callable[[], bool], what: str = "condition") -> None:
    deadline = time.monotonic() + 8.0
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within 8s")
        time.sleep(0.02)


def _seed(server: ConsulTestServer) -> None:
    for key, value in {
        "db/host": b"h1",
        "db/port": b"5432",
        "db/user": b"u",
        "flag": b"off",
    }.items():
        server.put(f"myapp/{key}", value)


def test_transaction_is_one_txn_with_one_index(server: ConsulTestServer) -> None:
    """Puts and deletes go in ONE /v1/txn; written keys share one ModifyIndex."""
    _seed(server)
    with hub_for(spec(server)) as hub:
        server.reset_requests()
        revision = (
            hub.transaction()
            .put("db.host", "h2")
            .put("db.port", 6543)
            .delete("db.user")
            .put("new.key", True)
            .commit()
        )
        assert server.request_count("/v1/txn") == 1
        assert server.request_count("/v1/kv/", method="PUT") == 0
        assert server.request_count("/v1/kv/", method="DELETE") == 0
        assert server.get("myapp/db/host").modify_index == revision  # type: ignore[union-attr]
        assert server.get("myapp/new/key").modify_index == revision  # type: ignore[union-attr]
        assert server.get("myapp/db/user") is None
        until(lambda: hub.get("new.key", None) == "true", "the watch delivers the transaction")
        assert hub.get("db") == {"host": "h2", "port": "6543"}


def test_expected_revisions_all_or_nothing(server: ConsulTestServer) -> None:
    """A stale expected revision (put: cas; delete: check-index) fails the whole txn."""
    _seed(server)
    port = server.get("myapp/db/port").modify_index  # type: ignore[union-attr]
    with hub_for(spec(server)) as hub:
        with pytest.raises(WriteConflictError) as info:
            hub.transaction().put("db.host", "h9").put(
                "db.port", "1", expected_revision=port + 100
            ).commit()
        assert info.value.key == "db.port"
        assert "nothing was written" in str(info.value)
        assert server.get("myapp/db/host").value == b"h1"  # type: ignore[union-attr]
        with pytest.raises(WriteConflictError) as info:
            hub.transaction().put("db.host", "h9").delete(
                "db.user", expected_revision=port + 100
            ).commit()
        assert info.value.key == "db.user"
        assert server.get("myapp/db/user") is not None
        with pytest.raises(WriteConflictError):
            hub.delete("db.user", expected_revision=0)  # 0: must not exist
        hub.transaction().put("db.port", "1", expected_revision=port).put(
            "db.fresh", "x", expected_revision=0
        ).commit()
        assert server.get("myapp/db/port").value == b"1"  # type: ignore[union-attr]


def test_shape_checks_and_delete(server: ConsulTestServer) -> None:
    """The same refusals as etcd, before anything is sent; a table is replaced by deleting
    its keys in the same transaction; delete of nothing is no error, of a table refused."""
    _seed(server)
    with hub_for(spec(server)) as hub:
        server.reset_requests()
        with pytest.raises(WriteError) as info:
            hub.transaction().put("db", "oops").commit()
        assert "'db.host', 'db.port'" in str(info.value)
        with pytest.raises(WriteError, match="'flag' holds a value"):
            hub.transaction().put("flag.on", "1").commit()
        with pytest.raises(WriteError, match="table of 3 keys"):
            hub.delete("db")
        assert server.request_count("/v1/txn") == 0
        hub.delete("nothing.here")
        hub.transaction().delete("db.host").delete("db.port").delete("db.user").put(
            "db", "dsn"
        ).commit()
        assert server.get("myapp/db").value == b"dsn"  # type: ignore[union-attr]
        hub.transaction().put("db.password", "pw").commit(force=True)
        assert server.get("myapp/db/password") is not None


def test_update_under_contention(server: ConsulTestServer) -> None:
    """Two threads increment one key through hub.update; every increment lands once."""
    server.put("myapp/counter", b"0")
    results: list[int] = []
    errors: list[BaseException] = []
    with hub_for(spec(server)) as hub:

        def work() -> None:
            try:
                for _ in range(15):
                    updated = hub.update("counter", lambda v: str(int(v) + 1), retries=50)
                    results.append(updated.attempts)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert server.get("myapp/counter").value == b"30"  # type: ignore[union-attr]
        assert len(results) == 30
        fresh = hub.update("fresh", lambda v: "1" if v is MISSING else v)
        assert (fresh.old, fresh.attempts) == (MISSING, 1)


def test_document_transaction(server: ConsulTestServer) -> None:
    """A document source: one CAS of the document key for the whole transaction."""
    entry = server.put("myapp/config", b'{"db": {"host": "h", "port": 1}, "old": 1}')
    with hub_for(spec(server, "myapp/config", "format=json")) as hub:
        with pytest.raises(WriteConflictError):
            hub.transaction().put("db.host", "x", expected_revision=entry.modify_index + 5).commit()
        hub.transaction().put("db.host", "h2", expected_revision=entry.modify_index).delete(
            "old"
        ).commit()
        assert hub.update("db.port", lambda v: v + 1).new == 2
    doc = json.loads(server.get("myapp/config").value)  # type: ignore[union-attr]
    assert doc == {"db": {"host": "h2", "port": 2}}


def test_a_broken_store_at_start_serves_the_cache_then_recovers(
    server: ConsulTestServer, tmp_path: Path
) -> None:
    """Content the hub cannot accept at start (a clash) is served from the cache, reported,
    and recovered once fixed; without a cache the start fails naming the key."""
    _seed(server)
    cache = tmp_path / "cache"
    with hub_for(spec(server), cache_dir=cache):
        until(lambda: cache.is_dir() and any(cache.iterdir()), "the cache is written")
    server.put("myapp/db", b"oops")
    with pytest.raises(SourceFormatError, match="delete or rename"):
        hub_for(spec(server)).start()
    with hub_for(spec(server), cache_dir=cache) as hub:
        health = hub.health().sources[0]
        assert health.state == "cached"
        assert "both a value and the parent" in str(health.last_error)
        assert hub.get("db.host") == "h1"
        hub.delete("db")
        until(lambda: hub.health().sources[0].state == "live", "live again")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "confhub", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_cli_story_on_consul(server: ConsulTestServer, tmp_path: Path) -> None:
    """confhub set/delete as a user runs them (subprocesses): the slip over a table is
    refused listing the keys; a forced clash makes a cold start fail and a warm one serve
    its cache with the reason; confhub delete fixes it."""
    _seed(server)
    target = spec(server)
    cache = str(tmp_path / "cache")
    assert _cli("--cache-dir", cache, "-s", target, "get", "db.host").stdout == "h1\n"
    slip = _cli("set", target, "db", "oops")
    assert slip.returncode == 4
    assert "it would shadow 3 key(s): db.host, db.port, db.user" in slip.stderr
    assert server.get("myapp/db") is None
    forced = _cli("set", target, "flag.on", "1", "--force")
    assert forced.returncode == 0, forced.stderr
    cold = _cli("-s", target, "get", "db.host")
    assert cold.returncode == 4
    assert "'myapp/flag' is both a value and the parent" in cold.stderr
    health = _cli("--cache-dir", cache, "-s", target, "health", "--json")
    assert health.returncode == 0, health.stderr
    source = json.loads(health.stdout)["sources"][0]
    assert source["state"] == "cached"
    assert "both a value and the parent" in source["last_error"]
    fixed = _cli("delete", target, "flag")
    assert fixed.returncode == 0, fixed.stderr
    assert _cli("-s", target, "get", "flag.on").stdout == "1\n"
    atomic = _cli("set", target, "a=1", "b=2", "--atomic")
    assert atomic.returncode == 0, atomic.stderr
    a, b = server.get("myapp/a"), server.get("myapp/b")
    assert a is not None
    assert b is not None
    assert a.modify_index == b.modify_index

"""hub.delete, hub.transaction and hub.update against a real etcd (issue 13 item 5)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from backend_lib import Events, make_hub, spec, wait_until
from confhub import MISSING, SourceFormatError, WriteConflictError, WriteError

from confhub_etcd import EtcdClient
from confhub_etcd.testing import EtcdServer


def _seed(client: EtcdClient) -> int:
    return client.put_many(
        {"/app/db/host": "h1", "/app/db/port": "5432", "/app/db/user": "u", "/app/feature": "off"}
    )


def test_transaction_puts_and_deletes_in_one_revision(etcd: EtcdServer, client: EtcdClient) -> None:
    """Puts and deletes land in one etcd revision; subscribers see one change with all of them."""
    _seed(client)
    with make_hub([spec(etcd.endpoint)]) as hub:
        events = Events(hub)
        with hub.transaction() as txn:
            txn.put("db.host", "h2").put("db.port", 6543).delete("db.user").put("new.key", True)
        events.wait_change("new.key", "true")
        revision = client.get("/app/db/host")[0].mod_revision  # type: ignore[union-attr]
        assert client.get("/app/db/port")[0].mod_revision == revision  # type: ignore[union-attr]
        assert client.get("/app/db/user")[0] is None
        change = events.changes[-1]
        assert {c.key for c in change.changes} == {"db.host", "db.port", "db.user", "new.key"}
        assert len(events.changes) == 1  # one revision, one published change
        assert hub.get("db") == {"host": "h2", "port": "6543"}


def test_expected_revision_mismatch_writes_nothing(etcd: EtcdServer, client: EtcdClient) -> None:
    """One stale expected revision fails the whole transaction, naming the key."""
    _seed(client)
    port_rev = client.put("/app/db/port", "5433")
    with make_hub([spec(etcd.endpoint)]) as hub:
        with pytest.raises(WriteConflictError) as info:
            hub.transaction().put("db.host", "h9").put(
                "db.port", "1", expected_revision=port_rev - 1
            ).commit()
        assert info.value.key == "db.port"
        assert info.value.actual == port_rev and info.value.expected == port_rev - 1
        assert "/app/db/port" in str(info.value) and "nothing was written" in str(info.value)
        assert client.get("/app/db/host")[0].value == b"h1"  # type: ignore[union-attr]
        # The right revision, and 0 for "must not exist", commit.
        hub.transaction().put("db.port", "1", expected_revision=port_rev).put(
            "db.fresh", "x", expected_revision=0
        ).commit()
        assert client.get("/app/db/port")[0].value == b"1"  # type: ignore[union-attr]
        with pytest.raises(WriteConflictError):
            hub.transaction().put("db.fresh", "y", expected_revision=0).commit()


def test_shape_checks_and_table_replacement(etcd: EtcdServer, client: EtcdClient) -> None:
    """A value over a table is refused (listing the keys); deleting the table's keys in the
    same transaction replaces it; a key under a value is refused; force writes a clash."""
    _seed(client)
    with make_hub([spec(etcd.endpoint)]) as hub:
        with pytest.raises(WriteError) as info:
            hub.transaction().put("db", "oops").commit()
        assert "'db.host', 'db.port'" in str(info.value) and info.value.key == "db"
        with pytest.raises(WriteError, match="'feature' holds a value"):
            hub.transaction().put("feature.flag", "1").commit()
        with pytest.raises(WriteError, match="twice"):
            hub.transaction().put("a", "1").delete("a").commit()
        assert client.get("/app/db")[0] is None  # nothing was sent
        hub.transaction().delete("db.host").delete("db.port").delete("db.user").put(
            "db", "postgres://x"
        ).commit()
        assert client.get("/app/db")[0].value == b"postgres://x"  # type: ignore[union-attr]
        assert client.get("/app/db/host")[0] is None
        hub.transaction().put("db.password", "pw").commit(force=True)
        assert client.get("/app/db/password")[0] is not None


def test_delete(etcd: EtcdServer, client: EtcdClient) -> None:
    """delete removes a value; absent: no error; a table: refused; stale revision: conflict."""
    _seed(client)
    rev = client.put("/app/db.extra", "dotted")  # held by a dotted etcd key
    with make_hub([spec(etcd.endpoint)]) as hub:
        events = Events(hub)
        hub.delete("db.host")
        events.wait_for(lambda: hub.get("db.host", None) is None, what="db.host gone")
        hub.delete("db.extra", expected_revision=rev)
        assert client.get("/app/db.extra")[0] is None
        hub.delete("no.such.key")  # nothing there: no error
        with pytest.raises(WriteError, match="table of 2 keys"):
            hub.delete("db")
        with pytest.raises(WriteConflictError):
            hub.delete("db.port", expected_revision=1)
        assert client.get("/app/db/port")[0] is not None


def test_update_counts_every_increment_under_contention(
    etcd: EtcdServer, client: EtcdClient
) -> None:
    """Two threads increment one key; every increment lands once; conflicts are retried
    and counted in Updated.attempts."""
    client.put("/app/counter", "0")
    per_thread = 15
    results: list[int] = []
    errors: list[BaseException] = []
    with make_hub([spec(etcd.endpoint)]) as hub:

        def work() -> None:
            try:
                for _ in range(per_thread):
                    results.append(
                        hub.update("counter", lambda v: str(int(v) + 1), retries=50).attempts
                    )
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert client.get("/app/counter")[0].value == str(2 * per_thread).encode()  # type: ignore[union-attr]
        assert len(results) == 2 * per_thread and min(results) == 1
        created = hub.update("fresh", lambda v: "1" if v is MISSING else v + "1")
        assert (created.old, created.new, created.attempts) == (MISSING, "1", 1)
        same = hub.update("fresh", lambda v: v)
        assert not same.written
        # A key held by a dotted etcd key is read and written there, not duplicated.
        client.put("/app/dotted.n", "5")
        assert hub.update("dotted.n", lambda v: str(int(v) + 1)).old == "5"
        assert client.get("/app/dotted.n")[0].value == b"6"  # type: ignore[union-attr]
        assert client.get("/app/dotted/n")[0] is None


def test_update_gives_up_after_its_bound(etcd: EtcdServer, client: EtcdClient) -> None:
    """A key that changes on every attempt: update stops after retries + 1 attempts and
    says how many it made."""
    client.put("/app/hot", "0")
    calls = 0

    def racing(value: str) -> str:
        nonlocal calls
        calls += 1
        client.put("/app/hot", f"other-{calls}")  # another writer wins every time
        return value + "!"

    with (
        make_hub([spec(etcd.endpoint)]) as hub,
        pytest.raises(WriteConflictError, match="gave up after 3 attempts"),
    ):
        hub.update("hot", racing, retries=2)
    assert calls == 3


def test_document_layout_transaction(etcd: EtcdServer, client: EtcdClient) -> None:
    """In the document layout a transaction is one CAS of the document key; expected
    revisions are the document key's."""
    rev = client.put("/app/config.json", '{"db": {"host": "h", "port": 1}, "old": 1}')
    with make_hub([f"etcd://{etcd.endpoint}/app/config.json?format=json"]) as hub:
        with pytest.raises(WriteConflictError):
            hub.transaction().put("db.host", "x", expected_revision=rev - 1).commit()
        new = hub.transaction().put("db.host", "h2", expected_revision=rev).delete("old").commit()
        assert new > rev
        assert hub.update("db.port", lambda v: v + 1).new == 2
        with pytest.raises(WriteError, match="table"):
            hub.transaction().put("db", "flat").commit()
    raw = client.get("/app/config.json")[0].value  # type: ignore[union-attr]
    assert b'"h2"' in raw and b'"old"' not in raw and b'"port": 2' in raw


def test_start_with_a_clash_serves_the_cache_and_recovers(
    etcd: EtcdServer, client: EtcdClient, tmp_path: Path
) -> None:
    """The issue's story through the API: a forced clash in the store; a new hub with a warm
    cache starts from it, reports the reason, and goes live once the clash is deleted."""
    _seed(client)
    cache = tmp_path / "cache"
    with make_hub([spec(etcd.endpoint)], cache=cache) as hub:
        wait_until(lambda: cache.is_dir() and any(cache.iterdir()), what="cache written")
        hub.transaction().put("db", "oops").commit(force=True)
    with pytest.raises(SourceFormatError, match="delete or rename one of them") as info:
        make_hub([spec(etcd.endpoint)]).start()  # no cache: fails as before, naming the key
    assert info.value.key is not None and "db" in info.value.key
    with make_hub([spec(etcd.endpoint)], cache=cache) as hub:
        health = hub.health().sources[0]
        assert health.state == "cached" and health.failed
        assert "etcd key '/app/db' is both a value and the parent" in str(health.last_error)
        assert hub.get("db.host") == "h1"
        hub.delete("db")  # the hub writes while it serves from the cache
        wait_until(lambda: hub.health().sources[0].state == "live", what="live again")
        assert hub.get("db.port") == "5432"

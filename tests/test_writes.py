"""hub.delete, hub.transaction, hub.update on the in-memory store, refusals by backends that
cannot do them, and the start-up chain for a store whose content is refused (issue 13 item 5).

The etcd and Consul plugins run the same behaviours against real stores (their tests and
the KV contract's transaction group)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from confhub import (
    MISSING,
    Backend,
    BackendSettings,
    Fallback,
    Hub,
    HubStateError,
    Layer,
    SourceFormatError,
    SourceSpec,
    Transaction,
    Updated,
    WriteConflictError,
    WriteError,
    WriteOp,
    hookimpl,
    kv,
)
from confhub.testing import MemoryStore


def _hub(store: MemoryStore, *extra: object, cache: Path | None = None) -> Hub:
    return Hub(
        [*extra, f"memory:{store.name}"],
        plugins=[store],
        autoload=False,
        cache_dir=cache,
        retry_initial=0.05,
        retry_max=0.2,
    )


def _wait(predicate: object, what: str) -> None:
    import time

    deadline = time.monotonic() + 10
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within 10s")
        time.sleep(0.01)


def test_a_transaction_is_one_revision_and_one_change() -> None:
    store = MemoryStore("app", {"db": {"host": "h", "port": "1", "user": "u"}})
    changes = []
    with _hub(store) as hub:
        hub.subscribe(changes.append)
        txn = hub.transaction()
        assert isinstance(txn, Transaction)
        revision = txn.put("db.host", "h2").delete("db.user").put("x", "1").commit()
        assert revision == store.revision == 2
        assert txn.ops == (
            WriteOp.put("db.host", "h2"),
            WriteOp.delete("db.user"),
            WriteOp.put("x", "1"),
        )
        _wait(lambda: len(changes) == 1, "the change")
        assert {c.key for c in changes[0].changes} == {"db.host", "db.user", "x"}
        assert hub.get("db") == {"host": "h2", "port": "1"}


def test_a_transaction_commits_once_and_the_with_block_commits_on_success() -> None:
    store = MemoryStore("app")
    with _hub(store) as hub:
        txn = hub.transaction().put("a", "1")
        txn.commit()
        with pytest.raises(WriteError, match="committed already"):
            txn.commit()
        with pytest.raises(WriteError, match="committed already"):
            txn.put("b", "2")
        with hub.transaction() as block:
            block.put("b", "2")
        assert store.data == {"a": "1", "b": "2"}

        def failing_block() -> None:
            with hub.transaction() as failing:
                failing.put("c", "3")
                raise RuntimeError("the block failed")

        with pytest.raises(RuntimeError):
            failing_block()
        assert "c" not in store.data  # an exception in the block commits nothing
        with hub.transaction():
            pass  # nothing to do: no error, nothing sent
        with pytest.raises(WriteError, match="empty transaction"):
            hub.transaction().commit()
        with pytest.raises(ValueError, match="dotted key"):
            hub.transaction().put("a..b", "1")


def test_expected_revisions_are_all_or_nothing() -> None:
    store = MemoryStore("app", {"a": "1"})
    with _hub(store) as hub:
        with pytest.raises(WriteConflictError) as info:
            hub.transaction().put("b", "1").put("a", "2", expected_revision=7).commit()
        assert (info.value.key, info.value.expected, info.value.actual) == ("a", 7, 1)
        assert store.data == {"a": "1"}
        hub.transaction().put("a", "2", expected_revision=1).put(
            "b", "1", expected_revision=0
        ).commit()
        assert store.data == {"a": "2", "b": "1"}


def test_shape_refusals_list_the_keys_and_force_writes_anyway() -> None:
    store = MemoryStore("app", {"db": {"host": "h", "port": "1"}, "mode": "fast"})
    with _hub(store) as hub:
        with pytest.raises(WriteError, match=r"'db' is a table of 2 keys \('db.host', 'db.port'\)"):
            hub.transaction().put("db", "oops").commit()
        with pytest.raises(WriteError, match="'mode' holds a value"):
            hub.transaction().put("mode.x", "1").commit()
        with pytest.raises(WriteError, match="table of 2 keys"):
            hub.delete("db")
        with pytest.raises(WriteError, match="twice"):
            hub.transaction().put("a", "1").put("a", "2").commit()
        hub.transaction().delete("db.host").delete("db.port").put("db", "dsn").commit()
        assert store.data["db"] == "dsn"
        hub.transaction().put("mode.x", "1").commit(force=True)
        assert store.data["mode.x"] == "1"


def test_delete() -> None:
    store = MemoryStore("app", {"a": "1", "b": "2"})
    with _hub(store) as hub:
        hub.delete("a")
        assert store.data == {"b": "2"}
        revision = store.revision
        assert hub.delete("nothing") == revision  # nothing there: no error, no new revision
        with pytest.raises(WriteConflictError):
            hub.delete("b", expected_revision=99)
        hub.delete("b", expected_revision=1)
        assert store.data == {}


def test_update_retries_a_lost_race_and_counts_attempts() -> None:
    store = MemoryStore("app", {"n": "1"})
    seen = []

    def bump(value: str) -> str:
        seen.append(value)
        if len(seen) == 1:
            store.set("n", "10")  # another writer wins between the read and the write
        return str(int(value) + 1)

    with _hub(store) as hub:
        updated = hub.update("n", bump)
        assert updated == Updated("n", "10", "11", store.revision, 2)
        assert seen == ["1", "10"]
        unchanged = hub.update("n", lambda v: v)
        assert (unchanged.written, unchanged.attempts) == (False, 1)
        created = hub.update("new", lambda v: "x" if v is MISSING else "y")
        assert (created.old, created.new) == (MISSING, "x")
        with pytest.raises(WriteError, match="returned MISSING"):
            hub.update("n", lambda v: MISSING)
        with pytest.raises(ValueError, match="retries"):
            hub.update("n", lambda v: v, retries=-1)


def test_update_gives_up_after_retries_and_says_how_many_attempts() -> None:
    store = MemoryStore("app", {"n": "1"})
    calls = 0

    def always_raced(value: str) -> str:
        nonlocal calls
        calls += 1
        store.set("n", f"other-{calls}")
        return "mine"

    with _hub(store) as hub, pytest.raises(WriteConflictError, match="gave up after 4 attempts"):
        hub.update("n", always_raced, retries=3)
    assert calls == 4


def test_concurrent_updates_each_land_once() -> None:
    store = MemoryStore("app", {"n": "0"})
    errors: list[BaseException] = []
    with _hub(store) as hub:

        def work() -> None:
            try:
                for _ in range(50):
                    hub.update("n", lambda v: str(int(v) + 1), retries=100)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors
    assert store.data["n"] == "200"


def test_sources_that_cannot_are_refused_naming_the_source_and_the_fix(tmp_path: Path) -> None:
    config = tmp_path / "app.toml"
    config.write_text("a = 1\n")
    with Hub([f"file:{config}"], cache_dir=None) as hub:
        for call in (
            lambda: hub.delete("a"),
            lambda: hub.transaction().put("a", 2).commit(),
            lambda: hub.update("a", lambda v: v),
        ):
            with pytest.raises(WriteError, match="no writable source") as info:
                call()
            assert "read-only" in str(info.value)

    store = WriteOnlyStore("app", {"a": "1"})
    with _hub(store) as hub:
        with pytest.raises(WriteError, match="cannot apply 2 operation") as info:
            hub.transaction().put("a", "2").put("b", "3").commit()
        assert "memory:app" in str(info.value)
        assert "one by one" in str(info.value)
        assert store.data == {"a": "1"}  # never applied one key at a time
        with pytest.raises(WriteError, match="no delete"):
            hub.delete("a")
        with pytest.raises(WriteError, match="no read"):
            hub.update("a", lambda v: v)
        hub.write("a", "2")  # what it can do still works
        assert store.data == {"a": "2"}


class WriteOnlyBackend(Backend):
    """A backend that writes one key at a time and has no delete, commit or read."""

    cacheable = True

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def load(self) -> Layer:
        return self.store.load()

    def write(self, key: str, value: object, expected_revision: object = None) -> int:
        return self.store.write(key, value, expected_revision)

    def close(self) -> None:
        pass


class WriteOnlyStore(MemoryStore):
    """A MemoryStore served through :class:`WriteOnlyBackend`."""

    @hookimpl
    def confhub_make_backend(self, spec: SourceSpec, settings: BackendSettings) -> Backend | None:
        if spec.scheme != "memory" or spec.location != self.name:
            return None
        return WriteOnlyBackend(self)


def test_writes_need_a_running_hub() -> None:
    store = MemoryStore("app")
    hub = _hub(store)
    with pytest.raises(HubStateError):
        hub.delete("a")
    with pytest.raises(HubStateError):
        hub.transaction()
    with hub:
        txn = hub.transaction().put("a", "1")
    with pytest.raises(HubStateError):
        txn.commit()


def test_a_transaction_naming_a_fallback_member_goes_to_that_member(tmp_path: Path) -> None:
    primary, alternate = MemoryStore("p", {"a": "p"}), MemoryStore("alt", {"a": "alt"})
    hub = Hub(
        [Fallback("memory:p", "memory:alt")],
        plugins=[primary, alternate],
        autoload=False,
        cache_dir=tmp_path,
    )
    with hub:
        hub.transaction(source="memory:alt").put("a", "x").put("b", "y").commit()
        assert alternate.data == {"a": "x", "b": "y"}
        assert primary.data == {"a": "p"}
        hub.delete("a", source="memory:alt")
        assert alternate.data == {"b": "y"}


def test_a_write_may_name_its_source_as_the_spec_was_written(tmp_path: Path) -> None:
    """``source=`` takes the spec as written (options and all), not only the name that
    ``hub.sources`` shows; a spec that names no source is refused, listing the names."""
    primary, alternate = MemoryStore("p", {"a": "p"}), MemoryStore("alt", {"a": "alt"})
    hub = Hub(
        [Fallback("memory:p?timeout=2", "memory:alt?timeout=2")],
        plugins=[primary, alternate],
        autoload=False,
        cache_dir=tmp_path,
    )
    with hub:
        hub.write("a", "x", source="memory:alt?timeout=2")
        assert alternate.data == {"a": "x"}
        assert primary.data == {"a": "p"}
        with pytest.raises(WriteError, match="memory:p"):
            hub.write("a", "y", source="memory:other?timeout=2")


def test_a_store_with_refused_content_at_start_serves_the_cache(tmp_path: Path) -> None:
    """The start-up chain treats content it cannot accept like an unreachable store: the
    cache serves, the reason is reported, and the fixed content is promoted; without a
    cache the start fails as before, naming the key and the fix."""
    store = MemoryStore("app", {"db": {"host": "h", "port": "1"}})
    with _hub(store, cache=tmp_path) as hub:
        _wait(lambda: any(tmp_path.iterdir()), "the cache file")
        hub.transaction().put("db", "oops").commit(force=True)
        _wait(lambda: hub.health().sources[0].state == "stale", "the update to be rejected")
    with pytest.raises(SourceFormatError, match="delete or rename one of them"):
        _hub(store).start()
    with _hub(store, cache=tmp_path) as hub:
        health = hub.health().sources[0]
        assert health.state == "cached"
        assert "'memory key db (revision 2)' is both a value and the parent" in str(
            health.last_error
        )
        assert hub.get("db.port") == "1"
        hub.delete("db")
        _wait(lambda: hub.health().sources[0].state == "live", "recovery")
        assert hub.get("db") == {"host": "h", "port": "1"}


def test_a_broken_file_still_fails_the_start(tmp_path: Path) -> None:
    """Only stores (cacheable backends) fall back to a cache for refused content: a broken
    file fails the start with the parser's error, as before."""
    config = tmp_path / "app.toml"
    config.write_text("a = [\n")
    with pytest.raises(SourceFormatError):
        Hub([f"file:{config}"], cache_dir=tmp_path / "cache").start()


def test_the_kits_transaction_check() -> None:
    existing = {"db.host", "db.port", "mode"}
    kv.check_transaction(existing, [WriteOp.put("db.user", "u")], source="s")
    with pytest.raises(WriteError, match="'db' is a table of 2 keys"):
        kv.check_transaction(existing, [WriteOp.put("db", "x")], source="s")
    kv.check_transaction(
        existing,
        [WriteOp.delete("db.host"), WriteOp.delete("db.port"), WriteOp.put("db", "x")],
        source="s",
    )
    kv.check_transaction(existing, [WriteOp.put("db", "x")], source="s", force=True)
    with pytest.raises(WriteError, match="empty transaction"):
        kv.check_transaction(existing, [], source="s")
    keys = kv.KeyMap("app/", source="s")
    assert keys.index(["app/db/port", b"app/db.port", "app/x/", "other"]) == {
        "db.port": ["app/db/port", "app/db.port"]
    }
    doc = kv.commit_into_document(
        {"db": {"host": "h", "port": 1}, "x": {"y": 1}},
        "json",
        [WriteOp.delete("x.y"), WriteOp.put("db.port", 2)],
        source="s",
    )
    assert doc == b'{\n  "db": {\n    "host": "h",\n    "port": 2\n  }\n}\n'


def test_a_fallback_member_with_refused_content_gives_way_to_the_next(tmp_path: Path) -> None:
    """In a Fallback group, a member whose content is refused at start is skipped like an
    unreachable one: the alternate serves, and the member is promoted once fixed."""
    primary = MemoryStore("p", {"db": {"host": "p"}})
    alternate = MemoryStore("alt", {"db": {"host": "alt"}})
    primary.commit([WriteOp.put("db", "oops")], force=True)
    hub = Hub(
        [Fallback("memory:p", "memory:alt")],
        plugins=[primary, alternate],
        autoload=False,
        cache_dir=tmp_path,
        retry_initial=0.05,
        retry_max=0.2,
    )
    with hub:
        health = hub.health().sources[0]
        assert (health.state, health.active) == ("fallback", "memory:alt")
        assert "is both a value and the parent" in str(health.last_error)
        assert hub.get("db.host") == "alt"
        hub.delete("db", source="memory:p")
        # Health may name the promoted member a moment before its values are swapped in
        # (a reader who sees the new values sees the new health, not the reverse).
        _wait(lambda: hub.get("db.host") == "p", "the primary's values")
        assert hub.health().sources[0].active == "memory:p"

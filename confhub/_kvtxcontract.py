"""The KV contract's transaction group: delete, atomic transactions, read-modify-write, and
a store whose content the hub refuses at start-up.

Part of :class:`confhub.testing.KVBackendContract` (see :mod:`confhub._kvcontract`). The
tests that need the backend's ``commit``/``delete``/``read`` (optional capabilities of the
backend protocol) run when it has them, and are skipped, saying so, when it has none; a
harness may also declare the ``"transactions"`` capability unsupported, with a reason.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from ._backend import can_commit, can_delete, can_read
from ._errors import SourceFormatError, WriteConflictError, WriteError
from ._hub import Hub
from ._kvharness import ContractBase, KVStoreHarness
from ._merge import MISSING
from .kv import check_write_shape

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["TransactionContract"]


class TransactionContract(ContractBase):
    """hub.delete(), hub.transaction(), hub.update(); a refused store serves its cache."""

    @staticmethod
    def require_commit(hub: Hub) -> None:
        """Skip the running test when the hub's backend has none of commit, delete, read
        (fail when it has only some: a transaction API half there is a defect)."""
        backend = hub.backend_for(hub.sources[-1])
        has = [can_commit(backend), can_delete(backend), can_read(backend)]
        if not any(has):
            import pytest  # here: confhub.testing imports without pytest

            pytest.skip(f"{type(backend).__name__} has no commit, delete or read")
        assert all(has), f"{type(backend).__name__}: implement commit, delete and read together"

    def _seed(self, store: KVStoreHarness, prefix: str) -> dict[str, str]:
        stored = {"db.host": "h", "db.port": "5432", "db.user": "app"}
        for key, value in stored.items():
            store.put(prefix + key.replace(".", "/"), value)
        return stored

    def test_a_transaction_is_one_change_of_all_its_keys(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """Puts and deletes of one commit reach a watching hub as ONE change."""
        self.require(kv_store, "transactions", "watch")
        prefix = self.new_prefix()
        self._seed(kv_store, prefix)
        spec = kv_store.spec(prefix)
        with self.hub(kv_store, tmp_path, spec) as hub, self.changes(hub) as inbox:
            self.require_commit(hub)
            hub.transaction().put("db.host", "h2").delete("db.user").put("new.flag", "on").commit()
            change = self.next_change(inbox, "the transaction's change")
            assert {c.key for c in change.changes} == {"db.host", "db.user", "new.flag"}
            assert inbox.empty(), "one commit, one change"
        with self.hub(kv_store, tmp_path, spec) as again:
            flat = dict(again.snapshot().flat())
            assert flat == {"db.host": "h2", "db.port": "5432", "new.flag": "on"}

    def test_a_stale_expected_revision_writes_nothing(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """One op's stale expected revision fails the whole transaction with
        WriteConflictError naming that key; none of its other ops land."""
        self.require(kv_store, "transactions")
        prefix = self.new_prefix()
        spec = kv_store.spec(prefix)
        with self.hub(kv_store, tmp_path, spec) as hub:
            self.require_commit(hub)
            revision = hub.write("a", "1")
            hub.write("a", "2", expected_revision=revision)
            txn = hub.transaction().put("b", "1").put("a", "3", expected_revision=revision)
            error = self.error_of(txn.commit, "a transaction with a stale revision")
            assert isinstance(error, WriteConflictError), repr(error)
            assert error.key == "a", error
            created = self.error_of(
                hub.transaction().put("a", "9", expected_revision=0).commit,
                "a create-only put of an existing key",
            )
            assert isinstance(created, WriteConflictError), repr(created)
        with self.hub(kv_store, tmp_path, spec) as again:
            assert dict(again.snapshot().flat()) == {"a": "2"}

    def test_shape_refusals_and_replacing_a_table(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """A put over a table is refused in the kit's words (nothing sent); deleting the
        table's keys in the same transaction replaces it; a table cannot be deleted as one
        key; deleting what is not there is no error."""
        self.require(kv_store, "transactions")
        prefix = self.new_prefix()
        stored = self._seed(kv_store, prefix)
        spec = kv_store.spec(prefix)
        with self.hub(kv_store, tmp_path, spec) as hub:
            self.require_commit(hub)
            source = hub.sources[-1]
            error = self.error_of(hub.transaction().put("db", "dsn").commit, "a put over a table")
            expected = self.error_of(
                lambda: check_write_shape(stored, "db", "dsn", source=source), "the kit's check"
            )
            assert type(error) is WriteError, repr(error)
            assert str(error) == str(expected), str(error)
            table = self.error_of(lambda: hub.delete("db"), "a delete of a table")
            assert isinstance(table, WriteError), repr(table)
            assert "table of 3 keys" in str(table), str(table)
            hub.delete("not.there")
            txn = hub.transaction()
            for key in stored:
                txn.delete(key)
            txn.put("db", "dsn").commit()
        with self.hub(kv_store, tmp_path, spec) as again:
            assert dict(again.snapshot().flat()) == {"db": "dsn"}

    def test_update_reads_the_store_and_retries_a_lost_race(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """hub.update() passes the stored value (MISSING when absent) and, when another
        writer wins between its read and its write, reads again (Updated.attempts counts)."""
        self.require(kv_store, "transactions")
        prefix = self.new_prefix()
        kv_store.put(prefix + "n", "1")
        calls: list[object] = []

        def bump(value: object) -> str:
            calls.append(value)
            if len(calls) == 1:
                kv_store.put(prefix + "n", "10")  # another writer wins the first round
            return str(int(str(value)) + 1)

        with self.hub(kv_store, tmp_path, kv_store.spec(prefix)) as hub:
            self.require_commit(hub)
            updated = hub.update("n", bump)
            assert (updated.old, updated.new, updated.attempts) == ("10", "11", 2)
            assert calls == ["1", "10"]
            fresh = hub.update("fresh", lambda v: "x" if v is MISSING else "y")
            assert (fresh.old, fresh.new, fresh.attempts) == (MISSING, "x", 1)

    def test_refused_content_at_start_serves_the_cache_until_fixed(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """A store holding a leaf/parent clash: a hub without a cache fails naming the key
        and the fix; one with a warm cache serves it, reports the reason, and goes live
        when the clash is deleted."""
        prefix = self.new_prefix()
        self._seed(kv_store, prefix)
        spec = kv_store.spec(prefix)
        cache = tmp_path / f"cache-{uuid.uuid4().hex[:6]}"
        plugins = list(getattr(kv_store, "plugins", ()))

        def hub(cache_dir: object) -> Hub:
            return Hub(
                [spec], plugins=plugins, cache_dir=cache_dir, retry_initial=0.05, retry_max=0.3
            )

        with hub(cache):
            self.wait_until(lambda: cache.is_dir() and any(cache.iterdir()), "the cache file")
        kv_store.put(prefix + "db", "oops")
        error = self.start_error(hub(None))
        assert isinstance(error, SourceFormatError), repr(error)
        assert "delete or rename" in str(error), str(error)
        with hub(cache) as warm:
            health = warm.health().sources[-1]
            assert health.state == "cached", health
            assert "both a value and the parent" in str(health.last_error), health
            assert warm.get("db.port") == "5432"
            kv_store.delete(prefix + "db")
            self.wait_until(lambda: self.state(warm) == "live", "the source to be live")

"""The KV backend contract: one test suite any key-value backend runs against itself.

Shipped in :mod:`confhub.testing` for backend authors, the way pytest plugins ship reusable
suites: subclass :class:`KVBackendContract` in a test module and give it a ``kv_store``
fixture returning an object that fits :class:`KVStoreHarness` (how to reach your store and
how to change it behind the backend's back)::

    import pytest
    from confhub.testing import KVBackendContract

    class TestMyStore(KVBackendContract):
        @pytest.fixture
        def kv_store(self, my_server):
            return MyStoreHarness(my_server)

Every test goes through a real :class:`confhub.Hub` (no mocks), each under a fresh key
prefix, and waits for what it expects with a bounded wait (a hang backstop, never a pace
check). pytest is needed to run the suite, not to import :mod:`confhub.testing`. The tests
come in four groups (tree layout, watching, writes, document layout), assembled below.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._errors import (
    SourceFormatError,
    SourceUnavailableError,
    StartupError,
    WriteConflictError,
)
from ._kvharness import ContractBase, KVStoreHarness
from ._kvtxcontract import TransactionContract
from ._layer import leaf_parent_clash, too_many_keys
from ._merge import MISSING

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

__all__ = ["KVBackendContract", "KVStoreHarness"]

class TreeContract(ContractBase):
    """The tree layout: key mapping, values and limits."""

    # -- tree layout: keys ----------------------------------------------------------------------

    def test_tree_maps_the_keys_under_the_prefix_to_dotted_keys(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """Separators under the prefix nest, and keys beside the prefix are not the source's."""
        prefix = self.new_prefix()
        kv_store.put(prefix + "db/pool/size", "10")
        kv_store.put(prefix + "name", "svc")
        kv_store.put(prefix[:-1] + "x/name", "a sibling prefix, not this source")
        with self.hub(kv_store, tmp_path, kv_store.spec(prefix)) as hub:
            assert dict(hub.snapshot().flat()) == {"db.pool.size": "10", "name": "svc"}

    def test_tree_skips_the_prefix_key_and_folder_markers(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """The prefix itself and empty folder markers (``db/``) carry no key."""
        prefix = self.new_prefix()
        kv_store.put(prefix, "")
        kv_store.put(prefix + "db/", "")
        kv_store.put(prefix + "db/port", "5432")
        with self.hub(kv_store, tmp_path, kv_store.spec(prefix)) as hub:
            assert dict(hub.snapshot().flat()) == {"db.port": "5432"}

    def test_tree_refuses_an_empty_segment_naming_the_store_key(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """A key with an empty segment is a SourceFormatError naming the store key."""
        prefix = self.new_prefix()
        kv_store.put(prefix + "db/port", "5432")
        kv_store.put(prefix + "db/.port", "5433")
        error = self.start_error(self.hub(kv_store, tmp_path, kv_store.spec(prefix)))
        assert isinstance(error, SourceFormatError), error
        assert "db/.port" in str(error), str(error)

    def test_tree_reads_utf8_keys_and_values(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """Keys and values are UTF-8 text, beyond ASCII too."""
        prefix = self.new_prefix()
        kv_store.put(prefix + "grüße/ort", "Zürich ☃".encode())
        with self.hub(kv_store, tmp_path, kv_store.spec(prefix)) as hub:
            assert hub.get("grüße.ort") == "Zürich ☃"

    def test_tree_refuses_a_value_that_is_not_utf8_naming_the_store_key(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """A value that is not UTF-8 is a SourceFormatError naming its store key."""
        prefix = self.new_prefix()
        kv_store.put(prefix + "blob", b"\xff\xfe")
        error = self.start_error(self.hub(kv_store, tmp_path, kv_store.spec(prefix)))
        assert isinstance(error, SourceFormatError), error
        assert prefix + "blob" in str(error), str(error)

    def test_tree_refuses_a_leaf_parent_clash_with_the_one_message(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """A key that is both a value and a parent is refused in the kit's one wording."""
        prefix = self.new_prefix()
        kv_store.put(prefix + "db", "a value")
        kv_store.put(prefix + "db/port", "5432")
        hub = self.hub(kv_store, tmp_path, kv_store.spec(prefix))
        source = hub.sources[-1]
        error = self.start_error(hub)
        assert isinstance(error, SourceFormatError), error
        # The kit's wording, naming the keys however the backend shows them (dotted, store
        # keys, details), with an optional noun ("etcd key") before the parent.
        template = re.escape(str(leaf_parent_clash("SOURCE", "PARENT", "CHILD")))
        pattern = (
            template.replace("SOURCE", re.escape(source), 1)
            .replace(re.escape(repr("PARENT")), r"(?:[^']+ )?'[^']*db[^'/.]*'", 1)
            .replace(re.escape(repr("CHILD")), r"'[^']*db[/.]port[^']*'", 1)
        )
        assert re.fullmatch(pattern, str(error)), str(error)

    # -- tree layout: values and limits ---------------------------------------------------------

    def test_values_are_the_strings_stored(self, kv_store: KVStoreHarness, tmp_path: Path) -> None:
        """Values stay the text stored (typed binding converts them), empty ones included."""
        prefix = self.new_prefix()
        stored = {"port": "5432", "debug": "true", "ratio": "1.50", "empty": "", "zip": "01234"}
        for key, value in stored.items():
            kv_store.put(prefix + key, value)
        with self.hub(kv_store, tmp_path, kv_store.spec(prefix)) as hub:
            assert dict(hub.snapshot().flat()) == stored

    def test_max_keys_refuses_a_larger_source_with_the_kits_message(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """A source over ``max_keys`` is refused at start with kv.too_many_keys' message."""
        prefix = self.new_prefix()
        for i in range(5):
            kv_store.put(prefix + f"k{i}", str(i))
        hub = self.hub(kv_store, tmp_path, kv_store.spec(prefix, max_keys="3"))
        source = hub.sources[-1]
        error = self.start_error(hub)
        assert isinstance(error, SourceFormatError), error
        counted = re.search(r": (?:at least )?([\d,]+) keys, more than", str(error))
        assert counted is not None, str(error)
        count = int(counted.group(1).replace(",", ""))
        assert count > 3, str(error)
        expected = {str(too_many_keys(source, count, 3, at_least=f)) for f in (False, True)}
        assert str(error) in expected, str(error)

    def test_an_unknown_option_is_one_warning_naming_it_never_an_error(
        self, kv_store: KVStoreHarness, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An option nobody reads is logged once as a WARNING naming it; the source works."""
        prefix = self.new_prefix()
        kv_store.put(prefix + "db/port", "5432")
        caplog.set_level(logging.WARNING)
        with self.hub(kv_store, tmp_path, kv_store.spec(prefix, frobnicate="1")) as hub:
            assert hub.get("db.port") == "5432"
        warnings = [
            r
            for r in caplog.records
            if r.levelno == logging.WARNING and "frobnicate" in r.getMessage()
        ]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


class WatchContract(ContractBase):
    """Watching: puts and deletes as effective changes, and outages."""

    # -- watching --------------------------------------------------------------------------

    def test_watch_delivers_a_put_as_one_change_of_that_key(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """A put reaches subscribers as one change holding just that key, old and new."""
        self.require(kv_store, "watch")
        prefix = self.new_prefix()
        kv_store.put(prefix + "db/port", "5432")
        with self.hub(kv_store, tmp_path, kv_store.spec(prefix)) as hub, self.changes(hub) as inbox:
            kv_store.put(prefix + "db/port", "5433")
            change = self.next_change(inbox, "the put of db/port")
            assert [(c.key, c.old, c.new) for c in change] == [("db.port", "5432", "5433")]
            assert hub.get("db.port") == "5433"

    def test_watch_delivers_a_delete_as_one_change_to_missing(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """A delete reaches subscribers as one change of that key to MISSING."""
        self.require(kv_store, "watch")
        prefix = self.new_prefix()
        kv_store.put(prefix + "db/port", "5432")
        kv_store.put(prefix + "db/host", "db1")
        with self.hub(kv_store, tmp_path, kv_store.spec(prefix)) as hub, self.changes(hub) as inbox:
            kv_store.delete(prefix + "db/port")
            change = self.next_change(inbox, "the delete of db/port")
            assert [(c.key, c.old, c.new) for c in change] == [("db.port", "5432", MISSING)]
            assert dict(hub.snapshot().flat()) == {"db.host": "db1"}

    def test_watch_publishes_nothing_for_a_put_of_the_same_value(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """Rewriting a key with its value is no effective change: nothing is published."""
        self.require(kv_store, "watch")
        prefix = self.new_prefix()
        kv_store.put(prefix + "db/port", "5432")
        with self.hub(kv_store, tmp_path, kv_store.spec(prefix)) as hub, self.changes(hub) as inbox:
            kv_store.put(prefix + "db/port", "5432")
            kv_store.put(prefix + "marker", "1")  # the store orders it after the rewrite
            change = self.next_change(inbox, "the put of the marker key")
            assert change.keys == ("marker",)

    def test_the_source_comes_back_after_an_outage(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """A lost store turns the source stale (last good kept); once back it is live and
        watched again."""
        self.require(kv_store, "watch", "outage")
        prefix = self.new_prefix()
        kv_store.put(prefix + "db/port", "5432")
        with self.hub(kv_store, tmp_path, kv_store.spec(prefix)) as hub, self.changes(hub) as inbox:
            kv_store.stop()  # type: ignore[attr-defined]
            try:
                self.wait_until(lambda: self.state(hub) == "stale", "the source to turn stale")
                assert hub.get("db.port") == "5432"
            finally:
                kv_store.start()  # type: ignore[attr-defined]
            self.wait_until(lambda: self.state(hub) == "live", "the source to be live again")
            kv_store.put(prefix + "db/port", "5433")
            change = self.next_change(inbox, "a put after the outage")
            assert change.get("db.port") is not None
            assert hub.get("db.port") == "5433"


class WriteContract(ContractBase):
    """Writes: round trips, compare-and-swap, and shape-changing writes refused."""

    # -- writes ----------------------------------------------------------------------------

    def test_a_write_round_trips_through_the_store(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """hub.write() stores the value as text where the next read of the source finds it."""
        self.require(kv_store, "write")
        prefix = self.new_prefix()
        kv_store.put(prefix + "db/port", "5432")
        spec = kv_store.spec(prefix)
        with self.hub(kv_store, tmp_path, spec) as hub:
            hub.write("db.port", 5433)
            hub.write("db.host", "db1")
        with self.hub(kv_store, tmp_path, spec) as again:
            assert dict(again.snapshot().flat()) == {"db.port": "5433", "db.host": "db1"}

    def test_a_write_with_a_stale_revision_raises_write_conflict(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """A compare-and-swap against the revision a write returned wins once, then conflicts."""
        self.require(kv_store, "write")
        prefix = self.new_prefix()
        with self.hub(kv_store, tmp_path, kv_store.spec(prefix)) as hub:
            revision = hub.write("db.port", "5432")
            hub.write("db.port", "5433", expected_revision=revision)
            error = self.error_of(
                lambda: hub.write("db.port", "5434", expected_revision=revision),
                "a write at a stale revision",
            )
            assert isinstance(error, WriteConflictError), error
            assert (error.key, error.source) == ("db.port", hub.sources[-1]), error

    def test_a_create_only_write_conflicts_when_the_key_exists(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """expected_revision=0 creates a missing key and conflicts with an existing one."""
        self.require(kv_store, "write")
        prefix = self.new_prefix()
        kv_store.put(prefix + "db/port", "5432")
        with self.hub(kv_store, tmp_path, kv_store.spec(prefix)) as hub:
            hub.write("db.host", "db1", expected_revision=0)
            error = self.error_of(
                lambda: hub.write("db.port", "5433", expected_revision=0),
                "a create-only write over an existing key",
            )
            assert isinstance(error, WriteConflictError), error
            assert error.key == "db.port", error

    def test_a_write_over_a_table_is_refused_and_sends_nothing(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """Writing a value where a table is (``db`` over ``db.host`` and ``db.port``) is
        refused with the kit's WriteError naming the table's keys; the store is unchanged
        and the watching hub stays live."""
        self.require(kv_store, "write")
        prefix = self.new_prefix()
        stored = {"db.host": "h", "db.port": "5432"}
        for key, value in stored.items():
            kv_store.put(prefix + key.replace(".", "/"), value)
        spec = kv_store.spec(prefix)
        with self.hub(kv_store, tmp_path, spec) as hub:
            error = self.shape_refusal(hub, stored, "db", "flat")
            assert "'db.host', 'db.port'" in str(error), str(error)
            hub.write("db.user", "app")  # a write beside them is fine
            self.wait_until(lambda: "db.user" in hub.snapshot().flat(), "the write of db.user")
            assert self.state(hub) == "live"
        with self.hub(kv_store, tmp_path, spec) as again:
            assert dict(again.snapshot().flat()) == {**stored, "db.user": "app"}

    def test_a_write_under_a_value_is_refused_and_sends_nothing(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """Writing a key under a value (``db.port.x`` under ``db.port``) is refused with the
        kit's WriteError naming the value's key; the store is unchanged, and a new process
        still starts on the prefix."""
        self.require(kv_store, "write")
        prefix = self.new_prefix()
        stored = {"db.host": "h", "db.port": "5432"}
        for key, value in stored.items():
            kv_store.put(prefix + key.replace(".", "/"), value)
        spec = kv_store.spec(prefix)
        with self.hub(kv_store, tmp_path, spec) as hub:
            error = self.shape_refusal(hub, stored, "db.port.x", "1")
            assert "'db.port' holds a value" in str(error), str(error)
            self.shape_refusal(hub, stored, "db.host.a.b", "1")
            assert self.state(hub) == "live"
        with self.hub(kv_store, tmp_path, spec) as again:
            assert dict(again.snapshot().flat()) == stored


class DocumentContract(ContractBase):
    """The document layout: a missing key is a missing file; writes are read-modify-CAS."""

    # -- document layout ---------------------------------------------------------------------

    def document(self, store: KVStoreHarness, data: Mapping[str, Any]) -> str:
        """Put ``data`` as JSON under a fresh document key; return the key."""
        key = self.new_prefix() + "config.json"
        store.put(key, json.dumps(data))
        return key

    def test_a_document_key_is_read_as_one_document(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """format=json reads the one key as a JSON document, with JSON's types."""
        self.require(kv_store, "documents")
        key = self.document(kv_store, {"db": {"port": 5432, "host": "db1"}})
        with self.hub(kv_store, tmp_path, kv_store.spec(key, format="json")) as hub:
            assert dict(hub.snapshot().flat()) == {"db.port": 5432, "db.host": "db1"}

    def test_a_missing_document_key_fails_a_required_source_naming_the_key_and_the_fix(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """Like a missing file: start-up fails with SourceUnavailableError naming the key and
        the fix (create it, fix the path, or add ?optional=true)."""
        self.require(kv_store, "documents")
        key = self.new_prefix() + "config.json"
        error = self.start_error(self.hub(kv_store, tmp_path, kv_store.spec(key, format="json")))
        assert isinstance(error, StartupError), error
        cause = error.attempts[-1][1]
        assert isinstance(cause, SourceUnavailableError), cause
        assert key in str(cause), str(cause)
        assert "?optional=true" in str(cause), str(cause)

    def test_a_missing_document_key_leaves_an_optional_source_empty(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """With optional=true a missing document key is an empty layer, not a failure."""
        self.require(kv_store, "documents")
        key = self.new_prefix() + "config.json"
        spec = kv_store.spec(key, format="json", optional="true")
        with self.hub(kv_store, tmp_path, {"db": {"port": 1}}, spec) as hub:
            assert dict(hub.snapshot().flat()) == {"db.port": 1}
            health = hub.health().sources[-1]
            assert (health.state, health.failed) == ("absent", False), health

    def test_a_deleted_document_key_makes_a_required_source_stale_until_written_again(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """While watched, deleting the document keeps the last good values (stale); writing it
        again makes the source live with the new content."""
        self.require(kv_store, "documents", "watch")
        key = self.document(kv_store, {"db": {"port": 5432}})
        with self.hub(kv_store, tmp_path, kv_store.spec(key, format="json")) as hub:
            kv_store.delete(key)
            self.wait_until(lambda: self.state(hub) == "stale", "the source to turn stale")
            assert hub.get("db.port") == 5432
            kv_store.put(key, json.dumps({"db": {"port": 5433}}))
            self.wait_until(lambda: hub.get("db.port") == 5433, "the rewritten document")
            self.wait_until(lambda: self.state(hub) == "live", "the source to be live again")

    def test_a_deleted_document_key_empties_an_optional_source(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """While watched, deleting an optional source's document removes its keys."""
        self.require(kv_store, "documents", "watch")
        key = self.document(kv_store, {"db": {"port": 5432}})
        spec = kv_store.spec(key, format="json", optional="true")
        with self.hub(kv_store, tmp_path, spec) as hub:
            kv_store.delete(key)
            self.wait_until(lambda: "db.port" not in hub.snapshot().flat(), "the keys to go")
            health = hub.health().sources[-1]
            assert (health.state, health.failed) == ("absent", False), health

    def test_a_document_write_changes_one_key_and_keeps_the_rest(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """Writing a key of a document source rewrites the document with that key changed."""
        self.require(kv_store, "documents", "write")
        key = self.document(kv_store, {"db": {"port": 5432, "host": "db1"}, "name": "svc"})
        spec = kv_store.spec(key, format="json")
        with self.hub(kv_store, tmp_path, spec) as hub:
            hub.write("db.port", 5433)
        with self.hub(kv_store, tmp_path, spec) as again:
            assert dict(again.snapshot().flat()) == {
                "db.port": 5433,
                "db.host": "db1",
                "name": "svc",
            }

    def test_a_document_write_is_a_compare_and_swap_of_the_document_key(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """A document write at the revision the last write returned wins once, then conflicts."""
        self.require(kv_store, "documents", "write")
        key = self.document(kv_store, {"db": {"port": 5432}})
        with self.hub(kv_store, tmp_path, kv_store.spec(key, format="json")) as hub:
            revision = hub.write("db.port", 5433)
            hub.write("db.port", 5434, expected_revision=revision)
            error = self.error_of(
                lambda: hub.write("db.port", 5435, expected_revision=revision),
                "a document write at a stale revision",
            )
            assert isinstance(error, WriteConflictError), error
            assert error.source == hub.sources[-1], error

    def test_a_document_write_that_changes_the_shape_is_refused_and_sends_nothing(
        self, kv_store: KVStoreHarness, tmp_path: Path
    ) -> None:
        """In a document, a value over a table (``db``) and a key under a value
        (``db.port.x``) are refused with the kit's WriteError; the document is unchanged."""
        self.require(kv_store, "documents", "write")
        document = {"db": {"host": "h", "port": 5432}, "name": "svc"}
        key = self.document(kv_store, document)
        spec = kv_store.spec(key, format="json")
        with self.hub(kv_store, tmp_path, spec) as hub:
            error = self.shape_refusal(hub, document, "db", "flat")
            assert "'db.host', 'db.port'" in str(error), str(error)
            error = self.shape_refusal(hub, document, "db.port.x", "1")
            assert "'db.port' holds a value" in str(error), str(error)
            self.shape_refusal(hub, document, "name.first", "x")
            assert self.state(hub) == "live"
        with self.hub(kv_store, tmp_path, spec) as again:
            assert dict(again.snapshot().flat()) == {
                "db.host": "h",
                "db.port": 5432,
                "name": "svc",
            }


class KVBackendContract(
    TreeContract, WatchContract, WriteContract, DocumentContract, TransactionContract
):
    """The behaviours every confhub KV backend shares, as tests; subclass it and provide a
    ``kv_store`` fixture (see :class:`KVStoreHarness`).

    Test methods take ``kv_store`` and pytest's own ``tmp_path`` (each hub's cache
    directory) and ``caplog``. Override one to skip it with a reason, never to change what
    it checks: the suite is the contract the etcd and Consul plugins pass as well.
    """

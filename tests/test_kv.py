"""confhub.kv: the kit KV backends share (key mapping, values, errors, backoff, reporting)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from core_testlib import wait_for

import confhub
from confhub import Hub, Layer, LayerDelta, SourceFormatError, SourceSpec, WriteError, kv
from confhub.testing import MemoryStore

APP = kv.KeyMap("app/", source="kv://h/app/", noun="test key")


# -- KeyMap ------------------------------------------------------------------------------------


@pytest.mark.parametrize("store_key", ["app/db/pool/size", b"app/db/pool/size"])
def test_key_map_turns_a_store_key_into_a_dotted_key(store_key: str | bytes) -> None:
    """Separators below the prefix nest, for text and byte keys alike."""
    assert APP.to_dotted(store_key) == "db.pool.size"


def test_key_map_nests_dots_in_a_store_key_like_separators() -> None:
    """A dot in a store key nests, so app/db.port and app/db/port are one dotted key."""
    assert APP.to_dotted("app/db.port") == APP.to_dotted("app/db/port") == "db.port"


@pytest.mark.parametrize("store_key", ["app/", "app/db/", b"app/db/pool/"])
def test_key_map_skips_the_prefix_and_folder_markers(store_key: str | bytes) -> None:
    """The prefix itself and folder markers carry no key."""
    assert APP.to_dotted(store_key) is None


def test_key_map_skips_a_key_outside_the_prefix() -> None:
    """A key that does not start with the prefix carries no key of this source."""
    assert APP.to_dotted("other/db") is None


@pytest.mark.parametrize("store_key", ["app//a", "app/a./b", "app/.a", "app/a.", "app/a..b"])
def test_key_map_refuses_an_empty_segment_naming_the_store_key(store_key: str) -> None:
    """An empty segment is a SourceFormatError naming the store key, with the fix."""
    with pytest.raises(SourceFormatError) as info:
        APP.to_dotted(store_key)
    assert str(info.value) == (
        f"kv://h/app/: test key {store_key!r} has an empty path segment; rename it"
    )
    assert info.value.key == store_key
    assert info.value.source == "kv://h/app/"


def test_key_map_refuses_a_key_that_is_not_utf8() -> None:
    """A store key that is not UTF-8 is a SourceFormatError showing its bytes."""
    with pytest.raises(SourceFormatError) as info:
        APP.to_dotted(b"app/\xff")
    assert str(info.value) == "kv://h/app/: test key b'app/\\xff' is not valid UTF-8; rename it"
    assert info.value.key == "app/\\xff"


def test_key_map_to_store_inverts_to_dotted() -> None:
    """to_store gives the store key that maps back to the same dotted key."""
    assert APP.to_store("db.pool.size") == "app/db/pool/size"
    assert APP.to_dotted(APP.to_store("db.pool.size")) == "db.pool.size"


def test_key_map_uses_its_separator() -> None:
    """Another separator nests the same way (ZooKeeper-like paths, Redis-like colons)."""
    colon = kv.KeyMap("app:", source="s", separator=":")
    assert colon.to_dotted("app:db:port") == "db.port"
    assert colon.to_store("db.port") == "app:db:port"


def test_key_map_with_an_empty_prefix_maps_the_whole_store() -> None:
    """With no prefix every key is the source's."""
    assert kv.KeyMap("", source="s").to_dotted("db/port") == "db.port"


# -- values ------------------------------------------------------------------------------------


def test_decode_text_reads_utf8() -> None:
    """A UTF-8 value becomes its text."""
    assert kv.decode_text("héllo".encode(), source="s", key="app/a") == "héllo"


def test_decode_text_refuses_bytes_that_are_not_utf8() -> None:
    """A value that is not UTF-8 is a SourceFormatError naming the key and the byte."""
    with pytest.raises(SourceFormatError) as info:
        kv.decode_text(b"ok\xff", source="s", key="app/a", noun="etcd key")
    assert str(info.value) == (
        "s: the value of etcd key 'app/a' is not valid UTF-8 (byte 2); store text"
    )
    assert info.value.key == "app/a"


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (b"\x00raw", b"\x00raw"),
        ("héllo", "héllo".encode()),
        (True, b"true"),
        (False, b"false"),
        (5432, b"5432"),
        (0.5, b"0.5"),
    ],
)
def test_encode_value_stores_leaves_as_text(value: object, stored: bytes) -> None:
    """Bytes are kept, text is UTF-8, booleans and numbers are their text."""
    assert kv.encode_value(value) == stored


@pytest.mark.parametrize("value", [{"a": 1}, [1, 2], None, "\udcff"])
def test_encode_value_refuses_what_is_not_one_text_leaf(value: object) -> None:
    """A mapping, a list, None or text that cannot be UTF-8 is a WriteError naming the key."""
    with pytest.raises(WriteError, match=r"^s: cannot write .* to 'db\.port'") as info:
        kv.encode_value(value, source="s", key="db.port")
    assert (info.value.source, info.value.key) == ("s", "db.port")


# -- check_write_shape ---------------------------------------------------------------------------

DOC = {"db": {"host": "h", "port": 5432, "pool": {}}, "name": "svc"}


def test_check_write_shape_refuses_a_value_over_a_table_naming_its_keys() -> None:
    """A value where a table is names the table's keys, their count and the way out."""
    with pytest.raises(WriteError) as info:
        kv.check_write_shape(DOC, "db", "flat", source="s")
    assert str(info.value) == (
        "s: cannot write 'db': 'db' is a table of 2 keys ('db.host', 'db.port'), which a "
        "value there would shadow; write its keys one by one (such as 'db.host'), or delete "
        "them first to replace the table"
    )
    assert (info.value.source, info.value.key) == ("s", "db")


def test_check_write_shape_names_the_first_keys_of_a_big_table_and_counts_the_rest() -> None:
    """A big table is shown by its first three keys and a count, never in full."""
    keys = [f"t.k{i:04d}" for i in range(1000)]
    with pytest.raises(
        WriteError,
        match=r"'t' is a table of 1,000 keys \('t\.k0000', "
        r"'t\.k0001', 't\.k0002' and 997 more\)",
    ):
        kv.check_write_shape(keys, "t", 1, source="s")


def test_check_write_shape_refuses_a_key_under_a_value_without_quoting_it() -> None:
    """A key under a value names the value's key (never the value: it may be a secret)."""
    with pytest.raises(WriteError) as info:
        kv.check_write_shape(DOC, "db.port.x", "1", source="s")
    assert str(info.value) == (
        "s: cannot write 'db.port.x': 'db.port' holds a value, and the write would turn it "
        "into a table (the parent of 'db.port.x'), losing that value; delete 'db.port' "
        "first, or write a key that is not under it"
    )
    assert "5432" not in str(info.value)
    with pytest.raises(WriteError, match="'name' holds a value"):
        kv.check_write_shape(DOC, "name.a.b.c", "1", source="s")


@pytest.mark.parametrize("key", ["db.port", "db.user", "db.pool", "db.pool.size", "other.x"])
def test_check_write_shape_accepts_a_write_that_keeps_the_shape(key: str) -> None:
    """Overwriting a value, adding a key beside others or into an empty table is fine."""
    kv.check_write_shape(DOC, key, "v", source="s")


@pytest.mark.parametrize(
    "existing",
    [
        DOC,
        {"db.host": "h", "db.port": "5432", "name": "svc"},  # flat: dots nest
        ["db.host", "db.port", "name"],  # a tree's dotted keys
        Layer.from_flat({"db.host": "h", "db.port": "5432", "name": "svc"}, source="s"),
    ],
)
def test_check_write_shape_reads_documents_flat_mappings_key_lists_and_layers(
    existing: Any,
) -> None:
    """Every way of giving what the source holds gives the same answer."""
    with pytest.raises(WriteError, match="'db' is a table of 2 keys"):
        kv.check_write_shape(existing, "db", "x", source="s")
    with pytest.raises(WriteError, match=r"'db\.port' holds a value"):
        kv.check_write_shape(existing, "db.port.x", "x", source="s")
    kv.check_write_shape(existing, "db.port", "x", source="s")


def test_check_write_shape_writes_a_mapping_as_its_leaves() -> None:
    """A table written over a table merges (accepted); over a value it is refused."""
    kv.check_write_shape(DOC, "db", {"user": "u"}, source="s")
    with pytest.raises(WriteError, match="cannot write 'name': 'name' holds a value"):
        kv.check_write_shape(DOC, "name", {"first": "a"}, source="s")


def test_key_map_write_scope_covers_every_key_a_write_can_clash_with() -> None:
    """The scope is the prefix plus the first segment: parents and children stored with
    separators or dots all start with it."""
    assert APP.write_scope("db.port.x") == "app/db"
    for related in ("app/db", "app/db/port", "app/db.port", "app/db/port/x/y"):
        assert related.startswith(APP.write_scope("db.port.x"))


# -- errors ------------------------------------------------------------------------------------


def test_too_many_keys_has_the_cores_wording() -> None:
    """A counted layer above the cap names the count, the cap and the fix."""
    error = kv.too_many_keys("s", 1_500, 1_000)
    assert str(error) == (
        "s: 1,500 keys, more than max_keys=1,000; refusing them: raise ?max_keys= on the "
        "source if that many keys are intended, or delete the runaway keys"
    )
    assert error.source == "s"


def test_too_many_keys_at_least_says_where_reading_stopped() -> None:
    """A read stopped early says 'at least' and where it stopped, the same on every retry."""
    error = kv.too_many_keys("s", 6, 5, at_least=True)
    assert str(error) == (
        "s: at least 6 keys, more than max_keys=5; refusing them (stopped reading at 6 keys): "
        "raise ?max_keys= on the source if that many keys are intended, or delete the "
        "runaway keys"
    )


def test_a_hub_refuses_a_layer_above_max_keys_with_the_kits_error() -> None:
    """The core's own max_keys check raises the kit's error: one wording everywhere."""
    store = MemoryStore("app", {"a": "1", "b": "2", "c": "3"})
    with pytest.raises(SourceFormatError) as info:
        Hub(["memory:app?max_keys=2"], plugins=[store], autoload=False, cache_dir=None).start()
    assert str(info.value) == str(kv.too_many_keys("memory:app", 3, 2))


def test_leaf_parent_clash_names_both_keys_and_the_fix() -> None:
    """The clash names the parent and the child, and its key is the parent."""
    error = kv.leaf_parent_clash("s", "app/db", "app/db/host", noun="Consul key")
    assert str(error) == (
        "s: Consul key 'app/db' is both a value and the parent of 'app/db/host'; "
        "a key cannot be both a leaf and a parent: delete or rename one of them"
    )
    assert error.key == "app/db"


def test_the_cores_layers_raise_the_kits_leaf_parent_clash() -> None:
    """Layer.from_flat words a clash exactly as the kit does."""
    with pytest.raises(SourceFormatError) as info:
        Layer.from_flat({"db": "x", "db.host": "h"}, source="s")
    assert str(info.value) == str(kv.leaf_parent_clash("s", "db", "db.host"))
    assert info.value.key == "db"


# -- Backoff -----------------------------------------------------------------------------------


def test_backoff_without_jitter_doubles_up_to_the_maximum() -> None:
    """Each attempt doubles the delay until the cap."""
    backoff = kv.Backoff(0.5, 3.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_backoff_jitter_shortens_by_at_most_its_fraction() -> None:
    """With jitter 0.5 every delay lies between half and all of the capped delay."""
    backoff = kv.Backoff(1.0, 4.0, jitter=0.5)
    delays = [backoff.delay(10) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 1


def test_backoff_jitter_leaves_the_random_module_alone() -> None:
    """Jitter never draws from the ``random`` module: an app (or a property test) that seeds
    it gets the same sequence while confhub's threads back off beside it."""
    import random

    random.seed(1234)
    expected = [random.random() for _ in range(3)]
    random.seed(1234)
    backoff = kv.Backoff(1.0, 4.0, jitter=0.5)
    delays = {backoff.delay(3) for _ in range(50)}
    assert len(delays) > 1  # jittered all the same
    assert [random.random() for _ in range(3)] == expected


def test_backoff_jitter_differs_in_forked_children() -> None:
    """Two children forked from one process draw different delays (a fleet restarted at
    once does not retry in step)."""
    import os

    backoff = kv.Backoff(1.0, 4.0, jitter=0.5)
    drawn = []
    for _ in range(2):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read)
            os.write(write, repr([backoff.delay(5) for _ in range(4)]).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            drawn.append(pipe.read())
        os.waitpid(pid, 0)
    assert drawn[0] != drawn[1]


def test_backoff_survives_a_huge_attempt_number() -> None:
    """A watch retrying for days never overflows the exponent."""
    assert kv.Backoff(0.1, 30.0, jitter=0.0).delay(10**9) == 30.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0.0, "maximum": 1.0},
        {"initial": 2.0, "maximum": 1.0},
        {"initial": 1.0, "maximum": 2.0, "jitter": 1.5},
    ],
)
def test_backoff_refuses_a_policy_that_cannot_work(kwargs: dict[str, Any]) -> None:
    """A zero start, a cap below the start or a jitter above 1 is a ValueError."""
    with pytest.raises(ValueError, match="Backoff"):
        kv.Backoff(**kwargs)


# -- ReportOnce and recovered ------------------------------------------------------------------


def test_report_once_reports_a_failure_once() -> None:
    """The first failure of a kind is reported, its repeats are not."""
    reports = kv.ReportOnce()
    assert reports.changed(ConnectionError)
    assert not reports.changed(ConnectionError)
    assert reports.failing


def test_report_once_reports_a_change_of_kind() -> None:
    """A failure of another kind is a state change, reported again."""
    reports = kv.ReportOnce()
    reports.changed(("unavailable", 503))
    assert reports.changed(("refused", 403))
    assert reports.changed(("unavailable", 503))


def test_report_once_reset_makes_the_next_failure_a_change() -> None:
    """After the source is well again, the same kind of failure is reported anew."""
    reports = kv.ReportOnce()
    reports.changed(ConnectionError)
    reports.reset()
    assert not reports.failing
    assert reports.changed(ConnectionError)


def test_recovered_is_an_empty_delta_at_the_revision() -> None:
    """The 'source is back' signal changes no key and carries the revision."""
    delta = kv.recovered("s", 42)
    assert isinstance(delta, LayerDelta)
    assert not delta
    assert delta.revision == 42


class _Watched:
    """A watchable backend whose notify the test drives, as a KV watcher would."""

    cacheable = True

    def __init__(self) -> None:
        self.notify: confhub.Notify | None = None

    def load(self) -> Layer:
        return Layer.from_flat({"a": "1"}, source="watched:", revision=1)

    def watch(self, notify: confhub.Notify) -> None:
        self.notify = notify

    def close(self) -> None:
        pass


class _WatchedPlugin:
    def __init__(self) -> None:
        self.backend = _Watched()

    @confhub.hookimpl
    def confhub_make_backend(self, spec: SourceSpec) -> _Watched | None:
        return self.backend if spec.scheme == "watched" else None


def test_recovered_makes_a_stale_source_live_again() -> None:
    """After a reported failure, the recovered delta alone brings the source back."""
    plugin = _WatchedPlugin()
    with Hub(["watched:"], plugins=[plugin], autoload=False, cache_dir=None) as hub:
        notify = plugin.backend.notify
        assert notify is not None
        notify(confhub.SourceUnavailableError("watched: lost", source="watched:"))
        wait_for(lambda: hub.health().sources[0].state == "stale")
        notify(kv.recovered("watched:", 2))
        wait_for(lambda: hub.health().sources[0].state == "live")
        assert hub.get("a") == "1"


# -- options -----------------------------------------------------------------------------------


def test_default_max_keys_is_the_one_the_core_applies() -> None:
    """kv.DEFAULT_MAX_KEYS is what a source without max_keys= is capped at."""
    assert SourceSpec.parse("kv://h/app/").max_keys == kv.DEFAULT_MAX_KEYS


def test_core_options_name_what_the_core_reads() -> None:
    """The options the hub and its cache read on any source are core options."""
    expected = {"optional", "name", "cache", "cache_secrets", "max_stale", "max_keys", "poll"}
    assert expected <= kv.CORE_OPTIONS
    assert "timeout" in kv.CORE_OPTIONS


def test_check_options_accepts_known_and_core_options_silently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The backend's own options and the core's raise no warning."""
    spec = SourceSpec.parse("kv://h/app/?page_size=5&optional=true&max_keys=9&cache=false")
    with caplog.at_level(logging.WARNING):
        unknown = kv.check_options(spec, {"page_size"}, logger=logging.getLogger("t.kv"))
    assert unknown == frozenset()
    assert not caplog.records


def test_check_options_warns_once_per_unknown_option_with_the_closest_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each unknown option gets one warning naming it, the source and the likely spelling."""
    spec = SourceSpec.parse("kv://h/app/?page_sise=5&optinal=true")
    with caplog.at_level(logging.WARNING):
        unknown = kv.check_options(spec, {"page_size"}, logger=logging.getLogger("t.kv"))
    assert unknown == {"page_sise", "optinal"}
    messages = sorted(r.getMessage() for r in caplog.records)
    assert messages == [
        "kv://h/app/: ignoring unknown option 'optinal'; did you mean 'optional'?",
        "kv://h/app/: ignoring unknown option 'page_sise'; did you mean 'page_size'?",
    ]
    assert {r.name for r in caplog.records} == {"t.kv"}


def test_check_options_lists_the_known_options_when_nothing_is_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An option like no known one is answered with the backend's known options."""
    spec = SourceSpec.parse("kv://h/app/?zzz=1")
    with caplog.at_level(logging.WARNING):
        kv.check_options(spec, {"page_size", "wait"}, logger=logging.getLogger("t.kv"))
    assert [r.getMessage() for r in caplog.records] == [
        "kv://h/app/: ignoring unknown option 'zzz'; known: page_size, wait"
    ]

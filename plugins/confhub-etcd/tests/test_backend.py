"""The etcd backend through a real confhub.Hub (plugin found by its entry point): layouts,
provenance, live updates, writes with compare-and-swap, the CLI, limits, fork, the demo."""

from __future__ import annotations

import io
import multiprocessing
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from backend_lib import Events, make_hub, spec
from confhub import (
    Fallback,
    SourceFormatError,
    SourceSpec,
    SourceUnavailableError,
    SpecError,
    WriteConflictError,
    WriteError,
)
from confhub import main as cli_main
from confhub.testing import backend_of

from confhub_etcd._backend import EtcdBackend, parse_spec
from confhub_etcd._client import EtcdClient
from confhub_etcd._plugin import confhub_demo
from confhub_etcd.testing import EtcdServer


def test_plugin_is_discovered_through_its_entry_point(etcd: EtcdServer) -> None:
    """A plain Hub lists the etcd scheme as watchable and writable."""
    hub = make_hub([])
    rows = {r["scheme"]: r for r in hub.backends()}
    assert rows["etcd"]["watchable"] and rows["etcd"]["writable"]
    assert rows["etcd"]["distribution"] == "confhub-etcd"


def test_volatile_options_are_declared() -> None:
    """The scheme's BackendInfo declares the tuning options volatile (kept out of the cache
    identity), the same list as the config module's."""
    from confhub_etcd._config import VOLATILE_OPTIONS  # noqa: PLC0415
    from confhub_etcd._plugin import confhub_backend_schemes  # noqa: PLC0415

    (info,) = confhub_backend_schemes()
    assert info.volatile_options == VOLATILE_OPTIONS
    assert {"page_size", "progress_interval", "max_receive_bytes"} <= VOLATILE_OPTIONS
    assert not {"prefix", "format", "user", "tls", "max_keys"} & VOLATILE_OPTIONS


def test_tree_layout_and_explain(etcd: EtcdServer) -> None:
    """Keys under the prefix become dotted keys; explain names the etcd key and mod_revision."""
    etcd.put("/app/db/pool/size", "10")
    port_rev = etcd.put("/app/db/port", "5432")
    etcd.put("/app/", "directory marker, ignored")
    etcd.put("/app2/db/port", "outside the prefix")
    etcd.put("/other/x", "1")
    with make_hub([{"db": {"port": 1, "host": "h"}}, spec(etcd.endpoint)]) as hub:
        assert hub.get("db.pool.size") == "10"
        assert hub.get("db.host") == "h"
        e = hub.explain("db.port")
        assert e.value == "5432"
        assert e.detail == f"etcd key /app/db/port (mod_revision {port_rev})"
        assert e.revision == etcd.revision()
        assert e.state == "live"
        assert [o.value for o in e.overridden] == [1]
        assert "app2" not in str(hub.snapshot().to_dict())


def test_prefix_option_without_leading_slash(etcd: EtcdServer) -> None:
    """?prefix=myapp/ reads keys starting with myapp/ (no slash)."""
    etcd.put("myapp/a", "1")
    etcd.put("/myapp/a", "2")
    with make_hub([f"etcd://{etcd.endpoint}?prefix=myapp/"]) as hub:
        assert hub.snapshot().to_dict() == {"a": "1"}


def test_leaf_and_parent_clash_names_both_keys(etcd: EtcdServer) -> None:
    """A key that is both a value and a parent is a SourceFormatError naming both keys."""
    etcd.put("/app/db", "x")
    etcd.put("/app/db/host", "y")
    with pytest.raises(SourceFormatError) as info, make_hub([spec(etcd.endpoint)]):
        pass
    assert "/app/db" in str(info.value) and "/app/db/host" in str(info.value)


@pytest.mark.parametrize(
    ("extra", "expected_extra"),
    [
        ({}, {}),  # the bulk path
        ({"/app/": "prefix key, ignored"}, {}),
        ({"/app/dir/": "directory marker, ignored"}, {}),
        ({"/app/multi": "line one\nline two\x00nul"}, {"multi": "line one\nline two\x00nul"}),
        ({"/app/new\nline": "x"}, {"new\nline": "x"}),
        ({"/app/ünï/cödé": "wërt"}, {"ünï.cödé": "wërt"}),
    ],
)
def test_load_builds_the_same_layer_on_every_path(
    etcd: EtcdServer, extra: dict[str, str], expected_extra: dict[str, str]
) -> None:
    """Whether the load takes the bulk path or the key-by-key one (a marker key, a newline
    in a key, NUL in a value), values, details and parent counts are the same."""
    revisions = {
        key: etcd.put(key, value)
        for key, value in {
            "/app/a/b/c": "1",
            "/app/a/b/d": "2",
            "/app/a/e": "3",
            "/app/f": "4",
            **extra,
        }.items()
    }
    backend = make_hub([]).make_backend(SourceSpec.parse(spec(etcd.endpoint)))
    assert isinstance(backend, EtcdBackend)
    try:
        layer = backend.load()
    finally:
        backend.close()
    expected = {"a.b.c": "1", "a.b.d": "2", "a.e": "3", "f": "4", **expected_extra}
    assert dict(layer.values) == expected
    assert layer.revision == max(revisions.values())
    assert dict(layer.inner) == {"a": 3, "a.b": 2, **({"ünï": 1} if "ünï.cödé" in expected else {})}
    for dotted in expected:
        key = "/app/" + dotted.replace(".", "/")
        assert layer.detail(dotted) == f"etcd key {key} (mod_revision {revisions[key]})"


def test_invalid_utf8_value_names_the_key(etcd: EtcdServer) -> None:
    """A value that is not UTF-8 is a SourceFormatError naming the etcd key."""
    etcd.put("/app/bad", b"\xff\xfe")
    with pytest.raises(SourceFormatError, match="/app/bad"), make_hub([spec(etcd.endpoint)]):
        pass


def test_document_layout(etcd: EtcdServer) -> None:
    """?format=json reads one key holding a whole document; a change replaces it."""
    rev = etcd.put("/app/config.json", '{"db": {"port": 5432, "hosts": ["a", "b"]}}')
    etcd.put("/app/config.json.bak", "not json, and not ours")
    with make_hub([spec(etcd.endpoint, "/app/config.json", "format=json")]) as hub:
        events = Events(hub)
        assert hub.get("db.port") == 5432
        assert hub.get("db.hosts") == ("a", "b")
        assert hub.explain("db.port").detail == f"etcd key /app/config.json (mod_revision {rev})"
        etcd.put("/app/config.json", '{"db": {"port": 6432}}')
        events.wait_value("db.port", 6432)
        assert "db.hosts" not in hub


def test_live_updates_deletes_and_transactions(etcd: EtcdServer) -> None:
    """Puts and deletes arrive live; a multi-key transaction is one Change, one generation."""
    etcd.put("/app/a", "1")
    etcd.put("/app/gone", "1")
    with make_hub([spec(etcd.endpoint)]) as hub, EtcdClient(etcd.endpoints) as client:
        events = Events(hub)
        client.put("/app/a", "2")
        events.wait_value("a", "2")
        client.delete("/app/gone")
        events.wait_for(lambda: "gone" not in hub)
        generation = hub.generation
        client.put_many({f"/app/t/k{i}": str(i) for i in range(20)}, delete=["/app/a"])
        events.wait_for(lambda: hub.generation > generation)
        time.sleep(0.2)
        assert hub.generation == generation + 1
        change = events.changes[-1]
        assert {c.key for c in change.changes} == {"a"} | {f"t.k{i}" for i in range(20)}
        assert hub.explain("t.k3").detail.endswith(f"(mod_revision {hub.explain('t.k3').revision})")


def test_write_and_compare_and_swap(etcd: EtcdServer) -> None:
    """hub.write puts under the prefix; expected_revision is the key's mod_revision (0: absent)."""
    with make_hub([spec(etcd.endpoint)]) as hub:
        events = Events(hub)
        rev = hub.write("db.port", 5432)
        events.wait_value("db.port", "5432")
        assert hub.explain("db.port").detail == f"etcd key /app/db/port (mod_revision {rev})"
        with pytest.raises(WriteConflictError) as info:
            hub.write("db.port", "1", expected_revision=rev - 1)
        assert (info.value.expected, info.value.actual) == (rev - 1, rev)
        with pytest.raises(WriteConflictError):
            hub.write("db.port", "1", expected_revision=0)
        new = hub.write("db.port", "6432", expected_revision=rev)
        assert new > rev
        assert hub.write("db.fresh", True, expected_revision=0) > new
        events.wait_value("db.fresh", "true")
        with pytest.raises(WriteError, match="dotted key"):
            hub.write("db..x", "1")


def test_cli_set_with_if_revision(etcd: EtcdServer, capsys: pytest.CaptureFixture[str]) -> None:
    """`confhub set SPEC KEY VALUE --if-revision N` writes, or exits 4 on a lost race."""
    target = f"etcd://{etcd.endpoint}/app/"
    out = io.StringIO()
    assert cli_main(["set", target, "db.port", "5432", "--if-revision", "0"], out=out) == 0
    assert "revision" in out.getvalue()
    rev = int(out.getvalue().rsplit(" ", 1)[1])
    assert cli_main(["set", target, "db.port", "1", "--if-revision", str(rev - 1)]) == 4
    assert "mod_revision" in capsys.readouterr().err
    assert cli_main(["set", target, "db.port", "6432", "--if-revision", str(rev)], out=out) == 0
    with EtcdClient(etcd.endpoints) as client:
        kv, _ = client.get("/app/db/port")
    assert kv is not None and kv.value == b"6432"


def test_a_write_that_would_change_the_shape_is_refused_before_sending(
    etcd: EtcdServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14, item 5: a value over a table or a key under a value is refused (etcd would
    take it, and every hub on the prefix would then refuse it), in the hub and the CLI, and
    whether the keys nest with '/' or '.'; nothing is written."""
    etcd.put("/app/db/host", "h")
    etcd.put("/app/db.port", "5432")  # dots nest too
    with EtcdClient(etcd.endpoints) as client:
        before = client.revision()
    with make_hub([spec(etcd.endpoint)]) as hub:
        with pytest.raises(
            WriteError, match=r"'db' is a table of 2 keys \('db\.host', 'db\.port'\)"
        ):
            hub.write("db", "flat")
        with pytest.raises(WriteError, match=r"'db\.port' holds a value"):
            hub.write("db.port.x", "1")
    target = f"etcd://{etcd.endpoint}/app/"
    assert cli_main(["set", target, "db.host.a", "1"]) == 4
    assert "'db.host' holds a value" in capsys.readouterr().err
    with EtcdClient(etcd.endpoints) as client:
        assert client.revision() == before  # nothing was written


def test_a_write_naming_a_fallback_member_goes_to_that_etcd(tmp_path: Path) -> None:
    """Issue 14, item 6, on two real etcd clusters (two revision spaces): a write naming the
    alternate of a Fallback goes to the alternate while the primary serves, its
    compare-and-swap is checked against the alternate's revisions, and a write naming the
    primary while it is down fails naming it instead of landing on the serving alternate."""
    with EtcdServer() as one, EtcdServer() as two:
        for i in range(5):  # the primary's revisions run ahead of the alternate's
            one.put("/app/pad", str(i))
        one.put("/app/k", "primary")
        two.put("/app/k", "alternate")
        primary, alternate = spec(one.endpoint), spec(two.endpoint)
        names = [spec(one.endpoint, opts=""), spec(two.endpoint, opts="")]  # as hub.sources
        with make_hub([Fallback(primary, alternate)], tmp_path / "a") as hub:
            assert hub.health().sources[0].active == names[0]
            with EtcdClient(one.endpoints) as c1, EtcdClient(two.endpoints) as c2:
                primary_rev = c1.get("/app/k")[0].mod_revision  # type: ignore[union-attr]
                alternate_rev = c2.get("/app/k")[0].mod_revision  # type: ignore[union-attr]
                assert primary_rev != alternate_rev
                hub.write("k", "to the alternate", source=names[1])
                assert c2.get("/app/k")[0].value == b"to the alternate"  # type: ignore[union-attr]
                assert c1.get("/app/k")[0].value == b"primary"  # type: ignore[union-attr]
                written = c2.get("/app/k")[0].mod_revision  # type: ignore[union-attr]
                with pytest.raises(WriteConflictError) as info:  # the primary's revision
                    hub.write("k", "x", source=names[1], expected_revision=primary_rev)
                assert info.value.actual == written
                hub.write("k", "cas", source=names[1], expected_revision=written)
                assert c2.get("/app/k")[0].value == b"cas"  # type: ignore[union-attr]
                assert c1.get("/app/k")[0].value == b"primary"  # type: ignore[union-attr]
            assert hub.get("k") == "primary"  # the primary serves: nothing changed here
        one.kill()
        with make_hub([Fallback(primary, alternate)], tmp_path / "b") as hub:
            assert hub.health().sources[0].active == names[1]
            with pytest.raises(SourceUnavailableError) as down:
                hub.write("k", "lost?", source=names[0])
            assert names[0] in str(down.value)
            with EtcdClient(two.endpoints) as c2:
                assert c2.get("/app/k")[0].value == b"cas"  # type: ignore[union-attr]
            hub.write("k", "served", source=names[1])
            Events(hub).wait_value("k", "served")


def test_a_key_written_under_the_scope_between_the_check_and_the_put_is_seen(
    etcd: EtcdServer,
) -> None:
    """The put is guarded by the keys-only read: a clashing key another writer puts in
    between makes the write read and check again, and refuse, instead of landing."""
    etcd.put("/app/db/host", "h")
    backend = make_hub([]).make_backend(SourceSpec.parse(f"etcd://{etcd.endpoint}/app/"))
    assert isinstance(backend, EtcdBackend)
    try:
        client = backend.client
        read = client.keys_under
        reads: list[int] = []

        def racing(scope: str | bytes, **kwargs: Any) -> tuple[int, list[bytes]]:
            result = read(scope, **kwargs)
            reads.append(result[0])
            if len(reads) == 1:
                etcd.put("/app/db/port/x", "another writer")
            return result

        client.keys_under = racing  # type: ignore[method-assign]
        with pytest.raises(WriteError, match=r"'db\.port' is a table of 1 key \('db\.port\.x'\)"):
            backend.write("db.port", "5432")
        assert len(reads) == 2
        with EtcdClient(etcd.endpoints) as other:
            item, _ = other.get("/app/db/port")
        assert item is None  # never written
    finally:
        backend.close()


def test_oversized_value_is_a_clear_write_error(etcd: EtcdServer) -> None:
    """A value over etcd's request limit is refused before sending, naming the limit."""
    with make_hub([spec(etcd.endpoint)]) as hub, pytest.raises(WriteError) as info:
        hub.write("blob", "x" * 2_000_000)
    assert not isinstance(info.value, WriteConflictError)
    assert "max-request-bytes" in str(info.value)


def test_document_write_is_read_modify_cas(etcd: EtcdServer) -> None:
    """Writing a key of a JSON document rewrites the document with compare-and-swap."""
    rev = etcd.put("/app/c.json", '{"db": {"port": 1}}')
    with make_hub([spec(etcd.endpoint, "/app/c.json", "format=json")]) as hub:
        events = Events(hub)
        with pytest.raises(WriteConflictError):
            hub.write("db.port", 2, expected_revision=rev - 1)
        hub.write("db.port", 2, expected_revision=rev)
        events.wait_value("db.port", 2)


@pytest.mark.parametrize(
    ("text", "fix"),
    [
        ("etcd:/app/", "two slashes"),
        ("etcd://127.0.0.1/app/", "host:port"),
        ("etcd://127.0.0.1:2379", "prefix"),
        ("etcd://127.0.0.1:2379/app/?format=ini", "json, yaml, toml"),
        ("etcd://127.0.0.1:2379/app/?cert=/c.pem", "both cert= and key="),
        ("etcd://127.0.0.1:2379/app/?timeout=0", "above 0"),
        ("etcd://127.0.0.1:2379/app/?max_keys=0", "above 0"),
        ("etcd://127.0.0.1:2379/app/?max_keys=2.5", "not a whole number above 0"),
    ],
)
def test_bad_specs_are_spec_errors(text: str, fix: str) -> None:
    """Malformed specs raise SpecError naming the fix, before any I/O."""
    with pytest.raises(SpecError, match=fix):
        make_hub([]).make_backend(SourceSpec.parse(text))


def test_credentials_stay_out_of_reprs_and_display() -> None:
    """A URL password never appears in the backend's repr, display or parsed config."""
    s = SourceSpec.parse("etcd://app:hunter2@127.0.0.1:2379,127.0.0.1:2381/app/")
    backend = make_hub([]).make_backend(s)
    assert isinstance(backend, EtcdBackend)
    cfg = parse_spec(s)
    assert cfg.credentials is not None and cfg.credentials.user == "app"
    assert cfg.endpoints == ("127.0.0.1:2379", "127.0.0.1:2381")
    for text in (repr(backend), backend.display, repr(cfg), repr(s)):
        assert "hunter2" not in text


def _fork_child(backend: EtcdBackend, results: Any) -> None:
    try:
        layer = backend.load()
        revision = backend.write("child", "1")
        results.put(("ok", dict(layer.values), revision))
    except BaseException as exc:  # report anything to the parent
        results.put(("error", repr(exc)))


@pytest.mark.filterwarnings("ignore:This process.*multi-threaded:DeprecationWarning")
def test_forked_child_gets_a_working_backend(etcd: EtcdServer) -> None:
    """A child forked while the hub watches can load and write through the same backend."""
    etcd.put("/app/a", "1")
    with make_hub([spec(etcd.endpoint)]) as hub:
        events = Events(hub)
        backend = backend_of(hub, hub.sources[0])
        assert isinstance(backend, EtcdBackend)
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        process = context.Process(target=_fork_child, args=(backend, results))
        process.start()
        process.join(20)
        if process.is_alive():
            process.kill()
            process.join(5)
            raise AssertionError("the forked child hung")
        outcome = results.get(timeout=5)
        assert outcome[0] == "ok", outcome
        assert outcome[1] == {"a": "1"}
        events.wait_value("child", "1")
        hub.write("parent", "1")
        events.wait_value("parent", "1")


def test_demo_hook_runs(tmp_path: Path) -> None:
    """The confhub_demo hook narrates the etcd scenario and returns True."""
    out = io.StringIO()
    assert confhub_demo(out=out, workdir=str(tmp_path)) is True
    text = out.getvalue()
    for expected in ("live", "stale", "cached"):
        assert expected in text


@pytest.mark.parametrize("password", ["pa/ss", "pa?ss", "Hash#Pw", "p@ss", "a/b?c#d@e%2F"])
def test_url_password_comes_whole_from_the_core_parser(password: str) -> None:
    """'/', '?', '#' and '@' in a URL password (percent-escapes decoded): the backend gets
    the whole password from SourceSpec.url_parts, the endpoints and prefix are exact, and
    the principal it declares for the cache is the user, never the password."""
    s = SourceSpec.parse(f"etcd://root:{password}@127.0.0.1:2379,127.0.0.1:2381/app/?timeout=1")
    cfg = parse_spec(s)
    assert cfg.credentials is not None
    assert (cfg.credentials.user, cfg.credentials.password) == ("root", unquote(password))
    assert cfg.endpoints == ("127.0.0.1:2379", "127.0.0.1:2381")
    assert cfg.prefix == "/app/"
    backend = make_hub([]).make_backend(s)
    assert backend.cache_principal == "user:root"
    for text in (repr(backend), backend.display, repr(cfg), repr(s)):
        assert password not in text

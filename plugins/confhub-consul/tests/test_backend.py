"""The Consul backend through a real ``confhub.Hub`` (plugin found by its entry point).

Most tests run against the in-repo ``ConsulTestServer``; those using the conftest's
``target`` fixture also run against a real ``consul agent -dev`` when one is on PATH.
Watches use ``wait=1`` (seconds) so that timeouts stay short; every wait below is bounded.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import confhub
import pytest
import requests
from confhub import (
    ErrorEvent,
    Fallback,
    SourceFormatError,
    SourcePermissionError,
    SourceSpec,
    SourceUnavailableError,
    SpecError,
    StartupError,
    WriteConflictError,
    WriteError,
)
from confhub import main as cli_main
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import confhub_consul._plugin
from confhub_consul._backend import ConsulBackend
from confhub_consul._http import Aborted, Connection, Response
from confhub_consul._options import ConsulOptions
from confhub_consul._reader import ConsulReader
from confhub_consul._watch import Watcher
from confhub_consul.testing import AclToken, ConsulTestServer

FAST = "wait=1&timeout=1&retry_initial=0.05&retry_max=0.3"
BOUND = 8.0  # seconds any single expected event may take


@pytest.fixture
def server() -> Iterator[ConsulTestServer]:
    with ConsulTestServer(default_query_time=2, max_query_time=3) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _no_watch_thread_leak() -> Iterator[None]:
    """No Consul watch thread outlives its test (the conftest guards every other thread)."""
    yield
    deadline = time.monotonic() + 5
    while any(t.name.startswith("confhub-consul-watch") for t in threading.enumerate()):
        if time.monotonic() > deadline:
            pytest.fail("a Consul watch thread is still running after the test")
        time.sleep(0.02)


def spec(srv: Any, path: str = "myapp/", extra: str = "") -> str:
    address = srv.address if hasattr(srv, "address") else f"{srv.host}:{srv.port}"
    query = FAST + (f"&{extra}" if extra else "")
    return f"consul://{address}/{path}?{query}"


def hub_for(*sources: Any, cache_dir: Path | None = None, **kw: Any) -> confhub.Hub:
    kw.setdefault("connect_timeout", 1.0)
    kw.setdefault("retry_initial", 0.05)
    kw.setdefault("retry_max", 0.3)
    return confhub.Hub(list(sources), cache_dir=cache_dir, **kw)


class Events:
    """Changes and error events a hub delivers to a subscriber, with bounded waits."""

    def __init__(self, hub: confhub.Hub, prefix: str = "") -> None:
        self.changes: list[Any] = []
        self.errors: list[ErrorEvent] = []
        self._cond = threading.Condition()
        hub.subscribe(self._change, prefix=prefix, on_error=self._error)

    def _change(self, change: Any) -> None:
        with self._cond:
            self.changes.append(change)
            self._cond.notify_all()

    def _error(self, event: ErrorEvent) -> None:
        with self._cond:
            self.errors.append(event)
            self._cond.notify_all()

    def wait(self, pred: Callable[[], bool], timeout: float = BOUND) -> None:
        with self._cond:
            assert self._cond.wait_for(pred, timeout), (self.changes, self.errors)


def until(pred: Callable[[], bool], timeout: float = BOUND) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def health(hub: confhub.Hub) -> Any:
    return hub.health().sources[0]


# -- plugin and spec ---------------------------------------------------------------------


def test_plugin_is_discovered_through_its_entry_point() -> None:
    """``consul`` is listed as a watchable, writable scheme by an autoloading hub."""
    rows = {r["scheme"]: r for r in confhub.Hub([]).backends()}
    assert rows["consul"]["writable"] is True
    assert rows["consul"]["watchable"] is True


def test_make_backend_does_no_io() -> None:
    """Creating the backend for an address nobody listens on succeeds (no I/O)."""
    backend = confhub.Hub([]).make_backend(SourceSpec.parse("consul://127.0.0.1:1/x/"))
    assert isinstance(backend, ConsulBackend)
    assert backend.cacheable is True
    backend.close()
    backend.close()  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        "consul://h:8500/a//b/",
        "consul://h:8500/a/./b/",
        "consul://h:8500/a/../b/",
        "consul://h:8500/a/?format=xml",
        "consul://h:8500/a/?format=json",
        "consul://h:8500/a/?consistency=fast",
        "consul://h:8500/a/?wait=0",
        "consul://u:pw@h:8500/a/",
        "consul://h:8500/a/?scheme=http&ca=/x.pem",
        "consul://h:8500/a/?token=t%E2%82%ACx",
        "consul://h:8500/a/?max_last_contact=1",
        "consul://h:8500/a/?consistency=stale&max_last_contact=-1",
    ],
)
def test_bad_specs_are_refused_before_any_request(text: str) -> None:
    """Paths Consul would redirect and bad values raise SpecError."""
    with pytest.raises(SpecError) as info:
        confhub.Hub([]).make_backend(SourceSpec.parse(text))
    assert "pw" not in str(info.value)


def test_unknown_options_are_a_warning_naming_the_closest_option(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An option nobody reads is one WARNING naming it, the source and the closest known
    option, never a SpecError (a fleet rolling out a new option keeps working)."""
    with caplog.at_level("WARNING", logger="confhub.consul"):
        backend = confhub.Hub([]).make_backend(
            SourceSpec.parse("consul://h:8500/a/?consistancy=stale&bogus=1")
        )
    backend.close()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2, warnings
    text = "\n".join(r.getMessage() for r in warnings)
    assert "consul://h:8500/a/" in text
    assert "'consistancy'" in text
    assert "'consistency'" in text
    assert "'bogus'" in text


def test_scheme_declares_its_volatile_options() -> None:
    """Tuning options (wait, rate, ...) are declared volatile: they keep the cache file."""
    (info,) = confhub_consul._plugin.confhub_backend_schemes()
    assert {"wait", "rate", "burst", "max_last_contact"} <= info.volatile_options
    assert not {"token", "format", "dc", "consistency"} & info.volatile_options


# -- tree layout -------------------------------------------------------------------------


def test_tree_layout_values_and_provenance(target: Any) -> None:
    """Keys under the prefix become dotted keys; details name the key and ModifyIndex."""
    target.wipe()
    target.put("myapp/db/pool/size", "10")
    target.put("myapp/db/host", "db1")
    target.put("myapp/empty", b"")
    target.put("myapp/folder/", b"")
    target.put("myapplication/other", "not mine")
    with hub_for(spec(target)) as hub:
        assert hub.get("db.pool.size") == "10"
        assert hub.get("db.host") == "db1"
        assert hub.get("empty") == ""  # an empty value is a value, not a missing key
        assert "folder" not in hub.snapshot().to_dict()
        assert "other" not in hub.snapshot().to_dict()
        entry = target.entry("myapp/db/host")
        exp = hub.explain("db.host")
        assert exp.detail == f"consul key myapp/db/host (ModifyIndex {entry['ModifyIndex']})"
        assert isinstance(exp.revision, int)
        assert exp.revision >= entry["ModifyIndex"]


def test_live_create_update_delete_reach_subscribers(target: Any) -> None:
    """Creating, changing and deleting keys under the prefix each reach a subscriber."""
    target.wipe()
    target.put("myapp/a", "1")
    with hub_for(spec(target)) as hub:
        ev = Events(hub)
        target.put("myapp/b", "2")
        ev.wait(lambda: hub.get("b", None) == "2")
        target.put("myapp/a", "one")
        ev.wait(lambda: hub.get("a", None) == "one")
        assert target.http("DELETE", "/v1/kv/myapp/a").status_code == 200
        ev.wait(lambda: len(ev.changes) == 3)  # callbacks run after publication
        assert hub.get("a", None) is None
        keys = [k.key for c in ev.changes for k in c.changes]
        assert keys == ["b", "a", "a"]
        assert ev.changes[2].changes[0].new is confhub.MISSING
        assert not ev.errors


def test_leaf_and_parent_key_is_a_format_error_naming_both(server: ConsulTestServer) -> None:
    """``app/db`` and ``app/db/host`` together fail the load naming both Consul keys."""
    server.put("myapp/db", "x")
    server.put("myapp/db/host", "h")
    with pytest.raises(SourceFormatError) as info, hub_for(spec(server)):
        pass
    assert "'myapp/db'" in str(info.value)
    assert "'myapp/db/host'" in str(info.value)


def test_every_byte_value_is_reported_and_last_good_kept(server: ConsulTestServer) -> None:
    """A value with all 256 bytes (invalid UTF-8) is an error naming the key; a fix applies."""
    server.put("myapp/a", "good")
    with hub_for(spec(server)) as hub:
        ev = Events(hub)
        server.put("myapp/a", bytes(range(256)))
        ev.wait(lambda: bool(ev.errors))
        err = ev.errors[0].error
        assert isinstance(err, SourceFormatError)
        assert "myapp/a" in str(err)
        assert "UTF-8" in str(err)
        assert hub.get("a") == "good"
        assert health(hub).state == "stale"
        server.put("myapp/a", "fixed \u00e9")
        ev.wait(lambda: hub.get("a") == "fixed \u00e9")
        until(lambda: health(hub).state == "live")
        assert len(ev.errors) == 1


@pytest.mark.parametrize(
    ("path", "extra", "good", "bad"),
    [
        ("myapp/", "", "good", b"\xff"),
        ("myapp/a", "format=json", b'{"a": "good"}', b'{"a": '),
    ],
    ids=["tree", "document"],
)
def test_bad_value_put_back_as_it_was_makes_the_source_live_again(
    server: ConsulTestServer, path: str, extra: str, good: bytes | str, bad: bytes
) -> None:
    """A rejected value, then the last good value written back: health returns to live
    (the hub is told even though no value changed)."""
    server.put("myapp/a", good)
    with hub_for(spec(server, path, extra)) as hub:
        ev = Events(hub)
        server.wait_for_blocked(1)
        server.put("myapp/a", bad)
        ev.wait(lambda: bool(ev.errors))
        assert health(hub).state == "stale"
        generation = hub.generation
        server.put("myapp/a", good)
        until(lambda: health(hub).state == "live")
        assert hub.get("a") == "good"
        assert hub.generation == generation  # no change event for identical values
        assert not ev.changes


def test_key_listed_with_a_replacement_char_is_refused_by_name(server: ConsulTestServer) -> None:
    """A key stored with a byte that is not UTF-8 lists with U+FFFD (Go's JSON encoder): a
    SourceFormatError naming it at start and while watched; deleting it clears the error."""
    url = f"{server.url}/v1/kv/myapp/k%FF"
    assert requests.put(url, data=b"v", timeout=5).status_code == 200
    with pytest.raises(SourceFormatError, match="U\\+FFFD"), hub_for(spec(server)):
        pass
    assert requests.delete(url, timeout=5).status_code == 200
    server.put("myapp/a", "1")
    with hub_for(spec(server)) as hub:
        ev = Events(hub)
        server.wait_for_blocked(1)
        assert requests.put(url, data=b"v", timeout=5).status_code == 200
        ev.wait(lambda: bool(ev.errors))
        assert isinstance(ev.errors[0].error, SourceFormatError)
        assert "'myapp/k\ufffd'" in str(ev.errors[0].error)
        assert all("\ufffd" not in k for k in hub.snapshot().flat())
        assert requests.delete(url, timeout=5).status_code == 200
        until(lambda: health(hub).state == "live")
        assert hub.get("a") == "1"


def test_non_utf8_at_start_fails_the_load(server: ConsulTestServer) -> None:
    """Invalid UTF-8 at start is a SourceFormatError (never a silent fallback)."""
    server.put("myapp/bin", b"\xff\xfe")
    with pytest.raises(SourceFormatError, match="myapp/bin"), hub_for(spec(server)):
        pass


# -- document layout ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "doc", "bad"),
    [
        ("json", b'{"db": {"port": 5432}}', b'{"db": {"port": '),
        ("yaml", b"db:\n  port: 5432\n", b"db: [\n"),
        ("toml", b"[db]\nport = 5432\n", b"[db\n"),
    ],
)
def test_document_layout_and_malformed_update(
    server: ConsulTestServer, fmt: str, doc: bytes, bad: bytes
) -> None:
    """One key holds a document; a malformed update keeps the last good and the fix applies."""
    server.put("myapp/config", doc)
    with hub_for(spec(server, "myapp/config", f"format={fmt}")) as hub:
        assert hub.get("db.port") == 5432
        assert "consul key myapp/config (ModifyIndex" in (hub.explain("db.port").detail or "")
        ev = Events(hub)
        server.put("myapp/config", bad)
        ev.wait(lambda: bool(ev.errors))
        assert isinstance(ev.errors[0].error, SourceFormatError)
        assert hub.get("db.port") == 5432
        server.put("myapp/config", doc.replace(b"5432", b"6543"))
        ev.wait(lambda: hub.get("db.port") == 6543)


def test_deleted_document_blocks_until_it_comes_back(server: ConsulTestServer) -> None:
    """A document deleted mid-watch is one error, then a blocking wait (no polling); its
    re-creation applies at once."""
    server.put("myapp/config", b'{"a": 1}')
    with hub_for(spec(server, "myapp/config", "format=json")) as hub:
        ev = Events(hub)
        server.wait_for_blocked(1)
        server.delete("myapp/config")
        ev.wait(lambda: bool(ev.errors))
        assert isinstance(ev.errors[0].error, SourceUnavailableError)
        assert "'myapp/config' does not exist" in str(ev.errors[0].error)
        assert "add ?optional=true" in str(ev.errors[0].error)
        assert hub.get("a") == 1
        assert health(hub).state == "stale"
        server.wait_for_blocked(1)
        server.reset_requests()
        time.sleep(1.5)
        assert server.request_count("/v1/kv/") <= 3
        server.put("myapp/config", b'{"a": 2}')
        ev.wait(lambda: hub.get("a") == 2, timeout=1.0)
        until(lambda: health(hub).state == "live")
        assert len(ev.errors) == 1


def test_bad_value_met_on_recovery_does_not_poll(server: ConsulTestServer) -> None:
    """A bad value written during an outage: the read after recovery reports it, then the
    watch blocks (no re-read loop) until the value is fixed."""
    server.put("myapp/a", "1")
    with hub_for(spec(server)) as hub:
        ev = Events(hub)
        server.wait_for_blocked(1)
        fault = server.inject_status(500, times=None, path_prefix="/v1/kv/")
        server.put("myapp/b", "x")  # answers the parked query; the next ones get 500
        ev.wait(lambda: bool(ev.errors))
        server.put("myapp/a", b"\xff")
        fault.clear()
        ev.wait(lambda: any(isinstance(e.error, SourceFormatError) for e in ev.errors))
        server.reset_requests()
        time.sleep(1.5)
        assert server.request_count("/v1/kv/") <= 3
        assert hub.get("a") == "1"
        server.put("myapp/a", "2")
        ev.wait(lambda: hub.get("a") == "2")


def test_document_missing_at_start_is_unavailable(server: ConsulTestServer) -> None:
    """A document key that does not exist makes a required source unavailable (StartupError),
    naming the key and the fix, as a missing file does."""
    with pytest.raises(StartupError, match="does not exist") as info:
        hub_for(spec(server, "myapp/nothere.json", "format=json")).start()
    assert isinstance(info.value.attempts[-1][1], SourceUnavailableError)
    assert "'myapp/nothere.json'" in str(info.value)
    assert "add ?optional=true" in str(info.value)


def test_optional_document_missing_is_empty_and_follows_the_key(
    server: ConsulTestServer,
) -> None:
    """With optional=true a missing document key is an empty layer; written, it applies;
    deleted again while watched, its keys go away; written again, they come back."""
    with hub_for(spec(server, "myapp/config", "format=json&optional=true")) as hub:
        assert dict(hub.snapshot().flat()) == {}
        assert health(hub).state == "absent"
        ev = Events(hub)
        server.put("myapp/config", b'{"a": 1}')
        ev.wait(lambda: hub.get("a", None) == 1)
        until(lambda: health(hub).state == "live")
        server.delete("myapp/config")
        ev.wait(lambda: hub.get("a", None) is None)
        until(lambda: health(hub).state == "absent")
        server.put("myapp/config", b'{"a": 2}')
        ev.wait(lambda: hub.get("a", None) == 2)
        assert not ev.errors


# -- watch edge cases ----------------------------------------------------------------------


def test_wakeups_without_change_notify_nobody_and_do_not_spin(server: ConsulTestServer) -> None:
    """Blocking queries that time out, and idempotent writes, give no callback and no spin."""
    server.put("myapp/a", "1")
    with hub_for(spec(server)) as hub:
        ev = Events(hub)
        server.wait_for_blocked(1)
        server.reset_requests()
        server.put("myapp/a", "1")  # idempotent: Consul keeps the index, wakes nobody
        time.sleep(2.3)  # two 1 s waits (+ jitter) time out
        assert not ev.changes
        assert not ev.errors
        assert server.request_count("/v1/kv/") <= 4
        assert hub.generation == 1


def test_index_going_backwards_resyncs(server: ConsulTestServer) -> None:
    """After a snapshot restore (lower index) the watch resets and still sees changes."""
    for i in range(5):
        server.put(f"myapp/k{i}", str(i))
    with hub_for(spec(server)) as hub:
        ev = Events(hub)
        server.wait_for_blocked(1)
        server.reset_index(to=1)  # every index drops to 1; blocked queries return
        time.sleep(0.3)
        server.reset_requests()
        server.put("myapp/k0", "changed")  # index 2: lower than before the restore
        ev.wait(lambda: hub.get("k0") == "changed")
        server.delete("myapp/k1")
        ev.wait(lambda: hub.get("k1", None) is None)
        assert not ev.errors
        # Never an index-0 busy loop: a handful of requests, not hundreds.
        assert server.request_count("/v1/kv/") < 20


def test_index_floor_never_busy_loops(server: ConsulTestServer) -> None:
    """With the index at its floor (1) the loop still blocks instead of spinning."""
    server.put("myapp/a", "1")
    with hub_for(spec(server)) as hub:
        server.wait_for_blocked(1)
        server.reset_index(to=1)
        time.sleep(0.2)
        server.reset_requests()
        time.sleep(1.5)
        assert server.request_count("/v1/kv/") <= 4
        assert hub.get("a") == "1"


def test_hung_connection_recovers_and_close_is_prompt(server: ConsulTestServer) -> None:
    """A request that never answers times out client-side; the watch then carries on."""
    server.put("myapp/a", "1")
    with hub_for(spec(server)) as hub:
        ev = Events(hub)
        server.wait_for_blocked(1)
        server.hang(times=1, path_prefix="/v1/kv/")
        server.put("myapp/a", "2")  # wakes the parked query; its successor hangs
        ev.wait(lambda: hub.get("a") == "2")
        until(lambda: server.hung_requests == 1)
        server.put("myapp/a", "3")  # seen once the hung request timed out (~2.1 s)
        ev.wait(lambda: hub.get("a") == "3")
        server.hang(times=None, path_prefix="/v1/kv/")
        server.put("myapp/a", "4")  # the next query hangs until close()
        until(lambda: server.hung_requests >= 1)
        t0 = time.monotonic()
    # close() woke the hung request: otherwise it would wait out the watch thread's 10 s join.
    assert time.monotonic() - t0 < 10.0
    server.clear_faults()


def _deadline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("confhub-consul-deadline")]


def test_header_drip_is_bounded_by_one_deadline(server: ConsulTestServer) -> None:
    """A server dripping its status line and headers (each recv succeeds, so a per-recv
    socket timeout never fires) is abandoned at the request's deadline: "no answer within",
    not retried; the connection then works on a fresh socket; close() joins the watchdog."""
    server.put("k", "v")
    conn = Connection("127.0.0.1", server.port, tls=None, connect_timeout=1.0, headers={})
    try:
        assert conn.request("GET", "/v1/kv/k", read_timeout=1.0).status == 200  # kept alive
        assert len(_deadline_threads()) == 1
        server.drip(0.05, times=None, path_prefix="/v1/kv/", headers=True)
        count = server.request_count("/v1/kv/")
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match=r"^no answer within 0\.5 s$"):
            conn.request("GET", "/v1/kv/k", read_timeout=0.5)
        elapsed = time.monotonic() - t0
        # At the deadline, never before it, and before the dripped headers could have
        # ended (100+ bytes at 0.05 s each): an order, not a pace (was: < 2.5 s).
        assert 0.45 <= elapsed < 100 * 0.05, elapsed
        assert server.request_count("/v1/kv/") == count + 1  # a timeout is never retried
        server.clear_faults()
        resp = conn.request("GET", "/v1/kv/k", query=[("raw", "")], read_timeout=1.0)
        assert (resp.status, resp.body) == (200, b"v")
        assert len(_deadline_threads()) == 1  # one watchdog per connection, reused
    finally:
        conn.close()
    assert _deadline_threads() == []
    with pytest.raises(Aborted):
        conn.request("GET", "/v1/kv/k", read_timeout=1.0)
    assert _deadline_threads() == []  # a closed connection never starts another


def test_header_drip_watch_gives_up_in_time_and_recovers(server: ConsulTestServer) -> None:
    """A blocking query whose answer drips its status line and headers is abandoned within
    wait*17/16 + timeout + margin; the error names the deadline; the watch recovers."""
    server.put("myapp/a", "1")
    with hub_for(spec(server)) as hub:
        ev = Events(hub)
        server.wait_for_blocked(1)
        server.drip(0.05, times=1, path_prefix="/v1/kv/", headers=True)
        count = server.request_count("/v1/kv/")  # the parked query included
        server.put("myapp/a", "2")  # wakes the parked query; the next answer drips
        until(lambda: server.request_count("/v1/kv/") >= count + 2)
        kv = [r for r in server.requests if r.path.startswith("/v1/kv/")]
        gave_up = kv[count + 1].at - kv[count].at  # the dripping request to its successor
        assert gave_up >= 1.0, gave_up  # the drip did hold it (wait=1 s when no change)
        assert gave_up < 5.0, gave_up  # the deadline, not the drip's end (5 s and more)
        server.put("myapp/a", "3")
        ev.wait(lambda: hub.get("a") == "3")
        assert any("no answer within" in str(e.error) for e in ev.errors), ev.errors
    assert _deadline_threads() == []


def test_hung_server_is_reported_after_one_read_timeout(server: ConsulTestServer) -> None:
    """A server that answers nothing is reported after one read timeout, not two (a timed
    out request on a kept-alive socket is not retried as if the socket had gone stale)."""
    server.put("myapp/a", "1")
    # The error backoff (1.5 s at least) keeps the next attempt well after the report.
    with hub_for(spec(server, extra="retry_initial=3&retry_max=3")) as hub:
        ev = Events(hub)
        server.wait_for_blocked(1)
        server.hang(times=None, path_prefix="/v1/kv/")
        server.reset_requests()
        server.put("myapp/a", "2")  # answers the parked query; every later one hangs
        ev.wait(lambda: bool(ev.errors))
        assert server.request_count("/v1/kv/") == 1  # the hung request, not retried
        assert isinstance(ev.errors[0].error, SourceUnavailableError)
    server.clear_faults()


def test_the_watch_tells_one_outage_once_whatever_its_messages_say(
    server: ConsulTestServer,
) -> None:
    """Issue 14, item 13: the watch classifies a failure by its type and attributes, never by
    words in its message. One outage whose answers vary (a 500 saying "No cluster leader",
    then 500s whose text says "connection refused", "cannot reach" or "closed") is told to
    the hub once; the old classifier took those words for other kinds of failure and told
    the hub again for each."""
    server.put("myapp/a", "1")
    backend = ConsulBackend(SourceSpec.parse(spec(server)))
    told: list[Any] = []
    lock = threading.Condition()

    def notify(update: Any) -> None:
        with lock:
            told.append(update)
            lock.notify_all()

    def errors() -> list[Any]:
        with lock:
            return [u for u in told if isinstance(u, Exception)]

    def wait(predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + BOUND
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {told}"
            time.sleep(0.02)

    try:
        backend.load()
        backend.watch(notify)
        server.wait_for_blocked(1)
        fault = server.inject_status(500, times=None, path_prefix="/v1/kv/")
        server.put("myapp/a", "2")  # the parked query answers; the next one meets the fault
        wait(lambda: bool(errors()), "the outage")
        for body in (
            "rpc error: connection refused by the leader",
            "cannot reach the servers",
            "stream closed",
        ):
            fault.clear()
            before = server.request_count("/v1/kv/")
            fault = server.inject_status(500, times=None, body=body, path_prefix="/v1/kv/")
            wait(lambda b=before: server.request_count("/v1/kv/") > b + 2, f"retries on {body!r}")
        fault.clear()
        server.put("myapp/a", "3")
        wait(lambda: not isinstance(told[-1], Exception), "the recovery")
    finally:
        backend.close()
    assert len(errors()) == 1, [str(e) for e in errors()]
    assert isinstance(errors()[0], SourceUnavailableError)


def test_close_racing_watch_joins_the_thread(
    server: ConsulTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close() that runs while watch() is starting the thread waits for it and joins it:
    no watch thread starts after close() returned."""
    server.put("myapp/a", "1")
    backend = ConsulBackend(SourceSpec.parse(spec(server)))
    backend.load()
    closed = threading.Event()
    closer = threading.Thread(target=lambda: (backend.close(), closed.set()))
    seen: list[bool] = []
    original = Watcher.start

    def start(self: Watcher) -> None:
        closer.start()
        closer.join(0.3)  # close() now, while watch() is between creating and starting
        seen.append(closed.is_set())
        original(self)

    monkeypatch.setattr(Watcher, "start", start)
    backend.watch(lambda update: None)
    closer.join(BOUND)
    assert seen == [False], "close() returned before the watch thread was started"
    assert not any(t.name.startswith("confhub-consul-watch") for t in threading.enumerate())


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_then_recovery_with_changes_made_meanwhile(
    server: ConsulTestServer, status: int
) -> None:
    """Errors for a while: one ErrorEvent, values kept, then the changes made meanwhile."""
    server.put("myapp/a", "1")
    server.put("myapp/b", "1")
    with hub_for(spec(server)) as hub:
        ev = Events(hub)
        server.wait_for_blocked(1)
        fault = server.inject_status(status, times=None, path_prefix="/v1/kv/")
        # The parked query answers normally; the next one runs into the fault.
        server.put("myapp/a", "2")
        ev.wait(lambda: bool(ev.errors))
        server.put("myapp/a", "3")
        time.sleep(0.8)  # several retries while it fails
        assert len(ev.errors) == 1  # reported once, not per retry
        assert isinstance(ev.errors[0].error, SourceUnavailableError)
        assert str(status) in str(ev.errors[0].error)
        assert hub.get("a") == "2"
        assert health(hub).state == "stale"
        server.delete("myapp/b")
        server.put("myapp/c", "new")
        fault.clear()
        ev.wait(lambda: hub.get("c", None) == "new")
        assert hub.get("a") == "3"
        assert hub.get("b", None) is None
        until(lambda: health(hub).state == "live")
        assert len(ev.errors) == 1


def test_dropped_connections_then_recovery(server: ConsulTestServer) -> None:
    """Connections closed without an answer are retried with backoff until answered."""
    server.put("myapp/a", "1")
    with hub_for(spec(server)) as hub:
        ev = Events(hub)
        server.wait_for_blocked(1)
        fault = server.drop_connections(times=None, path_prefix="/v1/kv/")
        server.put("myapp/a", "2")
        ev.wait(lambda: bool(ev.errors))
        server.put("myapp/a", "3")
        fault.clear()
        ev.wait(lambda: hub.get("a") == "3")
        assert len(ev.errors) == 1


def test_connection_refused_then_a_new_agent_on_the_same_port(tmp_path: Path) -> None:
    """Consul goes away (refused) and comes back with other data: the hub follows it."""
    first = ConsulTestServer(default_query_time=2, max_query_time=3).start()
    port = first.port
    try:
        first.put("myapp/a", "1")
        hub = hub_for(spec(first)).start()
    except BaseException:
        first.stop()
        raise
    try:
        ev = Events(hub)
        first.stop()  # the parked query ends; every retry is refused
        ev.wait(lambda: bool(ev.errors))
        assert "cannot reach Consul" in str(ev.errors[0].error)
        assert hub.get("a") == "1"
        with ConsulTestServer(port=port, default_query_time=2, max_query_time=3) as second:
            second.put("myapp/a", "from the new agent")
            second.put("myapp/b", "2")
            ev.wait(lambda: hub.get("b", None) == "2")
            assert hub.get("a") == "from the new agent"
            until(lambda: health(hub).state == "live")
            hub.close()
        assert len(ev.errors) == 1
    finally:
        hub.close()


def test_403_on_the_prefix_is_a_permission_error_and_values_stay(
    server: ConsulTestServer,
) -> None:
    """A 403 shows as SourcePermissionError in health; no key is deleted."""
    server.put("myapp/a", "1")
    with hub_for(spec(server)) as hub:
        ev = Events(hub)
        server.wait_for_blocked(1)
        fault = server.inject_status(403, times=None, path_prefix="/v1/kv/")
        server.put("myapp/a", "2")  # answered by the parked query; the next one gets 403
        ev.wait(lambda: bool(ev.errors))
        server.delete("myapp/a")
        time.sleep(0.5)
        assert isinstance(ev.errors[0].error, SourcePermissionError)
        h = health(hub)
        assert h.state == "stale"
        assert "refused" in (h.last_error or "")
        assert hub.get("a") == "2"  # a refusal is not a deletion
        server.put("myapp/a", "3")
        fault.clear()
        ev.wait(lambda: hub.get("a") == "3")
        assert len(ev.errors) == 1


def test_acl_filtered_listing_is_not_a_deletion() -> None:
    """A token that loses read on part of the prefix gives a permission error, not deletes."""
    full = AclToken(secret_id="reader-token", key_prefix={"myapp/": "read"})
    admin = AclToken(secret_id="admin-token", management=True)
    with ConsulTestServer(
        acl_enabled=True, acl_default_policy="deny", tokens=[full, admin],
        default_query_time=2, max_query_time=3,
    ) as srv:  # fmt: skip
        srv.put("myapp/a", "1")
        srv.put("myapp/secret/x", "2")
        with hub_for(spec(srv, extra="token=reader-token")) as hub:
            ev = Events(hub)
            assert hub.get("secret.x") == "2"
            srv.wait_for_blocked(1)
            srv.remove_token("reader-token")
            srv.add_token(
                AclToken(
                    secret_id="reader-token",
                    key_prefix={"myapp/": "read", "myapp/secret/": "deny"},
                )
            )
            srv.put("myapp/a", "changed")
            ev.wait(lambda: bool(ev.errors))
            assert isinstance(ev.errors[0].error, SourcePermissionError)
            assert "filtered" in str(ev.errors[0].error)
            assert hub.get("secret.x") == "2"  # hidden, not deleted
            assert "reader-token" not in str(ev.errors[0].error)


# -- consistency=stale and max_last_contact ----------------------------------------------------


def _reads(server: ConsulTestServer) -> tuple[int, int]:
    """(stale reads, leader reads) of the prefix in the request log."""
    gets = [r for r in server.requests if r.method == "GET" and r.path == "/v1/kv/myapp/"]
    stale = sum(1 for r in gets if "stale" in r.query)
    return stale, len(gets) - stale


def test_stale_answer_over_max_last_contact_is_asked_of_the_leader(
    server: ConsulTestServer,
) -> None:
    """With consistency=stale, an answer whose X-Consul-LastContact is over
    max_last_contact is asked again without ?stale, at load and in the watch; an answer
    within the bound is used as it is."""
    server.put("myapp/a", "1")
    server.set_last_contact(3.0)
    with hub_for(spec(server, extra="consistency=stale&max_last_contact=1")) as hub:
        ev = Events(hub)
        assert _reads(server) == (1, 1)  # the load
        server.wait_for_blocked(1)
        server.put("myapp/a", "2")
        ev.wait(lambda: hub.get("a") == "2")
        server.wait_for_blocked(1)
        stale, leader = _reads(server)
        assert leader == 2
        assert stale == 3  # the load, the answered watch query, the parked one
        server.set_last_contact(0.5)
        server.reset_requests()
        server.put("myapp/a", "3")
        ev.wait(lambda: hub.get("a") == "3")
        server.wait_for_blocked(1)
        assert _reads(server) == (1, 0)  # the next parked query; no leader read
        assert not ev.errors


def test_too_stale_answer_with_no_leader_keeps_the_last_good(server: ConsulTestServer) -> None:
    """A too-stale answer while the cluster has no leader cannot be checked with the leader:
    an unavailable error naming max_last_contact, last good kept; the leader's return
    brings the changes."""
    server.put("myapp/a", "1")
    with hub_for(spec(server, extra="consistency=stale&max_last_contact=1")) as hub:
        ev = Events(hub)
        server.wait_for_blocked(1)
        server.set_leader(False)
        server.set_last_contact(3.0)
        server.put("myapp/a", "2")  # answers the parked query, too stale; the leader is gone
        ev.wait(lambda: bool(ev.errors))
        err = ev.errors[0].error
        assert isinstance(err, SourceUnavailableError)
        assert "max_last_contact=1s" in str(err)
        assert "No cluster leader" in str(err)
        assert hub.get("a") == "1"
        server.clear_faults()
        ev.wait(lambda: hub.get("a") == "2")
        until(lambda: health(hub).state == "live")


@pytest.mark.parametrize(
    ("header", "too_stale"),
    [("0", False), ("1000", False), ("1001", True), (None, True), ("soon", True)],
)
def test_last_contact_header_is_checked_strictly(header: str | None, too_stale: bool) -> None:
    """Over the bound, missing or unreadable X-Consul-LastContact: asked again."""
    options = ConsulOptions.from_spec(
        SourceSpec.parse("consul://127.0.0.1:1/x/?consistency=stale&max_last_contact=1")
    )
    headers = {} if header is None else {"x-consul-lastcontact": header}
    assert (ConsulReader(options).too_stale(Response(200, headers, b"[]")) is not None) is (
        too_stale
    )


# -- ACL token ------------------------------------------------------------------------------


@pytest.fixture
def acl_server() -> Iterator[ConsulTestServer]:
    tokens = [
        AclToken(secret_id="good-token", key_prefix={"myapp/": "write"}),
        AclToken(secret_id="other-token", key_prefix={"elsewhere/": "read"}),
    ]
    with ConsulTestServer(
        acl_enabled=True, acl_default_policy="deny", tokens=tokens,
        default_query_time=2, max_query_time=3,
    ) as srv:  # fmt: skip
        srv.put("myapp/a", "1")
        yield srv


def test_token_option_beats_the_environment(
    acl_server: ConsulTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``?token=`` wins over CONSUL_HTTP_TOKEN (py-consul would do the opposite)."""
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "other-token")
    with hub_for(spec(acl_server, extra="token=good-token")) as hub:
        assert hub.get("a") == "1"
        assert hub.write("b", "2") > 0  # the token is sent on /v1/txn too


def test_token_from_the_environment(
    acl_server: ConsulTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``?token=``, CONSUL_HTTP_TOKEN is used."""
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "good-token")
    with hub_for(spec(acl_server)) as hub:
        assert hub.get("a") == "1"


def test_denied_token_fails_start_without_leaking_it(
    acl_server: ConsulTestServer, tmp_path: Path
) -> None:
    """A 403 at start is a StartupError naming the refusal; the token appears nowhere."""
    text = spec(acl_server, extra="token=other-token")
    with pytest.raises(StartupError) as info:
        hub_for(text, cache_dir=tmp_path).start()
    assert isinstance(info.value.attempts[-1][1], SourcePermissionError)
    assert "other-token" not in str(info.value)
    backend = confhub.Hub([]).make_backend(SourceSpec.parse(text))
    assert "other-token" not in repr(backend)
    assert "other-token" not in repr(backend.opts)  # type: ignore[attr-defined]
    backend.close()


def test_token_never_in_explain_health_or_cache_names(
    acl_server: ConsulTestServer, tmp_path: Path
) -> None:
    """The token stays out of explain, health, the source name and cache file names."""
    with hub_for(spec(acl_server, extra="token=good-token"), cache_dir=tmp_path) as hub:
        text = repr(hub.explain("a")) + repr(hub.health()) + repr(hub.sources) + repr(hub)
        assert "good-token" not in text
    for path in tmp_path.rglob("*"):
        assert "good-token" not in path.name
        if path.is_file():
            assert b"good-token" not in path.read_bytes()


def test_core_cache_options_are_accepted_and_honoured(
    server: ConsulTestServer, tmp_path: Path
) -> None:
    """``cache_secrets=false`` and ``max_stale=`` (read by the core, not the backend) are
    accepted on a consul:// spec: the cache keeps the secret out, and a hub started while
    Consul answers 503 serves the rest from it."""
    server.put("myapp/db/host", "db1")
    server.put("myapp/db/password", "s3cret-value")
    text = spec(server, extra="cache_secrets=false&max_stale=3600")
    with hub_for(text, cache_dir=tmp_path) as hub:
        assert hub.get("db.password") == "s3cret-value"
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files
    assert all(b"s3cret-value" not in p.read_bytes() for p in files)
    server.inject_status(503, times=None)
    with hub_for(text, cache_dir=tmp_path) as hub:
        assert hub.health().sources[0].state == "cached"
        assert hub.get("db.host") == "db1"
        assert hub.get("db.password", None) is None


# -- TLS ------------------------------------------------------------------------------------


def _make_certs(directory: Path) -> dict[str, Path]:
    now = datetime.datetime.now(datetime.UTC)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("test ca"))
        .issuer_name(name("test ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    out: dict[str, Path] = {"ca": directory / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    for who, san in (("server", x509.SubjectAlternativeName([loopback])), ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(who))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        out[f"{who}_cert"] = directory / f"{who}.pem"
        out[f"{who}_key"] = directory / f"{who}.key"
        out[f"{who}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{who}_key"].write_bytes(key_pem(key))
    return out


def test_tls_with_client_certificate(tmp_path: Path) -> None:
    """HTTPS with a private CA and a required client certificate: load, watch and write."""
    certs = _make_certs(tmp_path)
    with ConsulTestServer(
        tls_cert=certs["server_cert"], tls_key=certs["server_key"], tls_client_ca=certs["ca"],
        default_query_time=2, max_query_time=3,
    ) as srv:  # fmt: skip
        srv.put("myapp/a", "1")
        tls = f"scheme=https&ca={certs['ca']}&cert={certs['client_cert']}&key={certs['client_key']}"
        with hub_for(spec(srv, extra=tls)) as hub:
            ev = Events(hub)
            assert hub.get("a") == "1"
            hub.write("a", "2")
            ev.wait(lambda: hub.get("a") == "2")
        # Without the client certificate the handshake fails: unavailable, not a crash.
        with pytest.raises(StartupError, match="cannot reach Consul"):
            hub_for(spec(srv, extra=f"scheme=https&ca={certs['ca']}")).start()
        # An unknown CA is refused too.
        with pytest.raises(StartupError):
            hub_for(spec(srv, extra="scheme=https")).start()


# -- writes ---------------------------------------------------------------------------------


def test_cas_writes_and_conflicts(target: Any) -> None:
    """expected_revision 0 creates once; a stale ModifyIndex loses with WriteConflictError."""
    target.wipe()
    with hub_for(spec(target, extra="consistency=consistent")) as hub:
        rev = hub.write("db.port", "5432", expected_revision=0)
        assert rev == target.entry("myapp/db/port")["ModifyIndex"]
        with pytest.raises(WriteConflictError) as info:
            hub.write("db.port", "1", expected_revision=0)
        assert info.value.actual == rev
        rev2 = hub.write("db.port", "5433", expected_revision=rev)
        assert rev2 > rev
        with pytest.raises(WriteConflictError):
            hub.write("db.port", "9", expected_revision=rev)
        with pytest.raises(WriteConflictError):
            hub.write("db.missing", "9", expected_revision=rev2)
        assert hub.write("db.plain", "x") > 0
        until(lambda: hub.get("db.port", None) == "5433")
        assert hub.get("db.port") == "5433"


def test_index_read_after_a_write_is_not_stale(server: ConsulTestServer) -> None:
    """With consistency=stale, the ModifyIndex read after a write (large PUT, lost CAS) is
    asked of the leader: a stale server may not have the write yet."""
    with hub_for(spec(server, extra="consistency=stale")) as hub:
        server.reset_requests()
        big = "x" * 400_000  # over the txn body limit once base64'd: plain PUT, then a read
        index = hub.write("big", big)
        assert index == server.get("myapp/big").modify_index
        with pytest.raises(WriteConflictError):
            hub.write("big", "y", expected_revision=index + 100)
        gets = [r for r in server.requests if r.method == "GET" and r.path == "/v1/kv/myapp/big"]
        reads = [r for r in gets if "keys" not in r.query]
        assert len(reads) == 2
        # Each write first lists the keys it could clash with (kv.check_write_shape), of
        # the leader too.
        assert len(gets) - len(reads) == 2
        assert all("stale" not in r.query for r in gets)


def test_refused_keys_and_values_never_reach_the_wire(server: ConsulTestServer) -> None:
    """Keys Consul would redirect and values over 512 KiB are refused client-side."""
    with hub_for(spec(server)) as hub:
        server.reset_requests()
        for bad in ("a..b", ".a", "a.", "", "a/b", "a b", "a.%2e"):
            with pytest.raises(WriteError):
                hub.write(bad, "v")
        with pytest.raises(WriteError, match="512 KiB"):
            hub.write("big", b"x" * (524_288 + 1))
        with pytest.raises(WriteError):
            hub.write("n", "v", expected_revision=-1)
        assert server.request_count("/v1/txn") == 0
        assert server.request_count("/v1/kv/", method="PUT") == 0
        # Exactly the limit is fine (too big for a txn body: a plain PUT is used).
        rev = hub.write("big", b"y" * 524_288)
        entry = server.get("myapp/big")
        assert entry is not None
        assert entry.value == b"y" * 524_288
        assert rev == entry.modify_index


@pytest.mark.parametrize(
    ("fmt", "doc"),
    [
        ("json", b'{"db": {"port": 5432}, "name": "app"}'),
        ("yaml", b"db:\n  port: 5432\nname: app\n"),
        ("toml", b'name = "app"\n[db]\nport = 5432\n'),
    ],
)
def test_document_writes_are_read_modify_cas(
    server: ConsulTestServer, fmt: str, doc: bytes
) -> None:
    """A write into a document source sets the dotted key inside the document, in its
    format, with CAS on the document key's ModifyIndex; the watch delivers it."""
    server.put("myapp/config", doc)
    with hub_for(spec(server, "myapp/config", f"format={fmt}")) as hub:
        rev = hub.write("db.port", 6543)
        entry = server.get("myapp/config")
        assert entry is not None
        assert rev == entry.modify_index
        assert hub.write("db.user", "admin", expected_revision=rev) > rev
        until(lambda: hub.get("db.user", None) == "admin")
        assert hub.get("db.port") == 6543
        assert hub.get("name") == "app"


def test_document_write_conflicts(server: ConsulTestServer) -> None:
    """expected_revision is the document key's ModifyIndex: a stale one, or 0 for an
    existing document, raises WriteConflictError with both revisions."""
    entry = server.put("myapp/config", b'{"a": 1}')
    with hub_for(spec(server, "myapp/config", "format=json")) as hub:
        with pytest.raises(WriteConflictError) as info:
            hub.write("a", 2, expected_revision=0)
        assert info.value.actual == entry.modify_index
        rev = hub.write("a", 2, expected_revision=entry.modify_index)
        with pytest.raises(WriteConflictError) as info:
            hub.write("a", 3, expected_revision=entry.modify_index)
        assert (info.value.expected, info.value.actual) == (entry.modify_index, rev)
    assert server.get("myapp/config").value == b'{\n  "a": 2\n}\n'  # type: ignore[union-attr]


def test_document_write_retries_a_lost_race_then_gives_up(server: ConsulTestServer) -> None:
    """A plain write whose CAS loses (another writer between the read and the write) reads
    again and retries; a document that keeps changing is a WriteConflictError."""
    server.put("myapp/config", b'{"a": 1}')
    stale = '{"Errors":[{"OpIndex":0,"What":"failed to set key: index is stale"}],"Results":null}'
    with hub_for(spec(server, "myapp/config", "format=json")) as hub:
        server.inject_status(409, times=2, path_prefix="/v1/txn", body=stale)
        assert hub.write("a", 2) == server.get("myapp/config").modify_index  # type: ignore[union-attr]
        server.inject_status(409, times=None, path_prefix="/v1/txn", body=stale)
        with pytest.raises(WriteConflictError, match="kept changing"):
            hub.write("a", 3)
        server.clear_faults()
        until(lambda: hub.get("a") == 2)


@pytest.mark.parametrize(
    ("key", "shadowed"),
    [("db", "db.port"), ("db.port.x", "'db.port' holds a value"), ("name.first", "'name'")],
)
def test_document_write_that_would_shadow_is_refused(
    server: ConsulTestServer, key: str, shadowed: str
) -> None:
    """A value over a table, or a table over a value, is refused naming what it would hide,
    before anything is written."""
    server.put("myapp/config", b'{"db": {"port": 5432}, "name": "app"}')
    with hub_for(spec(server, "myapp/config", "format=json")) as hub:
        server.reset_requests()
        with pytest.raises(WriteError, match="would shadow|would turn it into a table") as info:
            hub.write(key, "x")
        assert shadowed in str(info.value)
        assert server.request_count("/v1/txn") == 0


@pytest.mark.parametrize(
    ("key", "shadowed"),
    [
        ("db", "'db.host', 'db.port'"),
        ("db.port.x", "'db.port' holds a value"),
        ("name.a", "'name'"),
    ],
)
def test_tree_write_that_would_shadow_is_refused_before_anything_is_sent(
    server: ConsulTestServer, key: str, shadowed: str
) -> None:
    """In the tree layout too (issue 14, item 5): the keys under the write's scope are
    listed first, and a value over a table or a key under a value is refused (Consul would
    accept it, and the prefix could then no longer be read)."""
    server.put("myapp/db/host", b"h")
    server.put("myapp/db.port", b"5432")  # dots nest too
    server.put("myapp/name", b"app")
    with hub_for(spec(server, "myapp/")) as hub:
        server.reset_requests()
        with pytest.raises(WriteError, match="would shadow|would turn it into a table") as info:
            hub.write(key, "x")
        assert shadowed in str(info.value)
        assert server.request_count("/v1/txn") == 0
        assert server.request_count("/v1/kv/", method="PUT") == 0
        hub.write("db.user", "u")
        assert server.get("myapp/db/user").value == b"u"  # type: ignore[union-attr]


def test_a_write_naming_a_fallback_member_goes_to_that_member(server: ConsulTestServer) -> None:
    """Issue 14, item 6: with the primary serving, a write naming the alternate goes to the
    alternate's Consul, and expected_revision is the alternate's ModifyIndex (the primary's
    index space is another)."""
    with ConsulTestServer(default_query_time=2, max_query_time=3) as alternate:
        for i in range(5):
            server.put("myapp/db/port", f"p{i}")  # the primary's ModifyIndex runs ahead
        alternate.put("myapp/db/port", "alt")
        primary_index = server.get("myapp/db/port").modify_index  # type: ignore[union-attr]
        alternate_index = alternate.get("myapp/db/port").modify_index  # type: ignore[union-attr]
        assert primary_index != alternate_index
        member = SourceSpec.parse(spec(alternate)).display
        with hub_for(Fallback(spec(server), spec(alternate))) as hub:
            assert hub.health().sources[0].active == SourceSpec.parse(spec(server)).display
            with pytest.raises(WriteConflictError) as info:
                hub.write("db.port", "x", source=member, expected_revision=primary_index)
            assert info.value.actual == alternate_index
            hub.write("db.port", "cas", source=member, expected_revision=alternate_index)
        assert alternate.get("myapp/db/port").value == b"cas"  # type: ignore[union-attr]
        assert server.get("myapp/db/port").value == b"p4"  # type: ignore[union-attr]


def test_document_write_into_a_malformed_document_is_refused(server: ConsulTestServer) -> None:
    """A document key holding a broken document is not overwritten by a key write."""
    server.put("myapp/config", b'{"a": 1}')
    with hub_for(spec(server, "myapp/config", "format=json")) as hub:
        server.put("myapp/config", b'{"a": ')
        with pytest.raises(WriteError, match="does not hold a valid json document"):
            hub.write("a", 2)
    assert server.get("myapp/config").value == b'{"a": '  # type: ignore[union-attr]


def test_document_write_creates_a_missing_document(server: ConsulTestServer) -> None:
    """An optional document source whose key is missing is written as a new document."""
    with hub_for(spec(server, "myapp/config", "format=json&optional=true")) as hub:
        assert hub.get("db.port", None) is None
        hub.write("db.port", 1, expected_revision=0)
        until(lambda: hub.get("db.port", None) == 1)
    assert server.get("myapp/config").value == b'{\n  "db": {\n    "port": 1\n  }\n}\n'  # type: ignore[union-attr]


def test_cli_set_with_if_revision(server: ConsulTestServer) -> None:
    """``confhub set consul://... KEY VALUE --if-revision N`` writes with CAS."""
    out = io.StringIO()
    url = spec(server)
    assert cli_main(["set", url, "db.port", "5432", "--if-revision", "0"], out=out) == 0
    entry = server.get("myapp/db/port")
    assert entry is not None
    assert entry.value == b"5432"
    assert f"revision {entry.modify_index}" in out.getvalue()
    assert cli_main(["set", url, "db.port", "1", "--if-revision", "0"], out=out) != 0
    good = str(entry.modify_index)
    assert cli_main(["set", url, "db.port", "5433", "--if-revision", good], out=out) == 0
    entry2 = server.get("myapp/db/port")
    assert entry2 is not None
    assert entry2.value == b"5433"


# -- cache and startup -------------------------------------------------------------------


def test_start_with_consul_down_serves_the_cache_then_goes_live(tmp_path: Path) -> None:
    """A warm cache serves while Consul is down; the hub goes live when it comes back."""
    first = ConsulTestServer(default_query_time=2, max_query_time=3).start()
    port = first.port
    try:
        first.put("myapp/db/port", "5432")
        text = spec(first)
        with hub_for(text, cache_dir=tmp_path) as hub:
            assert hub.get("db.port") == "5432"
    finally:
        first.stop()
    hub = hub_for(text, cache_dir=tmp_path)
    hub.start()
    try:
        assert hub.get("db.port") == "5432"
        assert health(hub).state == "cached"
        with ConsulTestServer(port=port, default_query_time=2, max_query_time=3) as second:
            second.put("myapp/db/port", "6000")
            until(lambda: hub.get("db.port") == "6000")
            until(lambda: health(hub).state == "live")
            ev = Events(hub)
            second.put("myapp/db/port", "6001")  # the watch runs after the recovery
            ev.wait(lambda: hub.get("db.port") == "6001")
            hub.close()
    finally:
        hub.close()


def test_start_with_consul_down_and_no_cache_fails(tmp_path: Path) -> None:
    """No agent and no cache: StartupError naming the source."""
    probe = ConsulTestServer().start()
    port = probe.port
    probe.stop()
    with pytest.raises(StartupError, match="cannot reach Consul"):
        hub_for(f"consul://127.0.0.1:{port}/myapp/?{FAST}", cache_dir=tmp_path).start()


@pytest.mark.parametrize("password", ["pa#ss", "pa?ss", "pa/ss", "p@ss"])
def test_user_info_with_special_characters_is_refused_without_showing_it(password: str) -> None:
    """consul://u:PASSWORD@h:8500/a/: the core's parsed parts show user info (Consul takes
    the ACL token as ?token= or CONSUL_HTTP_TOKEN), refused with the fix; no piece of the
    password is in the error, and the options after it still parse."""
    s = SourceSpec.parse(f"consul://u:{password}@h:8500/a/?consistency=stale")
    assert dict(s.options) == {"consistency": "stale"}
    with pytest.raises(SpecError) as info:
        confhub.Hub([]).make_backend(s)
    message = str(info.value)
    assert "?token=" in message
    assert password not in message
    assert "u:pa" not in message
    assert "ss@" not in message


def test_address_comes_from_the_core_parser() -> None:
    """Host, port and prefix come from SourceSpec.url_parts; IPv6 and the default port."""
    for text, host, port, prefix in (
        ("consul://H.example:8511/a/", "h.example", 8511, "a/"),
        ("consul://[::1]:8500/a/b/", "::1", 8500, "a/b/"),
        ("consul:///a/", "127.0.0.1", 8500, "a/"),
    ):
        opts = ConsulOptions.from_spec(SourceSpec.parse(text))
        assert (opts.host, opts.port, opts.prefix) == (host, port, prefix)


def test_cache_principal_is_the_token_from_the_spec_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The backend declares its ACL token as the cache principal (the option wins over
    CONSUL_HTTP_TOKEN); no token, no principal."""
    hub = confhub.Hub([])
    assert hub.make_backend(SourceSpec.parse("consul://h:8500/a/")).cache_principal is None
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "env-token")
    backend = hub.make_backend(SourceSpec.parse("consul://h:8500/a/"))
    assert backend.cache_principal == "token:env-token"
    backend = hub.make_backend(SourceSpec.parse("consul://h:8500/a/?token=opt-token"))
    assert backend.cache_principal == "token:opt-token"

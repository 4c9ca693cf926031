"""``?max_keys=``: a tree listing over the cap is refused while it streams.

The store is the in-repo ``ConsulTestServer``, over HTTP (the transport is never mocked).
The 200,000-key test runs the server in a child process, as a real agent would be, so that
the RSS measured is the client's alone. Every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import confhub
import pytest
from confhub import ErrorEvent, SourceFormatError, SourceSpec, SpecError
from confhub._cache import source_identity

from confhub_consul._backend import ConsulBackend
from confhub_consul._http import Connection
from confhub_consul._reader import ENTRY_MARK, EntryCounter
from confhub_consul.testing import ConsulTestServer, server_process

FAST = "wait=1&timeout=1&retry_initial=0.05&retry_max=0.3"
BOUND = 8.0  # seconds any single expected event may take


@pytest.fixture
def server() -> Iterator[ConsulTestServer]:
    with ConsulTestServer(default_query_time=2, max_query_time=3) as srv:
        yield srv


def spec(address: str, extra: str = "", path: str = "myapp/") -> str:
    return f"consul://{address}/{path}?{FAST}" + (f"&{extra}" if extra else "")


def hub_for(source: str, **kw: Any) -> confhub.Hub:
    kw.setdefault("connect_timeout", 1.0)
    kw.setdefault("retry_initial", 0.05)
    kw.setdefault("retry_max", 0.3)
    return confhub.Hub([source], cache_dir=None, **kw)


def until(pred: Callable[[], object], timeout: float = BOUND, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"not in time: {what}"
        time.sleep(0.01)


def health(hub: confhub.Hub) -> Any:
    return hub.health().sources[0]


def _rss_bytes() -> int:
    """The resident set size of this process (Linux)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _listing(srv: ConsulTestServer, query: str = "recurse") -> bytes:
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    try:
        conn.request("GET", f"/v1/kv/myapp/?{query}")
        resp = conn.getresponse()
        assert resp.status == 200
        return resp.read()
    finally:
        conn.close()


def _feed(counter: EntryCounter, chunks: list[bytes]) -> None:
    for chunk in chunks:
        counter(chunk)


def _count(body: bytes, cuts: list[int]) -> int:
    counter = EntryCounter("src", cap=10**9)
    start = 0
    for cut in [*cuts, len(body)]:
        counter(body[start:cut])
        start = cut
    return counter.count


# -- the counter ---------------------------------------------------------------------------


def test_entry_counter_counts_marks_split_across_chunk_boundaries(
    server: ConsulTestServer,
) -> None:
    """Listings from the test server's encoder (compact and ``?pretty``), with keys holding
    quotes, backslashes and the mark's own text, a value holding it, and a folder marker:
    each entry is counted once however the body is cut (every two-chunk split, 1- to
    7-byte chunks), and the mark never occurs inside a key or value."""
    tricky = {
        'myapp/"Key":x': '"Key":',
        'myapp/q"uote': "v",
        "myapp/back\\": "\\",
        'myapp/\\"Key\\":': "v",
        "myapp/Key": '{"Key": 1}',
        "myapp/folder/": b"",
        "myapp/\u00e9<&>": "x",
    }
    for key, value in tricky.items():
        server.put(key, value)
    for i in range(20):
        server.put(f"myapp/k{i}", "v" * i)
    for body in (_listing(server), _listing(server, "recurse&pretty")):
        entries = len(json.loads(body))
        assert entries == 27
        assert body.count(ENTRY_MARK) == entries  # once per entry, never in a key or value
        for cut in range(len(body) + 1):
            assert _count(body, [cut]) == entries, cut
        for size in range(1, 8):
            assert _count(body, list(range(size, len(body), size))) == entries, size


def test_entry_counter_refuses_over_the_cap_with_a_stable_message() -> None:
    """Over the cap the counter raises naming cap + 1, whatever the chunk it crossed in."""
    entry = b'{"LockIndex":0,"Key":"myapp/k","Flags":0,"Value":"dg==","ModifyIndex":11},'
    for chunking in (1, 7, len(entry) * 3):
        counter = EntryCounter("consul://h:8500/myapp/", cap=5)
        body = b"[" + entry * 9
        chunks = [body[i : i + chunking] for i in range(0, len(body), chunking)]
        with pytest.raises(SourceFormatError) as info:
            _feed(counter, chunks)
        assert counter.count >= 6
        assert str(info.value) == (
            "consul://h:8500/myapp/: at least 6 keys, more than max_keys=5; refusing them "
            "(stopped reading at 6 keys): raise ?max_keys= on the source if that many keys "
            "are intended, or delete the runaway keys"
        )
        assert info.value.source == "consul://h:8500/myapp/"


# -- the transport ---------------------------------------------------------------------------


def test_a_guard_stops_the_read_drops_the_connection_and_its_error_propagates(
    server: ConsulTestServer,
) -> None:
    """A guard raising mid-body: its own error propagates (not retried), the socket is
    dropped (the rest of the body is in flight) and the next request uses a fresh one.
    The guard is made per response, from its status and headers."""
    server.put_many({f"myapp/k{i:05d}": "v" * 100 for i in range(5000)})  # ~1 MB listing
    seen: list[tuple[int, str | None]] = []
    chunks: list[int] = []

    class Stop(Exception):
        pass

    def check(chunk: bytes) -> None:
        chunks.append(len(chunk))
        if sum(chunks) > 100_000:
            raise Stop

    def guard(status: int, headers: Any) -> Callable[[bytes], None] | None:
        seen.append((status, headers.get("x-consul-index")))
        return check if status == 200 else None

    conn = Connection("127.0.0.1", server.port, tls=None, connect_timeout=1.0, headers={})
    try:
        assert conn.request("GET", "/v1/kv/myapp/k00000", read_timeout=5.0).status == 200
        assert conn.connected
        opened = conn.sockets_opened
        count = server.request_count("/v1/kv/")
        with pytest.raises(Stop):
            conn.request("GET", "/v1/kv/myapp/", query=[("recurse", "")], read_timeout=5.0,
                         guard=guard)  # fmt: skip
        assert not conn.connected  # dropped: never reused with a body half read
        assert server.request_count("/v1/kv/") == count + 1  # not retried
        assert seen == [(200, str(server.index))]
        assert 100_000 < sum(chunks) < 200_000
        missing = conn.request("GET", "/v1/kv/nothing", read_timeout=5.0, guard=guard)
        assert missing.status == 404
        assert seen[-1][0] == 404
        assert conn.connected
        assert conn.sockets_opened == opened + 1  # a fresh socket
    finally:
        conn.close()


# -- at start ----------------------------------------------------------------------------------


def test_a_runaway_prefix_is_refused_at_start_fast_and_in_bounded_memory() -> None:
    """200,000 keys and ``max_keys=100000``: start fails, faster than the full load, with the
    SourceFormatError naming the cap and the fix, having read about half the listing, with
    RSS growth bounded by the cap (not ~110 MiB for the whole listing); no thread is left
    behind. With the cap raised, the same prefix loads."""
    with server_process(200_000) as address:
        # Hang guards, not paces: under load this server took over 1 s to answer.
        with hub_for(
            spec(address, "timeout=120", path="nothing/"), connect_timeout=120, start_timeout=120
        ):
            pass  # imports and first-use allocations, outside the measurement
        threads = threading.active_count()
        rss = _rss_bytes()
        t0 = time.monotonic()
        with pytest.raises(SourceFormatError) as info:
            # Timeouts are hang guards: a loaded 2-core machine took over 5 s to answer.
            hub_for(
                spec(address, "max_keys=100000&timeout=120"),
                connect_timeout=120,
                start_timeout=120,
            ).start()
        took = time.monotonic() - t0
        grown = _rss_bytes() - rss
        print(f"refused in {took:.2f}s, RSS grew {grown / 2**20:.1f} MiB")
        message = str(info.value)
        assert message.startswith(f"consul://{address}/myapp/: at least 100,001 keys, "), message
        assert "more than max_keys=100,000" in message
        assert "stopped reading at 100,001 keys" in message
        assert "raise ?max_keys=" in message
        assert info.value.source == f"consul://{address}/myapp/"
        assert grown < 32 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB"
        until(lambda: threading.active_count() <= threads, 30, "the hub's threads to end")
        raised = spec(address, "max_keys=200000&timeout=300")
        t0 = time.monotonic()
        with hub_for(raised, connect_timeout=300, start_timeout=300) as hub:
            full = time.monotonic() - t0
            assert hub.get("k0199999") == "v"
            assert len(hub.snapshot().flat()) == 200_000
        # Against the full load in the same run, not a wall-clock bound (CI machines are
        # loaded): the refusal stops half-way through the listing.
        assert took < full, f"refused after {took:.2f}s, the full load took {full:.2f}s"


def test_the_cap_itself_loads_and_one_more_key_is_refused(server: ConsulTestServer) -> None:
    """``max_keys=N`` holds N keys; N + 1 is refused at start (content: no cache fallback)."""
    server.put_many({f"myapp/k{i}": "v" for i in range(50)})
    with hub_for(spec(server.address, "max_keys=50")) as hub:
        assert len(hub.snapshot().flat()) == 50
    server.put("myapp/k50", "v")
    with pytest.raises(SourceFormatError, match="at least 51 keys, more than max_keys=50;"):
        hub_for(spec(server.address, "max_keys=50")).start()


def test_a_dripping_listing_is_counted_byte_by_byte_and_refused(server: ConsulTestServer) -> None:
    """A listing sent one byte per recv is counted across every boundary and refused."""
    server.put_many({f"myapp/k{i:02d}": "v" for i in range(30)})
    server.drip(0.0002, times=1, path_prefix="/v1/kv/")
    with pytest.raises(SourceFormatError, match="at least 21 keys, more than max_keys=20;"):
        hub_for(spec(server.address, "max_keys=20&timeout=10")).start()
    server.clear_faults()


@pytest.mark.parametrize("value", ["0", "-5", "many", "1.5", "1e5", ""])
def test_a_bad_max_keys_is_a_spec_error(value: str) -> None:
    source = SourceSpec.parse(f"consul://127.0.0.1:1/myapp/?max_keys={value}")
    with pytest.raises(SpecError, match="max_keys"):
        ConsulBackend(source)


def test_max_keys_is_not_part_of_the_cache_identity() -> None:
    plain = SourceSpec.parse("consul://h:8500/myapp/")
    capped = SourceSpec.parse("consul://h:8500/myapp/?max_keys=10")
    assert source_identity(plain) == source_identity(capped)
    assert ConsulBackend(capped).opts.max_keys == 10
    assert ConsulBackend(plain).opts.max_keys == 1_000_000


# -- while watching ----------------------------------------------------------------------------


class Errors:
    def __init__(self, hub: confhub.Hub) -> None:
        self.events: list[ErrorEvent] = []
        hub.subscribe(lambda change: None, on_error=self.events.append)


def test_a_watched_prefix_growing_past_the_cap_goes_stale_and_recovers(
    server: ConsulTestServer,
) -> None:
    """3,000 keys written past ``max_keys=1000`` while watched: one SourceFormatError
    event, the source stale with its last good values, retried with the capped backoff
    (not a busy loop); after the keys are deleted, live again with every change made
    meanwhile."""
    server.put("myapp/a", "1")
    # timeout=10: a read timing out on a loaded machine would be a second kind of failure
    # (reported too), and this test counts the reports.
    with hub_for(spec(server.address, "max_keys=1000&timeout=10")) as hub:
        errors = Errors(hub)
        server.wait_for_blocked(1)
        server.put_many({f"myapp/x/k{i:04d}": "v" for i in range(3000)})
        until(lambda: health(hub).state == "stale", what="stale")
        until(lambda: bool(errors.events), what="the error event")
        error = errors.events[0].error
        assert isinstance(error, SourceFormatError)
        assert "at least 1,001 keys, more than max_keys=1,000" in str(error)
        assert "max_keys=1,000" in (health(hub).last_error or "")
        assert hub.get("a") == "1"
        assert len(hub.snapshot().flat()) == 1
        server.put("myapp/a", "2")  # held back while the prefix is too big
        server.reset_requests()
        time.sleep(1.5)
        # Backoff capped at 0.3 s with jitter in [0.5, 1]: at most ~1/0.15 reads a second.
        assert server.request_count("/v1/kv/") <= 1.5 / 0.15 + 4
        assert hub.get("a") == "1"
        assert health(hub).state == "stale"
        server.delete("myapp/x/", recurse=True)
        server.put("myapp/x/kept", "k")
        until(lambda: hub.get("a") == "2", what="the held-back change")
        until(lambda: health(hub).state == "live", what="live again")
        until(lambda: dict(hub.snapshot().flat()) == {"a": "2", "x.kept": "k"}, what="convergence")
        assert len(errors.events) == 1  # reported once, not once per retry


def test_a_watched_leaf_parent_clash_names_the_consul_keys(server: ConsulTestServer) -> None:
    """``myapp/db`` then ``myapp/db/host`` while watched: the error names both Consul keys,
    as the load does; deleting one brings the source back."""
    server.put("myapp/db", "x")
    with hub_for(spec(server.address)) as hub:
        errors = Errors(hub)
        server.wait_for_blocked(1)
        server.put("myapp/db/host", "h")
        until(lambda: bool(errors.events), what="the error event")
        message = str(errors.events[0].error)
        assert "Consul key 'myapp/db' is both a value and the parent of 'myapp/db/host'" in (
            message
        ), message
        assert hub.get("db") == "x"
        server.delete("myapp/db")
        until(lambda: hub.get("db.host", None) == "h", what="the fix")
        until(lambda: health(hub).state == "live", what="live again")

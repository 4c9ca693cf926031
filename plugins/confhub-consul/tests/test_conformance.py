"""Conformance tests: every numbered item of ``shared/consul-api.md`` section 4.

Tests taking ``target``/``acl_target`` run against the test server and, when a ``consul`` binary
is on PATH, against a real ``consul agent -dev``. Tests marked ``double_only`` exercise fault
injection or test-server knobs. Each docstring names its checklist item as ``[#N]``.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from typing import Any

import consul
import consul.exceptions
import pytest
import requests
from conftest import DEFAULT_QUERY_TIME, MAX_QUERY_TIME, Target, make_double

from confhub_consul._testserver import Engine, EngineConfig
from confhub_consul._teststate import ConsulState
from confhub_consul.testing import ConsulTestServer, ManualClock


class Call:
    """Run a callable in a thread and keep its result and elapsed time (bounded join)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.elapsed = -1.0
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(fn,))
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        start = time.monotonic()
        try:
            self.result = fn()
        except BaseException as exc:
            self.error = exc
        finally:
            self.elapsed = time.monotonic() - start
            self.done.set()

    def join(self, timeout: float = 15.0) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "call did not finish in time"
        if self.error is not None:
            raise self.error
        return self.result


def idx(resp: requests.Response) -> int:
    return int(resp.headers["X-Consul-Index"])


def settle(target: Target, count: int = 1) -> None:
    """Give blocking queries time to park (exact on the double, a sleep on real Consul)."""
    if target.server is not None:
        target.server.wait_for_blocked(count)
    else:
        time.sleep(0.3)


# ------------------------------------------------------------------------------ KV basics


def test_01_put_returns_true_json_without_index(target: Target, K: str) -> None:
    """[#1] PUT returns 200 ``true`` as application/json and no X-Consul-Index."""
    resp = target.http("PUT", f"/v1/kv/{K}/a", data=b"hello")
    assert resp.status_code == 200
    assert resp.text == "true"
    assert resp.headers["Content-Type"] == "application/json"
    assert "X-Consul-Index" not in resp.headers
    assert target.py().kv.put(f"{K}/b", "hello") is True


def test_02_get_single_key_shape(target: Target, K: str) -> None:
    """[#2] GET returns an array of one object with exactly Consul's fields and base64 Value."""
    target.put(f"{K}/a", b"hello")
    resp = target.http("GET", f"/v1/kv/{K}/a")
    assert resp.status_code == 200
    body = resp.json()
    assert isinstance(body, list)
    assert len(body) == 1
    entry = body[0]
    assert list(entry) == ["LockIndex", "Key", "Flags", "Value", "CreateIndex", "ModifyIndex"]
    assert entry["Value"] == "aGVsbG8="
    assert resp.headers["X-Consul-Index"] == str(entry["ModifyIndex"])
    index, data = target.py().kv.get(f"{K}/a")
    assert index == str(entry["ModifyIndex"])
    assert data["Value"] == b"hello"
    assert "Session" not in data


def test_03_create_and_modify_index(target: Target, K: str) -> None:
    """[#3] A new key has CreateIndex == ModifyIndex; an update keeps CreateIndex, raises Modify."""
    target.put(f"{K}/a", b"one")
    first = target.entry(f"{K}/a")
    assert first is not None
    assert first["CreateIndex"] == first["ModifyIndex"]
    target.put(f"{K}/a", b"two")
    second = target.entry(f"{K}/a")
    assert second is not None
    assert second["CreateIndex"] == first["CreateIndex"]
    assert second["ModifyIndex"] > first["ModifyIndex"]


def test_04_idempotent_write_keeps_index_and_does_not_wake(target: Target, K: str) -> None:
    """[#4] Writing the identical value and flags returns true, keeps ModifyIndex, wakes nobody."""
    target.put(f"{K}/a", b"same", flags=3)
    before = target.entry(f"{K}/a")
    assert before is not None
    watcher = Call(
        lambda: target.http(
            "GET", f"/v1/kv/{K}/a", params={"index": before["ModifyIndex"], "wait": "1s"}
        )
    )
    settle(target)
    assert target.http("PUT", f"/v1/kv/{K}/a", data=b"same", params={"flags": 3}).text == "true"
    resp = watcher.join()
    assert watcher.elapsed >= 0.95
    assert idx(resp) == before["ModifyIndex"]
    after = target.entry(f"{K}/a")
    assert after == before


def test_05_binary_round_trip_and_raw(target: Target, K: str) -> None:
    """[#5] All 256 byte values survive base64 and ``?raw``; raw is text/plain + nosniff."""
    blob = bytes(range(256))
    target.put(f"{K}/bin", blob)
    entry = target.entry(f"{K}/bin")
    assert entry is not None
    assert base64.b64decode(entry["Value"]) == blob
    raw = target.http("GET", f"/v1/kv/{K}/bin", params={"raw": ""})
    assert raw.status_code == 200
    assert raw.content == blob
    assert raw.headers["Content-Type"] == "text/plain"
    assert raw.headers["X-Content-Type-Options"] == "nosniff"
    assert raw.headers["Content-Length"] == "256"
    assert target.http("GET", f"/v1/kv/{K}/nope", params={"raw": ""}).status_code == 404
    assert target.py().kv.get(f"{K}/bin")[1]["Value"] == blob


def test_06_empty_value_is_null(target: Target, K: str) -> None:
    """[#6] An empty-body PUT reads back as ``"Value": null`` (py: None)."""
    target.put(f"{K}/empty", b"")
    resp = target.http("GET", f"/v1/kv/{K}/empty")
    assert resp.json()[0]["Value"] is None
    assert target.py().kv.get(f"{K}/empty")[1]["Value"] is None


def test_07_missing_key_404_with_meta(target: Target, K: str) -> None:
    """[#7] A missing key is 404 with an empty body and the three meta headers."""
    resp = target.http("GET", f"/v1/kv/{K}/missing")
    assert resp.status_code == 404
    assert resp.content == b""
    assert int(resp.headers["X-Consul-Index"]) >= 1
    assert resp.headers["X-Consul-KnownLeader"] == "true"
    assert resp.headers["X-Consul-LastContact"].isdigit()
    assert "Content-Type" not in resp.headers
    index, data = target.py().kv.get(f"{K}/missing")
    assert int(index) >= 1
    assert data is None


def test_08_flags(target: Target, K: str) -> None:
    """[#8] Flags are stored, reset by a PUT without flags, accept uint64 max, reject text."""
    target.put(f"{K}/f", b"v", flags=42)
    assert target.entry(f"{K}/f")["Flags"] == 42  # type: ignore[index]
    target.put(f"{K}/f", b"v")
    assert target.entry(f"{K}/f")["Flags"] == 0  # type: ignore[index]
    target.put(f"{K}/f", b"v", flags=2**64 - 1)
    assert target.entry(f"{K}/f")["Flags"] == 2**64 - 1  # type: ignore[index]
    bad = target.http("PUT", f"/v1/kv/{K}/f", data=b"v", params={"flags": "abc"})
    assert bad.status_code == 500
    assert "invalid syntax" in bad.text
    assert target.py().kv.put(f"{K}/g", "v", flags=7) is True
    assert target.py().kv.get(f"{K}/g")[1]["Flags"] == 7


def test_09_recurse_is_string_prefix_in_byte_order(target: Target, K: str) -> None:
    """[#9] ``?recurse`` lists every key with the string prefix, sorted by bytes, prefix key too."""
    for key in [f"{K}/b", f"{K}/apple", f"{K}/", f"{K}/a", f"{K}/B", f"{K}x"]:
        target.put(key, b"v")
    resp = target.http("GET", f"/v1/kv/{K}/", params={"recurse": ""})
    assert resp.status_code == 200
    assert [e["Key"] for e in resp.json()] == [f"{K}/", f"{K}/B", f"{K}/a", f"{K}/apple", f"{K}/b"]
    ap = target.http("GET", f"/v1/kv/{K}/ap", params={"recurse": ""})
    assert [e["Key"] for e in ap.json()] == [f"{K}/apple"]
    _, data = target.py().kv.get(f"{K}/", recurse=True)
    assert data[0]["Key"] == f"{K}/"


def test_10_recurse_nothing_404(target: Target, K: str) -> None:
    """[#10] ``?recurse`` on an empty prefix is 404 with the index headers (py: None)."""
    resp = target.http("GET", f"/v1/kv/{K}/", params={"recurse": ""})
    assert resp.status_code == 404
    assert int(resp.headers["X-Consul-Index"]) >= 1
    assert "X-Consul-KnownLeader" in resp.headers
    assert "X-Consul-LastContact" in resp.headers
    assert target.py().kv.get(f"{K}/", recurse=True)[1] is None


def test_11_keys_and_separator(target: Target, K: str) -> None:
    """[#11] ``?keys`` lists names, ``separator`` folds them, missing prefix 404, empty root []."""
    for key in (f"{K}/x/1", f"{K}/x/2", f"{K}/y"):
        target.put(key, b"v")
    keys = target.http("GET", f"/v1/kv/{K}/", params={"keys": ""})
    assert keys.json() == [f"{K}/x/1", f"{K}/x/2", f"{K}/y"]
    folded = target.http("GET", f"/v1/kv/{K}/", params={"keys": "", "separator": "/"})
    assert folded.json() == [f"{K}/x/", f"{K}/y"]
    assert target.http("GET", f"/v1/kv/{K}/none/", params={"keys": ""}).status_code == 404
    assert target.py().kv.get(f"{K}/", keys=True, separator="/")[1] == [f"{K}/x/", f"{K}/y"]
    target.wipe()
    root = target.http("GET", "/v1/kv/", params={"keys": ""})
    assert root.status_code == 200
    assert root.json() == []
    assert target.py().kv.get("", keys=True)[1] == []


def test_12_boolean_params_are_presence_based(target: Target, K: str) -> None:
    """[#12] ``recurse=false`` still recurses and ``keys=True`` works."""
    target.put(f"{K}/a", b"v")
    target.put(f"{K}/b", b"v")
    rec = target.http("GET", f"/v1/kv/{K}/", params={"recurse": "false"})
    assert len(rec.json()) == 2
    keys = target.http("GET", f"/v1/kv/{K}/", params={"keys": "True"})
    assert keys.json() == [f"{K}/a", f"{K}/b"]


def test_13_missing_key_name(target: Target) -> None:
    """[#13] GET/PUT/DELETE on ``/v1/kv/`` without recurse/keys is 400 ``Missing key name``."""
    for method in ("GET", "PUT", "DELETE"):
        resp = target.http(method, "/v1/kv/")
        assert resp.status_code == 400, method
        assert resp.text == "Missing key name"


def test_14_delete(target: Target, K: str) -> None:
    """[#14] DELETE returns true and removes the key; deleting a missing key is also true."""
    target.put(f"{K}/a", b"v")
    resp = target.http("DELETE", f"/v1/kv/{K}/a")
    assert resp.status_code == 200
    assert resp.text == "true"
    assert target.http("GET", f"/v1/kv/{K}/a").status_code == 404
    assert target.http("DELETE", f"/v1/kv/{K}/never").text == "true"
    target.put(f"{K}/p", b"v")
    assert target.py().kv.delete(f"{K}/p") is True
    assert target.entry(f"{K}/p") is None


def test_15_delete_recurse_string_prefix(target: Target, K: str) -> None:
    """[#15] ``DELETE ?recurse`` removes exactly the keys with that string prefix."""
    for key in (f"{K}/a/1", f"{K}/a/2", f"{K}/ab", f"{K}/b"):
        target.put(key, b"v")
    assert target.http("DELETE", f"/v1/kv/{K}/a/", params={"recurse": ""}).text == "true"
    keys = target.http("GET", f"/v1/kv/{K}/", params={"keys": ""}).json()
    assert keys == [f"{K}/ab", f"{K}/b"]
    assert target.py().kv.delete(f"{K}/", recurse=True) is True
    assert target.http("GET", f"/v1/kv/{K}/", params={"keys": ""}).status_code == 404


def test_16_cas_put(target: Target, K: str) -> None:
    """[#16] CAS PUT: 0 creates only if absent; matching index wins; stale or missing loses."""
    key = f"{K}/c"

    def cas(value: bytes, index: int) -> str:
        return target.http("PUT", f"/v1/kv/{key}", data=value, params={"cas": index}).text

    assert cas(b"one", 0) == "true"
    assert cas(b"two", 0) == "false"
    entry = target.entry(key)
    assert entry is not None
    assert base64.b64decode(entry["Value"]) == b"one"
    assert cas(b"three", entry["ModifyIndex"]) == "true"
    assert cas(b"four", entry["ModifyIndex"]) == "false"
    assert target.http("PUT", f"/v1/kv/{K}/absent", params={"cas": 5}).text == "false"
    py = target.py()
    current = int(py.kv.get(key)[0])
    assert py.kv.put(key, "five", cas=current) is True
    assert py.kv.put(key, "six", cas=current) is False


def test_17_cas_delete(target: Target, K: str) -> None:
    """[#17] CAS DELETE deletes only at the current ModifyIndex; cas=0 on a key is false."""
    key = f"{K}/d"
    target.put(key, b"v")
    entry = target.entry(key)
    assert entry is not None
    assert target.http("DELETE", f"/v1/kv/{key}", params={"cas": 0}).text == "false"
    assert (
        target.http("DELETE", f"/v1/kv/{key}", params={"cas": entry["ModifyIndex"] + 1}).text
        == "false"
    )
    assert target.entry(key) is not None
    assert (
        target.http("DELETE", f"/v1/kv/{key}", params={"cas": entry["ModifyIndex"]}).text == "true"
    )
    assert target.entry(key) is None


def test_18_conflicting_flags(target: Target, K: str) -> None:
    """[#18] cas+acquire on PUT and recurse+cas on DELETE are 400 ``Conflicting flags``."""
    put = target.http("PUT", f"/v1/kv/{K}/a", params={"cas": 0, "acquire": "S"})
    assert put.status_code == 400
    assert put.text.startswith("Conflicting flags")
    delete = target.http("DELETE", f"/v1/kv/{K}/a", params={"recurse": "", "cas": 1})
    assert delete.status_code == 400
    assert delete.text.startswith("Conflicting flags")


def test_19_value_size_limit(target: Target, K: str) -> None:
    """[#19] 524,288 bytes are accepted; one more is 413 and nothing is stored."""
    assert target.http("PUT", f"/v1/kv/{K}/max", data=b"x" * 524_288).text == "true"
    resp = target.http("PUT", f"/v1/kv/{K}/big", data=b"x" * 524_289)
    assert resp.status_code == 413
    assert "too large, max size: 524288 bytes" in resp.text
    assert target.entry(f"{K}/big") is None
    with pytest.raises(consul.exceptions.ClientError, match="^413 "):
        target.py().kv.put(f"{K}/big", b"x" * 524_289)


def test_20_method_not_allowed(target: Target, K: str) -> None:
    """[#20] POST on a KV path is 405 with ``Allow: OPTIONS,GET,PUT,DELETE``."""
    resp = target.http("POST", f"/v1/kv/{K}/a", data=b"v")
    assert resp.status_code == 405
    assert resp.headers["Allow"] == "OPTIONS,GET,PUT,DELETE"
    assert "method POST not allowed" in resp.text
    options = target.http("OPTIONS", f"/v1/kv/{K}/a")
    assert options.headers["Allow"] == "OPTIONS,GET,PUT,DELETE"


def test_21_path_cleaning_redirects(target: Target, K: str) -> None:
    """[#21] Unclean KV paths 301 to the cleaned path, query kept; py put on ``//`` loses data."""
    resp = target.raw("GET", f"/v1/kv/{K}//a?recurse")
    assert resp.status == 301
    assert resp.getheader("Location") == f"/v1/kv/{K}/a?recurse"
    for path in (f"/v1/kv/{K}/./a", f"/v1/kv/{K}/x/../a", f"/v1/kv//{K}/a"):
        dot = target.raw("GET", path)
        assert dot.status == 301, path
        assert dot.getheader("Location") == f"/v1/kv/{K}/a"
    bare = target.raw("GET", "/v1/kv")
    assert bare.status == 301
    assert bare.getheader("Location") == "/v1/kv/"
    # The documented hazard: requests re-sends the redirected PUT without its body.
    assert target.py().kv.put(f"{K}//a", "v") is True
    entry = target.entry(f"{K}/a")
    assert entry is not None
    assert entry["Value"] is None


def test_22_percent_decoding(target: Target, K: str) -> None:
    """[#22] The key is the percent-decoded path: ``%20`` is a space and ``%2F`` a separator."""
    assert target.raw("PUT", f"/v1/kv/{K}/sp%20ace", b"v").status == 200
    listing = target.http("GET", f"/v1/kv/{K}/", params={"recurse": ""}).json()
    assert [e["Key"] for e in listing] == [f"{K}/sp ace"]
    assert target.raw("PUT", f"/v1/kv/{K}%2Fslash", b"v").status == 200
    assert target.entry(f"{K}/slash") is not None
    assert target.py().kv.get(f"{K}/sp ace")[1]["Key"] == f"{K}/sp ace"


# ----------------------------------------------------------------- indexes and blocking


def test_23_index_per_query_type(target: Target, K: str) -> None:
    """[#23] Indexes: key -> ModifyIndex, missing -> KV max, prefix -> max incl. tombstones."""
    target.put(f"{K}/a", b"1")
    target.put(f"{K}/b", b"2")
    other = f"{K}-other"
    target.put(f"{other}/z", b"3")
    a = target.entry(f"{K}/a")
    b = target.entry(f"{K}/b")
    z = target.entry(f"{other}/z")
    assert a is not None
    assert b is not None
    assert z is not None
    assert idx(target.http("GET", f"/v1/kv/{K}/a")) == a["ModifyIndex"]
    kv_max = idx(target.http("GET", "/v1/kv/", params={"keys": ""}))
    assert kv_max >= z["ModifyIndex"]
    assert idx(target.http("GET", f"/v1/kv/{K}/missing")) == kv_max
    assert idx(target.http("GET", f"/v1/kv/{K}/", params={"recurse": ""})) == b["ModifyIndex"]
    assert idx(target.http("GET", f"/v1/kv/{K}/", params={"keys": ""})) == b["ModifyIndex"]
    target.http("DELETE", f"/v1/kv/{K}/b")
    after_delete = idx(target.http("GET", f"/v1/kv/{K}/", params={"recurse": ""}))
    assert after_delete > b["ModifyIndex"]
    assert after_delete > z["ModifyIndex"]


def test_24_block_without_writes_times_out(target: Target, K: str) -> None:
    """[#24] ``wait=1s`` with no writes returns after the wait (not the 2 s default), same
    data. (The jitter's upper bound, wait/16, is checked exactly on the double by #33.)"""
    target.put(f"{K}/a", b"v")
    first = target.http("GET", f"/v1/kv/{K}/a")
    start = time.monotonic()
    resp = target.http("GET", f"/v1/kv/{K}/a", params={"index": idx(first), "wait": "1s"})
    elapsed = time.monotonic() - start
    assert 1.0 <= elapsed < DEFAULT_QUERY_TIME
    assert resp.status_code == 200
    assert resp.json() == first.json()
    assert idx(resp) == idx(first)


def test_25_block_wakes_on_write(target: Target, K: str) -> None:
    """[#25] A blocked key read is woken by a write (before its wait, capped at
    max_query_time, runs out) with the new value and index."""
    target.put(f"{K}/a", b"old")
    first = target.http("GET", f"/v1/kv/{K}/a")
    watcher = Call(
        lambda: target.http("GET", f"/v1/kv/{K}/a", params={"index": idx(first), "wait": "30s"})
    )
    settle(target)
    target.put(f"{K}/a", b"new")
    resp = watcher.join()
    assert watcher.elapsed < MAX_QUERY_TIME  # woken: a timeout comes at max_query_time
    assert base64.b64decode(resp.json()[0]["Value"]) == b"new"
    assert idx(resp) > idx(first)


@pytest.mark.parametrize("change", ["create", "update", "delete"])
def test_26_prefix_block_wakes_on_any_change(target: Target, K: str, change: str) -> None:
    """[#26] A blocked recurse read wakes on create, update and delete under the prefix."""
    target.put(f"{K}/a", b"v")
    target.put(f"{K}/b", b"v")
    first = target.http("GET", f"/v1/kv/{K}/", params={"recurse": ""})
    watcher = Call(
        lambda: target.http(
            "GET", f"/v1/kv/{K}/", params={"recurse": "", "index": idx(first), "wait": "30s"}
        )
    )
    settle(target)
    if change == "create":
        target.put(f"{K}/c", b"v")
    elif change == "update":
        target.put(f"{K}/a", b"changed")
    else:
        target.http("DELETE", f"/v1/kv/{K}/a")
    resp = watcher.join()
    assert watcher.elapsed < MAX_QUERY_TIME  # woken: a timeout comes at max_query_time
    assert idx(resp) > idx(first)


def test_27_key_block_ignores_other_writes(target: Target, K: str) -> None:
    """[#27] A blocked single-key read is not woken by writes to other keys or prefixes."""
    target.put(f"{K}/a", b"v")
    first = target.http("GET", f"/v1/kv/{K}/a")
    watcher = Call(
        lambda: target.http("GET", f"/v1/kv/{K}/a", params={"index": idx(first), "wait": "1s"})
    )
    settle(target)
    target.put(f"{K}/b", b"v")
    target.put(f"{K}-x/c", b"v")
    resp = watcher.join()
    assert watcher.elapsed >= 0.95
    assert idx(resp) == idx(first)


def test_28_missing_key_block_wakes_on_create_only(target: Target, K: str) -> None:
    """[#28] A blocked read of a missing key ignores unrelated writes and wakes on creation."""
    first = target.http("GET", f"/v1/kv/{K}/new")
    assert first.status_code == 404
    watcher = Call(
        lambda: target.http("GET", f"/v1/kv/{K}/new", params={"index": idx(first), "wait": "30s"})
    )
    settle(target)
    target.put(f"{K}/unrelated", b"v")
    time.sleep(0.3)
    assert not watcher.done.is_set()
    target.put(f"{K}/new", b"here")
    resp = watcher.join()
    assert resp.status_code == 200
    assert base64.b64decode(resp.json()[0]["Value"]) == b"here"


def test_29_block_on_deleted_key_returns_404(target: Target, K: str) -> None:
    """[#29] A blocked read of a key that gets deleted returns 404 with a higher index."""
    target.put(f"{K}/a", b"v")
    first = target.http("GET", f"/v1/kv/{K}/a")
    watcher = Call(
        lambda: target.http("GET", f"/v1/kv/{K}/a", params={"index": idx(first), "wait": "30s"})
    )
    settle(target)
    target.http("DELETE", f"/v1/kv/{K}/a")
    resp = watcher.join()
    assert resp.status_code == 404
    assert idx(resp) > idx(first)


@pytest.mark.parametrize("params", [{"index": 0, "wait": "30s"}, {"wait": "30s"}])
def test_30_index_zero_never_blocks(target: Target, K: str, params: dict[str, Any]) -> None:
    """[#30] ``index=0`` or no index with ``wait=30s`` returns at once."""
    target.put(f"{K}/a", b"v")
    start = time.monotonic()
    assert target.http("GET", f"/v1/kv/{K}/a", params=params).status_code == 200
    assert time.monotonic() - start < MAX_QUERY_TIME  # a blocked read would run that long


def test_31_future_index_blocks_then_returns_lower(target: Target, K: str) -> None:
    """[#31] An index far in the future blocks for the wait, then returns the lower index."""
    target.put(f"{K}/a", b"v")
    current = idx(target.http("GET", f"/v1/kv/{K}/a"))
    start = time.monotonic()
    resp = target.http("GET", f"/v1/kv/{K}/a", params={"index": current + 1000, "wait": "1s"})
    assert time.monotonic() - start >= 0.95
    assert idx(resp) == current
    py_index, _ = target.py().kv.get(f"{K}/a", index=current + 1000, wait="1s")
    assert int(py_index) == current


@pytest.mark.double_only
def test_31_index_reset_fault_lowers_indexes(double: Any, dtarget: Target, K: str) -> None:
    """[#31] Fault "index reset" (snapshot restore) wakes watchers with a lower index."""
    for i in range(5):
        dtarget.put(f"{K}/a", f"v{i}")
    high = idx(dtarget.http("GET", f"/v1/kv/{K}/a"))
    watcher = Call(
        lambda: dtarget.http("GET", f"/v1/kv/{K}/a", params={"index": high, "wait": "30s"})
    )
    double.wait_for_blocked(1)
    double.reset_index(3)
    resp = watcher.join()
    assert watcher.elapsed < MAX_QUERY_TIME  # woken: a timeout comes at max_query_time
    assert idx(resp) == 3 < high
    assert idx(dtarget.http("GET", f"/v1/kv/{K}/", params={"recurse": ""})) <= 3
    dtarget.put(f"{K}/b", b"after")
    assert dtarget.entry(f"{K}/b")["ModifyIndex"] == 4  # type: ignore[index]


def test_32_parameter_parsing(target: Target, K: str) -> None:
    """[#32] wait/index parsing: Go durations accepted, bad values 400, clamp and default."""
    target.put(f"{K}/a", b"v")
    current = idx(target.http("GET", f"/v1/kv/{K}/a"))
    for wait in ("100ms", "1m30s", "0"):
        assert target.http("GET", f"/v1/kv/{K}/a", params={"wait": wait}).status_code == 200
    bad_wait = target.http("GET", f"/v1/kv/{K}/a", params={"index": current, "wait": "abc"})
    assert bad_wait.status_code == 400
    assert bad_wait.text == "Invalid wait time"
    for index in ("-1", "x"):
        bad = target.http("GET", f"/v1/kv/{K}/a", params={"index": index})
        assert bad.status_code == 400
        assert bad.text == "Invalid index"
    start = time.monotonic()
    target.http("GET", f"/v1/kv/{K}/a", params={"index": current, "wait": "10m"})
    clamped = time.monotonic() - start
    assert MAX_QUERY_TIME - 0.05 <= clamped < 60  # clamped: not the 10 min asked for
    start = time.monotonic()
    target.http("GET", f"/v1/kv/{K}/a", params={"index": current})
    default = time.monotonic() - start
    assert DEFAULT_QUERY_TIME - 0.05 <= default < MAX_QUERY_TIME  # the default, not the cap


def test_33_jitter_bounds(target: Target, K: str) -> None:
    """[#33] A blocking query is held at least ``wait``, and the ``wait`` asked for is what
    ends it: six ``wait=800ms`` queries all return before one started with them that is
    clamped to ``max_query_time`` (3 s). The jitter's upper bound (wait/16, 50 ms here) is
    below what a loaded machine's scheduling adds, so it is checked on the double's own
    draws (below), not on the wall clock (was: elapsed <= 0.85 + 0.25 s)."""
    target.put(f"{K}/a", b"v")
    current = idx(target.http("GET", f"/v1/kv/{K}/a"))
    longest = Call(
        lambda: target.http("GET", f"/v1/kv/{K}/a", params={"index": current, "wait": "10m"})
    )
    calls = [
        Call(
            lambda: target.http("GET", f"/v1/kv/{K}/a", params={"index": current, "wait": "800ms"})
        )
        for _ in range(6)
    ]
    for call in calls:
        call.join(60)
        assert call.elapsed >= 0.8, call.elapsed  # never early; load only lengthens it
        assert idx(call.result) == current  # it timed out: no change, the same index
    assert not longest.done.is_set(), "a 800ms query outlived one clamped to 3 s"
    longest.join(60)
    assert longest.elapsed >= MAX_QUERY_TIME - 0.05


@pytest.mark.double_only
def test_33_jitter_is_spread_and_seedable() -> None:
    """[#33] The double's jitter is uniform in [0, wait/16) and reproducible with a seed."""

    def samples(seed: int) -> list[float]:
        engine = Engine(EngineConfig(seed=seed), ConsulState(clock=time.monotonic), {})
        return [engine.query_timeout(16.0) for _ in range(200)]

    values = samples(7)
    assert all(16.0 <= v < 17.0 for v in values)
    assert max(values) - min(values) > 0.5
    assert values == samples(7)
    engine = Engine(
        EngineConfig(jitter=False, max_query_time=5.0), ConsulState(clock=time.monotonic), {}
    )
    assert engine.query_timeout(60.0) == 5.0
    assert engine.query_timeout(None) == 5.0


# ------------------------------------------------------------------ consistency, headers


def test_34_consistency_modes(target: Target, K: str) -> None:
    """[#34] stale, consistent and default reads work; stale+consistent is 400."""
    target.put(f"{K}/a", b"v")
    for params in ({}, {"stale": ""}, {"consistent": ""}):
        assert target.http("GET", f"/v1/kv/{K}/a", params=params).status_code == 200
    both = target.http("GET", f"/v1/kv/{K}/a", params={"stale": "", "consistent": ""})
    assert both.status_code == 400
    assert both.text == "Cannot specify ?stale with ?consistent, conflicting semantics."
    for mode in ("stale", "consistent", "default"):
        assert target.py(consistency=mode).kv.get(f"{K}/a")[1]["Value"] == b"v"


def test_35_meta_headers_on_reads_only(target: Target, K: str) -> None:
    """[#35] Reads (200 and 404) carry index/leader/contact headers in Go casing; writes none."""
    meta = ("X-Consul-Index", "X-Consul-Knownleader", "X-Consul-Lastcontact")
    put = target.http("PUT", f"/v1/kv/{K}/a", data=b"v")
    delete = target.http("DELETE", f"/v1/kv/{K}/zz")
    for write in (put, delete):
        for name in meta:
            assert name not in write.headers
    for resp in (target.http("GET", f"/v1/kv/{K}/a"), target.http("GET", f"/v1/kv/{K}/zz")):
        wire_names = list(resp.raw.headers.keys())
        for name in meta:
            assert name in wire_names, (name, wire_names)
        assert resp.headers["x-consul-knownleader"] in {"true", "false"}
        assert resp.headers["x-consul-lastcontact"].isdigit()


def test_36_default_acl_policy_header_everywhere(target: Target, K: str) -> None:
    """[#36] Every response carries X-Consul-Default-ACL-Policy (``allow`` with ACLs off)."""
    responses = [
        target.http("PUT", f"/v1/kv/{K}/a", data=b"v"),
        target.http("GET", f"/v1/kv/{K}/a"),
        target.http("GET", f"/v1/kv/{K}/zz"),
        target.http("DELETE", f"/v1/kv/{K}/a"),
        target.http("GET", "/v1/status/leader"),
        target.http("POST", f"/v1/kv/{K}/a"),
        target.http("GET", "/v1/kv/"),
    ]
    for resp in responses:
        assert resp.headers["X-Consul-Default-ACL-Policy"] == "allow", resp.request.url


@pytest.mark.double_only
def test_37_no_leader(double: Any, dtarget: Target, K: str) -> None:
    """[#37] No leader: default/consistent reads and writes 500; stale reads 200, leader false."""
    dtarget.put(f"{K}/a", b"v")
    double.set_leader(False)
    for params in ({}, {"consistent": ""}):
        resp = dtarget.http("GET", f"/v1/kv/{K}/a", params=params)
        assert resp.status_code == 500
        assert resp.text == "No cluster leader"
    stale = dtarget.http("GET", f"/v1/kv/{K}/a", params={"stale": ""})
    assert stale.status_code == 200
    assert stale.headers["X-Consul-KnownLeader"] == "false"
    assert dtarget.http("PUT", f"/v1/kv/{K}/a", data=b"w").status_code == 500
    assert dtarget.http("DELETE", f"/v1/kv/{K}/a").status_code == 500
    assert dtarget.http("GET", "/v1/status/leader").json() == ""
    with pytest.raises(consul.ConsulException, match="^500 No cluster leader"):
        dtarget.py().kv.get(f"{K}/a")
    assert dtarget.py(consistency="stale").kv.get(f"{K}/a")[1]["Value"] == b"v"
    double.set_leader(True)
    assert dtarget.http("GET", f"/v1/kv/{K}/a").status_code == 200


@pytest.mark.double_only
def test_38_rate_limit_and_dropped_connection(double: Any, dtarget: Target, K: str) -> None:
    """[#38] Injected 429 gives py ClientError('429 ...'); a dropped connection ConnectionError."""
    dtarget.put(f"{K}/a", b"v")
    double.inject_status(429, times=1)
    with pytest.raises(consul.exceptions.ClientError, match="^429 rate limit exceeded"):
        dtarget.py().kv.get(f"{K}/a")
    assert dtarget.py().kv.get(f"{K}/a")[1] is not None
    double.drop_connections(times=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        dtarget.py().kv.get(f"{K}/a")
    assert dtarget.py().kv.get(f"{K}/a")[1] is not None


# ---------------------------------------------------------------------------------- ACL


def test_39_acls_off_ignore_tokens(target: Target, K: str) -> None:
    """[#39] With ACLs off any token, including garbage, works on every endpoint."""
    garbage = "not-a-token"
    assert target.http("PUT", f"/v1/kv/{K}/a", data=b"v", token=garbage).text == "true"
    assert target.http("GET", f"/v1/kv/{K}/a", token=garbage).status_code == 200
    assert target.http("GET", f"/v1/kv/{K}/a", params={"token": garbage}).status_code == 200
    assert (
        target.http(
            "GET", f"/v1/kv/{K}/a", headers={"Authorization": f"Bearer {garbage}"}
        ).status_code
        == 200
    )
    assert target.http("GET", "/v1/agent/self", token=garbage).status_code == 200
    assert target.http("DELETE", f"/v1/kv/{K}/a", token=garbage).text == "true"
    assert target.py(token=garbage).kv.put(f"{K}/b", "v") is True


def test_40_acl_default_deny(acl_target: Target, K: str) -> None:
    """[#40] Unknown token 403 ``ACL not found``; missing rights 403 ``Permission denied``."""
    acl_target.put(f"{K}/secret", b"v")
    unknown = acl_target.http(
        "GET", f"/v1/kv/{K}/secret", token="00000000-dead-beef-0000-000000000000"
    )
    assert unknown.status_code == 403
    assert unknown.text == "ACL not found"
    with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
        acl_target.py(token="00000000-dead-beef-0000-000000000000").kv.get(f"{K}/secret")
    reader = acl_target.make_token(key_prefix={f"{K}/pub/": "read"})
    denied = acl_target.http("GET", f"/v1/kv/{K}/secret", token=reader)
    assert denied.status_code == 403
    assert denied.text.startswith("Permission denied")
    assert acl_target.http("PUT", f"/v1/kv/{K}/pub/x", data=b"v", token=reader).status_code == 403
    assert acl_target.http("DELETE", f"/v1/kv/{K}/secret", token=reader).status_code == 403
    anonymous = acl_target.anon("GET", f"/v1/kv/{K}/secret")
    assert anonymous.status_code == 403
    assert anonymous.text.startswith("Permission denied")
    with pytest.raises(consul.ACLPermissionDenied, match="Permission denied"):
        acl_target.py(token=reader).kv.get(f"{K}/secret")


def test_41_token_precedence(acl_target: Target, K: str) -> None:
    """[#41] ``?token=`` beats X-Consul-Token, which beats Bearer, which beats anonymous."""
    acl_target.put(f"{K}/a", b"v")
    good = acl_target.make_token(key_prefix={f"{K}/": "read"})
    bogus = "00000000-dead-beef-0000-000000000001"
    path = f"/v1/kv/{K}/a"
    assert (
        acl_target.anon(
            "GET", path, params={"token": good}, headers={"X-Consul-Token": bogus}
        ).status_code
        == 200
    )
    assert (
        acl_target.anon("GET", path, params={"token": bogus}, headers={"X-Consul-Token": good}).text
        == "ACL not found"
    )
    assert (
        acl_target.anon(
            "GET", path, headers={"X-Consul-Token": good, "Authorization": f"Bearer {bogus}"}
        ).status_code
        == 200
    )
    assert (
        acl_target.anon(
            "GET", path, headers={"X-Consul-Token": bogus, "Authorization": f"Bearer {good}"}
        ).text
        == "ACL not found"
    )
    assert (
        acl_target.anon("GET", path, headers={"Authorization": f"bearer {good}"}).status_code == 200
    )
    assert acl_target.anon("GET", path).status_code == 403


def test_42_acl_list_filtering(acl_target: Target, K: str) -> None:
    """[#42] Lists drop unreadable keys, 404 when all are dropped, header only for real tokens."""
    for key in (f"{K}/pub/a", f"{K}/pub/b", f"{K}/priv/c"):
        acl_target.put(key, b"v")
    reader = acl_target.make_token(key_prefix={f"{K}/pub/": "read"})
    listing = acl_target.http("GET", f"/v1/kv/{K}/", params={"recurse": ""}, token=reader)
    assert listing.status_code == 200
    assert [e["Key"] for e in listing.json()] == [f"{K}/pub/a", f"{K}/pub/b"]
    assert listing.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
    keys = acl_target.http("GET", f"/v1/kv/{K}/", params={"keys": ""}, token=reader)
    assert keys.json() == [f"{K}/pub/a", f"{K}/pub/b"]
    none = acl_target.http("GET", f"/v1/kv/{K}/priv/", params={"recurse": ""}, token=reader)
    assert none.status_code == 404
    unfiltered = acl_target.http("GET", f"/v1/kv/{K}/pub/", params={"recurse": ""}, token=reader)
    assert "X-Consul-Results-Filtered-By-ACLs" not in unfiltered.headers
    anonymous = acl_target.anon("GET", f"/v1/kv/{K}/", params={"recurse": ""})
    assert anonymous.status_code == 404
    assert "X-Consul-Results-Filtered-By-ACLs" not in anonymous.headers


# ------------------------------------------------------------------------- transactions


def _kv_op(verb: str, key: str, value: bytes | None = None, **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"Verb": verb, "Key": key, **extra}
    if value is not None:
        op["Value"] = base64.b64encode(value).decode()
    return {"KV": op}


def test_43_txn_set_shares_index(target: Target, K: str) -> None:
    """[#43] A two-set txn returns null Values and both keys share one ModifyIndex."""
    resp = target.http(
        "PUT", "/v1/txn", json_body=[_kv_op("set", f"{K}/a", b"1"), _kv_op("set", f"{K}/b", b"2")]
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["Errors"] is None
    assert [r["KV"]["Value"] for r in body["Results"]] == [None, None]
    a, b = target.entry(f"{K}/a"), target.entry(f"{K}/b")
    assert a is not None
    assert b is not None
    assert a["ModifyIndex"] == b["ModifyIndex"]
    result = target.py().txn.put([_kv_op("set", f"{K}/c", b"3")])
    assert result["Errors"] is None


def test_44_txn_rollback(target: Target, K: str) -> None:
    """[#44] A failing check-index rolls the whole txn back with a 409 JSON error list."""
    target.put(f"{K}/a", b"v")
    a = target.entry(f"{K}/a")
    assert a is not None
    wrong = a["ModifyIndex"] + 100
    ops = [_kv_op("set", f"{K}/c", b"x"), _kv_op("check-index", f"{K}/a", Index=wrong)]
    resp = target.http("PUT", "/v1/txn", json_body=ops)
    assert resp.status_code == 409
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() == {
        "Results": None,
        "Errors": [
            {
                "OpIndex": 1,
                "What": f'failed index check for key "{K}/a", current modify index '
                f"{a['ModifyIndex']} != {wrong}",
            }
        ],
    }
    assert target.entry(f"{K}/c") is None
    with pytest.raises(consul.exceptions.ClientError, match="^409 "):
        target.py().txn.put(ops)


def test_45_read_only_txn(target: Target, K: str) -> None:
    """[#45] Read txns return base64 values, no index; get on missing 409; get-or-empty null."""
    target.put(f"{K}/a", b"hi")
    target.put(f"{K}/b", b"yo")
    resp = target.http(
        "PUT", "/v1/txn", json_body=[_kv_op("get", f"{K}/a"), _kv_op("get-tree", f"{K}/")]
    )
    assert resp.status_code == 200
    values = [r["KV"]["Value"] for r in resp.json()["Results"]]
    assert values == ["aGk=", "aGk=", "eW8="]
    assert "X-Consul-Index" not in resp.headers
    assert "X-Consul-KnownLeader" in resp.headers
    missing = target.http("PUT", "/v1/txn", json_body=[_kv_op("get", f"{K}/zz")])
    assert missing.status_code == 409
    assert missing.json()["Errors"][0]["What"] == f'key "{K}/zz" doesn\'t exist'
    empty = target.http("PUT", "/v1/txn", json_body=[_kv_op("get-or-empty", f"{K}/zz")])
    assert empty.status_code == 200
    assert empty.json()["Results"][0]["KV"]["Value"] is None


def test_46_txn_limits_and_errors(target: Target, K: str) -> None:
    """[#46] 129 ops 413, unknown field or bad base64 400 ``Failed to parse body:``."""
    many = [_kv_op("get-or-empty", f"{K}/{i}") for i in range(129)]
    too_many = target.http("PUT", "/v1/txn", json_body=many)
    assert too_many.status_code == 413
    assert too_many.text == "Transaction contains too many operations (129 > 128)"
    unknown = target.http(
        "PUT", "/v1/txn", json_body=[{"KV": {"Verb": "get", "Key": "k", "Bogus": 1}}]
    )
    assert unknown.status_code == 400
    assert unknown.text.startswith("Failed to parse body:")
    bad64 = target.http(
        "PUT", "/v1/txn", json_body=[{"KV": {"Verb": "set", "Key": "k", "Value": "!!notbase64"}}]
    )
    assert bad64.status_code == 400
    assert bad64.text.startswith("Failed to parse body:")
    ok = target.http("PUT", "/v1/txn", json_body=many[:128])
    assert ok.status_code == 200


def test_46_txn_acl(acl_target: Target, K: str) -> None:
    """[#46] Under ACLs a forbidden txn write is a 409 ``Permission denied`` entry; bad token 403"""
    reader = acl_target.make_token(key_prefix={f"{K}/": "read"})
    resp = acl_target.http(
        "PUT", "/v1/txn", json_body=[_kv_op("set", f"{K}/a", b"v")], token=reader
    )
    assert resp.status_code == 409
    assert resp.json()["Errors"][0]["What"].startswith("Permission denied")
    bad = acl_target.http(
        "PUT",
        "/v1/txn",
        json_body=[_kv_op("set", f"{K}/a", b"v")],
        token="00000000-dead-beef-0000-000000000002",
    )
    assert bad.status_code == 403
    assert bad.text == "ACL not found"
    # py-consul sends no token with txn.put: writes fail as 409 Permission denied.
    with pytest.raises(consul.exceptions.ClientError, match="Permission denied"):
        acl_target.py().txn.put([_kv_op("set", f"{K}/a", b"v")])


# ------------------------------------------------------------------- sessions and locks


def test_47_session_create(target: Target) -> None:
    """[#47] Session create returns an ID; bad TTL and behavior are 500 with Consul's text."""
    body = {"name": "n", "ttl": "15s", "behavior": "delete", "lockdelay": "0s"}
    resp = target.http("PUT", "/v1/session/create", json_body=body)
    assert resp.status_code == 200
    assert len(resp.json()["ID"]) == 36
    short = target.http("PUT", "/v1/session/create", json_body={"ttl": "5s"})
    assert short.status_code == 500
    assert short.text.startswith("Invalid Session TTL")
    behavior = target.http("PUT", "/v1/session/create", json_body={"behavior": "x"})
    assert behavior.status_code == 500
    assert behavior.text == "Invalid Behavior setting 'x'"
    sid = target.py().session.create(name="n", ttl=15, behavior="delete", lock_delay=0)
    assert isinstance(sid, str)


@pytest.mark.double_only
def test_47_session_unknown_field(dtarget: Target, double: Any) -> None:
    """[#47] An unknown session field is 400 ``Request decode failed`` (configurable, [inf])."""
    resp = dtarget.http("PUT", "/v1/session/create", json_body={"bogus": 1})
    assert resp.status_code == 400
    assert resp.text.startswith("Request decode failed")
    with make_double(strict_session_decode=False) as lax:
        lax_resp = requests.put(f"{lax.url}/v1/session/create", data='{"bogus": 1}', timeout=5)
        assert lax_resp.status_code == 200


def test_48_session_info(target: Target) -> None:
    """[#48] Session info returns a one-element array with an index; unknown IDs give 200 []."""
    sid = target.http("PUT", "/v1/session/create", json_body={"name": "info"}).json()["ID"]
    resp = target.http("GET", f"/v1/session/info/{sid}")
    assert resp.status_code == 200
    info = resp.json()
    assert len(info) == 1
    for field in (
        "ID",
        "Name",
        "Node",
        "LockDelay",
        "Behavior",
        "TTL",
        "CreateIndex",
        "ModifyIndex",
    ):
        assert field in info[0]
    assert info[0]["Name"] == "info"
    assert int(resp.headers["X-Consul-Index"]) >= 1
    unknown = target.http("GET", "/v1/session/info/6f1e5b4c-0000-4000-8000-000000000000")
    assert unknown.status_code == 200
    assert unknown.json() == []
    index, data = target.py().session.info(sid)
    assert data["ID"] == sid
    assert int(index) >= 1


def test_49_session_renew_and_destroy(target: Target) -> None:
    """[#49] Renew returns [session] or 404 for unknown IDs; destroy is true, even when unknown."""
    sid = target.http("PUT", "/v1/session/create", json_body={"ttl": "30s"}).json()["ID"]
    renewed = target.http("PUT", f"/v1/session/renew/{sid}")
    assert renewed.status_code == 200
    assert renewed.json()[0]["ID"] == sid
    assert target.py().session.renew(sid)["ID"] == sid
    assert target.http("PUT", f"/v1/session/destroy/{sid}").text == "true"
    gone = target.http("PUT", f"/v1/session/renew/{sid}")
    assert gone.status_code == 404
    assert gone.text == f"Session id '{sid}' not found"
    with pytest.raises(consul.NotFound):
        target.py().session.renew(sid)
    assert target.http("PUT", f"/v1/session/destroy/{sid}").text == "true"
    assert target.py().session.destroy(sid) is True


def test_50_locks(target: Target, K: str) -> None:
    """[#50] acquire/release semantics for LockIndex, Session and value; unknown session 500."""
    s1 = target.http("PUT", "/v1/session/create", json_body={"lockdelay": "0s"}).json()["ID"]
    s2 = target.http("PUT", "/v1/session/create", json_body={"lockdelay": "0s"}).json()["ID"]
    key = f"{K}/l"
    assert target.http("PUT", f"/v1/kv/{key}", data=b"one", params={"acquire": s1}).text == "true"
    entry = target.entry(key)
    assert entry is not None
    assert (entry["LockIndex"], entry["Session"], entry["Value"]) == (1, s1, "b25l")
    assert target.http("PUT", f"/v1/kv/{key}", data=b"two", params={"acquire": s1}).text == "true"
    assert target.entry(key)["LockIndex"] == 1  # type: ignore[index]
    assert target.http("PUT", f"/v1/kv/{key}", params={"acquire": s2}).text == "false"
    assert target.http("PUT", f"/v1/kv/{key}", data=b"plain").text == "true"
    held = target.entry(key)
    assert held is not None
    assert held["Session"] == s1
    assert target.http("PUT", f"/v1/kv/{key}", params={"release": s2}).text == "false"
    assert target.http("PUT", f"/v1/kv/{key}", data=b"rel", params={"release": s1}).text == "true"
    released = target.entry(key)
    assert released is not None
    assert "Session" not in released
    assert released["LockIndex"] == held["LockIndex"]
    assert base64.b64decode(released["Value"]) == b"rel"
    bogus = target.http(
        "PUT", f"/v1/kv/{K}/m", params={"acquire": "6f1e5b4c-0000-4000-8000-00000000dead"}
    )
    assert bogus.status_code == 500
    assert "invalid session" in bogus.text
    assert target.py().kv.put(f"{K}/p", "v", acquire=s2) is True


@pytest.mark.parametrize("behavior", ["release", "delete"])
def test_51_session_destroy_invalidates(target: Target, K: str, behavior: str) -> None:
    """[#51] Destroying a session releases (index bumped, watchers woken) or deletes its keys."""
    sid = target.http(
        "PUT", "/v1/session/create", json_body={"behavior": behavior, "lockdelay": "0s"}
    ).json()["ID"]
    key = f"{K}/held"
    target.http("PUT", f"/v1/kv/{key}", data=b"v", params={"acquire": sid})
    first = target.http("GET", f"/v1/kv/{key}")
    watcher = Call(
        lambda: target.http("GET", f"/v1/kv/{key}", params={"index": idx(first), "wait": "30s"})
    )
    settle(target)
    target.http("PUT", f"/v1/session/destroy/{sid}")
    resp = watcher.join()
    assert watcher.elapsed < MAX_QUERY_TIME  # woken: a timeout comes at max_query_time
    assert idx(resp) > idx(first)
    if behavior == "release":
        assert resp.status_code == 200
        assert "Session" not in resp.json()[0]
    else:
        assert resp.status_code == 404


def test_51_lock_delay(target: Target, K: str) -> None:
    """[#51] After invalidation another session cannot acquire within LockDelay, then can."""
    s1 = target.http("PUT", "/v1/session/create", json_body={"lockdelay": "1s"}).json()["ID"]
    s2 = target.http("PUT", "/v1/session/create", json_body={"lockdelay": "0s"}).json()["ID"]
    key = f"{K}/ld"
    assert target.http("PUT", f"/v1/kv/{key}", params={"acquire": s1}).text == "true"
    target.http("PUT", f"/v1/session/destroy/{s1}")
    assert target.http("PUT", f"/v1/kv/{key}", params={"acquire": s2}).text == "false"
    deadline = time.monotonic() + 5
    while target.http("PUT", f"/v1/kv/{key}", params={"acquire": s2}).text != "true":
        assert time.monotonic() < deadline, "lock-delay never ended"
        time.sleep(0.1)


@pytest.mark.double_only
def test_51_ttl_expiry_with_manual_clock(K: str) -> None:
    """[#51] TTL expiry happens no earlier than TTL and no later than 2xTTL (injectable clock)."""
    clock = ManualClock()
    with ConsulTestServer(clock=clock) as server:
        base = server.url
        with requests.Session() as http:
            sid = http.put(
                f"{base}/v1/session/create",
                timeout=5,
                json={"ttl": "10s", "behavior": "release", "lockdelay": "5s"},
            ).json()["ID"]
            other = http.put(f"{base}/v1/session/create", timeout=5, json={}).json()["ID"]
            assert (
                http.put(f"{base}/v1/kv/{K}/k", params={"acquire": sid}, timeout=5).text == "true"
            )
            clock.advance(10)
            assert server.expire_sessions() == []
            assert http.get(f"{base}/v1/session/info/{sid}", timeout=5).json() != []
            clock.advance(10)
            assert server.expire_sessions() == [sid]
            entry = http.get(f"{base}/v1/kv/{K}/k", timeout=5).json()[0]
            assert "Session" not in entry
            assert (
                http.put(f"{base}/v1/kv/{K}/k", params={"acquire": other}, timeout=5).text
                == "false"
            )
            clock.advance(5)
            assert (
                http.put(f"{base}/v1/kv/{K}/k", params={"acquire": other}, timeout=5).text == "true"
            )


# --------------------------------------------------------------- status, agent, client


def test_52_status_leader(target: Target) -> None:
    """[#52] status/leader returns a non-empty JSON string with no ACL needed."""
    resp = target.http("GET", "/v1/status/leader")
    assert resp.status_code == 200
    leader = resp.json()
    assert isinstance(leader, str)
    assert leader
    assert target.py().status.leader() == leader


def test_52_status_leader_needs_no_acl(acl_target: Target) -> None:
    """[#52] status/leader works for the anonymous token under default deny."""
    assert acl_target.anon("GET", "/v1/status/leader").status_code == 200


def test_53_agent_self(target: Target) -> None:
    """[#53] agent/self has Config.Datacenter/NodeName/Version (str) and Config.Server (bool)."""
    resp = target.http("GET", "/v1/agent/self")
    assert resp.status_code == 200
    config = resp.json()["Config"]
    for field in ("Datacenter", "NodeName", "Version"):
        assert isinstance(config[field], str)
        assert config[field]
    assert isinstance(config["Server"], bool)
    assert target.py().agent.self()["Config"]["Datacenter"] == config["Datacenter"]


def test_53_agent_self_acl(acl_target: Target) -> None:
    """[#53] agent/self under default deny: anonymous 403, agent:read token 200."""
    assert acl_target.anon("GET", "/v1/agent/self").status_code == 403
    with pytest.raises(consul.ACLPermissionDenied):
        acl_target.py().agent.self()  # py-consul sends no token here
    reader = acl_target.make_token(agent="read")
    assert acl_target.http("GET", "/v1/agent/self", token=reader).status_code == 200


def test_54_py_consul_smoke(target: Target, K: str) -> None:
    """[#54] py-consul end to end: kv, blocking get, sessions, txn, status, agent shapes."""
    c = target.py()
    assert c.kv.put(f"{K}/a", "1") is True
    index, entry = c.kv.get(f"{K}/a")
    assert isinstance(index, str)
    assert entry["Value"] == b"1"
    assert [e["Key"] for e in c.kv.get(f"{K}/", recurse=True)[1]] == [f"{K}/a"]
    assert c.kv.get(f"{K}/", keys=True)[1] == [f"{K}/a"]
    watcher = Call(lambda: target.py().kv.get(f"{K}/a", index=index, wait="5s"))
    settle(target)
    c.kv.put(f"{K}/a", "2")
    new_index, new_entry = watcher.join()
    assert int(new_index) > int(index)
    assert new_entry["Value"] == b"2"
    assert c.kv.delete(f"{K}/a") is True
    assert c.kv.get(f"{K}/a")[1] is None
    sid = c.session.create(ttl=30)
    assert c.session.renew(sid)["ID"] == sid
    assert c.session.destroy(sid) is True
    ok = c.txn.put([_kv_op("set", f"{K}/t", b"x")])
    assert ok["Results"][0]["KV"]["Key"] == f"{K}/t"
    with pytest.raises(consul.exceptions.ClientError, match="^409 "):
        c.txn.put([_kv_op("get", f"{K}/none")])
    assert isinstance(c.status.leader(), str)
    assert isinstance(c.agent.self(), dict)


def test_55_concurrent_watchers(target: Target, K: str) -> None:
    """[#55] 50 blocked watchers: one write wakes only its watcher; server stays responsive."""
    for i in range(50):
        target.put(f"{K}/w{i}", b"v")
    indexes = [idx(target.http("GET", f"/v1/kv/{K}/w{i}")) for i in range(50)]
    sessions = [requests.Session() for _ in range(50)]
    try:

        def watch(i: int) -> Callable[[], requests.Response]:
            return lambda: sessions[i].get(
                f"{target.url}/v1/kv/{K}/w{i}",
                timeout=15,
                params={"index": str(indexes[i]), "wait": "3s"},
            )

        watchers = [Call(watch(i)) for i in range(50)]
        settle(target, 50)
        start = time.monotonic()
        assert target.http("GET", f"/v1/kv/{K}/w1").status_code == 200
        # Answered while the 50 are parked, not after their 3 s wait.
        assert time.monotonic() - start < 3.0
        put_at = time.monotonic()
        target.put(f"{K}/w7", b"changed")
        woken = watchers[7].join()
        # Woken by the write (a new index; a query that timed out would carry the old one),
        # before its 3 s wait would have run out, timed from the write: an order, not a
        # pace (was: < 2.0 s).
        assert idx(woken) > indexes[7]
        assert time.monotonic() - put_at < 3.0
        for i, w in enumerate(watchers):
            resp = w.join()
            if i != 7:
                # Not woken by the write: each ran its whole wait and saw no change (a lower
                # bound on elapsed, which load can only lengthen).
                assert w.elapsed >= 3.0 - 0.05, (i, w.elapsed)
                assert idx(resp) == indexes[i], i
    finally:
        for s in sessions:
            s.close()


@pytest.mark.double_only
def test_55_stop_releases_blocked_requests(K: str) -> None:
    """[#55] Stopping the server releases every blocked request promptly."""
    server = make_double(max_query_time=600, default_query_time=300).start()
    server.put(f"{K}/a", b"v")
    entry = server.get(f"{K}/a")
    assert entry is not None
    index = entry.modify_index
    sessions = [requests.Session() for _ in range(10)]
    try:

        def watch(s: requests.Session) -> Callable[[], requests.Response]:
            return lambda: s.get(
                f"{server.url}/v1/kv/{K}/a", timeout=30, params={"index": str(index), "wait": "5m"}
            )

        calls = [Call(watch(s)) for s in sessions]
        server.wait_for_blocked(10)
        start = time.monotonic()
        server.stop()
        assert time.monotonic() - start < 20.0  # not the 5 min the requests were parked for
        for call in calls:
            assert call.done.wait(5)
            assert call.error is None or isinstance(call.error, requests.RequestException)
    finally:
        server.stop()
        for s in sessions:
            s.close()

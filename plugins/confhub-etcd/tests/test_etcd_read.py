"""Reads: paged prefix reads at one revision, single keys."""

from __future__ import annotations

from typing import Any

import pytest

from confhub_etcd._client import EtcdClient, EtcdTooManyKeys, prefix_range_end
from confhub_etcd.testing import CallHook, EtcdServer


def test_prefix_range_end() -> None:
    """The range end of a prefix increments its last byte that is not 0xff."""
    assert prefix_range_end(b"/a/") == b"/a0"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"") == b"\0"
    assert prefix_range_end(b"\xff\xff") == b"\0"


def test_paged_read_is_pinned_to_one_revision(etcd: EtcdServer, client: EtcdClient) -> None:
    """Writes between pages do not leak into the snapshot: every page is read at revision R."""
    for i in range(50):
        client.put(f"/app/k{i:03d}", f"v{i}")
    client.put("/app0", "outside the prefix")
    pages: list[int] = []

    def interleave_writes(method: str, request: Any, response: Any) -> None:
        if method == "Range" and request.limit == 7:
            pages.append(len(response.kvs))
            # A concurrent writer changes, adds and deletes keys between our pages.
            etcd.put("/app/k049", "new")
            etcd.put(f"/app/z{len(pages)}", "new")

    with EtcdClient(etcd.endpoints, interceptors=[CallHook(after=interleave_writes)]) as hooked:
        snapshot = hooked.read_prefix("/app/", page_size=7)

    assert len(pages) >= 8
    assert len(snapshot.items) == 50
    assert [kv.key for kv in snapshot.items] == [f"/app/k{i:03d}".encode() for i in range(50)]
    assert all(kv.mod_revision <= snapshot.revision for kv in snapshot.items)
    assert snapshot.as_dict()[b"/app/k049"].value == b"v49"
    assert client.revision() > snapshot.revision


def test_paged_read_restarts_after_compaction(etcd: EtcdServer, client: EtcdClient) -> None:
    """If R is compacted between pages, the read restarts at a new revision, never mixes."""
    for i in range(20):
        client.put(f"/c/k{i:02d}", "old")
    compacted: list[int] = []

    def compact_after_first_page(method: str, request: Any, response: Any) -> None:
        if method == "Range" and request.limit == 5 and not compacted:
            compacted.append(etcd.put("/c/k00", "new"))
            etcd.compact()

    with EtcdClient(
        etcd.endpoints, interceptors=[CallHook(after=compact_after_first_page)]
    ) as hooked:
        snapshot = hooked.read_prefix("/c/", page_size=5)
    assert snapshot.revision >= compacted[0]
    assert snapshot.as_dict()[b"/c/k00"].value == b"new"
    assert len(snapshot.items) == 20


def test_read_empty_prefix(client: EtcdClient) -> None:
    """An empty prefix yields an empty snapshot at the current revision."""
    client.put("/other", "1")
    snapshot = client.read_prefix("/nothing/")
    assert snapshot.items == ()
    assert snapshot.revision == client.revision()


def test_get_single_key(client: EtcdClient) -> None:
    """get returns the key's metadata and the read revision, or None for a missing key."""
    revision = client.put("/g/a", b"\x00\xffbinary")
    item, read_revision = client.get("/g/a")
    assert item is not None
    assert item.value == b"\x00\xffbinary"
    assert item.mod_revision == item.create_revision == read_revision == revision
    assert item.version == 1
    assert "binary" not in repr(item)
    missing, _ = client.get("/g/missing")
    assert missing is None


@pytest.mark.parametrize("page_size", [1, 3, 1000])
def test_page_sizes(client: EtcdClient, page_size: int) -> None:
    """Any page size returns every key exactly once, in key order."""
    client.put_many({f"/p/{i:02d}": str(i) for i in range(10)})
    snapshot = client.read_prefix("/p/", page_size=page_size)
    assert [kv.value for kv in snapshot.items] == [str(i).encode() for i in range(10)]


def test_max_keys_stops_the_read_after_the_first_page(etcd: EtcdServer, client: EtcdClient) -> None:
    """Above ``max_keys``, etcd's range count refuses the prefix after ONE page; at or under
    the cap every key is read."""
    client.put_many({f"/m/{i:02d}": str(i) for i in range(10)})
    hook = CallHook()
    with EtcdClient(etcd.endpoints, interceptors=[hook]) as hooked:
        with pytest.raises(EtcdTooManyKeys) as info:
            hooked.read_prefix("/m/", page_size=2, max_keys=5)
        assert (info.value.actual, info.value.limit, info.value.limit_name) == (10, 5, "max_keys")
        assert hook.calls == ["Range"]
        assert len(hooked.read_prefix("/m/", page_size=3, max_keys=10).items) == 10

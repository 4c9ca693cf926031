"""TLS with client certificates, user/password auth, token expiry."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from confhub import Hub
from etcd_testlib import FAST, Recorder, unanswered_endpoint

from confhub_etcd._client import (
    Credentials,
    EtcdAuthError,
    EtcdClient,
    EtcdTLSError,
    EtcdUnavailable,
    TLSConfig,
)
from confhub_etcd._rpc import translate
from confhub_etcd.testing import CallHook, EtcdServer, rpc_error

#: A hang guard, not a pace: each call below ends at its deadline (1-3 s) or sooner, so only
#: a call that never returned comes near it, whatever the machine's load.
HANG_GUARD = 60.0


@pytest.fixture(scope="module")
def tls_etcd() -> Iterator[EtcdServer]:
    with EtcdServer(tls=True) as server:
        yield server


@pytest.fixture(scope="module")
def auth_etcd() -> Iterator[EtcdServer]:
    with EtcdServer(auth=True, auth_token_ttl=2) as server:
        yield server


def _tls(server: EtcdServer, *, client_cert: bool = True) -> TLSConfig:
    assert server.tls is not None
    if not client_cert:
        return TLSConfig(ca_file=server.tls.ca_cert)
    return TLSConfig(server.tls.ca_cert, server.tls.client_cert, server.tls.client_key)


def test_tls_with_client_certificate(tls_etcd: EtcdServer) -> None:
    """Reads, writes and a watch work over TLS with a client certificate."""
    recorder = Recorder()
    with EtcdClient(tls_etcd.endpoints, tls=_tls(tls_etcd)) as client:
        client.put("/tls/a", "1")
        with client.watch_prefix("/tls/", recorder.on_batch, backoff=FAST):
            revision = client.put("/tls/b", "2")
            recorder.wait_revision(revision)
        assert {kv.key for kv in client.read_prefix("/tls/").items} == {b"/tls/a", b"/tls/b"}


def test_https_endpoint_without_client_cert_fails_fast(tls_etcd: EtcdServer) -> None:
    """Without the client certificate the call fails within the deadline with a TLS error."""
    started = time.monotonic()
    with (
        EtcdClient(
            tls_etcd.endpoints, tls=_tls(tls_etcd, client_cert=False), timeout=2.0
        ) as client,
        pytest.raises(EtcdUnavailable),
    ):
        client.get("/tls/a")
    assert time.monotonic() - started < HANG_GUARD


def test_untrusted_server_certificate_is_a_tls_error(tls_etcd: EtcdServer) -> None:
    """Trusting the wrong CA (system roots) gives EtcdTLSError, not a generic timeout."""
    started = time.monotonic()
    with (
        EtcdClient([f"https://{tls_etcd.endpoint}"], timeout=2.0) as client,
        pytest.raises(EtcdTLSError, match="TLS"),
    ):
        client.get("/tls/a")
    assert time.monotonic() - started < HANG_GUARD


def test_plaintext_client_against_tls_server_fails_fast(tls_etcd: EtcdServer) -> None:
    """A plaintext client against a TLS port fails within its deadline."""
    started = time.monotonic()
    with EtcdClient(tls_etcd.endpoints, timeout=1.0) as client, pytest.raises(EtcdUnavailable):
        client.get("/tls/a")
    assert time.monotonic() - started < HANG_GUARD


def test_a_connect_that_never_completes_is_unavailable_not_tls(tls_etcd: EtcdServer) -> None:
    """A TCP connect that never completes is EtcdUnavailable, never EtcdTLSError, whether or
    not TLS is configured: no TLS handshake happened (gRPC's "tcp handshaker" is the TCP
    connect). The classification follows the configuration and the status code."""
    with unanswered_endpoint() as endpoint:
        # gRPC words the failure in more than one way ("tcp handshaker shutdown", "connect()
        # timed out"): a few calls meet them all.
        for tls in (None, _tls(tls_etcd)) * 4:
            with (
                EtcdClient([endpoint], tls=tls, timeout=1.0) as client,
                pytest.raises(EtcdUnavailable) as info,
            ):
                client.get("/tls/a")
            assert not isinstance(info.value, EtcdTLSError), (tls, info.value)
            assert "TLS" not in str(info.value)
            assert info.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def test_plaintext_is_never_a_tls_error_whatever_grpc_says() -> None:
    """Without TLS configured, no gRPC message makes an error a TLS one; with TLS, only the
    TLS layer's own failure (gRPC's security handshake) does."""
    details = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
    tls_failed = details + "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: x"
    tcp_shutdown = details + "tcp handshaker shutdown"
    plain = translate(rpc_error(tls_failed), "127.0.0.1:1", what="get", tls=False)
    assert type(plain) is EtcdUnavailable
    assert "TLS" not in str(plain)
    assert type(translate(rpc_error(tcp_shutdown), "h:1", what="get", tls=True)) is EtcdUnavailable
    assert type(translate(rpc_error(tls_failed), "h:1", what="get", tls=True)) is EtcdTLSError


def test_auth_roundtrip(auth_etcd: EtcdServer) -> None:
    """The right password works for reads, writes and watches."""
    creds = Credentials("root", auth_etcd.root_password)
    recorder = Recorder()
    with EtcdClient(auth_etcd.endpoints, credentials=creds) as client:
        client.put("/auth/a", "1")
        with client.watch_prefix("/auth/", recorder.on_batch, backoff=FAST):
            revision = client.put("/auth/b", "1")
            recorder.wait_revision(revision)
        assert auth_etcd.root_password not in repr(client)


def test_wrong_password_fails_fast_without_leaking_it(auth_etcd: EtcdServer) -> None:
    """A wrong password is a quick EtcdAuthError whose text never contains the password."""
    secret = "s3cret-Wrong-Pa55"
    hook = CallHook()
    started = time.monotonic()
    with EtcdClient(
        auth_etcd.endpoints,
        credentials=Credentials("root", secret),
        timeout=3.0,
        interceptors=[hook],
    ) as client:
        with pytest.raises(EtcdAuthError) as info:
            client.get("/auth/a")
        # Quick: refused at the first answer, never retried until the deadline (a count, not
        # a pace; was: < 2.0 s).
        assert hook.calls.count("Authenticate") == 1, hook.calls
        assert "Range" not in hook.calls
        assert time.monotonic() - started < HANG_GUARD
        assert "authentication failed" in str(info.value)
        text = "".join(traceback.format_exception(info.value))
        assert secret not in text
        assert secret not in repr(client)
        assert secret not in repr(Credentials("root", secret))


def test_no_credentials_against_auth_server(auth_etcd: EtcdServer) -> None:
    """Missing credentials are reported as an auth error, not as unavailability."""
    with EtcdClient(auth_etcd.endpoints) as client, pytest.raises(EtcdAuthError):
        client.get("/auth/a")


def test_expired_token_reauthenticates_once(auth_etcd: EtcdServer) -> None:
    """After the simple token expires (TTL 2 s) the next call re-authenticates transparently,
    and a watch created after expiry works too."""
    creds = Credentials("root", auth_etcd.root_password)
    hook = CallHook()
    with EtcdClient(auth_etcd.endpoints, credentials=creds, interceptors=[hook]) as client:
        calls = hook.calls
        client.put("/auth/t", "1")
        assert calls.count("Authenticate") == 1
        time.sleep(3.5)
        item, _ = client.get("/auth/t")
        assert item is not None and item.value == b"1"
        assert calls.count("Authenticate") == 2
        time.sleep(3.5)
        recorder = Recorder()
        with client.watch_prefix("/auth/", recorder.on_batch, recorder.on_state, backoff=FAST):
            recorder.wait_for(lambda: bool(recorder.batches))
            revision = client.put("/auth/t", "2")
            recorder.wait_revision(revision)
        assert calls.count("Authenticate") <= 4


def test_special_characters_in_a_url_password_authenticate_and_never_show(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """etcd://root:Qu?ery#Pw/1@.../app/: the hub authenticates with the whole password (the
    core's parsed parts) and no output, log or cache file holds any piece of it."""
    password = "Qu?ery#Pw/1"
    caplog.set_level(logging.DEBUG)
    with EtcdServer(auth=True, root_password=password) as etcd:
        etcd.put("/app/db/host", "h")
        source = f"etcd://root:{password}@{etcd.endpoint}/app/?timeout=2"
        with Hub([source], cache_dir=tmp_path, connect_timeout=2) as hub:
            assert hub.get("db.host") == "h"
            texts = [repr(hub), str(hub.health().to_dict()), str(hub.explain("db.host"))]
    files = [p.name + p.read_text() for p in tmp_path.glob("*.json")]
    assert files
    for text in [*texts, caplog.text, *files]:
        for piece in (password, "ery#Pw", "Pw/1"):
            assert piece not in text

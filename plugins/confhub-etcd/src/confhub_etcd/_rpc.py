"""The gRPC boundary of the etcd client layer: stubs, connections, error translation.

Everything that touches ``grpc`` or pyetcd's generated messages directly and is not a
client policy lives here: the lazily imported stubs, one endpoint's channel and stubs
(:class:`Connection`), the mapping of ``grpc.RpcError`` onto this package's exceptions
(:func:`translate`), and the handle of an open watch stream (:class:`WatchStream`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import grpc

from ._errors import (
    EtcdAuthError,
    EtcdCompacted,
    EtcdError,
    EtcdLimitError,
    EtcdTLSError,
    EtcdUnavailable,
)
from ._types import EventKind, KeyValue, WatchEvent

__all__ = [
    "Connection",
    "ResponseTooLarge",
    "WatchRequests",
    "WatchStream",
    "new_events",
    "not_sent",
    "open_connection",
    "stubs",
    "to_key_value",
    "translate",
]

_RETRYABLE_CODES: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)
# gRPC has no status code of its own for a failed TLS handshake: it is UNAVAILABLE, like a
# refused or timed-out connect. So a failure is a TLS one only when TLS is configured, the
# code is UNAVAILABLE, and the failing layer is TLS itself: gRPC's security handshaker
# ("Tls handshake failed (TSI_...)", "Handshake read failed (...)") or OpenSSL
# ("SSL_ERROR_...", "CERTIFICATE_VERIFY_FAILED"). gRPC's TCP connect is its "tcp handshaker"
# ("tcp handshaker shutdown"): no TLS happened there, whatever the configuration.
_TLS_LAYER_MARKERS: Final = (
    "tsi_",
    "ssl_error",
    "tls handshake failed",
    "ssl handshake failed",
    "handshake read failed",
    "handshake write failed",
    "certificate",
)
# Failures that prove a request never reached a server, so a write may go to another endpoint.
_NOT_SENT_MARKERS: Final = (
    "failed to connect",
    "connection refused",
    "connections to all backends failing",
    "dns resolution failed",
    # gRPC's fd layer refuses, before the system call, a socket of the wrong fork generation
    # (seen on the first call in a forked child: "sendmsg: Wrong file descriptor generation").
    "wrong file descriptor generation",
)


def not_sent(error: EtcdError) -> bool:
    """Whether ``error`` proves the request never left this process."""
    text = str(error).lower()
    return any(marker in text for marker in _NOT_SENT_MARKERS)


def stubs() -> Any:
    """pyetcd's generated messages and stubs (``pyetcd.etcdrpc``), imported on first use.

    pyetcd ships no type information; every message and stub is typed Any through this door.
    """
    import pyetcd.etcdrpc  # noqa: PLC0415 - keep ``import confhub_etcd`` free of gRPC stubs

    return pyetcd.etcdrpc


def to_key_value(raw: Any) -> KeyValue:
    """A :class:`KeyValue` from etcd's protobuf ``KeyValue`` message."""
    # protobuf already returns bytes and int for these fields: no conversion calls (they
    # were half the cost of reading a large prefix).
    return KeyValue(raw.key, raw.value, raw.mod_revision, raw.create_revision, raw.version)


def new_events(raw_events: Any, *, after: int) -> tuple[list[WatchEvent], int]:
    """The events of a watch response newer than revision ``after``, and how many were
    dropped as already applied (etcd promises uniqueness; we check rather than trust)."""
    events: list[WatchEvent] = []
    dropped = 0
    for raw in raw_events:
        kv = raw.kv
        revision = int(kv.mod_revision)
        if revision <= after:
            dropped += 1
            continue
        kind = EventKind.DELETE if raw.type == 1 else EventKind.PUT
        events.append(
            WatchEvent(
                kind=kind,
                key=bytes(kv.key),
                value=b"" if kind is EventKind.DELETE else bytes(kv.value),
                mod_revision=revision,
                create_revision=int(kv.create_revision),
                version=int(kv.version),
            )
        )
    return events, dropped


class ResponseTooLarge(EtcdError):
    """A response exceeded the client's gRPC receive limit (read smaller pages)."""


def translate(exc: grpc.RpcError, endpoint: str, *, what: str, tls: bool) -> EtcdError:
    """Map a gRPC error to this module's exceptions; messages hold no secrets.

    ``tls``: whether the channel uses TLS. Only then can a failure be an
    :class:`EtcdTLSError` (see ``_TLS_LAYER_MARKERS``); without TLS a connect that never
    completes is plainly unavailable."""
    code: grpc.StatusCode = exc.code()
    details = str(exc.details() or "")
    lowered = details.lower()
    if code in _RETRYABLE_CODES or code == grpc.StatusCode.CANCELLED:
        if (
            tls
            and code == grpc.StatusCode.UNAVAILABLE
            and any(m in lowered for m in _TLS_LAYER_MARKERS)
        ):
            return EtcdTLSError(
                f"TLS handshake with etcd at {endpoint} failed during {what}: {details}; "
                "check the CA file and the client certificate/key",
                endpoint=endpoint,
                code=code.name,
            )
        return EtcdUnavailable(
            f"etcd at {endpoint} unavailable during {what} ({code.name}): {details}",
            endpoint=endpoint,
            code=code.name,
        )
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in lowered:
        if details.startswith("grpc:"):
            # grpc-go (the server) refused our request message.
            return EtcdLimitError(
                f"etcd at {endpoint} refused {what}: request too large ({details})",
                limit_name="max_request_bytes",
                limit=0,
                actual=0,
            )
        # Our own channel refused a response above max_receive_bytes.
        return ResponseTooLarge(f"response from {endpoint} too large during {what}: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return EtcdUnavailable(
            f"etcd at {endpoint} refused {what} ({code.name}): {details}",
            endpoint=endpoint,
            code=code.name,
        )
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or (
        code == grpc.StatusCode.INVALID_ARGUMENT
        and ("authentication failed" in lowered or "user name is empty" in lowered)
    ):
        reason = details.removeprefix("etcdserver: ")
        return EtcdAuthError(
            f"etcd at {endpoint} rejected {what}: {reason}; check the user, password and the "
            "user's roles",
            reason=reason,
            endpoint=endpoint,
        )
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in lowered:
        return EtcdCompacted(
            f"{what} asked for a compacted revision at {endpoint}: {details}",
            requested_revision=0,
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT and "too large" in lowered:
        return EtcdLimitError(
            f"etcd at {endpoint} rejected {what}: {details}",
            limit_name="max_request_bytes",
            limit=0,
            actual=0,
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT and "too many operations" in lowered:
        return EtcdLimitError(
            f"etcd at {endpoint} rejected {what}: {details}",
            limit_name="max_txn_ops",
            limit=0,
            actual=0,
        )
    return EtcdError(f"etcd at {endpoint} failed {what} ({code.name}): {details}")


@dataclass
class Connection:
    """One endpoint's channel and the stubs on it."""

    endpoint: str
    channel: grpc.Channel
    kv: Any
    watch: Any
    auth: Any
    maintenance: Any
    lease: Any = None


def open_connection(
    endpoint: str,
    *,
    tls_pem: tuple[bytes | None, bytes | None, bytes | None] | None,
    options: Sequence[tuple[str, int]],
    interceptors: Sequence[Any] = (),
) -> Connection:
    """A new channel to ``endpoint`` (TLS when ``tls_pem`` = (ca, key, cert) is given) and
    its stubs; ``interceptors`` (gRPC client interceptors) wrap every call on it."""
    if tls_pem is not None:
        ca, key, cert = tls_pem
        creds = grpc.ssl_channel_credentials(ca, key, cert)
        channel = grpc.secure_channel(endpoint, creds, options=options)
    else:
        channel = grpc.insecure_channel(endpoint, options=options)
    calls = grpc.intercept_channel(channel, *interceptors) if interceptors else channel
    rpc = stubs()
    return Connection(
        endpoint=endpoint,
        channel=channel,
        kv=rpc.KVStub(calls),
        watch=rpc.WatchStub(calls),
        auth=rpc.AuthStub(calls),
        maintenance=rpc.MaintenanceStub(calls),
        lease=rpc.LeaseStub(calls),
    )


class WatchRequests:
    """The request side of one watch stream, consumed by a gRPC thread.

    Sends the create request, then a progress request every ``interval`` seconds. If no
    response of any kind arrived for ``liveness`` seconds it cancels the call, which is how a
    half-open connection (a SIGSTOPped or partitioned member) is detected. The deadline
    (``last_response + liveness``) is waited for on its own, not checked only when the next
    progress request is due: that check came up to one interval late (a member frozen just
    after a watch response was noticed after ~4 intervals, not 3).
    """

    def __init__(self, create: Any, interval: float, liveness: float) -> None:
        self._create: Any = create
        self._interval = interval
        self._liveness = liveness
        self._closed = threading.Event()
        self.last_response = time.monotonic()
        self.call: Any = None
        self.timed_out = False

    def __iter__(self) -> WatchRequests:
        return self

    def __next__(self) -> Any:
        if self._create is not None:
            create, self._create = self._create, None
            return create
        due = time.monotonic() + self._interval  # the next progress request
        while True:
            now = time.monotonic()
            # Read last_response afresh each time: the watcher thread moves it on.
            deadline = self.last_response + self._liveness
            if now >= deadline:
                self.timed_out = True
                if self.call is not None:
                    self.call.cancel()
                raise StopIteration
            if now >= due:
                rpc = stubs()
                return rpc.WatchRequest(progress_request=rpc.WatchProgressRequest())
            if self._closed.wait(min(due, deadline) - now):
                raise StopIteration

    def close(self) -> None:
        self._closed.set()


class WatchStream:
    """One open ``Watch`` call on one endpoint (:meth:`EtcdClient.open_watch_stream`).

    Iterating yields etcd's ``WatchResponse`` messages; a broken stream raises
    ``grpc.RpcError`` (see :func:`translate`). The three methods below are how a watcher
    tells the client what the stream found out, without touching the client's state.
    """

    __slots__ = ("_call", "_established", "_may_retry", "_token_rejected", "endpoint", "tls")

    def __init__(
        self,
        endpoint: str,
        call: Any,
        *,
        tls: bool,
        on_established: Callable[[], None],
        on_token_rejected: Callable[[], None],
        may_retry: Callable[[EtcdError], bool],
    ) -> None:
        self.endpoint = endpoint
        self.tls = tls  # whether the call runs over TLS (for translate())
        self._call = call
        self._established = on_established
        self._token_rejected = on_token_rejected
        self._may_retry = may_retry

    def __iter__(self) -> Iterator[Any]:
        return iter(self._call)

    def cancel(self) -> None:
        """End the call (idempotent); a thread iterating it gets ``grpc.RpcError``."""
        self._call.cancel()

    def established(self) -> None:
        """The server created the watch: the channel works (ends the after-fork grace)."""
        self._established()

    def token_rejected(self) -> None:
        """The server refused this stream's auth token: authenticate again on next use."""
        self._token_rejected()

    def retry_now(self, error: EtcdError) -> bool:
        """Whether ``error``, met before the watch was created, may be retried at once and
        unreported: the first call after fork() can fail in gRPC's fd layer."""
        return self._may_retry(error)

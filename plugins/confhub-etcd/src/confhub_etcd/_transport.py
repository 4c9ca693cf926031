"""One etcd client's connections: endpoints and failover, auth, fork safety, the calls.

:class:`Transport` is the lowest policy layer of the client (httpcore's role under httpx):
it owns the gRPC channels (one per endpoint, opened lazily, per process), picks the
endpoint, authenticates and re-authenticates, grants the first call after fork() one retry,
and makes unary calls with a deadline and failover (:meth:`Transport.unary`) and watch
streams (:meth:`Transport.open_watch_stream`). It knows no etcd operation;
:class:`~confhub_etcd._client.EtcdClient` builds the requests.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from ._errors import EtcdAuthError, EtcdClosedError, EtcdError, EtcdTLSError, EtcdUnavailable
from ._rpc import Connection, WatchStream, not_sent, open_connection, stubs, translate
from ._types import Credentials, TLSConfig

__all__ = ["Transport", "parse_endpoint", "read_tls"]

#: The interceptors ``confhub_etcd.testing.hook_clients`` adds to every client created while
#: its block is active: the client layer's one piece of test-only state, empty otherwise
#: (kept here, below the harness, so the client never imports its test hooks).
_test_interceptors: list[tuple[Any, ...]] = [()]
_test_lock = threading.Lock()


def push_test_interceptors(hooks: Sequence[Any]) -> tuple[Any, ...]:
    """Add ``hooks`` for clients created from now on; returns what to restore."""
    with _test_lock:
        saved = _test_interceptors[0]
        _test_interceptors[0] = (*saved, *hooks)
    return saved


def restore_test_interceptors(saved: tuple[Any, ...]) -> None:
    """Undo :func:`push_test_interceptors`."""
    with _test_lock:
        _test_interceptors[0] = saved


log = logging.getLogger("confhub.etcd")

# The process that imported gRPC through this module: a transport made in any other one
# (a forked child) starts with the after-fork grace.
_IMPORTED_IN = os.getpid()


def parse_endpoint(text: str) -> tuple[str, bool]:
    """``(host:port, wants TLS)`` from ``host[:port]`` or an ``http(s)://`` URL."""
    text = text.strip()
    secure = text.startswith("https://")
    for scheme in ("http://", "https://"):
        text = text.removeprefix(scheme)
    text = text.rstrip("/")
    if ":" not in text:
        text += ":2379"
    return text, secure


def read_tls(tls: TLSConfig) -> tuple[bytes | None, bytes | None, bytes | None]:
    """The PEM bytes ``(ca, key, cert)`` of ``tls``'s files, read now."""

    def read(path: str | Path | None) -> bytes | None:
        return Path(path).read_bytes() if path is not None else None

    if (tls.cert_file is None) != (tls.key_file is None):
        raise ValueError("TLS client authentication needs both cert_file and key_file")
    return read(tls.ca_file), read(tls.key_file), read(tls.cert_file)


class Transport:
    """Channels, endpoint choice, auth and retries for one client; thread-safe.

    Every unary call has a per-attempt deadline of ``timeout`` seconds. Reads are retried once
    on each other endpoint after ``UNAVAILABLE``/``DEADLINE_EXCEEDED``; writes only when the
    failure proves the request was never sent. A failed endpoint is skipped by moving to the
    next one (round-robin), never quarantined for minutes.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float,
        tls_pem: tuple[bytes | None, bytes | None, bytes | None] | None,
        credentials: Credentials | None,
        options: Sequence[tuple[str, int]],
        interceptors: Sequence[Any] = (),
    ) -> None:
        self._endpoints = list(endpoints)
        self._timeout = timeout
        self._tls_pem = tls_pem
        self._credentials = credentials
        self._options = list(options)
        # Test hooks installed by ``confhub_etcd.testing.hook_clients`` (empty otherwise).
        self._interceptors = (*interceptors, *_test_interceptors[0])
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._connections: dict[str, Connection] = {}
        # A client made in a forked child (a hub resuming there) inherits gRPC's process
        # state as much as the parent's clients do: its first failing call gets the retry.
        self._fork_grace = self._pid != _IMPORTED_IN
        self._current = 0
        self._token: str | None = None
        self._closed = False

    @property
    def endpoints(self) -> list[str]:
        """The configured endpoints (``host:port``)."""
        return list(self._endpoints)

    @property
    def current_endpoint(self) -> str:
        """The endpoint the next call goes to."""
        with self._lock:
            return self._endpoints[self._current]

    @property
    def uses_auth(self) -> bool:
        """Whether calls carry an auth token (credentials were given)."""
        return self._credentials is not None

    @property
    def inherited(self) -> bool:
        """Whether this transport belongs to another process (the parent of this one)."""
        return self._pid != os.getpid()

    def close(self) -> None:
        """Close this process's channels; later calls raise :class:`EtcdClosedError`."""
        with self._lock:
            self._closed = True
            connections = list(self._connections.values()) if self._pid == os.getpid() else []
            self._connections.clear()
        for conn in connections:
            conn.channel.close()

    def open_watch_stream(
        self, requests: Iterator[Any], *, require_leader: bool = True
    ) -> WatchStream:
        """Open a ``Watch`` call on the current endpoint, fed by ``requests``.

        Authenticates first when needed (the first call after fork() gets its one retry
        here). With ``require_leader`` the stream carries ``hasleader`` metadata, so a member
        without a leader cancels it. Raises :class:`EtcdError` (closed, unavailable, auth).
        """
        conn = self._connection()
        try:
            metadata = self._metadata(conn)
        except EtcdError as exc:
            if not self._fork_retry(conn, exc, idempotent=True):
                raise
            conn = self._connection()  # the grace is spent: a second failure raises
            metadata = self._metadata(conn)
        token = dict(metadata).get("token")
        if require_leader:
            metadata = (*metadata, ("hasleader", "true"))
        with self._lock:
            if self._closed:  # never start a call on a channel close() is closing
                raise EtcdClosedError("the etcd client is closed; create a new EtcdClient")
            call = conn.watch.Watch(requests, metadata=metadata)
        return WatchStream(
            conn.endpoint,
            call,
            tls=self._tls_pem is not None,
            on_established=self._end_fork_grace,
            on_token_rejected=functools.partial(self._invalidate_token, token),
            may_retry=functools.partial(self._fork_retry, conn, idempotent=True),
        )

    def open_lease_keepalive(self, requests: Iterator[Any]) -> tuple[str, Any]:
        """Open a long-lived ``LeaseKeepAlive`` stream (no deadline) on the current
        endpoint, fed by ``requests``; returns ``(endpoint, call)``. Raises
        :class:`EtcdError` (closed, unavailable, auth)."""
        conn = self._connection()
        metadata = self._metadata(conn)
        with self._lock:
            if self._closed:
                raise EtcdClosedError("the etcd client is closed; create a new EtcdClient")
            call = conn.lease.LeaseKeepAlive(requests, metadata=metadata)
        return conn.endpoint, call

    def report_failure(self, endpoint: str) -> None:
        """``endpoint`` failed: move to the next endpoint if it is still the current one."""
        with self._lock:
            if self._endpoints[self._current] == endpoint and len(self._endpoints) > 1:
                self._current = (self._current + 1) % len(self._endpoints)
                log.debug(
                    "etcd endpoint %s failed; switching to %s",
                    endpoint,
                    self._endpoints[self._current],
                )

    def reset_after_fork(self) -> None:
        """Forget this process's channels and locks, as a forked child must.

        A lock held by a parent thread would never be released in the child, and the
        parent's channels belong to the parent's gRPC threads. The next call opens new
        channels; the first one that fails gets one immediate retry (gRPC can fail the first
        call in a child: "sendmsg: Wrong file descriptor generation", about 1 fork in 15
        with grpcio 1.85).
        """
        self._lock = threading.RLock()
        self._connections = {}
        self._pid = os.getpid()
        self._fork_grace = True

    def _connection(self) -> Connection:
        with self._lock:
            if self._closed:
                raise EtcdClosedError("the etcd client is closed; create a new EtcdClient")
            if self._pid != os.getpid():
                self.reset_after_fork()
            endpoint = self._endpoints[self._current]
            conn = self._connections.get(endpoint)
            if conn is None:
                conn = self._connections[endpoint] = open_connection(
                    endpoint,
                    tls_pem=self._tls_pem,
                    options=self._options,
                    interceptors=self._interceptors,
                )
            return conn

    def _end_fork_grace(self) -> None:
        self._fork_grace = False

    def _fork_retry(self, conn: Connection, error: EtcdError, *, idempotent: bool) -> bool:
        """Whether the first call after fork() may be retried at once on a fresh channel.

        Only the first call in a child gets this grace, whatever its outcome, so a real outage
        later is never retried silently; a write only when ``error`` proves nothing was sent.
        The failed channel (the child's own) is closed.
        """
        with self._lock:
            if not self._fork_grace:
                return False
            self._fork_grace = False
            if (
                not isinstance(error, EtcdUnavailable)
                or isinstance(error, EtcdTLSError)
                or not (idempotent or not_sent(error))
            ):
                return False
            if self._connections.get(conn.endpoint) is conn:
                del self._connections[conn.endpoint]
        conn.channel.close()
        log.info("first etcd call after fork failed (%s); retrying on a new channel", error)
        return True

    def _invalidate_token(self, token: str | None) -> None:
        with self._lock:
            if self._token == token:
                self._token = None

    def _metadata(self, conn: Connection) -> tuple[tuple[str, str], ...]:
        if self._credentials is None:
            return ()
        with self._lock:
            token = self._token
        if token is None:
            token = self._authenticate(conn)
        return (("token", token),)

    def _authenticate(self, conn: Connection) -> str:
        if self._credentials is None:
            raise EtcdAuthError("no credentials configured", reason="no credentials")
        request = stubs().AuthenticateRequest(
            name=self._credentials.user, password=self._credentials.password
        )
        try:
            response = conn.auth.Authenticate(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            error = translate(
                exc,
                conn.endpoint,
                what=f"authentication of user {self._credentials.user!r}",
                tls=self._tls_pem is not None,
            )
            # Not chained: the request object in the frame holds the password.
            raise error from None
        token = str(response.token)
        with self._lock:
            self._token = token
        return token

    def unary(self, stub: str, method: str, request: Any, *, idempotent: bool, what: str) -> Any:
        """Call ``stub.method(request)`` with the deadline, auth, failover and retries above;
        ``idempotent=False`` (a write) moves on only when nothing was sent. ``what`` names
        the call in error messages. Raises :class:`EtcdError`."""
        reauthenticated = False
        tried = 0
        while True:
            conn = self._connection()
            try:
                metadata = self._metadata(conn)
                result = getattr(getattr(conn, stub), method)(
                    request, timeout=self._timeout, metadata=metadata
                )
            except grpc.RpcError as exc:
                error = translate(exc, conn.endpoint, what=what, tls=self._tls_pem is not None)
                if self._fork_retry(conn, error, idempotent=idempotent):
                    continue
                code = exc.code()
                if (
                    code == grpc.StatusCode.UNAUTHENTICATED
                    and self._credentials is not None
                    and not reauthenticated
                ):
                    # An expired or unknown token (e.g. the member restarted): once per call.
                    reauthenticated = True
                    self._invalidate_token(dict(metadata).get("token"))
                    log.info("etcd auth token rejected by %s; re-authenticating", conn.endpoint)
                    continue
                if not isinstance(error, EtcdUnavailable):
                    raise error from exc
                self.report_failure(conn.endpoint)
                tried += 1
                retry = idempotent or not_sent(error)
                if isinstance(error, EtcdTLSError) or not retry or tried >= len(self._endpoints):
                    raise error from exc
            except EtcdUnavailable as exc:
                # Authentication itself hit an unavailable endpoint: try the next one.
                if self._fork_retry(conn, exc, idempotent=True):
                    continue
                self.report_failure(conn.endpoint)
                tried += 1
                if tried >= len(self._endpoints):
                    raise
            else:
                self._fork_grace = False
                return result

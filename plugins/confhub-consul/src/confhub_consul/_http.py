"""A small HTTP/1.1 client for Consul's API, built on :mod:`http.client`.

Why not py-consul's client: it hides the response headers other than ``X-Consul-Index``
(``X-Consul-Results-Filtered-By-Acls`` is needed to tell an ACL-filtered listing from
deleted keys), lets ``CONSUL_HTTP_TOKEN`` override an explicit token, sends no token on
``/v1/txn``, and gives no way to interrupt a blocking query from another thread. Here each
:class:`Connection` is one keep-alive socket with explicit connect and read timeouts, and
:meth:`Connection.abort` shuts the socket down so a thread parked in a long poll wakes at
once (``close()`` of the backend must not wait for the poll to end).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from urllib.parse import quote, urlencode

import attrs

#: Errors that mean "the request did not get an answer" (connection refused, reset,
#: timed out, closed mid-response, TLS failure).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    http.client.HTTPException,
    ssl.SSLError,
)


class Aborted(Exception):
    """The connection was aborted by :meth:`Connection.abort` (the backend is closing)."""


@attrs.frozen
class Response:
    """One HTTP response: status, headers (lower-cased names) and the whole body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        """Return header ``name`` (case-insensitive), or None."""
        return self.headers.get(name.lower())


def kv_path(key: str) -> str:
    """The request path of a KV key, percent-encoded except ``/``."""
    return "/v1/kv/" + quote(key, safe="/")


def _read_body(
    resp: http.client.HTTPResponse, sock: socket.socket | None, deadline: float
) -> bytes:
    """The whole body of ``resp``, or TimeoutError once ``deadline`` (monotonic) passes."""
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            resp.close()
            raise TimeoutError("the response did not complete within the read timeout")
        if sock is not None:
            sock.settimeout(remaining)
        if resp.length == 0:  # everything announced was read
            break
        chunk = resp.read1(65536)
        if not chunk:
            break
        chunks.append(chunk)
    chunks.append(resp.read())  # b"" here; marks the response complete (keep-alive reuse)
    return b"".join(chunks)


class Connection:
    """One persistent connection to a Consul agent; used by one thread at a time.

    ``connect_timeout`` bounds connecting (and the TLS handshake); every request passes its
    own read timeout. A reused keep-alive socket that the server closed in the meantime is
    retried once on a fresh socket for GETs, and for any method when the failure happened
    while sending (nothing reached the server). A timeout is never retried: the server was
    there and did not answer in time, and a retry would double the time a hung or dripping
    server holds the caller.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None,
        connect_timeout: float,
        headers: Mapping[str, str],
    ) -> None:
        self._host = host
        self._port = port
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._headers = dict(headers)
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()  # guards _conn and _aborted against abort()
        self._use = threading.Lock()  # one request at a time
        self._aborted = False

    def __repr__(self) -> str:
        # The headers may hold the ACL token: never show them.
        return f"<consul Connection {self._host}:{self._port}>"

    def _open(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._tls is not None:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._connect_timeout, context=self._tls
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._connect_timeout)
        with self._lock:
            if self._aborted:
                raise Aborted
            self._conn = conn
        conn.connect()
        with self._lock:
            if self._aborted:
                conn.close()
                raise Aborted
        return conn

    def _drop(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        read_timeout: float,
    ) -> Response:
        """Send one request and read the whole response; raises a transport error or Aborted."""
        url = path + ("?" + urlencode(query, safe="/:") if query else "")
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Length"] = str(len(body))
        with self._use:
            for attempt in (1, 2):
                if self._aborted:
                    raise Aborted
                reused = self._conn is not None
                conn = self._conn if self._conn is not None else self._open()
                sent = False
                try:
                    # read_timeout bounds the whole answer, not each recv: a server that
                    # drips one byte at a time must not hold the request forever.
                    deadline = time.monotonic() + read_timeout
                    sock = conn.sock
                    if sock is not None:
                        sock.settimeout(read_timeout)
                    conn.request(method, url, body=body, headers=headers)
                    sent = True
                    resp = conn.getresponse()
                    data = _read_body(resp, sock, deadline)
                except TRANSPORT_ERRORS as exc:
                    self._drop()
                    if self._aborted:
                        raise Aborted from None
                    retry = (
                        reused
                        and attempt == 1
                        and (method == "GET" or not sent)
                        and not isinstance(exc, TimeoutError)
                    )
                    if retry:
                        continue
                    raise
                if resp.will_close:
                    self._drop()
                return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        raise AssertionError("unreachable")  # pragma: no cover

    def abort(self) -> None:
        """Wake a request in progress (it raises :class:`Aborted`) and refuse new ones."""
        with self._lock:
            self._aborted = True
            conn = self._conn
        sock = None if conn is None else conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Abort and close the socket."""
        self.abort()
        if self._use.acquire(timeout=1.0):
            try:
                self._drop()
            finally:
                self._use.release()

"""A small HTTP/1.1 client for Consul's API, built on :mod:`http.client`.

Why not py-consul's client: it hides the response headers other than ``X-Consul-Index``
(``X-Consul-Results-Filtered-By-Acls`` is needed to tell an ACL-filtered listing from
deleted keys), lets ``CONSUL_HTTP_TOKEN`` override an explicit token, sends no token on
``/v1/txn``, and gives no way to interrupt a blocking query from another thread. Here each
:class:`Connection` is one keep-alive socket with explicit connect and read timeouts, and
:meth:`Connection.abort` shuts the socket down so a thread parked in a long poll wakes at
once (``close()`` of the backend must not wait for the poll to end).

Every request is bounded by one deadline for the whole exchange (connect, TLS handshake,
send, status line, headers, body). ``http.client`` applies the socket timeout to each
``recv``, so a server that drips its status line, headers or body one byte at a time would
never trip it; instead each :class:`Connection` has one watchdog thread (started with the
first request, joined by :meth:`Connection.close`) that shuts the socket down when the
deadline passes, and the request raises :class:`TimeoutError` ("no answer within X s").

A request may also carry a body guard (:data:`BodyGuard`): it sees the status and headers,
then each body chunk as it arrives, and may raise to stop the read early (the backend uses it
to refuse a listing holding more than ``max_keys`` entries without downloading all of it).
A read stopped that way drops the connection (the rest of the body is still in flight, so
the socket cannot be reused) and the guard's error propagates to the caller unchanged.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
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


#: Checks one body as it streams: called with each chunk as it is read; raises to stop the
#: read.
ChunkCheck = Callable[[bytes], None]
#: Makes the :data:`ChunkCheck` of one response from its status and (lower-cased) headers,
#: or returns None to read the body unchecked. Called once per response read, so a request
#: retried on a fresh socket starts with a fresh check.
BodyGuard = Callable[[int, Mapping[str, str]], ChunkCheck | None]


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


def _no_answer(read_timeout: float) -> TimeoutError:
    return TimeoutError(f"no answer within {read_timeout:g} s")


def _read_body(
    resp: http.client.HTTPResponse,
    sock: socket.socket | None,
    deadline: float,
    read_timeout: float,
    check: ChunkCheck | None = None,
) -> bytes:
    """The whole body of ``resp``, or TimeoutError once ``deadline`` (monotonic) passes.

    The watchdog enforces the deadline too; bounding each ``recv`` by the time left makes a
    silent server time out here without waiting for it. ``check`` is fed each chunk as it
    is read; an error it raises closes ``resp`` and propagates (the caller drops the
    connection: the rest of the body is still in flight).
    """
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            resp.close()
            raise _no_answer(read_timeout)
        if sock is not None:
            sock.settimeout(remaining)
        if resp.length == 0:  # everything announced was read
            break
        chunk = resp.read1(65536)
        if not chunk:
            break
        if check is not None:
            try:
                check(chunk)
            except BaseException:
                resp.close()
                raise
        chunks.append(chunk)
    chunks.append(resp.read())  # b"" here; marks the response complete (keep-alive reuse)
    return b"".join(chunks)


class _Watchdog:
    """One thread per connection that shuts the socket down when a request's deadline passes.

    :meth:`arm` before a request, :meth:`disarm` after it (it says whether the deadline fired,
    in which case the socket is dead). The thread starts with the first :meth:`arm` and ends
    in :meth:`stop`, which joins it; after :meth:`stop`, :meth:`arm` raises :class:`Aborted`.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._target: Callable[[], socket.socket | None] | None = None
        self._fired = False
        self._stopped = False
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, target: Callable[[], socket.socket | None]) -> None:
        """Watch one request: at ``deadline`` (monotonic), shut down ``target()``."""
        with self._cond:
            if self._stopped:
                raise Aborted
            self._deadline, self._target, self._fired = deadline, target, False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def disarm(self) -> bool:
        """Stop watching the current request; True if its deadline fired."""
        with self._cond:
            fired = self._fired
            self._deadline, self._target, self._fired = None, None, False
            return fired

    @property
    def fired(self) -> bool:
        """Whether the deadline of the current request has fired."""
        with self._cond:
            return self._fired

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                if self._deadline is None or self._fired:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                # Under the lock: disarm() cannot return meanwhile, so the socket shut down
                # is the one of the request that ran out of time, never the next request's.
                self._fired = True
                sock = self._target() if self._target is not None else None
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """End the thread and join it; later :meth:`arm` calls raise :class:`Aborted`."""
        with self._cond:
            self._stopped = True
            thread, self._thread = self._thread, None
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()


class Connection:
    """One persistent connection to a Consul agent; used by one thread at a time.

    ``connect_timeout`` bounds connecting (and the TLS handshake); every request passes its
    own read timeout, a deadline for the whole exchange (a fresh socket's connect included)
    enforced by a watchdog thread that :meth:`close` joins. A reused keep-alive socket that
    the server closed in the meantime is retried once on a fresh socket for GETs, and for any
    method when the failure happened while sending (nothing reached the server). A timeout is
    never retried: the server was there and did not answer in time, and a retry would double
    the time a hung or dripping server holds the caller.
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
        self._opened = 0
        self._watchdog = _Watchdog(f"confhub-consul-deadline[{host}:{port}]")

    def __repr__(self) -> str:
        # The headers may hold the ACL token: never show them.
        return f"<consul Connection {self._host}:{self._port}>"

    @property
    def connected(self) -> bool:
        """Whether a socket is kept for the next request (False after it was dropped)."""
        with self._lock:
            return self._conn is not None

    @property
    def sockets_opened(self) -> int:
        """How many sockets this connection has opened so far (reconnects included)."""
        with self._lock:
            return self._opened

    def _socket(self) -> socket.socket | None:
        """The current socket (the plain one during a TLS handshake), for the watchdog."""
        with self._lock:
            conn = self._conn
        return None if conn is None else conn.sock

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
            self._opened += 1
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
        guard: BodyGuard | None = None,
    ) -> Response:
        """Send one request and read the whole response; raises a transport error or Aborted.

        ``guard`` (see :data:`BodyGuard`) may stop the body read early by raising: the
        connection is then dropped and its error propagates as it is (never retried).
        """
        url = path + ("?" + urlencode(query, safe="/:") if query else "")
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Length"] = str(len(body))
        with self._use:
            for attempt in (1, 2):
                if self._aborted:
                    raise Aborted
                # One deadline for the whole exchange: connect, send, status line, headers
                # and body. http.client's socket timeout applies per recv, so a server that
                # drips any part of its answer one byte at a time would never trip it; the
                # watchdog shuts the socket down when the deadline passes instead.
                deadline = time.monotonic() + read_timeout
                self._watchdog.arm(deadline, self._socket)
                try:
                    answer = self._exchange(
                        method=method,
                        url=url,
                        body=body,
                        headers=headers,
                        deadline=deadline,
                        read_timeout=read_timeout,
                        attempt=attempt,
                        guard=guard,
                    )
                finally:
                    fired = self._watchdog.disarm()
                if answer is None:
                    continue  # a stale keep-alive socket; retried once on a fresh one
                resp, data = answer
                if resp.will_close or fired:
                    self._drop()
                return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        raise AssertionError("unreachable")  # pragma: no cover

    def _exchange(
        self,
        *,
        method: str,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str],
        deadline: float,
        read_timeout: float,
        attempt: int,
        guard: BodyGuard | None,
    ) -> tuple[http.client.HTTPResponse, bytes] | None:
        """One attempt of :meth:`request`: (response, body), or None to retry it."""
        reused = self._conn is not None
        sent = False
        try:
            conn = self._conn if self._conn is not None else self._open()
            if self._watchdog.fired:  # the connect took the whole deadline
                raise _no_answer(read_timeout)
            sock = conn.sock
            if sock is not None:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
            conn.request(method, url, body=body, headers=dict(headers))
            sent = True
            resp = conn.getresponse()
            check = None
            if guard is not None:
                check = guard(resp.status, {k.lower(): v for k, v in resp.getheaders()})
            data = _read_body(resp, sock, deadline, read_timeout, check)
        except TRANSPORT_ERRORS as exc:
            self._drop()
            if self._aborted:
                raise Aborted from None
            # A timeout is never retried: the server was there and did not answer in time,
            # and a retry would double the time a hung or dripping server holds the caller.
            if self._watchdog.fired or (sent and isinstance(exc, TimeoutError)):
                raise _no_answer(read_timeout) from None
            if isinstance(exc, TimeoutError):
                raise  # connecting timed out
            if reused and attempt == 1 and (method == "GET" or not sent):
                return None
            raise
        except BaseException:
            # Mostly the guard refusing the body (or Aborted while connecting): the rest of
            # the body is still in flight, so the socket cannot carry another request. The
            # error is the caller's as it is, never retried.
            self._drop()
            raise
        return resp, data

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
        """Abort, close the socket and join the watchdog thread."""
        self.abort()
        try:
            if self._use.acquire(timeout=1.0):
                try:
                    self._drop()
                finally:
                    self._use.release()
        finally:
            self._watchdog.stop()

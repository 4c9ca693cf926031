"""Connections to one Consul agent for the registry: a small pool and one request helper.

The registry makes short calls (register, keepalive, renew) from the core's keepalive
thread while discovery and lock waits park in blocking queries on other threads; a
:class:`~confhub_consul._http.Connection` carries one request at a time, so each call
borrows a connection from :class:`Calls`' pool (creating one when all are busy) and gives it
back. :meth:`Calls.close` aborts every connection, idle or busy, so a parked query wakes at
once. Connections carry the source's TLS settings and ACL token (:func:`new_connection`,
shared with the KV backend).

:meth:`Calls.request` maps failures onto the core's errors: no answer, 429 and 5xx are
:class:`~confhub.SourceUnavailableError` (transient), 403 is
:class:`~confhub.SourcePermissionError`; any status listed in ``accept`` is returned for the
caller to read (a 404 that means "lease lost", a 500 that names a bad session TTL).

After ``fork()`` the child's pools forget the parent's connections (the at-fork handler
gives each a new lock and empty lists): a call in the child opens its own connection, and
:meth:`Calls.close` in the child never closes a socket the parent still uses.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Collection, Iterator, Sequence

from confhub import SourcePermissionError, SourceUnavailableError

from ._http import TRANSPORT_ERRORS, Aborted, Connection, Response
from ._options import ConsulOptions
from ._reader import body_text


def new_connection(opts: ConsulOptions) -> Connection:
    """A connection with the source's TLS settings and token (never shown in reprs)."""
    headers = {"User-Agent": "confhub-consul"}
    if opts.token:
        headers["X-Consul-Token"] = opts.token
    return Connection(
        opts.host, opts.port, tls=opts.ssl_context(), connect_timeout=opts.timeout, headers=headers
    )


class Calls:
    """Borrowed connections to one agent and the request helper; see the module docstring."""

    def __init__(self, opts: ConsulOptions) -> None:
        self.opts = opts
        self.source = opts.display
        self._lock = threading.Lock()
        self._idle: list[Connection] = []
        self._all: set[Connection] = set()
        self._closed = False
        self._pid = os.getpid()
        _POOLS.add(self)

    def forget(self) -> None:
        """After fork(), in the child: a new lock and no connections (the parent's are
        dropped, never closed: only references go). Once per process; also run on the
        child's first use, in case a thread uses the pool before the at-fork handler ran."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self._idle = []
            self._all = set()

    def _closed_error(self) -> SourceUnavailableError:
        return SourceUnavailableError(f"{self.source}: the registry is closed", source=self.source)

    @contextlib.contextmanager
    def _borrow(self) -> Iterator[Connection]:
        self.forget()
        with self._lock:
            if self._closed:
                raise self._closed_error()
            conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = new_connection(self.opts)
                self._all.add(conn)
        ok = False
        try:
            yield conn
            ok = True
        finally:
            with self._lock:
                keep = ok and not self._closed
                if keep:
                    self._idle.append(conn)
                else:
                    self._all.discard(conn)
            if not keep:
                conn.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        read_timeout: float | None = None,
        accept: Collection[int] = (),
        what: str,
        consistency: bool = False,
    ) -> Response:
        """Send one request; return a 2xx answer or one whose status is in ``accept``.

        ``what`` says what the call does, for error messages ("registering orders-1").
        ``read_timeout`` defaults to the source's timeout (the hub's connect timeout).
        Every request names the spec's ``dc=``; with ``consistency`` a read also asks for
        the spec's ``consistency=`` mode.
        """
        timeout = self.opts.timeout if read_timeout is None else read_timeout
        if consistency:
            query = [*query, *self.opts.read_params()]
        elif self.opts.dc:
            query = [*query, ("dc", self.opts.dc)]
        try:
            with self._borrow() as conn:
                resp = conn.request(method, path, query=query, body=body, read_timeout=timeout)
        except Aborted:
            raise self._closed_error() from None
        except TRANSPORT_ERRORS as exc:
            raise SourceUnavailableError(
                f"{self.source}: cannot reach Consul at {self.opts.host}:{self.opts.port} while "
                f"{what} ({type(exc).__name__}: {exc}); retrying",
                source=self.source,
            ) from exc
        if 200 <= resp.status < 300 or resp.status in accept:
            return resp
        if resp.status == 403:
            raise SourcePermissionError(
                f"{self.source}: Consul refused {what} (403 {body_text(resp)}); give the ACL "
                "token service:write (registration), service:read (discovery), session:write "
                "and key_prefix write (locks)",
                source=self.source,
            )
        raise SourceUnavailableError(
            f"{self.source}: Consul answered {resp.status} {body_text(resp)} while {what}; "
            "retrying",
            source=self.source,
        )

    def close(self) -> None:
        """Abort every connection (waking parked queries) and refuse new calls; idempotent."""
        self.forget()
        with self._lock:
            self._closed = True
            conns = list(self._all)
            self._all.clear()
            self._idle.clear()
        for conn in conns:
            conn.close()


# The pools alive in this process. Module state because os.register_at_fork cannot be undone;
# weak, so that a pool is never kept alive by it.
_POOLS: weakref.WeakSet[Calls] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_POOLS):
        pool.forget()


os.register_at_fork(after_in_child=_after_fork_in_child)

"""A confhub-independent etcd v3 client built on ``etcd-sdk-python`` (``pyetcd``).

We use pyetcd's generated protobuf messages and gRPC stubs (``pyetcd.etcdrpc``) but not its
``Etcd3Client``/``Watcher`` objects, whose failure behaviour does not fit a long-running
configuration watcher (a failed endpoint is refused for 300 s, every watch is dropped after one
gRPC error and never re-subscribed, server-side cancels are swallowed, the auth token is never
refreshed). See ``docs/client-notes.md`` for the details.

The client layer, in import order (each module imports only those above it)::

    _errors    the exception tree
    _types     value types: KeyValue, PrefixSnapshot, WatchBatch, CASResult, Backoff ...
    _rpc       the gRPC boundary: stubs, Connection, translate(), WatchRequests/WatchStream
    _transport Transport: channels, failover, auth, the after-fork grace, unary calls
    _kvread    KVReads: one key, a prefix at one revision (paged), key listings
    _kvwrite   KVWrites: puts, deletes, CAS, guarded transactions, the request limits
    _watchstream WatchSession: one watch stream, read until it ends
    _watcher   PrefixWatcher, on the WatchTransport protocol (the client's watch seam)
    _client    EtcdClient (this module): composes them; leases, watch, lifecycle, fork

* :class:`EtcdClient` - endpoints with failover, a deadline on every unary call, TLS, user and
  password auth with one transparent re-authentication on an expired token, gRPC keepalive,
  client-side limits, and fork safety (channels are recreated in a child process).
* :meth:`EtcdClient.read_prefix` - every key under a prefix at ONE revision, paged.
* :class:`PrefixWatcher` - a resilient prefix watch on its own thread: one callback call per
  watch response (never per event), resume at ``last_applied + 1`` after a break, a full
  resync diff after compaction, state changes reported once each.
* :meth:`EtcdClient.put_if_revision` - compare-and-swap on ``mod_revision``.

This module re-exports the layer's public names, so ``from confhub_etcd._client import
EtcdClient, WatchBatch, PrefixWatcher`` keeps working.

Logging goes to ``logging.getLogger("confhub.etcd")``, one line per state change; passwords,
tokens and values are never logged or put in reprs and exception messages.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Self

import grpc

from ._errors import (
    EtcdAuthError,
    EtcdCASConflict,
    EtcdClosedError,
    EtcdCompacted,
    EtcdError,
    EtcdForkError,
    EtcdLimitError,
    EtcdTLSError,
    EtcdTooManyKeys,
    EtcdUnavailable,
)
from ._kvread import KVReads
from ._kvwrite import MAX_REQUEST_BYTES, MAX_TXN_OPS, KVWrites
from ._rpc import WatchStream, stubs, translate
from ._transport import Transport, parse_endpoint, read_tls
from ._types import (
    Backoff,
    CASResult,
    Credentials,
    EventKind,
    KeyValue,
    PrefixSnapshot,
    TLSConfig,
    WatchBatch,
    WatchEvent,
    WatchState,
    WatchStatus,
    prefix_range_end,
)
from ._watcher import BackoffPolicy, PrefixWatcher

__all__ = [
    "MAX_REQUEST_BYTES",
    "MAX_TXN_OPS",
    "Backoff",
    "CASResult",
    "Credentials",
    "EtcdAuthError",
    "EtcdCASConflict",
    "EtcdClient",
    "EtcdClosedError",
    "EtcdCompacted",
    "EtcdError",
    "EtcdForkError",
    "EtcdLimitError",
    "EtcdTLSError",
    "EtcdTooManyKeys",
    "EtcdUnavailable",
    "EventKind",
    "KeyValue",
    "PrefixSnapshot",
    "PrefixWatcher",
    "TLSConfig",
    "WatchBatch",
    "WatchEvent",
    "WatchState",
    "WatchStatus",
    "prefix_range_end",
]

log = logging.getLogger("confhub.etcd")

_DEFAULT_MAX_RECEIVE_BYTES: Final = 64 * 1024 * 1024


# ------------------------------------------------------------------------------------------------
# fork handling

# Clients alive in this process; after fork() the child resets them (new locks, no channels).
# This is the one piece of module state, because os.register_at_fork cannot be undone.
_LIVE_CLIENTS: weakref.WeakSet[EtcdClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Only the parent's clients: a handler registered before this one (confhub's, which
    # resumes hubs on threads of their own) may already have made new clients here.
    for client in list(_LIVE_CLIENTS):
        if client.inherited:
            client.reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


# ------------------------------------------------------------------------------------------------
# the client


class EtcdClient:
    """A thread-safe etcd v3 client over one or more endpoints (``host:port``).

    Every unary call has a per-attempt deadline of ``timeout`` seconds. Reads are retried once
    on each other endpoint after ``UNAVAILABLE``/``DEADLINE_EXCEEDED``; writes only when the
    failure proves the request was never sent. A failed endpoint is skipped by moving to the
    next one (round-robin), never quarantined for minutes.

    With ``credentials``, the client authenticates lazily on first use and once more when the
    server reports an invalid (expired) token. gRPC channels are created lazily per process: in
    a forked child the parent's channels are abandoned (not closed, not reused) and new ones
    created on first use.

    ``interceptors`` (gRPC client interceptors) wrap every call on every channel the client
    opens: for tracing, metrics, or a test that watches or fails calls
    (``confhub_etcd.testing.CallHook``).

    A :class:`PrefixWatcher` uses the client only through its watch seam
    (:class:`~confhub_etcd._watcher.WatchTransport`): :meth:`open_watch_stream`,
    :meth:`check_read`, :meth:`report_failure`, :meth:`track`, :attr:`uses_auth`,
    :attr:`current_endpoint` and :meth:`read_prefix`.
    """

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        timeout: float = 5.0,
        tls: TLSConfig | None = None,
        credentials: Credentials | None = None,
        keepalive_time: float = 10.0,
        keepalive_timeout: float = 5.0,
        reconnect_backoff_max: float = 2.0,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_txn_ops: int = MAX_TXN_OPS,
        max_receive_bytes: int = _DEFAULT_MAX_RECEIVE_BYTES,
        interceptors: Sequence[Any] = (),
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        parsed = [parse_endpoint(e) for e in endpoints if e.strip()]
        if not parsed:
            raise ValueError("EtcdClient needs at least one endpoint such as '127.0.0.1:2379'")
        if any(secure for _, secure in parsed) and tls is None:
            tls = TLSConfig()
        if keepalive_time < 5.0:
            # etcd's --grpc-keepalive-min-time defaults to 5 s; faster pings get GOAWAY.
            raise ValueError("keepalive_time must be at least 5 s (etcd's keepalive floor)")
        self._timeout = timeout
        self._tls = tls
        self._user = credentials.user if credentials else None
        options = [
            ("grpc.keepalive_time_ms", int(keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000)),
            # etcd does not permit pings without an active stream.
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_receive_message_length", max_receive_bytes),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(reconnect_backoff_max * 1000)),
        ]
        self._transport = Transport(
            [hostport for hostport, _ in parsed],
            timeout=timeout,
            tls_pem=read_tls(tls) if tls is not None else None,
            credentials=credentials,
            options=options,
            interceptors=interceptors,
        )
        self._reads = KVReads(self._transport.unary)
        self._writes = KVWrites(
            self._transport.unary, max_request_bytes=max_request_bytes, max_txn_ops=max_txn_ops
        )
        self._lock = threading.Lock()
        self._closed = False
        self._watchers: weakref.WeakSet[PrefixWatcher] = weakref.WeakSet()
        _LIVE_CLIENTS.add(self)

    # -- presentation / lifecycle ----------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"EtcdClient(endpoints={self.endpoints!r}, tls={self._tls is not None}, "
            f"user={self._user!r})"
        )

    @property
    def endpoints(self) -> list[str]:
        """The configured endpoints (``host:port``)."""
        return self._transport.endpoints

    @property
    def current_endpoint(self) -> str:
        """The endpoint the next call goes to."""
        return self._transport.current_endpoint

    @property
    def timeout(self) -> float:
        """The deadline of each unary call attempt, in seconds."""
        return self._timeout

    @property
    def uses_auth(self) -> bool:
        """Whether calls carry an auth token (credentials were given)."""
        return self._transport.uses_auth

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop this client's watchers and close its channels. Idempotent.

        The channels are closed before the watcher threads are joined: that ends at once a
        call they may be blocked in (a resync read, a permission check), which could
        otherwise outlast the join.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher.halt()
        self._transport.close()
        for watcher in watchers:
            watcher.close()
        _LIVE_CLIENTS.discard(self)

    @property
    def inherited(self) -> bool:
        """Whether this client was made in another process (this one is its forked child)
        and has not been reset for this one yet."""
        return self._transport.inherited

    def reset_after_fork(self) -> None:
        """Forget this process's channels and locks, as a forked child must.

        Runs automatically in a child right after fork(); ``confhub_etcd.testing.
        simulate_fork`` calls it to test that path without forking. The next call opens new
        channels, and the first one to fail is retried once at once.
        """
        self._lock = threading.Lock()
        self._transport.reset_after_fork()

    # -- reads -----------------------------------------------------------------------------------

    def get(self, key: str | bytes) -> tuple[KeyValue | None, int]:
        """Read one key: ``(KeyValue or None, store revision of the read)``."""
        return self._reads.get(key)

    def read_prefix(
        self,
        prefix: str | bytes,
        *,
        page_size: int = 500,
        attempts: int = 3,
        max_keys: int | None = None,
        convert: bool = True,
    ) -> PrefixSnapshot:
        """Every key under ``prefix`` at ONE revision, read in pages of ``page_size`` keys;
        restarted on a compaction between pages (``attempts`` times, then
        :class:`EtcdCompacted`); :class:`EtcdTooManyKeys` after the first page when there
        are more than ``max_keys``. See :meth:`KVReads.read_prefix
        <confhub_etcd._kvread.KVReads.read_prefix>` (and ``convert=False``)."""
        return self._reads.read_prefix(
            prefix, page_size=page_size, attempts=attempts, max_keys=max_keys, convert=convert
        )

    def keys_under(self, prefix: str | bytes, *, page_size: int = 1000) -> tuple[int, list[bytes]]:
        """``(revision, keys)``: the keys (names only) under ``prefix`` at one revision."""
        return self._reads.keys_under(prefix, page_size=page_size)

    def put_if_unchanged_under(
        self,
        key: str | bytes,
        value: str | bytes,
        *,
        scope: str | bytes,
        scope_revision: int,
        expected_mod_revision: int | None = None,
    ) -> CASResult:
        """Write ``key`` only if no key under ``scope`` was written after ``scope_revision``
        (and, with ``expected_mod_revision``, only if ``key`` is at it; 0: absent), in one
        transaction; see :meth:`KVWrites.put_if_unchanged_under
        <confhub_etcd._kvwrite.KVWrites.put_if_unchanged_under>`."""
        return self._writes.put_if_unchanged_under(
            key,
            value,
            scope=scope,
            scope_revision=scope_revision,
            expected_mod_revision=expected_mod_revision,
        )

    def guarded_txn(
        self,
        *,
        puts: Sequence[tuple[bytes, bytes]],
        deletes: Sequence[bytes],
        scopes: Mapping[bytes, int],
        expected: Mapping[bytes, int],
    ) -> tuple[bool, int, dict[bytes, int]]:
        """Apply ``puts`` and ``deletes`` in ONE transaction guarded by ``scopes`` and
        ``expected``: ``(succeeded, revision, actual)``; see :meth:`KVWrites.guarded_txn
        <confhub_etcd._kvwrite.KVWrites.guarded_txn>`."""
        return self._writes.guarded_txn(
            puts=puts, deletes=deletes, scopes=scopes, expected=expected
        )

    def revision(self) -> int:
        """The current store revision."""
        return self._reads.revision()

    # -- writes ----------------------------------------------------------------------------------

    def put(self, key: str | bytes, value: str | bytes) -> int:
        """Write one key; returns the new revision."""
        return self._writes.put(key, value)

    def delete(self, key: str | bytes) -> int:
        """Delete one key (no error if absent); returns the store revision after the call."""
        return self._writes.delete(key)

    def delete_prefix(self, prefix: str | bytes) -> int:
        """Delete every key under ``prefix`` in one revision; returns the revision."""
        return self._writes.delete_prefix(prefix)

    def put_many(
        self,
        items: Mapping[str | bytes, str | bytes] | Iterable[tuple[str | bytes, str | bytes]],
        *,
        delete: Iterable[str | bytes] = (),
    ) -> int:
        """Write several keys (and delete others) in one transaction, i.e. one revision."""
        return self._writes.put_many(items, delete=delete)

    def put_if_revision(
        self, key: str | bytes, value: str | bytes, expected_mod_revision: int
    ) -> CASResult:
        """Write ``key`` only if its mod_revision is ``expected_mod_revision`` (0: it must
        not exist). Returns a :class:`CASResult` (``.check()`` turns a conflict into
        :class:`EtcdCASConflict`); oversized requests raise :class:`EtcdLimitError`."""
        return self._writes.put_if_revision(key, value, expected_mod_revision)

    def compact(self, revision: int, *, physical: bool = True) -> None:
        """Compact the history up to ``revision``."""
        self._writes.compact(revision, physical=physical)

    # -- watch -----------------------------------------------------------------------------------

    def watch_prefix(
        self,
        prefix: str | bytes,
        on_batch: Callable[[WatchBatch], None],
        on_state: Callable[[WatchStatus], None] | None = None,
        *,
        snapshot: PrefixSnapshot | None = None,
        backoff: BackoffPolicy | None = None,
        progress_interval: float = 5.0,
        liveness_timeout: float | None = None,
        page_size: int = 500,
        require_leader: bool = True,
        source: str | None = None,
    ) -> PrefixWatcher:
        """Create and start a :class:`PrefixWatcher`; see its docstring for the arguments."""
        watcher = PrefixWatcher(
            self,
            prefix,
            on_batch,
            on_state,
            snapshot=snapshot,
            backoff=backoff,
            progress_interval=progress_interval,
            liveness_timeout=liveness_timeout,
            page_size=page_size,
            require_leader=require_leader,
            source=source,
        )
        watcher.start()
        return watcher

    # -- the watch seam (what PrefixWatcher uses; see _watcher.WatchTransport) ---------------

    def open_watch_stream(
        self, requests: Iterator[Any], *, require_leader: bool = True
    ) -> WatchStream:
        """Open a ``Watch`` call on the current endpoint, fed by ``requests``.

        Authenticates first when needed (the first call after fork() gets its one retry
        here). With ``require_leader`` the stream carries ``hasleader`` metadata, so a member
        without a leader cancels it. Raises :class:`EtcdError` (closed, unavailable, auth).
        """
        return self._transport.open_watch_stream(requests, require_leader=require_leader)

    def check_read(self, prefix: bytes) -> None:
        """Raise :class:`EtcdAuthError` when keys under ``prefix`` may no longer be read
        (one key, keys only: cheap enough for every progress interval)."""
        self._reads.check_read(prefix)

    def report_failure(self, endpoint: str) -> None:
        """``endpoint`` failed: move to the next endpoint if it is still the current one."""
        self._transport.report_failure(endpoint)

    def track(self, watcher: PrefixWatcher) -> None:
        """Stop ``watcher`` when this client closes (``PrefixWatcher.start`` calls it)."""
        with self._lock:
            self._watchers.add(watcher)

    # -- leases and raw requests (the service registry's; see _registry.py) ---------------------

    def call(self, stub: str, method: str, request: Any, *, idempotent: bool, what: str) -> Any:
        """Send one unary request built from :func:`confhub_etcd._rpc.stubs` messages (``stub``
        is ``kv``, ``lease``, ``watch`` ...) with the client's deadline, auth, failover and
        retries; ``idempotent=False`` for a write. Raises :class:`EtcdError`."""
        return self._transport.unary(stub, method, request, idempotent=idempotent, what=what)

    def lease_keepalive(self, lease_id: int) -> int:
        """Refresh lease ``lease_id`` once; returns its new TTL in seconds, 0 when etcd no
        longer has the lease. One short ``LeaseKeepAlive`` stream, bounded by the deadline."""
        request = stubs().LeaseKeepAliveRequest(ID=lease_id)
        call = self._transport.unary(
            "lease", "LeaseKeepAlive", iter([request]), idempotent=True, what="lease keepalive"
        )
        endpoint = self.current_endpoint
        try:
            response = next(iter(call), None)
        except grpc.RpcError as exc:
            error = translate(exc, endpoint, what="lease keepalive", tls=self._tls is not None)
            if isinstance(error, EtcdUnavailable):
                self.report_failure(endpoint)
            raise error from None
        finally:
            call.cancel()
        return 0 if response is None else int(response.TTL)

    def open_lease_keepalive(self, requests: Iterator[Any]) -> tuple[str, Any]:
        """A long-lived ``LeaseKeepAlive`` stream fed by ``requests``: ``(endpoint, call)``
        (see ``confhub_etcd._lease.KeepaliveStream``)."""
        return self._transport.open_lease_keepalive(requests)

    @property
    def tls(self) -> bool:
        """Whether the client talks TLS."""
        return self._tls is not None

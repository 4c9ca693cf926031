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
    _watcher   PrefixWatcher, on the WatchTransport protocol (the client's watch seam)
    _client    EtcdClient (this module)

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
from ._rpc import ResponseTooLarge, WatchStream, stubs, to_key_value, translate
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
    key_text,
    prefix_range_end,
    to_bytes,
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

#: etcd's default ``--max-request-bytes`` (1.5 MiB).
MAX_REQUEST_BYTES: Final = 1_572_864
#: etcd's default ``--max-txn-ops``.
MAX_TXN_OPS: Final = 128
# etcd wraps a request in an InternalRaftRequest (header, user name) before comparing its size
# with --max-request-bytes; leave room for that envelope.
_RAFT_ENVELOPE_BYTES: Final = 512
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
        self._max_request_bytes = max_request_bytes
        self._max_txn_ops = max_txn_ops
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
        response = self._unary(
            "kv", "Range", stubs().RangeRequest(key=to_bytes(key)), idempotent=True, what="get"
        )
        item = to_key_value(response.kvs[0]) if response.kvs else None
        return item, int(response.header.revision)

    def read_prefix(
        self,
        prefix: str | bytes,
        *,
        page_size: int = 500,
        attempts: int = 3,
        max_keys: int | None = None,
        convert: bool = True,
    ) -> PrefixSnapshot:
        """Every key under ``prefix`` at ONE revision, read in pages of ``page_size`` keys.

        The first page fixes the revision R (its header revision); later pages ask for R
        explicitly, so the result is one consistent snapshot even while writers are busy. If R
        is compacted between pages, the read restarts at a new R (up to ``attempts`` times, then
        :class:`EtcdCompacted`). A page larger than the gRPC receive limit is re-read at half
        the page size.

        With ``max_keys``, a prefix holding more keys raises :class:`EtcdTooManyKeys` after
        the FIRST page (etcd's range count says how many there are), so a runaway prefix is
        refused without downloading it.

        ``convert=False`` leaves the items as etcd's protobuf ``KeyValue`` messages (the same
        fields, read-only by convention): for a caller that reads each once, such as a load
        building its layer, it saves making a :class:`KeyValue` per key. Their ``repr``
        shows values: do not log them.
        """
        prefix_b = to_bytes(prefix)
        end = prefix_range_end(prefix_b)
        last_error: EtcdCompacted | None = None
        for _ in range(max(1, attempts)):
            try:
                return self._read_prefix_once(prefix_b, end, page_size, max_keys, convert)
            except EtcdCompacted as exc:
                last_error = exc
                log.info(
                    "etcd compacted during a paged read of %s; restarting the read",
                    key_text(prefix_b),
                )
        if last_error is None:  # attempts < 1 is normalised above; kept for the type checker
            raise EtcdError(f"paged read of {key_text(prefix_b)} made no attempt")
        raise last_error

    def _read_prefix_once(
        self,
        prefix: bytes,
        end: bytes,
        page_size: int,
        max_keys: int | None = None,
        convert: bool = True,
    ) -> PrefixSnapshot:
        rpc = stubs()
        revision = 0
        start = prefix
        items: list[Any] = []
        size = max(1, page_size)
        while True:
            request = rpc.RangeRequest(key=start, range_end=end, limit=size, revision=revision)
            try:
                response = self._unary("kv", "Range", request, idempotent=True, what="range read")
            except ResponseTooLarge:
                if size == 1:
                    raise
                size = max(1, size // 2)
                continue
            except EtcdCompacted as exc:
                exc.requested_revision = revision
                raise
            if revision == 0:
                revision = int(response.header.revision)
            if max_keys is not None:
                count = max(int(response.count), len(items) + len(response.kvs))
                if count > max_keys:
                    raise EtcdTooManyKeys(prefix, count, max_keys)
            items.extend(map(to_key_value, response.kvs) if convert else response.kvs)
            if not response.more or not response.kvs:
                return PrefixSnapshot(revision=revision, items=tuple(items))
            start = bytes(response.kvs[-1].key) + b"\0"

    def keys_under(self, prefix: str | bytes, *, page_size: int = 1000) -> tuple[int, list[bytes]]:
        """``(revision, keys)``: the keys (names only, no values) under ``prefix`` at one
        store revision, read in pages.

        What a write reads to check what it could clash with (``confhub.kv.check_write_shape``),
        then passes to :meth:`put_if_unchanged_under` with the revision.
        """
        prefix_b = to_bytes(prefix)
        end = prefix_range_end(prefix_b)
        rpc = stubs()
        revision = 0
        start = prefix_b or b"\0"
        keys: list[bytes] = []
        while True:
            request = rpc.RangeRequest(
                key=start, range_end=end, limit=page_size, revision=revision, keys_only=True
            )
            response = self._unary("kv", "Range", request, idempotent=True, what="key listing")
            if revision == 0:
                revision = int(response.header.revision)
            keys.extend(bytes(item.key) for item in response.kvs)
            if not response.more or not response.kvs:
                return revision, keys
            start = keys[-1] + b"\0"

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
        (and, with ``expected_mod_revision``, only if ``key``'s mod_revision is that; 0: it
        must not exist), in one transaction.

        A failed compare returns ``CASResult(succeeded=False)`` with the key's current
        mod_revision as ``actual``: when it is the expected one, the scope changed instead
        (read it again). Oversized requests raise :class:`EtcdLimitError` before sending.
        """
        rpc = stubs()
        key_b, scope_b = to_bytes(key), to_bytes(scope)
        compares = [
            rpc.Compare(
                key=scope_b,
                range_end=prefix_range_end(scope_b),
                result=rpc.Compare.LESS,
                target=rpc.Compare.MOD,
                mod_revision=scope_revision + 1,
            )
        ]
        if expected_mod_revision is not None:
            compares.append(
                rpc.Compare(
                    key=key_b,
                    result=rpc.Compare.EQUAL,
                    target=rpc.Compare.MOD,
                    mod_revision=expected_mod_revision,
                )
            )
        request = rpc.TxnRequest(
            compare=compares,
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key_b, value=to_bytes(value)))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key_b, keys_only=True))],
        )
        _check_size(request, self._max_request_bytes, "put_if_unchanged_under")
        response = self._unary("kv", "Txn", request, idempotent=False, what="guarded put")
        revision = int(response.header.revision)
        expected = -1 if expected_mod_revision is None else expected_mod_revision
        if response.succeeded:
            return CASResult(True, revision, key_b, expected, revision)
        actual = 0
        for op in response.responses:
            if op.HasField("response_range") and op.response_range.kvs:
                actual = int(op.response_range.kvs[0].mod_revision)
        return CASResult(False, revision, key_b, expected, actual)

    def guarded_txn(
        self,
        *,
        puts: Sequence[tuple[bytes, bytes]],
        deletes: Sequence[bytes],
        scopes: Mapping[bytes, int],
        expected: Mapping[bytes, int],
    ) -> tuple[bool, int, dict[bytes, int]]:
        """Apply ``puts`` and ``deletes`` in ONE transaction, only if no key under each of
        ``scopes`` was written after its revision and every key of ``expected`` is at that
        mod_revision (0: absent). Returns ``(succeeded, revision, actual)``: on a failed
        compare ``actual`` holds the current mod_revision of each ``expected`` key (when
        all match, a scope changed instead: read it again). Limits are checked before
        sending (:class:`EtcdLimitError`)."""
        rpc = stubs()
        compares = [
            rpc.Compare(
                key=scope,
                range_end=prefix_range_end(scope),
                result=rpc.Compare.LESS,
                target=rpc.Compare.MOD,
                mod_revision=revision + 1,
            )
            for scope, revision in scopes.items()
        ]
        compares += [
            rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, mod_revision=rev)
            for key, rev in expected.items()
        ]
        ops = [rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v)) for k, v in puts]
        ops += [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k)) for k in deletes]
        _check_ops(max(len(ops), len(compares)), self._max_txn_ops, "transaction")
        request = rpc.TxnRequest(
            compare=compares,
            success=ops,
            failure=[
                rpc.RequestOp(request_range=rpc.RangeRequest(key=k, keys_only=True))
                for k in expected
            ],
        )
        _check_size(request, self._max_request_bytes, "transaction")
        response = self._unary("kv", "Txn", request, idempotent=False, what="transaction")
        revision = int(response.header.revision)
        actual = dict.fromkeys(expected, 0)
        if not response.succeeded:
            for op in response.responses:
                if op.HasField("response_range") and op.response_range.kvs:
                    item = op.response_range.kvs[0]
                    actual[bytes(item.key)] = int(item.mod_revision)
        return bool(response.succeeded), revision, actual

    def revision(self) -> int:
        """The current store revision."""
        response = self._unary(
            "kv",
            "Range",
            stubs().RangeRequest(key=b"\0", limit=1, count_only=True),
            idempotent=True,
            what="revision read",
        )
        return int(response.header.revision)

    # -- writes ----------------------------------------------------------------------------------

    def put(self, key: str | bytes, value: str | bytes) -> int:
        """Write one key; returns the new revision."""
        request = stubs().PutRequest(key=to_bytes(key), value=to_bytes(value))
        _check_size(request, self._max_request_bytes, "put")
        response = self._unary("kv", "Put", request, idempotent=False, what="put")
        return int(response.header.revision)

    def delete(self, key: str | bytes) -> int:
        """Delete one key (no error if absent); returns the store revision after the call."""
        response = self._unary(
            "kv",
            "DeleteRange",
            stubs().DeleteRangeRequest(key=to_bytes(key)),
            idempotent=False,
            what="delete",
        )
        return int(response.header.revision)

    def delete_prefix(self, prefix: str | bytes) -> int:
        """Delete every key under ``prefix`` in one revision; returns the revision."""
        prefix_b = to_bytes(prefix)
        response = self._unary(
            "kv",
            "DeleteRange",
            stubs().DeleteRangeRequest(key=prefix_b, range_end=prefix_range_end(prefix_b)),
            idempotent=False,
            what="delete",
        )
        return int(response.header.revision)

    def put_many(
        self,
        items: Mapping[str | bytes, str | bytes] | Iterable[tuple[str | bytes, str | bytes]],
        *,
        delete: Iterable[str | bytes] = (),
    ) -> int:
        """Write several keys (and delete others) in one transaction, i.e. one revision."""
        rpc = stubs()
        pairs = items.items() if isinstance(items, Mapping) else items
        ops = [
            rpc.RequestOp(request_put=rpc.PutRequest(key=to_bytes(k), value=to_bytes(v)))
            for k, v in pairs
        ]
        ops += [
            rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=to_bytes(k)))
            for k in delete
        ]
        _check_ops(len(ops), self._max_txn_ops, "put_many")
        request = rpc.TxnRequest(success=ops)
        _check_size(request, self._max_request_bytes, "put_many")
        response = self._unary("kv", "Txn", request, idempotent=False, what="transaction")
        return int(response.header.revision)

    def put_if_revision(
        self, key: str | bytes, value: str | bytes, expected_mod_revision: int
    ) -> CASResult:
        """Write ``key`` only if its mod_revision is ``expected_mod_revision``.

        ``expected_mod_revision=0`` means the key must not exist. Returns a :class:`CASResult`
        (``.check()`` turns a conflict into :class:`EtcdCASConflict`). Oversized requests raise
        :class:`EtcdLimitError` before anything is sent.
        """
        rpc = stubs()
        key_b = to_bytes(key)
        compare = rpc.Compare(
            key=key_b,
            result=rpc.Compare.EQUAL,
            target=rpc.Compare.MOD,
            mod_revision=expected_mod_revision,
        )
        request = rpc.TxnRequest(
            compare=[compare],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key_b, value=to_bytes(value)))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key_b, keys_only=True))],
        )
        _check_size(request, self._max_request_bytes, "put_if_revision")
        response = self._unary("kv", "Txn", request, idempotent=False, what="compare-and-swap")
        revision = int(response.header.revision)
        if response.succeeded:
            return CASResult(True, revision, key_b, expected_mod_revision, revision)
        actual = 0
        for op in response.responses:
            if op.HasField("response_range") and op.response_range.kvs:
                actual = int(op.response_range.kvs[0].mod_revision)
        return CASResult(False, revision, key_b, expected_mod_revision, actual)

    def compact(self, revision: int, *, physical: bool = True) -> None:
        """Compact the history up to ``revision``."""
        self._unary(
            "kv",
            "Compact",
            stubs().CompactionRequest(revision=revision, physical=physical),
            idempotent=True,
            what="compaction",
        )

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
        """Raise :class:`EtcdAuthError` when keys under ``prefix`` may no longer be read.

        One key, keys only: cheap enough to run every progress interval. Other failures
        raise as from any read.
        """
        request = stubs().RangeRequest(
            key=prefix or b"\0", range_end=prefix_range_end(prefix), limit=1, keys_only=True
        )
        self._unary("kv", "Range", request, idempotent=True, what="a permission check")

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
        return self._unary(stub, method, request, idempotent=idempotent, what=what)

    def lease_keepalive(self, lease_id: int) -> int:
        """Refresh lease ``lease_id`` once; returns its new TTL in seconds, 0 when etcd no
        longer has the lease. One short ``LeaseKeepAlive`` stream, bounded by the deadline."""
        request = stubs().LeaseKeepAliveRequest(ID=lease_id)
        call = self._unary(
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

    def _unary(self, stub: str, method: str, request: Any, *, idempotent: bool, what: str) -> Any:
        # Every request of this class goes through here (one place to wrap in a test).
        return self._transport.unary(stub, method, request, idempotent=idempotent, what=what)


# ------------------------------------------------------------------------------------------------
# client-side limits: refuse before sending what etcd would refuse


def _check_size(request: Any, max_request_bytes: int, what: str) -> None:
    size = int(request.ByteSize())
    limit = max_request_bytes - _RAFT_ENVELOPE_BYTES
    if size > limit:
        raise EtcdLimitError(
            f"{what} request is {size} bytes; etcd accepts at most {max_request_bytes} "
            f"(--max-request-bytes, {limit} after its envelope); split the value or raise "
            "the server's limit and max_request_bytes together",
            limit_name="max_request_bytes",
            limit=limit,
            actual=size,
        )


def _check_ops(count: int, max_txn_ops: int, what: str) -> None:
    if count > max_txn_ops:
        raise EtcdLimitError(
            f"{what} needs {count} operations in one transaction; etcd accepts at most "
            f"{max_txn_ops} (--max-txn-ops); split the change",
            limit_name="max_txn_ops",
            limit=max_txn_ops,
            actual=count,
        )

"""A confhub-independent etcd v3 client layer built on ``etcd-sdk-python`` (``pyetcd``).

We use pyetcd's generated protobuf messages and gRPC stubs (``pyetcd.etcdrpc``) but not its
``Etcd3Client``/``Watcher`` objects, whose failure behaviour does not fit a long-running
configuration watcher (a failed endpoint is refused for 300 s, every watch is dropped after one
gRPC error and never re-subscribed, server-side cancels are swallowed, the auth token is never
refreshed). See ``docs/client-notes.md`` for the details.

What this module provides:

* :class:`EtcdClient` - endpoints with failover, a deadline on every unary call, TLS, user and
  password auth with one transparent re-authentication on an expired token, gRPC keepalive,
  client-side limits, and fork safety (channels are recreated in a child process).
* :meth:`EtcdClient.read_prefix` - every key under a prefix at ONE revision, paged.
* :class:`PrefixWatcher` - a resilient prefix watch on its own thread: one callback call per
  watch response (never per event), resume at ``last_applied + 1`` after a break, a full
  resync diff after compaction, state changes reported once each.
* :meth:`EtcdClient.put_if_revision` - compare-and-swap on ``mod_revision``.

Logging goes to ``logging.getLogger("confhub.etcd")``, one line per state change; passwords,
tokens and values are never logged or put in reprs and exception messages.
"""

from __future__ import annotations

import enum
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, NamedTuple, Self

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
    EtcdUnavailable,
)

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

_RETRYABLE_CODES: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)
_TLS_MARKERS: Final = ("ssl", "handshake", "certificate", "tsi_", "x509")
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


def _not_sent(error: EtcdError) -> bool:
    """Whether ``error`` proves the request never left this process."""
    text = str(error).lower()
    return any(marker in text for marker in _NOT_SENT_MARKERS)


def _rpc() -> Any:
    # pyetcd ships no type information; every message and stub is typed Any through this door.
    import pyetcd.etcdrpc  # noqa: PLC0415 - keep ``import confhub_etcd`` free of gRPC stubs

    return pyetcd.etcdrpc


# ------------------------------------------------------------------------------------------------
# values


def _to_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def prefix_range_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix`` (``b"\\0"`` = all)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


@dataclass(frozen=True, slots=True)
class Credentials:
    """User name and password for etcd's auth; the password never appears in a repr."""

    user: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """PEM files for TLS: the CA to trust and, for ``--client-cert-auth``, a client cert/key.

    ``ca_file=None`` trusts the system roots. Files are read when the client is created.
    """

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None


class KeyValue(NamedTuple):
    """One key as stored at a revision. ``repr`` shows the value's length, not the value.

    A named tuple, not a frozen dataclass: a load builds one per key, and a frozen
    dataclass's ``__init__`` (one ``object.__setattr__`` per field) cost ~1 us each, a
    quarter of reading 10,000 keys.
    """

    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int
    version: int

    def __repr__(self) -> str:
        return (
            f"KeyValue(key={self.key!r}, value=<{len(self.value)} bytes>, "
            f"mod_revision={self.mod_revision}, create_revision={self.create_revision}, "
            f"version={self.version})"
        )


class EtcdTooManyKeys(EtcdLimitError):
    """A prefix holds more keys than the reader's ``max_keys``; the read stopped early.

    ``actual`` is etcd's count of the keys under the prefix (or, for a watcher, the keys it
    knows of), ``limit`` the cap; ``limit_name`` is ``"max_keys"``.
    """

    def __init__(self, prefix: bytes, count: int, limit: int) -> None:
        super().__init__(
            f"{count:,} keys under {prefix!r}, more than max_keys={limit:,}",
            limit_name="max_keys",
            limit=limit,
            actual=count,
        )
        self.prefix = prefix


@dataclass(frozen=True, slots=True)
class PrefixSnapshot:
    """Every key under a prefix at one ``revision`` (the store revision of the read)."""

    revision: int
    items: tuple[KeyValue, ...]

    def as_dict(self) -> dict[bytes, KeyValue]:
        return {kv.key: kv for kv in self.items}

    def revisions(self) -> dict[bytes, int]:
        """Each key's ``mod_revision``: all a watcher keeps to diff a later read against."""
        return {kv.key: kv.mod_revision for kv in self.items}


class EventKind(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change. For ``DELETE`` the value is ``b""`` and ``mod_revision`` is the deletion's
    revision (in a resync batch: the snapshot revision, the exact one being unknowable)."""

    kind: EventKind
    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int = 0
    version: int = 0

    def __repr__(self) -> str:
        return (
            f"WatchEvent({self.kind.name}, key={self.key!r}, value=<{len(self.value)} bytes>, "
            f"mod_revision={self.mod_revision})"
        )


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """The events of one watch response, or of one resync, applied as a unit.

    ``revision`` is the highest revision the batch completes: after applying it, the consumer
    has every change up to ``revision``. A response can span several revisions but a revision
    never spans batches. ``resync=True`` marks a batch computed by a full read (initial load or
    after compaction); ``compact_revision`` is the server's compaction point that forced it
    (0 for the initial load).
    """

    revision: int
    events: tuple[WatchEvent, ...]
    resync: bool = False
    compact_revision: int = 0


class WatchState(enum.Enum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    RESYNCED = "resynced"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class WatchStatus:
    """Passed to ``on_state``: the new state, the last applied revision, the endpoint in use,
    and for ``DISCONNECTED`` the error that caused it (an :class:`EtcdError`)."""

    state: WatchState
    revision: int
    endpoint: str | None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class CASResult:
    """Outcome of :meth:`EtcdClient.put_if_revision`.

    On success ``revision`` is the new revision (the key's new mod_revision). On a conflict
    ``revision`` is the store revision at the time and ``actual`` the key's current mod_revision
    (0 = absent).
    """

    succeeded: bool
    revision: int
    key: bytes
    expected: int
    actual: int

    def check(self) -> int:
        """Return the new revision, or raise :class:`EtcdCASConflict`."""
        if not self.succeeded:
            raise EtcdCASConflict(
                f"compare-and-swap on key {self.key!r} lost: expected mod_revision "
                f"{self.expected}, found {self.actual}; re-read the key and retry",
                key=self.key,
                expected=self.expected,
                actual=self.actual,
            )
        return self.revision


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter: attempt ``n`` waits about
    ``min(maximum, initial * multiplier**n)``, reduced by up to ``jitter`` (a fraction)."""

    initial: float = 0.2
    maximum: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))
        return base * (1.0 - self.jitter * random.random())  # noqa: S311 - not cryptographic


def _kv(raw: Any) -> KeyValue:
    # protobuf already returns bytes and int for these fields: no conversion calls (they
    # were half the cost of reading a large prefix).
    return KeyValue(raw.key, raw.value, raw.mod_revision, raw.create_revision, raw.version)


# ------------------------------------------------------------------------------------------------
# error translation


class _ResponseTooLarge(EtcdError):
    """A response exceeded the client's gRPC receive limit (read smaller pages)."""


def _translate(exc: grpc.RpcError, endpoint: str, *, what: str) -> EtcdError:
    """Map a gRPC error to this module's exceptions; messages hold no secrets."""
    code: grpc.StatusCode = exc.code()
    details = str(exc.details() or "")
    lowered = details.lower()
    if code in _RETRYABLE_CODES or code == grpc.StatusCode.CANCELLED:
        if code == grpc.StatusCode.UNAVAILABLE and any(m in lowered for m in _TLS_MARKERS):
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
        return _ResponseTooLarge(f"response from {endpoint} too large during {what}: {details}")
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


# ------------------------------------------------------------------------------------------------
# fork handling

# Clients alive in this process; after fork() the child resets them (new locks, no channels).
# This is the one piece of module state, because os.register_at_fork cannot be undone.
_LIVE_CLIENTS: weakref.WeakSet[EtcdClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_LIVE_CLIENTS):
        client._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass
class _Connection:
    endpoint: str
    channel: grpc.Channel
    kv: Any
    watch: Any
    auth: Any
    maintenance: Any


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
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        parsed = [self._parse_endpoint(e) for e in endpoints if e.strip()]
        if not parsed:
            raise ValueError("EtcdClient needs at least one endpoint such as '127.0.0.1:2379'")
        self._endpoints = [hostport for hostport, _ in parsed]
        wants_tls = any(secure for _, secure in parsed)
        if wants_tls and tls is None:
            tls = TLSConfig()
        if keepalive_time < 5.0:
            # etcd's --grpc-keepalive-min-time defaults to 5 s; faster pings get GOAWAY.
            raise ValueError("keepalive_time must be at least 5 s (etcd's keepalive floor)")
        self._timeout = timeout
        self._tls = tls
        self._tls_pem = self._read_tls(tls) if tls is not None else None
        self._credentials = credentials
        self._max_request_bytes = max_request_bytes
        self._max_txn_ops = max_txn_ops
        self._options: list[tuple[str, int]] = [
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
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._connections: dict[str, _Connection] = {}
        self._fork_grace = False
        self._current = 0
        self._token: str | None = None
        self._closed = False
        self._watchers: weakref.WeakSet[PrefixWatcher] = weakref.WeakSet()
        _LIVE_CLIENTS.add(self)

    # -- presentation / lifecycle ----------------------------------------------------------------

    def __repr__(self) -> str:
        user = self._credentials.user if self._credentials else None
        return (
            f"EtcdClient(endpoints={self._endpoints!r}, tls={self._tls is not None}, user={user!r})"
        )

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
    def timeout(self) -> float:
        return self._timeout

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
            connections = list(self._connections.values()) if self._pid == os.getpid() else []
            self._connections.clear()
        for watcher in watchers:
            watcher._halt()
        for conn in connections:
            conn.channel.close()
        for watcher in watchers:
            watcher.close()
        _LIVE_CLIENTS.discard(self)

    # -- reads -----------------------------------------------------------------------------------

    def get(self, key: str | bytes) -> tuple[KeyValue | None, int]:
        """Read one key: ``(KeyValue or None, store revision of the read)``."""
        response = self._unary(
            "kv", "Range", _rpc().RangeRequest(key=_to_bytes(key)), idempotent=True, what="get"
        )
        item = _kv(response.kvs[0]) if response.kvs else None
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
        prefix_b = _to_bytes(prefix)
        end = prefix_range_end(prefix_b)
        last_error: EtcdCompacted | None = None
        for _ in range(max(1, attempts)):
            try:
                return self._read_prefix_once(prefix_b, end, page_size, max_keys, convert)
            except EtcdCompacted as exc:
                last_error = exc
                log.info("etcd compacted during a paged read of %r; restarting the read", prefix_b)
        if last_error is None:  # attempts < 1 is normalised above; kept for the type checker
            raise EtcdError(f"paged read of {prefix_b!r} made no attempt")
        raise last_error

    def _read_prefix_once(
        self,
        prefix: bytes,
        end: bytes,
        page_size: int,
        max_keys: int | None = None,
        convert: bool = True,
    ) -> PrefixSnapshot:
        rpc = _rpc()
        revision = 0
        start = prefix
        items: list[Any] = []
        size = max(1, page_size)
        while True:
            request = rpc.RangeRequest(key=start, range_end=end, limit=size, revision=revision)
            try:
                response = self._unary("kv", "Range", request, idempotent=True, what="range read")
            except _ResponseTooLarge:
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
            items.extend(map(_kv, response.kvs) if convert else response.kvs)
            if not response.more or not response.kvs:
                return PrefixSnapshot(revision=revision, items=tuple(items))
            start = bytes(response.kvs[-1].key) + b"\0"

    def revision(self) -> int:
        """The current store revision."""
        response = self._unary(
            "kv",
            "Range",
            _rpc().RangeRequest(key=b"\0", limit=1, count_only=True),
            idempotent=True,
            what="revision read",
        )
        return int(response.header.revision)

    # -- writes ----------------------------------------------------------------------------------

    def put(self, key: str | bytes, value: str | bytes) -> int:
        """Write one key; returns the new revision."""
        request = _rpc().PutRequest(key=_to_bytes(key), value=_to_bytes(value))
        self._check_size(request, "put")
        response = self._unary("kv", "Put", request, idempotent=False, what="put")
        return int(response.header.revision)

    def delete(self, key: str | bytes) -> int:
        """Delete one key (no error if absent); returns the store revision after the call."""
        response = self._unary(
            "kv",
            "DeleteRange",
            _rpc().DeleteRangeRequest(key=_to_bytes(key)),
            idempotent=False,
            what="delete",
        )
        return int(response.header.revision)

    def delete_prefix(self, prefix: str | bytes) -> int:
        """Delete every key under ``prefix`` in one revision; returns the revision."""
        prefix_b = _to_bytes(prefix)
        response = self._unary(
            "kv",
            "DeleteRange",
            _rpc().DeleteRangeRequest(key=prefix_b, range_end=prefix_range_end(prefix_b)),
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
        rpc = _rpc()
        pairs = items.items() if isinstance(items, Mapping) else items
        ops = [
            rpc.RequestOp(request_put=rpc.PutRequest(key=_to_bytes(k), value=_to_bytes(v)))
            for k, v in pairs
        ]
        ops += [
            rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=_to_bytes(k)))
            for k in delete
        ]
        self._check_ops(len(ops), "put_many")
        request = rpc.TxnRequest(success=ops)
        self._check_size(request, "put_many")
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
        rpc = _rpc()
        key_b = _to_bytes(key)
        compare = rpc.Compare(
            key=key_b,
            result=rpc.Compare.EQUAL,
            target=rpc.Compare.MOD,
            mod_revision=expected_mod_revision,
        )
        request = rpc.TxnRequest(
            compare=[compare],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key_b, value=_to_bytes(value)))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key_b, keys_only=True))],
        )
        self._check_size(request, "put_if_revision")
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
            _rpc().CompactionRequest(revision=revision, physical=physical),
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
        backoff: Backoff | None = None,
        progress_interval: float = 5.0,
        liveness_timeout: float | None = None,
        page_size: int = 500,
        require_leader: bool = True,
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
        )
        watcher.start()
        return watcher

    # -- internals: connections ------------------------------------------------------------------

    @staticmethod
    def _parse_endpoint(text: str) -> tuple[str, bool]:
        text = text.strip()
        secure = text.startswith("https://")
        for scheme in ("http://", "https://"):
            text = text.removeprefix(scheme)
        text = text.rstrip("/")
        if ":" not in text:
            text += ":2379"
        return text, secure

    @staticmethod
    def _read_tls(tls: TLSConfig) -> tuple[bytes | None, bytes | None, bytes | None]:
        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        if (tls.cert_file is None) != (tls.key_file is None):
            raise ValueError("TLS client authentication needs both cert_file and key_file")
        return read(tls.ca_file), read(tls.key_file), read(tls.cert_file)

    def _reset_after_fork(self) -> None:
        # Runs in the child right after fork(): a lock held by a parent thread would never be
        # released here, and the parent's channels belong to the parent's gRPC threads.
        self._lock = threading.RLock()
        self._connections = {}
        self._pid = os.getpid()
        # gRPC can fail the first call made in a child ("sendmsg: Wrong file descriptor
        # generation", about 1 fork in 15 with grpcio 1.85): see _fork_retry.
        self._fork_grace = True

    def _connection(self) -> _Connection:
        with self._lock:
            if self._closed:
                raise EtcdClosedError("the etcd client is closed; create a new EtcdClient")
            if self._pid != os.getpid():
                self._reset_after_fork()
            endpoint = self._endpoints[self._current]
            conn = self._connections.get(endpoint)
            if conn is None:
                conn = self._connections[endpoint] = self._open(endpoint)
            return conn

    def _open(self, endpoint: str) -> _Connection:
        if self._tls_pem is not None:
            ca, key, cert = self._tls_pem
            creds = grpc.ssl_channel_credentials(ca, key, cert)
            channel = grpc.secure_channel(endpoint, creds, options=self._options)
        else:
            channel = grpc.insecure_channel(endpoint, options=self._options)
        rpc = _rpc()
        return _Connection(
            endpoint=endpoint,
            channel=channel,
            kv=rpc.KVStub(channel),
            watch=rpc.WatchStub(channel),
            auth=rpc.AuthStub(channel),
            maintenance=rpc.MaintenanceStub(channel),
        )

    def _mark_failed(self, endpoint: str) -> None:
        """Move to the next endpoint if ``endpoint`` is still the current one."""
        with self._lock:
            if self._endpoints[self._current] == endpoint and len(self._endpoints) > 1:
                self._current = (self._current + 1) % len(self._endpoints)
                log.debug(
                    "etcd endpoint %s failed; switching to %s",
                    endpoint,
                    self._endpoints[self._current],
                )

    def _fork_retry(self, conn: _Connection, error: EtcdError, *, idempotent: bool) -> bool:
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
                or not (idempotent or _not_sent(error))
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

    def _metadata(self, conn: _Connection) -> tuple[tuple[str, str], ...]:
        if self._credentials is None:
            return ()
        with self._lock:
            token = self._token
        if token is None:
            token = self._authenticate(conn)
        return (("token", token),)

    def _authenticate(self, conn: _Connection) -> str:
        if self._credentials is None:
            raise EtcdAuthError("no credentials configured", reason="no credentials")
        request = _rpc().AuthenticateRequest(
            name=self._credentials.user, password=self._credentials.password
        )
        try:
            response = conn.auth.Authenticate(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            error = _translate(
                exc, conn.endpoint, what=f"authentication of user {self._credentials.user!r}"
            )
            # Not chained: the request object in the frame holds the password.
            raise error from None
        token = str(response.token)
        with self._lock:
            self._token = token
        return token

    def _unary(self, stub: str, method: str, request: Any, *, idempotent: bool, what: str) -> Any:
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
                error = _translate(exc, conn.endpoint, what=what)
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
                self._mark_failed(conn.endpoint)
                tried += 1
                retry = idempotent or _not_sent(error)
                if isinstance(error, EtcdTLSError) or not retry or tried >= len(self._endpoints):
                    raise error from exc
            except EtcdUnavailable as exc:
                # Authentication itself hit an unavailable endpoint: try the next one.
                if self._fork_retry(conn, exc, idempotent=True):
                    continue
                self._mark_failed(conn.endpoint)
                tried += 1
                if tried >= len(self._endpoints):
                    raise
            else:
                self._fork_grace = False
                return result

    # -- internals: limits -----------------------------------------------------------------------

    def _check_size(self, request: Any, what: str) -> None:
        size = int(request.ByteSize())
        limit = self._max_request_bytes - _RAFT_ENVELOPE_BYTES
        if size > limit:
            raise EtcdLimitError(
                f"{what} request is {size} bytes; etcd accepts at most {self._max_request_bytes} "
                f"(--max-request-bytes, {limit} after its envelope); split the value or raise "
                "the server's limit and max_request_bytes together",
                limit_name="max_request_bytes",
                limit=limit,
                actual=size,
            )

    def _check_ops(self, count: int, what: str) -> None:
        if count > self._max_txn_ops:
            raise EtcdLimitError(
                f"{what} needs {count} operations in one transaction; etcd accepts at most "
                f"{self._max_txn_ops} (--max-txn-ops); split the change",
                limit_name="max_txn_ops",
                limit=self._max_txn_ops,
                actual=count,
            )


# ------------------------------------------------------------------------------------------------
# the watcher


class _StreamLost(Exception):
    """Internal: the watch stream ended; ``error`` says why. ``retry_now``: the first call
    after fork() failed and may be retried at once, unreported (``EtcdClient._fork_retry``)."""

    def __init__(self, error: EtcdError, *, retry_now: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_now = retry_now


class _Compacted(Exception):
    def __init__(self, compact_revision: int) -> None:
        super().__init__(compact_revision)
        self.compact_revision = compact_revision


class _Requests:
    """The request side of one watch stream, consumed by a gRPC thread.

    Sends the create request, then a progress request every ``interval`` seconds; if no
    response of any kind arrived for ``liveness`` seconds it cancels the call, which is how a
    half-open connection (a SIGSTOPped or partitioned member) is detected.
    """

    def __init__(self, create: Any, interval: float, liveness: float) -> None:
        self._create: Any = create
        self._interval = interval
        self._liveness = liveness
        self._closed = threading.Event()
        self.last_response = time.monotonic()
        self.call: Any = None
        self.timed_out = False

    def __iter__(self) -> _Requests:
        return self

    def __next__(self) -> Any:
        if self._create is not None:
            create, self._create = self._create, None
            return create
        while True:
            if self._closed.wait(self._interval):
                raise StopIteration
            if time.monotonic() - self.last_response > self._liveness:
                self.timed_out = True
                if self.call is not None:
                    self.call.cancel()
                raise StopIteration
            rpc = _rpc()
            return rpc.WatchRequest(progress_request=rpc.WatchProgressRequest())

    def close(self) -> None:
        self._closed.set()


def _error_kind(error: BaseException | None) -> type[BaseException] | None:
    """The kind of a watch's disconnect cause, as its state reports tell them apart."""
    for kind in (EtcdTooManyKeys, EtcdAuthError):
        if isinstance(error, kind):
            return kind
    return None


class PrefixWatcher:
    """Watch every key under a prefix, surviving disconnects, failover and compaction.

    ``on_batch(batch: WatchBatch)`` is called on the watcher's thread once per watch response
    that carries events (all events of a revision together) and once per resync. It should be
    quick (hand work to another thread); it must not call ``close()`` and wait for itself. An
    exception from it is logged and counted (``callback_errors``) and the batch still counts
    as applied.

    ``on_state(status: WatchStatus)`` is called once per state change: ``CONNECTED`` when a
    watch stream is established, ``DISCONNECTED`` (with the error) when it is lost - repeated
    failures while disconnected are not reported again - ``RESYNCED`` after a compaction
    resync, ``CLOSED`` on close.

    ``snapshot`` (from :meth:`EtcdClient.read_prefix`) gives the state the consumer already
    has; watching starts at ``snapshot.revision + 1``. Without it the watcher reads the prefix
    first and delivers it as a ``resync=True`` batch of puts.

    After a break the watch resumes at ``last applied revision + 1`` on the next endpoint,
    after a capped jittered ``backoff``. A compaction (``compact_revision`` in a response) or a
    server-side cancel of any kind is a lost watch; compaction triggers a full read at one
    revision R, a diff against the known state (puts and deletes) delivered as a resync batch,
    and a new watch from R+1. The stream carries ``hasleader`` metadata (``require_leader``)
    so a member without a leader cancels it. Progress requests every ``progress_interval``
    seconds detect a dead stream after ``liveness_timeout`` (default ``3 * progress_interval``).
    """

    def __init__(
        self,
        client: EtcdClient,
        prefix: str | bytes,
        on_batch: Callable[[WatchBatch], None],
        on_state: Callable[[WatchStatus], None] | None = None,
        *,
        snapshot: PrefixSnapshot | None = None,
        backoff: Backoff | None = None,
        progress_interval: float = 5.0,
        liveness_timeout: float | None = None,
        page_size: int = 500,
        require_leader: bool = True,
        stable_after: float = 1.0,
        max_keys: int | None = None,
    ) -> None:
        self._client = client
        self._max_keys = max_keys
        self._prefix = _to_bytes(prefix)
        self._on_batch = on_batch
        self._on_state = on_state
        self._backoff = backoff or Backoff()
        self._progress_interval = progress_interval
        self._liveness = liveness_timeout or 3 * progress_interval
        self._page_size = page_size
        self._require_leader = require_leader
        self._stable_after = stable_after
        # Key -> mod_revision: enough to diff a resync read (values live in the consumer's
        # layer; keeping them here too doubled a large prefix's memory).
        self._state: dict[bytes, int] = snapshot.revisions() if snapshot else {}
        self._revision = snapshot.revision if snapshot else 0
        self._need_initial = snapshot is None
        self._compact_revision = 0
        self._resync_needed = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._requests: _Requests | None = None
        self._call: Any = None
        self._pid = os.getpid()
        self._status = WatchState.DISCONNECTED
        self._reported: WatchState | None = None
        self._reported_kind: type[BaseException] | None = None
        self._endpoint: str | None = None
        self.callback_errors = 0
        self.duplicates_dropped = 0
        self.reconnects = 0
        self.resyncs = 0
        self.permission_checks = 0

    def __repr__(self) -> str:
        return (
            f"PrefixWatcher(prefix={self._prefix!r}, revision={self._revision}, "
            f"state={self._status.value})"
        )

    # -- public ----------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The last fully applied revision (every change up to it was delivered)."""
        return self._revision

    @property
    def state(self) -> WatchState:
        return self._status

    @property
    def endpoint(self) -> str | None:
        return self._endpoint

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the watcher thread. Raises if started twice, closed, or in a forked child."""
        self._check_pid()
        with self._lock:
            if self._stop.is_set():
                raise EtcdClosedError("the watcher is closed; create a new one")
            if self._thread is not None:
                raise RuntimeError("the watcher is already started")
            self._client._watchers.add(self)
            self._thread = threading.Thread(
                target=self._run, name=f"confhub-etcd-watch:{self._prefix!r}", daemon=True
            )
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the watcher and join its thread (bounded by ``timeout``). Idempotent."""
        if not self._halt():
            return
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning(
                    "etcd watch on %r did not stop within %.1fs (a callback or call is blocked)",
                    self._prefix,
                    timeout,
                )
        with self._lock:
            if self._status is WatchState.CLOSED:
                return
            self._status = WatchState.CLOSED
        self._report(WatchState.CLOSED, None)

    def _halt(self) -> bool:
        """Ask the thread to stop and end its stream, without waiting; False in a forked
        child (the thread lives in the parent: nothing to stop or report here)."""
        self._stop.set()
        if self._pid != os.getpid():
            return False
        with self._lock:
            requests, call = self._requests, self._call
        if requests is not None:
            requests.close()
        if call is not None:
            call.cancel()
        return True

    def __enter__(self) -> Self:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- thread ----------------------------------------------------------------------------------

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            raise EtcdForkError(
                "this PrefixWatcher belongs to the parent process; create a new watcher "
                "(and client) in the child after fork()"
            )

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            started = time.monotonic()
            connected_at: list[float] = []
            try:
                if self._need_initial:
                    self._resync(initial=True)
                elif self._compact_revision or self._resync_needed:
                    self._resync(initial=False)
                self._stream(connected_at)
                return  # noqa: TRY300 - the loop's only normal exit (close() was called)
            except _Compacted as exc:
                self._compact_revision = exc.compact_revision
                log.warning(
                    "etcd watch on %r fell behind compaction (revision %d <= %d); resyncing",
                    self._prefix,
                    self._revision,
                    exc.compact_revision,
                )
                continue
            except _StreamLost as exc:
                if exc.retry_now:
                    continue
                error: BaseException = exc.error
                if isinstance(error, _ResponseTooLarge):
                    # An event above max_receive_bytes: resuming would replay it forever.
                    # Re-read the prefix instead (it fails while the value is still there;
                    # once it is replaced, watching goes on from the read's revision).
                    self._resync_needed = True
            except EtcdError as exc:  # from a resync read
                error = exc
            except Exception as exc:
                # Never let the thread die silently: report, back off, try again.
                log.exception("unexpected error in the etcd watch on %r", self._prefix)
                error = exc
            if self._stop.is_set():
                return
            endpoint = self._endpoint
            if isinstance(error, EtcdUnavailable | EtcdAuthError) and endpoint is not None:
                self._client._mark_failed(endpoint)
            self._status = WatchState.DISCONNECTED
            self._report(WatchState.DISCONNECTED, error)
            if connected_at and time.monotonic() - connected_at[0] >= self._stable_after:
                attempt = 0
            delay = self._backoff.delay(attempt)
            attempt += 1
            self.reconnects += 1
            log.debug(
                "etcd watch on %r retrying in %.2fs (stream lived %.2fs)",
                self._prefix,
                delay,
                time.monotonic() - started,
            )
            self._stop.wait(delay)

    def _stream(self, connected_at: list[float]) -> None:
        rpc = _rpc()
        client = self._client
        conn = client._connection()
        self._endpoint = conn.endpoint
        try:
            metadata = client._metadata(conn)
        except EtcdError as exc:
            retry_now = client._fork_retry(conn, exc, idempotent=True)
            raise _StreamLost(exc, retry_now=retry_now) from exc
        token = dict(metadata).get("token")
        if self._require_leader:
            metadata = (*metadata, ("hasleader", "true"))
        create = rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=self._prefix or b"\0",
                range_end=prefix_range_end(self._prefix),
                start_revision=self._revision + 1,
                progress_notify=True,
            )
        )
        requests = _Requests(create, self._progress_interval, self._liveness)
        with self._lock:
            if self._stop.is_set():
                return
            call = conn.watch.Watch(requests, metadata=metadata)
            requests.call = call
            self._requests, self._call = requests, call
        watch_id: int | None = None
        # etcd checks a watch's permission only when it is created: a role losing read on
        # the prefix keeps streaming. With auth on, a cheap read (one key, keys only) every
        # progress interval notices the revocation; the watch is then lost like any other.
        probe_every = self._progress_interval if client._credentials is not None else 0.0
        next_probe = time.monotonic() + probe_every
        try:
            for response in call:
                requests.last_response = time.monotonic()
                if probe_every and requests.last_response >= next_probe:
                    next_probe = requests.last_response + probe_every
                    self._check_permission()
                if response.created and watch_id is None and not response.canceled:
                    watch_id = int(response.watch_id)
                    client._fork_grace = False  # the channel works
                    connected_at.append(time.monotonic())
                    self._status = WatchState.CONNECTED
                    self._report(WatchState.CONNECTED, None)
                if response.compact_revision:
                    raise _Compacted(int(response.compact_revision))
                if response.canceled:
                    reason = str(response.cancel_reason or "canceled by the server")
                    if "auth" in reason.lower() or "permission" in reason.lower():
                        client._invalidate_token(token)
                        err: EtcdError = EtcdAuthError(
                            f"etcd at {conn.endpoint} cancelled the watch on {self._prefix!r}: "
                            f"{reason}",
                            reason=reason,
                            endpoint=conn.endpoint,
                        )
                    else:
                        err = EtcdUnavailable(
                            f"etcd at {conn.endpoint} cancelled the watch on {self._prefix!r}: "
                            f"{reason}",
                            endpoint=conn.endpoint,
                        )
                    raise _StreamLost(err)
                if response.events:
                    self._apply(response.events)
                elif (
                    watch_id is not None
                    and int(response.watch_id) == watch_id
                    and not response.created
                    and int(response.header.revision) > self._revision
                ):
                    # A per-watch progress notification: everything up to it was delivered.
                    # (Broadcast replies to progress requests carry watch_id -1 and are only
                    # taken as signs of life: etcd 3.5 can send them ahead of pending events.)
                    self._revision = int(response.header.revision)
            if self._stop.is_set():
                return
            raise _StreamLost(
                EtcdUnavailable(
                    f"etcd at {conn.endpoint} ended the watch stream on {self._prefix!r}",
                    endpoint=conn.endpoint,
                )
            )
        except grpc.RpcError as exc:
            if self._stop.is_set():
                return
            retry_now = False
            if requests.timed_out:
                error: EtcdError = EtcdUnavailable(
                    f"no watch response or progress from etcd at {conn.endpoint} within "
                    f"{self._liveness:.1f}s; the connection is presumed dead",
                    endpoint=conn.endpoint,
                    code="DEADLINE_EXCEEDED",
                )
            else:
                error = _translate(exc, conn.endpoint, what=f"the watch on {self._prefix!r}")
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    client._invalidate_token(token)
                if watch_id is None:
                    retry_now = client._fork_retry(conn, error, idempotent=True)
            raise _StreamLost(error, retry_now=retry_now) from exc
        finally:
            requests.close()
            call.cancel()
            with self._lock:
                self._requests, self._call = None, None

    def _check_permission(self) -> None:
        """Raise :class:`_StreamLost` when the prefix may no longer be read."""
        self.permission_checks += 1
        request = _rpc().RangeRequest(
            key=self._prefix or b"\0",
            range_end=prefix_range_end(self._prefix),
            limit=1,
            keys_only=True,
        )
        try:
            self._client._unary("kv", "Range", request, idempotent=True, what="a permission check")
        except EtcdAuthError as exc:
            raise _StreamLost(exc) from None
        except EtcdError:
            pass  # reachability is the stream's business (liveness, keepalive)

    def _apply(self, raw_events: Any) -> None:
        events: list[WatchEvent] = []
        for raw in raw_events:
            kv = raw.kv
            revision = int(kv.mod_revision)
            if revision <= self._revision:
                # Already applied (etcd promises uniqueness; we check rather than trust).
                self.duplicates_dropped += 1
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
        if not events:
            return
        for event in events:
            if event.kind is EventKind.DELETE:
                self._state.pop(event.key, None)
            else:
                self._state[event.key] = event.mod_revision
        batch = WatchBatch(revision=max(e.mod_revision for e in events), events=tuple(events))
        self._deliver(batch)
        self._revision = batch.revision
        if self._max_keys is not None and len(self._state) > self._max_keys:
            # Stop following a runaway prefix: its state would grow without bound. Resync
            # reads (one page while still too many) retry with backoff until it shrinks;
            # their diff against the state kept here loses nothing.
            self._resync_needed = True
            raise _StreamLost(EtcdTooManyKeys(self._prefix, len(self._state), self._max_keys))

    def _resync(self, *, initial: bool) -> None:
        snapshot = self._client.read_prefix(
            self._prefix, page_size=self._page_size, max_keys=self._max_keys
        )
        new_state = snapshot.revisions()
        events: list[WatchEvent] = []
        for kv in snapshot.items:
            if self._state.get(kv.key) != kv.mod_revision:
                events.append(
                    WatchEvent(
                        EventKind.PUT,
                        kv.key,
                        kv.value,
                        kv.mod_revision,
                        kv.create_revision,
                        kv.version,
                    )
                )
        events.extend(
            WatchEvent(EventKind.DELETE, key, b"", snapshot.revision)
            for key in self._state
            if key not in new_state
        )
        compact_revision = 0 if initial else self._compact_revision
        self._state = new_state
        self._deliver(
            WatchBatch(
                revision=snapshot.revision,
                events=tuple(events),
                resync=True,
                compact_revision=compact_revision,
            )
        )
        self._revision = snapshot.revision
        self._need_initial = False
        self._compact_revision = 0
        self._resync_needed = False
        if not initial:
            self.resyncs += 1
            self._report(WatchState.RESYNCED, None)

    def _deliver(self, batch: WatchBatch) -> None:
        try:
            self._on_batch(batch)
        except Exception:
            self.callback_errors += 1
            log.exception(
                "etcd watch callback for %r failed on revision %d", self._prefix, batch.revision
            )

    def _report(self, state: WatchState, error: BaseException | None) -> None:
        # One report per state change; a disconnect whose cause changes kind (unavailable,
        # then refused by auth, or too many keys) is a change too: the hub shows the cause.
        kind = _error_kind(error) if state is WatchState.DISCONNECTED else None
        if (
            state == self._reported
            and kind is self._reported_kind
            and state is not WatchState.RESYNCED
        ):
            return
        self._reported, self._reported_kind = state, kind
        if state is WatchState.DISCONNECTED:
            log.warning(
                "etcd watch on %r disconnected at revision %d: %s",
                self._prefix,
                self._revision,
                error,
            )
        else:
            log.info(
                "etcd watch on %r %s (revision %d, endpoint %s)",
                self._prefix,
                state.value,
                self._revision,
                self._endpoint,
            )
        if self._on_state is None:
            return
        try:
            self._on_state(WatchStatus(state, self._revision, self._endpoint, error))
        except Exception:
            self.callback_errors += 1
            log.exception("etcd watch state callback for %r failed", self._prefix)

"""Leases and bounded one-shot watches: what the registry and its locks build on.

:class:`Leases` grants, refreshes and revokes etcd leases through the plugin's
:class:`~confhub_etcd._client.EtcdClient` (its deadline, auth, failover and retries).
:func:`wait_for_event` opens one watch stream, returns at the first event (or at its
timeout), and is cancelled at once by :meth:`StreamSet.cancel_all` when the owner closes.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from typing import TYPE_CHECKING, Any

import grpc

from ._errors import EtcdCompacted, EtcdError, EtcdUnavailable
from ._rpc import WatchRequests, WatchStream, stubs, translate

if TYPE_CHECKING:
    from ._client import EtcdClient

__all__ = [
    "KeepaliveStream",
    "Leases",
    "StreamSet",
    "lease_missing",
    "wait_for_event",
    "wait_for_events",
]


def lease_missing(error: EtcdError) -> bool:
    """Whether ``error`` is etcd's "requested lease not found"."""
    return "lease not found" in str(error).lower()


class _Pending:
    __slots__ = ("done", "error", "ttl")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ttl = 0
        self.error: EtcdError | None = None


class _Requests:
    """The request side of the keepalive stream: blocks until a request or the end."""

    _END = object()

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def put(self, request: Any) -> None:
        self._queue.put(request)

    def end(self) -> None:
        self._queue.put(self._END)

    def __iter__(self) -> _Requests:
        return self

    def __next__(self) -> Any:
        item = self._queue.get()
        if item is self._END:
            raise StopIteration
        return item


class KeepaliveStream:
    """One ``LeaseKeepAlive`` stream shared by every lease keepalive of a client: a refresh
    is one message on an open stream, not a new call (a new call per refresh cost ~1.7 ms
    of CPU each). Opened on first use and again after a break; its reader thread
    (``confhub-etcd-keepalive``) ends with the stream. Each :meth:`keepalive` is bounded by
    the client's timeout."""

    def __init__(self, client: EtcdClient) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._requests: _Requests | None = None
        self._call: Any = None
        self._endpoint = ""
        self._pending: dict[int, list[_Pending]] = {}
        self._reader: threading.Thread | None = None
        self._closed = False

    def keepalive(self, lease_id: int) -> int:
        """Refresh ``lease_id`` once; its new TTL, 0 when etcd no longer has it."""
        pending = _Pending()
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's stream is not ours
                self._pid, self._call, self._requests, self._pending = os.getpid(), None, None, {}
            if self._closed:
                raise EtcdError("the keepalive stream is closed")
            requests = self._requests
            if self._call is None or requests is None:
                requests = self._open()
            self._pending.setdefault(lease_id, []).append(pending)
            requests.put(stubs().LeaseKeepAliveRequest(ID=lease_id))
            endpoint = self._endpoint
        if not pending.done.wait(self._client.timeout):
            with self._lock:
                waiting = self._pending.get(lease_id, [])
                if pending in waiting:
                    waiting.remove(pending)
            self._client.report_failure(endpoint)
            self._break()
            raise EtcdUnavailable(
                f"etcd at {endpoint} did not answer a lease keepalive within "
                f"{self._client.timeout:g}s",
                endpoint=endpoint,
            )
        if pending.error is not None:
            raise pending.error
        return pending.ttl

    def _open(self) -> _Requests:
        requests = _Requests()
        endpoint, call = self._client.open_lease_keepalive(iter(requests))
        self._requests, self._call, self._endpoint = requests, call, endpoint
        self._reader = threading.Thread(
            target=self._read, args=(call, endpoint), name="confhub-etcd-keepalive", daemon=True
        )
        self._reader.start()
        return requests

    def _read(self, call: Any, endpoint: str) -> None:
        error: EtcdError
        try:
            for response in call:
                with self._lock:
                    waiting = self._pending.get(int(response.ID))
                    pending = waiting.pop(0) if waiting else None
                if pending is not None:
                    pending.ttl = int(response.TTL)
                    pending.done.set()
            error = EtcdUnavailable(f"etcd at {endpoint} ended the keepalive stream")
        except grpc.RpcError as exc:
            error = translate(exc, endpoint, what="a lease keepalive", tls=self._client.tls)
        with self._lock:
            if self._call is call:
                self._call, self._requests = None, None
            failed = [p for waiting in self._pending.values() for p in waiting]
            self._pending = {}
        for pending in failed:
            pending.error = error
            pending.done.set()

    def _break(self) -> None:
        with self._lock:
            call, requests = self._call, self._requests
            self._call, self._requests = None, None
        if requests is not None:
            requests.end()
        if call is not None:
            call.cancel()

    def close(self) -> None:
        """End the stream and join its reader. Idempotent."""
        with self._lock:
            self._closed = True
            reader = self._reader
        self._break()
        if reader is not None and reader is not threading.current_thread():
            reader.join(10)


class Leases:
    """etcd leases through one client. TTLs are whole seconds (rounded up)."""

    def __init__(self, client: EtcdClient, stream: KeepaliveStream | None = None) -> None:
        self._client = client
        self._stream = stream

    def grant(self, ttl: float) -> int:
        """A new lease of ``ttl`` seconds (rounded up); returns its id."""
        request = stubs().LeaseGrantRequest(TTL=max(1, math.ceil(ttl)))
        response = self._client.call(
            "lease", "LeaseGrant", request, idempotent=False, what="lease grant"
        )
        if response.error:
            raise EtcdError(f"etcd refused the lease grant: {response.error}")
        return int(response.ID)

    def keepalive(self, lease_id: int) -> bool:
        """Refresh ``lease_id`` once; False when etcd no longer has it."""
        if self._stream is not None:
            return self._stream.keepalive(lease_id) > 0
        return self._client.lease_keepalive(lease_id) > 0

    def revoke(self, lease_id: int) -> bool:
        """Revoke ``lease_id`` (its keys are deleted); False when it was already gone."""
        request = stubs().LeaseRevokeRequest(ID=lease_id)
        try:
            self._client.call("lease", "LeaseRevoke", request, idempotent=True, what="lease revoke")
        except EtcdError as exc:
            if lease_missing(exc):
                return False
            raise
        return True


class StreamSet:
    """The watch streams open now, so that closing their owner can cancel them at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: set[WatchStream] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def add(self, stream: WatchStream) -> bool:
        """Track ``stream``; False (and the stream is cancelled) when already closed."""
        with self._lock:
            if not self._closed:
                self._streams.add(stream)
                return True
        stream.cancel()
        return False

    def discard(self, stream: WatchStream) -> None:
        with self._lock:
            self._streams.discard(stream)

    def cancel_all(self) -> None:
        """Cancel every open stream and refuse new ones."""
        with self._lock:
            self._closed = True
            streams = list(self._streams)
            self._streams.clear()
        for stream in streams:
            stream.cancel()


def wait_for_event(
    client: EtcdClient,
    streams: StreamSet,
    *,
    key: bytes,
    range_end: bytes = b"",
    start_revision: int,
    timeout: float,
    deletes_only: bool = False,
) -> bool:
    """Block until an event on ``key`` (to ``range_end``) at or after ``start_revision``:
    True; or until ``timeout`` elapsed or ``streams`` was closed: False.

    Raises :class:`EtcdCompacted` when ``start_revision`` was compacted away and
    :class:`EtcdError` when the stream fails.
    """
    events = wait_for_events(
        client,
        streams,
        key=key,
        range_end=range_end,
        start_revision=start_revision,
        timeout=timeout,
        deletes_only=deletes_only,
    )
    return bool(events)


def wait_for_events(
    client: EtcdClient,
    streams: StreamSet,
    *,
    key: bytes,
    range_end: bytes = b"",
    start_revision: int,
    timeout: float,
    deletes_only: bool = False,
) -> list[Any]:
    """The events (etcd's protobuf ``Event`` messages) of the first watch response that has
    any, on ``key`` (to ``range_end``) from ``start_revision``; ``[]`` when ``timeout``
    elapsed or ``streams`` was closed first. Raises as :func:`wait_for_event`."""
    if timeout <= 0 or streams.closed:
        return []
    rpc = stubs()
    create = rpc.WatchRequest(
        create_request=rpc.WatchCreateRequest(
            key=key,
            range_end=range_end,
            start_revision=start_revision,
            filters=[rpc.WatchCreateRequest.NOPUT] if deletes_only else [],
        )
    )
    # Progress requests keep the stream's liveness check fed; the timer below bounds it.
    requests = WatchRequests(create, interval=max(1.0, timeout), liveness=timeout + 30.0)
    stream = client.open_watch_stream(iter(requests))
    requests.call = stream
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        stream.cancel()

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    if not streams.add(stream):
        requests.close()
        return []
    timer.start()
    try:
        return _first_events(stream)
    except grpc.RpcError as exc:
        if expired.is_set() or streams.closed:
            return []
        error = translate(exc, stream.endpoint, what="a watch", tls=stream.tls)
        if isinstance(error, EtcdUnavailable):
            client.report_failure(stream.endpoint)
        raise error from None
    finally:
        timer.cancel()
        requests.close()
        stream.cancel()
        streams.discard(stream)


def _first_events(stream: Any) -> list[Any]:
    for response in stream:
        if response.compact_revision:
            raise EtcdCompacted(
                f"the watch start was compacted (compact revision {response.compact_revision})",
                requested_revision=0,
                compact_revision=int(response.compact_revision),
            )
        if response.canceled:
            raise EtcdError(f"etcd cancelled the watch: {response.cancel_reason}")
        if response.created:
            stream.established()
        if response.events:
            return list(response.events)
    return []

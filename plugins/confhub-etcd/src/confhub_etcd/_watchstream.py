"""One watch stream of a :class:`~confhub_etcd._watcher.PrefixWatcher`, followed until it ends.

:class:`WatchSession` opens a ``Watch`` call on the client's current endpoint (through
:class:`StreamOpener`, a part of the watcher's ``WatchTransport``), reads its responses and
says what each means through the callables it is given: the watch was created, events
arrived, the watch progressed. It ends by returning (the watcher was halted) or by raising
why the stream is over: :class:`StreamLost` (with the error, translated) or
:class:`Compacted`. Reconnecting, backoff, the per-key state and reporting are the
watcher's; the session keeps nothing across streams.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import grpc

from ._errors import EtcdAuthError, EtcdError, EtcdUnavailable
from ._rpc import WatchRequests, WatchStream, stubs, translate
from ._types import key_text, prefix_range_end

__all__ = ["Compacted", "StreamLost", "StreamOpener", "WatchSession"]


class StreamOpener(Protocol):
    """What a session needs of a client: where the next stream goes, and opening it."""

    @property
    def current_endpoint(self) -> str:
        """The endpoint the next call (or stream) goes to."""
        ...

    def open_watch_stream(
        self, requests: Iterator[Any], *, require_leader: bool = True
    ) -> WatchStream:
        """A ``Watch`` call on the current endpoint, fed by ``requests``."""
        ...


class StreamLost(Exception):
    """The watch stream ended; ``error`` says why. ``retry_now``: the first call after
    fork() failed and may be retried at once, unreported (``WatchStream.retry_now``)."""

    def __init__(self, error: EtcdError, *, retry_now: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_now = retry_now


class Compacted(Exception):
    """The watch's start revision was compacted away (``compact_revision``)."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(compact_revision)
        self.compact_revision = compact_revision


class WatchSession:
    """One stream watching ``prefix`` from ``start_revision``.

    - ``attach(requests, stream)`` is called once the stream is open (False: the watcher
      was halted meanwhile, and the session ends); ``detach()`` once it is over;
    - ``on_created(endpoint)`` when the server created the watch;
    - ``on_events(events)`` with a response's raw events;
    - ``on_progress(revision)`` with a per-watch progress notification's revision;
    - ``probe()`` (with auth on) every ``progress_interval``: raise
      :class:`~confhub_etcd.EtcdAuthError` when the prefix may no longer be read;
    - ``stopped()``: whether the watcher was asked to stop.

    ``endpoint`` is the endpoint of the stream (or of the failed attempt to open one).
    """

    def __init__(
        self,
        client: StreamOpener,
        prefix: bytes,
        start_revision: int,
        *,
        progress_interval: float,
        liveness: float,
        require_leader: bool,
        attach: Callable[[WatchRequests, WatchStream], bool],
        detach: Callable[[], None],
        on_created: Callable[[str], None],
        on_events: Callable[[Any], None],
        on_progress: Callable[[int], None],
        probe: Callable[[], None] | None,
        stopped: Callable[[], bool],
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._prefix_text = key_text(prefix)
        self._start_revision = start_revision
        self._progress_interval = progress_interval
        self._liveness = liveness
        self._require_leader = require_leader
        self._attach = attach
        self._detach = detach
        self._on_created = on_created
        self._on_events = on_events
        self._on_progress = on_progress
        self._probe = probe
        self._stopped = stopped
        self._watch_id: int | None = None  # once the server created the watch
        self.endpoint: str | None = None

    def run(self) -> None:
        """Follow the stream until it ends; raise why (:class:`StreamLost`, :class:`Compacted`)."""
        create = _create_request(self._prefix, self._start_revision)
        requests = WatchRequests(create, self._progress_interval, self._liveness)
        stream = self._open(requests)
        if stream is None:
            return
        # etcd checks a watch's permission only when it is created: a role losing read on
        # the prefix keeps streaming. With auth on, a cheap read (one key, keys only) every
        # progress interval notices the revocation; the watch is then lost like any other.
        probe_every = self._progress_interval if self._probe is not None else 0.0
        next_probe = time.monotonic() + probe_every
        try:
            for response in stream:
                requests.last_response = time.monotonic()
                if probe_every and requests.last_response >= next_probe:
                    next_probe = requests.last_response + probe_every
                    self._check_permission()
                self._on_response(response, stream)
                # Time spent handling it (a slow consumer, the probe) is not silence.
                requests.last_response = time.monotonic()
            if self._stopped():
                return
            raise StreamLost(
                EtcdUnavailable(
                    f"etcd at {stream.endpoint} ended the watch stream on {self._prefix_text}",
                    endpoint=stream.endpoint,
                )
            )
        except grpc.RpcError as exc:
            if self._stopped():
                return
            raise self._lost(exc, stream, requests) from exc
        finally:
            requests.close()
            stream.cancel()
            self._detach()

    def _open(self, requests: WatchRequests) -> WatchStream | None:
        """Open the stream on the client's current endpoint; None if halted meanwhile."""
        self.endpoint = self._client.current_endpoint
        try:
            stream = self._client.open_watch_stream(requests, require_leader=self._require_leader)
        except EtcdError as exc:
            self.endpoint = getattr(exc, "endpoint", None) or self.endpoint
            raise StreamLost(exc) from exc
        self.endpoint = stream.endpoint
        requests.call = stream
        if not self._attach(requests, stream):  # halted while the stream was opening
            stream.cancel()
            return None
        return stream

    def _on_response(self, response: Any, stream: WatchStream) -> None:
        if response.created and self._watch_id is None and not response.canceled:
            self._watch_id = int(response.watch_id)
            stream.established()
            self._on_created(stream.endpoint)
        if response.compact_revision:
            raise Compacted(int(response.compact_revision))
        if response.canceled:
            raise self._on_cancel(response, stream)
        if response.events:
            self._on_events(response.events)
        elif (
            self._watch_id is not None
            and int(response.watch_id) == self._watch_id
            and not response.created
        ):
            # A per-watch progress notification: everything up to it was delivered.
            # (Broadcast replies to progress requests carry watch_id -1 and are only
            # taken as signs of life: etcd 3.5 can send them ahead of pending events.)
            self._on_progress(int(response.header.revision))

    def _on_cancel(self, response: Any, stream: WatchStream) -> StreamLost:
        """The server cancelled the watch: an auth refusal, or lost like an outage."""
        reason = str(response.cancel_reason or "canceled by the server")
        message = f"etcd at {stream.endpoint} cancelled the watch on {self._prefix_text}: {reason}"
        if "auth" in reason.lower() or "permission" in reason.lower():
            stream.token_rejected()
            return StreamLost(EtcdAuthError(message, reason=reason, endpoint=stream.endpoint))
        return StreamLost(EtcdUnavailable(message, endpoint=stream.endpoint))

    def _lost(self, exc: grpc.RpcError, stream: WatchStream, requests: WatchRequests) -> StreamLost:
        """Why the stream broke, from gRPC's error (or our own liveness timeout)."""
        if requests.timed_out:
            return StreamLost(
                EtcdUnavailable(
                    f"no watch response or progress from etcd at {stream.endpoint} within "
                    f"{self._liveness:.1f}s; the connection is presumed dead",
                    endpoint=stream.endpoint,
                    code="DEADLINE_EXCEEDED",
                )
            )
        error = translate(
            exc, stream.endpoint, what=f"the watch on {self._prefix_text}", tls=stream.tls
        )
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            stream.token_rejected()
        retry_now = self._watch_id is None and stream.retry_now(error)
        return StreamLost(error, retry_now=retry_now)

    def _check_permission(self) -> None:
        """Raise :class:`StreamLost` when the prefix may no longer be read."""
        if self._probe is None:
            return
        try:
            self._probe()
        except EtcdAuthError as exc:
            raise StreamLost(exc) from None
        except EtcdError:
            pass  # reachability is the stream's business (liveness, keepalive)


def _create_request(prefix: bytes, start_revision: int) -> Any:
    rpc = stubs()
    return rpc.WatchRequest(
        create_request=rpc.WatchCreateRequest(
            key=prefix or b"\0",
            range_end=prefix_range_end(prefix),
            start_revision=start_revision,
            progress_notify=True,
        )
    )

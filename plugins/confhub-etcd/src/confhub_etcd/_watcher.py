"""The resilient prefix watcher of the etcd client layer (:class:`PrefixWatcher`): the
reconnect loop, the per-key state and its resyncs, the state reports. One stream's life
(open, read, what each response means, why it ended) is :mod:`confhub_etcd._watchstream`'s.

It needs only a small, named part of a client, :class:`WatchTransport` (which
:class:`~confhub_etcd._client.EtcdClient` implements): a consistent read, a watch stream
handle, a permission probe, a way to say an endpoint failed, and registration so the
client's ``close()`` stops it. It reads nothing private of the client.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol, Self

from ._errors import (
    EtcdAuthError,
    EtcdClosedError,
    EtcdError,
    EtcdForkError,
    EtcdTooManyKeys,
    EtcdUnavailable,
)
from ._rpc import ResponseTooLarge, WatchRequests, WatchStream, new_events
from ._types import (
    Backoff,
    PrefixSnapshot,
    WatchBatch,
    WatchState,
    WatchStatus,
    fold,
    key_text,
    resync_events,
    to_bytes,
)
from ._watchstream import Compacted, StreamLost, StreamOpener, WatchSession

__all__ = ["BackoffPolicy", "PrefixWatcher", "WatchTransport"]

log = logging.getLogger("confhub.etcd")


class BackoffPolicy(Protocol):
    """Any backoff: :class:`~confhub_etcd._types.Backoff`, or ``confhub.kv.Backoff``."""

    def delay(self, attempt: int) -> float: ...


class WatchTransport(StreamOpener, Protocol):
    """What a :class:`PrefixWatcher` needs of a client: ``EtcdClient``'s watch seam (its
    sessions use the :class:`~confhub_etcd._watchstream.StreamOpener` part)."""

    @property
    def uses_auth(self) -> bool:
        """Whether calls carry an auth token (then the watcher probes its read permission)."""
        ...

    def read_prefix(
        self, prefix: str | bytes, *, page_size: int = 500, max_keys: int | None = None
    ) -> PrefixSnapshot:
        """Every key under ``prefix`` at one revision."""
        ...

    def check_read(self, prefix: bytes) -> None:
        """Raise ``EtcdAuthError`` when ``prefix`` may no longer be read."""
        ...

    def report_failure(self, endpoint: str) -> None:
        """``endpoint`` failed: move to the next one if it is still the current one."""
        ...

    def track(self, watcher: PrefixWatcher) -> None:
        """Stop ``watcher`` (``halt()``, then ``close()``) when the client closes."""
        ...


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

    Log lines name the watch by its prefix, as text, and ``source`` when given: the display
    name of what the watch serves (confhub passes the source's redacted spec). Pass nothing
    that holds a credential. Each state change is logged (``DISCONNECTED`` at WARNING, the
    others at INFO); with ``log_states=False`` those lines go at DEBUG, for a consumer that
    reports the states itself (confhub's backend: the hub logs a source's outage and
    recovery once, and a second line from here would say each one twice).
    """

    def __init__(
        self,
        client: WatchTransport,
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
        stable_after: float = 1.0,
        max_keys: int | None = None,
        source: str | None = None,
        log_states: bool = True,
    ) -> None:
        self._client = client
        self._log_states = log_states
        self._max_keys = max_keys
        self._prefix = to_bytes(prefix)
        self._prefix_text = key_text(self._prefix)  # for messages
        # How log lines name this watch: "/svc/ (etcd://h:2379/svc/)".
        self._label = f"{self._prefix_text} ({source})" if source else self._prefix_text
        self._on_batch = on_batch
        self._on_state = on_state
        self._backoff: BackoffPolicy = backoff or Backoff()
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
        self._requests: WatchRequests | None = None
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
    def tracked_keys(self) -> int:
        """How many keys the watcher follows now (its per-key revisions); with ``max_keys``
        it stops following a prefix that grows past the cap, so this stays bounded. For
        diagnostics and tests."""
        return len(self._state)

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
            self._client.track(self)
            self._thread = threading.Thread(
                target=self._run, name=f"confhub-etcd-watch:{self._prefix_text}", daemon=True
            )
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the watcher and join its thread (bounded by ``timeout``). Idempotent."""
        if not self.halt():
            return
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning(
                    "etcd watch on %s did not stop within %.1fs (a callback or call is blocked)",
                    self._label,
                    timeout,
                )
        with self._lock:
            if self._status is WatchState.CLOSED:
                return
            self._status = WatchState.CLOSED
        self._report(WatchState.CLOSED, None)

    def halt(self) -> bool:
        """Ask the thread to stop and end its stream, without waiting; ``close()`` then joins
        it. False in a forked child (the thread lives in the parent: nothing to stop or
        report here). The client calls it before closing its channels."""
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
            except Compacted as exc:
                self._compact_revision = exc.compact_revision
                log.warning(
                    "etcd watch on %s fell behind compaction (revision %d <= %d); resyncing",
                    self._label,
                    self._revision,
                    exc.compact_revision,
                )
                continue
            except StreamLost as exc:
                if exc.retry_now:
                    continue
                error: BaseException = exc.error
                if isinstance(error, ResponseTooLarge):
                    # An event above max_receive_bytes: resuming would replay it forever.
                    # Re-read the prefix instead (it fails while the value is still there;
                    # once it is replaced, watching goes on from the read's revision).
                    self._resync_needed = True
            except EtcdError as exc:  # from a resync read
                error = exc
            except Exception as exc:
                # Never let the thread die silently: report, back off, try again.
                log.exception("unexpected error in the etcd watch on %s", self._label)
                error = exc
            if self._stop.is_set():
                return
            endpoint = self._endpoint
            if isinstance(error, EtcdUnavailable | EtcdAuthError) and endpoint is not None:
                self._client.report_failure(endpoint)
            self._status = WatchState.DISCONNECTED
            self._report(WatchState.DISCONNECTED, error)
            if connected_at and time.monotonic() - connected_at[0] >= self._stable_after:
                attempt = 0
            delay = self._backoff.delay(attempt)
            attempt += 1
            self.reconnects += 1
            log.debug(
                "etcd watch on %s retrying in %.2fs (stream lived %.2fs)",
                self._label,
                delay,
                time.monotonic() - started,
            )
            self._stop.wait(delay)

    def _stream(self, connected_at: list[float]) -> None:
        """Follow one watch stream until it ends; raise why (``StreamLost``, ``Compacted``)."""

        def attach(requests: WatchRequests, stream: WatchStream) -> bool:
            with self._lock:
                if self._stop.is_set():
                    return False
                self._requests, self._call = requests, stream
            return True

        def detach() -> None:
            with self._lock:
                self._requests, self._call = None, None

        def created(endpoint: str) -> None:
            self._endpoint = endpoint
            connected_at.append(time.monotonic())
            self._status = WatchState.CONNECTED
            self._report(WatchState.CONNECTED, None)

        session = WatchSession(
            self._client,
            self._prefix,
            self._revision + 1,
            progress_interval=self._progress_interval,
            liveness=self._liveness,
            require_leader=self._require_leader,
            attach=attach,
            detach=detach,
            on_created=created,
            on_events=self._apply,
            on_progress=self._progressed,
            probe=self._probe if self._client.uses_auth else None,
            stopped=self._stop.is_set,
        )
        try:
            session.run()
        finally:
            self._endpoint = session.endpoint or self._endpoint

    def _progressed(self, revision: int) -> None:
        self._revision = max(self._revision, revision)

    def _probe(self) -> None:
        self.permission_checks += 1
        self._client.check_read(self._prefix)

    def _apply(self, raw_events: Any) -> None:
        events, dropped = new_events(raw_events, after=self._revision)
        self.duplicates_dropped += dropped
        if not events:
            return
        fold(self._state, events)
        batch = WatchBatch(revision=max(e.mod_revision for e in events), events=tuple(events))
        self._deliver(batch)
        self._revision = batch.revision
        if self._max_keys is not None and len(self._state) > self._max_keys:
            # Stop following a runaway prefix: its state would grow without bound. Resync
            # reads (one page while still too many) retry with backoff until it shrinks;
            # their diff against the state kept here loses nothing.
            self._resync_needed = True
            raise StreamLost(EtcdTooManyKeys(self._prefix, len(self._state), self._max_keys))

    def _resync(self, *, initial: bool) -> None:
        snapshot = self._client.read_prefix(
            self._prefix, page_size=self._page_size, max_keys=self._max_keys
        )
        new_state = snapshot.revisions()
        events = resync_events(self._state, snapshot, new_state)
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
                "etcd watch callback for %s failed on revision %d", self._label, batch.revision
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
        status = WatchStatus(state, self._revision, self._endpoint, error)
        _log_status(self._label, status, quiet=not self._log_states)
        if self._on_state is None:
            return
        try:
            self._on_state(status)
        except Exception:
            self.callback_errors += 1
            log.exception("etcd watch state callback for %s failed", self._label)


def _log_status(label: str, status: WatchStatus, *, quiet: bool = False) -> None:
    """One log line per reported state change (never values or secrets); at DEBUG when
    ``quiet`` (the consumer reports the states)."""
    if status.state is WatchState.DISCONNECTED:
        log.log(
            logging.DEBUG if quiet else logging.WARNING,
            "etcd watch on %s disconnected at revision %d: %s",
            label,
            status.revision,
            status.error,
        )
    else:
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "etcd watch on %s %s (revision %d, endpoint %s)",
            label,
            status.state.value,
            status.revision,
            status.endpoint,
        )

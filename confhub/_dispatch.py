"""Dispatch: subscriptions, the bounded event queue, and the notifier thread.

The hub puts events (:class:`Change`, :class:`ErrorEvent`, :class:`SourceHealth`) on a
:class:`Dispatcher`; its one notifier thread delivers them to the subscribers in order, one
at a time. Nothing here touches a disk or a store: the cache's writes run on their own
thread (``confhub._persist``), so a delivery never waits for them.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ._errors import HubStateError
from ._health import SourceHealth, log_fields
from ._snapshot import Change, ErrorEvent, KeyChange

log = logging.getLogger("confhub")

#: What the notifier delivers.
Event = Change | ErrorEvent | SourceHealth


class Subscription:
    """A registered change callback; :meth:`cancel` stops further calls.

    ``unsubscribe`` is the one thing the subscription needs from its hub: a callable that
    removes it (as pluggy's ``HookCaller`` gets its hook executor, not the manager).
    """

    def __init__(
        self,
        unsubscribe: Callable[[Subscription], None],
        callback: Callable[[Change], Any] | None,
        prefix: str,
        on_error: Callable[[ErrorEvent], Any] | None,
        on_state: Callable[[SourceHealth], Any] | None = None,
    ) -> None:
        self._unsubscribe = unsubscribe
        self.on_state = on_state
        self.callback = callback
        self.prefix = prefix
        self.on_error = on_error
        #: Called once when the hub closes (an async stream ends on it; ``confhub._aio``).
        self.on_close: Callable[[], Any] | None = None
        self.active = True

    def cancel(self) -> None:
        """Stop calling this subscription's callbacks (idempotent)."""
        if self.active:
            self.active = False
            self._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


_STOP = object()


class EventQueue:
    """The notifier's queue: FIFO, and bounded by sources and keys when it grows.

    When more than the current threshold of events wait (slow or blocked subscribers), the
    queue is compacted once: every change in it is merged into one (the last value of every
    key is still delivered, generations in between are skipped), and of the error events
    and state events only the latest per source (and, for errors, per error type) stay,
    each at the place of its last occurrence. What is left is bounded by the number of
    sources, error types and keys, never by the number of updates. The threshold is then
    twice what is left (at least ``limit``), so each put costs O(1) amortized: no rescans.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self._threshold = self.limit
        #: How many queued events were merged away so far.
        self.coalesced = 0

    def put(self, item: Any) -> None:
        """Append ``item``; compact the queue when more than the threshold wait."""
        with self._cond:
            self._items.append(item)
            if len(self._items) > self._threshold:
                before = len(self._items)
                self._items = collections.deque(_compact(self._items))
                self.coalesced += before - len(self._items)
                self._threshold = max(self.limit, 2 * len(self._items))
            self._cond.notify()

    def get(self) -> Any:
        """Remove and return the oldest item, waiting for one."""
        with self._cond:
            while not self._items:
                self._cond.wait()
            return self._items.popleft()

    def qsize(self) -> int:
        """How many items wait."""
        return len(self._items)

    def after_fork(self) -> None:
        """In a forked child: a new condition (a dead thread's waiter would swallow a
        notify, and a parent thread may have held its lock); the items stay."""
        self._cond = threading.Condition()


class Dispatcher:
    """The subscribers of one hub and the notifier thread that calls them.

    ``published(change, seconds)`` is called after the subscribers with every delivered
    :class:`Change` and the time its subscribers took, all of them (the hub passes the
    ``confhub_snapshot_published`` hook).
    """

    def __init__(self, max_backlog: int, published: Callable[[Change, float], Any]) -> None:
        self._queue = EventQueue(max_backlog)
        self._published = published
        self._lock = threading.Lock()
        self._subscribers: tuple[Subscription, ...] = ()
        self._thread: threading.Thread | None = None
        self._started = False
        self._closing = threading.Event()

    # -- subscribers -----------------------------------------------------------------------
    def subscribe(
        self,
        callback: Callable[[Change], Any] | None,
        prefix: str,
        on_error: Callable[[ErrorEvent], Any] | None,
        on_state: Callable[[SourceHealth], Any] | None,
    ) -> Subscription:
        """Register and return a new :class:`Subscription` (:class:`HubStateError` once
        the dispatcher is closed)."""
        return self._add(Subscription(self.unsubscribe, callback, prefix, on_error, on_state))

    def _add(self, sub: Subscription) -> Subscription:
        with self._lock:  # close() sets _closing, then takes the lock: no sub is missed
            if self._closing.is_set():
                raise HubStateError("hub.subscribe() on a closed hub; create a new Hub")
            self._subscribers = (*self._subscribers, sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Remove ``sub`` (no effect if it is not registered)."""
        with self._lock:
            self._subscribers = tuple(s for s in self._subscribers if s is not sub)

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are registered."""
        return len(self._subscribers)

    # -- the queue -------------------------------------------------------------------------
    def put(self, event: Event) -> None:
        """Queue ``event`` for delivery (returns at once).

        An :class:`ErrorEvent`'s exception is queued without its traceback (nor those of
        its causes): the frames would keep the rejected configuration alive until delivery.
        """
        if isinstance(event, ErrorEvent):
            drop_tracebacks(event.error)
        self._queue.put(event)
        if self._thread is None and self._started:
            with self._lock:
                self._spawn()

    @property
    def depth(self) -> int:
        """How many events wait for delivery."""
        return self._queue.qsize()

    @property
    def coalesced(self) -> int:
        """How many events were merged away because the backlog grew past its limit."""
        return self._queue.coalesced

    # -- the thread ------------------------------------------------------------------------
    def start(self) -> None:
        """Let the notifier thread run: it starts with the first event queued (a hub whose
        sources never change starts none)."""
        with self._lock:
            self._started = True
            if self._queue.qsize():
                self._spawn()

    def _spawn(self) -> None:  # under self._lock
        if self._thread is None and self._started and not self._closing.is_set():
            self._thread = threading.Thread(target=self._run, name="confhub-notifier", daemon=True)
            self._thread.start()

    def after_fork(self) -> None:
        """In a forked child (the hub's at-fork handler): new locks, and a new notifier
        thread once started; queued events are delivered here (the parent's copies of the
        subscribers never got them in this process)."""
        self._lock = threading.Lock()
        self._queue.after_fork()
        self._thread = None
        if self._started:
            self.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop delivering (events still queued are dropped), join the thread, deactivate
        every subscription and tell each its ``on_close`` (an iterator from :meth:`changes`
        ends), whether or not the thread ever ran (a hub closed before it started, or whose
        start failed)."""
        with self._lock:
            self._closing.set()
            thread = self._thread  # none is started once _closing is set
        self._queue.put(_STOP)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=timeout)
        with self._lock:
            subscribers, self._subscribers = self._subscribers, ()
        for sub in subscribers:
            sub.active = False
            if sub.on_close is not None:
                sub.on_close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP or self._closing.is_set():
                return
            self._deliver(item)

    def _deliver(self, item: Event) -> None:
        started = time.perf_counter()
        for sub in self._subscribers:
            if not sub.active:
                continue
            try:
                if isinstance(item, Change):
                    if sub.callback is not None:
                        part = item.filtered(sub.prefix)
                        if part is not None:
                            sub.callback(part)
                elif isinstance(item, SourceHealth):
                    if sub.on_state is not None:
                        sub.on_state(item)
                elif sub.on_error is not None:
                    sub.on_error(item)
            except Exception:
                log.exception(
                    "subscriber %r raised while handling generation %s; "
                    "the other subscribers still run",
                    getattr(sub.callback, "__qualname__", sub.callback),
                    getattr(item, "generation", "?"),
                    extra=log_fields(
                        getattr(item, "source", ""), generation=getattr(item, "generation", None)
                    ),
                )
        if isinstance(item, Change):
            try:
                self._published(item, time.perf_counter() - started)
            except Exception:
                log.exception("a plugin's confhub_snapshot_published failed; ignored")


def _compact(items: Iterable[Any]) -> list[Any]:
    """``items`` with every change merged into one and only the latest error event (per
    source and error type) and state event (per source) kept, in the order of the last
    occurrence of each; anything else (the stop marker) is kept as is. O(len(items))."""
    latest: dict[Any, tuple[int, Any]] = {}
    changes: list[Change] = []
    for index, item in enumerate(items):
        if isinstance(item, Change):
            changes.append(item)
            slot: Any = _CHANGES
        elif isinstance(item, ErrorEvent):
            slot = ("error", item.source, type(item.error))
        elif isinstance(item, SourceHealth):
            slot = ("state", item.source)
        else:
            slot = ("other", index)
        latest[slot] = (index, item)
    if changes:
        merged = merge_changes(changes)
        if merged is None:
            del latest[_CHANGES]
        else:
            latest[_CHANGES] = (latest[_CHANGES][0], merged)
    return [item for _, item in sorted(latest.values(), key=lambda pair: pair[0])]


_CHANGES = object()


def drop_tracebacks(error: BaseException) -> None:
    """Clear the traceback of ``error``, of its cause and context chain, and of the members
    of an exception group: what is kept is the exception's type, message and attributes."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        exc = pending.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        exc.__traceback__ = None
        pending.extend(e for e in (exc.__cause__, exc.__context__) if e is not None)
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)


def merge_changes(run: list[Change]) -> Change | None:
    """One change equivalent to ``run`` applied in order (``None`` if it nets to nothing)."""
    if len(run) == 1:
        return run[0]
    first_old: dict[str, Any] = {}
    last_new: dict[str, Any] = {}
    sources: dict[str, None] = {}
    for change in run:
        sources[change.source] = None
        for c in change.changes:
            first_old.setdefault(c.key, c.old)
            last_new[c.key] = c.new
    kept = tuple(
        KeyChange(k, first_old[k], last_new[k])
        for k in sorted(last_new)
        if first_old[k] is not last_new[k] and first_old[k] != last_new[k]
    )
    if not kept:
        return None
    fetched = [c.fetched_at for c in run if c.fetched_at is not None]
    return Change(run[-1].generation, kept, ", ".join(sources), min(fetched, default=None))

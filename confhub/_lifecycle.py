"""The hub's lifecycle: its state, the lock that serialises updates, and the steps of
start and close (``docs/architecture.md``).

:class:`Lifecycle` is given the stages it starts and stops (the slots, the
:class:`Dispatcher`, the :class:`Persister`, the :class:`Publisher`), the hooks and settings
start needs, and callables for the hub's snapshot and its ``close``; not the hub. It also
renews the lock and the threads in a forked child (``confhub._forks``).
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from typing import Any

from ._backend import Backend, BackendSettings
from ._dispatch import Dispatcher
from ._errors import HubStateError
from ._fallback import Follower, closed_during_start, load_slots
from ._forks import ForkGuard, Resumer, resume_slots
from ._health import SlotState
from ._merge import merge_full
from ._persist import Persister
from ._publish import Publisher
from ._slot import Slot
from ._snapshot import Snapshot, UnusableSnapshot
from ._spec import SourceSpec
from .kv import Backoff

log = logging.getLogger("confhub")


class State(enum.Enum):
    """The lifecycle of a :class:`Hub`."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    CLOSED = "closed"


class Lifecycle:
    """A hub's state (``state``), its re-entrant ``lock`` and the steps of start and close.

    ``hook`` is the plugin manager's hook relay (``confhub_validate_snapshot`` gets the first
    snapshot); ``configure()``/``unconfigure()`` call the hooks of those names with the hub;
    ``settings()`` returns the hub's timeouts and retry policy, read when they are used;
    ``swap(snapshot)`` publishes a snapshot to the hub's readers; ``close`` is the hub's
    (held weakly by the fork registry).
    """

    def __init__(
        self,
        slots: list[Slot],
        dispatcher: Dispatcher,
        persister: Persister,
        publisher: Publisher,
        *,
        lock: threading.RLock,
        hook: Any,
        configure: Callable[[], None],
        unconfigure: Callable[[], None],
        settings: Callable[[], BackendSettings],
        make_backend: Callable[[SourceSpec], Backend],
        swap: Callable[[Snapshot], None],
        close: Callable[[], None],
    ) -> None:
        self._slots = slots
        self._dispatcher = dispatcher
        self._persister = persister
        self._publisher = publisher
        self._hook = hook
        self._configure = configure
        self._unconfigure = unconfigure
        self._settings = settings
        self._make_backend = make_backend
        self._swap = swap
        self.state = State.NEW
        self.lock = lock
        self._stop = threading.Event()
        self._follower = self._new_follower()
        self._fork = ForkGuard(self._after_fork, close)

    def start(self) -> None:
        """:meth:`Hub.start`'s steps (its docstring says what it raises)."""
        with self.lock:
            if self.state is not State.NEW:
                raise HubStateError(
                    f"Hub.start() called on a hub that is {self.state.value}; "
                    "a hub starts once: create a new Hub"
                )
            self.state = State.STARTING
        try:
            self._configure()
            settings = self._settings()
            load_slots(
                self._slots,
                self._hook,
                self._make_backend,
                connect_timeout=settings.connect_timeout,
                start_timeout=settings.start_timeout,
                stop=self._stop,
                backoff=Backoff(
                    settings.retry_initial, max(settings.retry_initial, settings.retry_max)
                ),
            )
            layers = tuple(s.layer for s in self._slots)
            names = tuple(s.display for s in self._slots)
            snapshot = Snapshot(1, merge_full(layers), layers, names)
            self._hook.confhub_validate_snapshot(snapshot=snapshot, previous=None)
        except BaseException as exc:
            if self.state is not State.CLOSED:
                self._shutdown()
                raise
            self._abandon_start()
            if isinstance(exc, HubStateError):
                raise
            raise closed_during_start() from exc
        # Under the lock: a close() now waits until every thread has started, then stops
        # them all; one that came earlier is seen here.
        with self.lock:
            if self.state is not State.STARTING:
                self._abandon_start()
                raise closed_during_start()
            self._swap(snapshot)
            self.state = State.RUNNING
            for slot in self._slots:
                if slot.layer is not None and slot.state in (SlotState.LIVE, SlotState.FALLBACK):
                    self._publisher.persist(slot, slot.layer)
            self._dispatcher.start()
            self._persister.start()
            for slot in self._slots:
                self._follower.follow(slot)
            self._fork.register()
            if self.state is not State.RUNNING:  # close() from this thread (a signal handler)
                self._abandon_start()
                raise closed_during_start()

    def close(self) -> None:
        """:meth:`Hub.close`'s steps. Idempotent."""
        with self.lock:
            if self.state is State.CLOSED:
                return
            was_running = self.state is State.RUNNING
            self.state = State.CLOSED
        self._shutdown()
        if was_running:
            try:
                self._unconfigure()
            except Exception:
                log.exception("a plugin's confhub_unconfigure failed")

    def _abandon_start(self) -> None:
        """close() came during start(): close what start opened since; nothing was served."""
        self._shutdown()
        for slot in self._slots:
            slot.unload()

    def _shutdown(self) -> None:
        self.state = State.CLOSED
        self._fork.unregister()
        self._stop.set()
        for slot in self._slots:
            slot.close()
        self._dispatcher.close()
        self._persister.close()  # hands the last accepted layers to the cache first
        self._swap(
            UnusableSnapshot("the hub is closed: reads need a running hub; create a new Hub")
        )

    def _new_follower(self) -> Follower:
        settings = self._settings()
        return Follower(
            self._hook,
            lock=self.lock,
            stop=self._stop,
            on_update=self._publisher.on_update,
            running=lambda: self.state is State.RUNNING,
            retry_initial=settings.retry_initial,
            retry_max=settings.retry_max,
        )

    def _after_fork(self, parent: int) -> list[Resumer]:
        """In a forked child, from the at-fork handler: new locks and threads; each slot that
        follows a store is marked stale and re-read on a thread (``confhub._forks``)."""
        if self.state is not State.RUNNING:
            return []
        self.lock, self._stop = threading.RLock(), threading.Event()
        self._publisher.after_fork(self.lock)
        self._follower = self._new_follower()
        self._dispatcher.after_fork()
        self._persister.after_fork()
        return resume_slots(
            self._slots,
            self._follower,
            parent=parent,
            make_backend=self._make_backend,
            timeout=self._settings().connect_timeout,
        )

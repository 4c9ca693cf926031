"""Fork: a running hub inherited by a child process resumes there.

``fork()`` copies a process with one thread, the one that forked. A hub running in the parent
arrives in the child with its snapshot, its subscribers and its views, but without its
threads (the watches, the notifier, the cache writer), with the parent's connections
(sockets and gRPC channels that the child must not use), and with locks a dead thread may
hold. Left alone it serves the values of the moment of the fork forever while its health
still says ``live``: the trap of gunicorn ``--preload``, ``multiprocessing`` (fork) and
every pre-forking server.

What happens instead, in the child:

1. **At the fork** (:func:`_after_fork_in_child`, registered with
   ``os.register_at_fork``): only allocations. Each running hub renews its locks, its stop
   event, its notifier and cache-writer threads (``Lifecycle._after_fork``), and every slot
   that follows a store is marked: ``stale`` (from ``live`` or ``fallback``; a ``cached`` or
   ``absent`` slot keeps its state) with ``last_error`` saying it was inherited and is being
   re-read. From this instant ``health()`` no longer says ``live`` for it. No I/O, no hook
   call, no subscriber call and no log line happens in the handler.
2. **On a thread of each such slot** (``confhub-resume[...]``, a :class:`Resumer`): the
   report (log line, ``confhub_source_failed``, an :class:`ErrorEvent` and a state event
   for the child's subscribers), new backends for every member (new connections, new
   watcher threads; the inherited ones are abandoned, never closed nor used: closing a
   watchdog observer would remove the parent's inotify watches from the descriptor they
   share, closing a TLS socket would send the parent's peer a close_notify), a full read
   of the
   members in order (bounded by the connect timeout, retried with the hub's jittered
   backoff while no member answers), published like any update (only effective changes
   notify; the generation continues from the inherited one), then the watch (or poller,
   and a recoverer when an alternate serves), as after a start.

Why start the threads at the fork and not on the child's first use of the hub: a child may
never call the hub again and still depend on it (``view.current`` is a plain attribute; a
subscriber-only worker never reads), and it must not stay silently frozen. Starting a
worker thread in an ``after_in_child`` handler is what threading-based libraries do
(OpenTelemetry's batch processor restarts its worker there); ``threading``, ``logging`` and
``random`` register their own handlers at import, before confhub's, so they are consistent
when ours runs. Plugins must not rely on their own after-fork handler having run when a
backend is created in the child (``confhub_etcd`` resets only the clients the parent made).

A child that does not need the hub should ``hub.close()`` first thing (closing in a child
closes only what the child opened). ``uvicorn --workers`` and ``multiprocessing`` spawn start
fresh interpreters: nothing is inherited there.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable

from ._backend import Backend, can_watch, is_cacheable
from ._errors import ConfhubError, SourcePermissionError, SourceUnavailableError
from ._fallback import Follower, load_bounded
from ._health import SlotState
from ._layer import Layer
from ._slot import Slot, check_keys
from ._spec import SourceSpec
from .kv import Backoff

log = logging.getLogger("confhub")


class ForkGuard:
    """One hub's entry in the process's fork registry.

    ``after_fork(parent_pid)`` is the hub's at-fork method (allocations and thread starts
    only), returning the resumers it started; ``close`` is its ``close``. Both are held
    weakly: the registry never keeps a hub alive. :meth:`register` while the hub runs,
    :meth:`unregister` when it closes.
    """

    def __init__(
        self, after_fork: Callable[[int], list[Resumer]], close: Callable[[], None]
    ) -> None:
        self._after_fork = weakref.WeakMethod(after_fork)
        self._close = weakref.WeakMethod(close)
        self.pid = os.getpid()
        #: The resume threads started in this process after the last fork.
        self.resumers: list[Resumer] = []

    def register(self) -> None:
        """The hub runs in this process: resume it in a forked child."""
        self.pid = os.getpid()
        _GUARDS.add(self)

    def unregister(self) -> None:
        """The hub closed: nothing to resume."""
        _GUARDS.discard(self)

    def forked(self) -> None:
        """Called in the child by the at-fork handler."""
        parent, self.pid = self.pid, os.getpid()
        self.resumers = []
        method = self._after_fork()
        if method is not None:
            self.resumers = method(parent)

    def close(self) -> None:
        method = self._close()
        if method is not None:
            method()

    def wait_resumed(self, deadline: float) -> bool:
        """Wait (until the ``time.monotonic()`` ``deadline``) for this process's resume
        threads to finish their first successful read; whether all did."""
        for resumer in list(self.resumers):
            if not resumer.done.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True


# The running hubs of this process. Module state because os.register_at_fork cannot be
# undone; weak, so that a hub is never kept alive by it.
_GUARDS: weakref.WeakSet[ForkGuard] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for guard in list(_GUARDS):
        try:
            guard.forked()
        except Exception:
            log.exception("confhub: resuming a hub after fork() failed")


os.register_at_fork(after_in_child=_after_fork_in_child)


def running_guards() -> list[ForkGuard]:
    """The guards of the hubs running in this process."""
    return [g for g in list(_GUARDS) if g.pid == os.getpid()]


def close_hubs() -> int:
    """Close every hub running in this process (a worker that exits); how many."""
    guards = running_guards()
    for guard in guards:
        guard.close()
    return len(guards)


def wait_resumed(timeout: float) -> bool:
    """Wait up to ``timeout`` seconds until every hub this process inherited across its
    last ``fork()`` has re-read its sources (or there is none); whether all did."""
    deadline = time.monotonic() + timeout
    return all(g.wait_resumed(deadline) for g in running_guards())


def follows_a_store(slot: Slot) -> bool:
    """Whether ``slot`` needs threads or connections to stay current: a remote member, a
    watch, or a poll. (Defaults and ``env:`` do not: their layer is what the child has.)"""
    if slot.active_spec.options.get("poll") is not None:
        return True
    return any(b is not None and (is_cacheable(b) or can_watch(b)) for b in slot.backends)


def inherited_error(slot: Slot, parent: int) -> SourceUnavailableError:
    """What health says about a slot between the fork and its re-read."""
    return SourceUnavailableError(
        f"{slot.display}: inherited across fork() from process {parent}; re-reading it and "
        f"restarting its watch in process {os.getpid()} (serving the inherited values meanwhile)",
        source=slot.display,
    )


class Resumer(threading.Thread):
    """Re-reads a slot inherited across ``fork()`` and follows it again (see the module doc).

    ``make_backend(spec)`` builds a member's backend (no I/O); ``follower`` (the child's,
    with the child's lock and stop event) is the hub's pipeline entry and starts the watch
    (and recovery) afterwards; ``timeout`` bounds one read of a member without ``timeout=``.
    """

    def __init__(
        self,
        slot: Slot,
        follower: Follower,
        *,
        make_backend: Callable[[SourceSpec], Backend],
        timeout: float,
        reason: SourceUnavailableError,
        report: bool,
    ) -> None:
        super().__init__(name=f"confhub-resume[{slot.display}]", daemon=True)
        self.slot = slot
        self.follower = follower
        self.hook = follower.hook
        self.on_update = follower.on_update
        self.stop = follower.stop
        self.make_backend = make_backend
        self.timeout = timeout
        self.backoff = Backoff(
            follower.retry_initial, max(follower.retry_initial, follower.retry_max)
        )
        self.reason = reason
        self.report = report
        #: Set once a member was re-read and published (the slot follows its store again).
        self.done = threading.Event()
        #: The reads tried, successful or not (for tests and diagnostics).
        self.attempts = 0
        #: The parent's backends of this slot (abandoned: see :func:`resume_slots`).
        self.inherited: list[Backend] = []

    def run(self) -> None:
        slot = self.slot
        if self.report:  # a live slot went stale: logged, hooks, an ErrorEvent, a state event
            self.on_update(slot, self.reason)
        else:
            log.warning("%s", self.reason)
        try:
            for i, spec in enumerate(slot.members):
                slot.backends[i] = self.make_backend(spec)
        except ConfhubError as exc:
            log.error("%s: cannot resume after fork(): %s", slot.display, exc)
            self.on_update(slot, exc)
            return
        round_ = 0
        while not self.stop.is_set():
            answer = self._read_members()
            if answer is not None:
                self._publish(*answer)
                return
            if self.stop.wait(self.backoff.delay(round_)):
                return
            round_ += 1

    def _read_members(self) -> tuple[int, Layer] | None:
        slot = self.slot
        for i, spec in enumerate(slot.members):
            backend = slot.backends[i]
            if backend is None or self.stop.is_set():
                continue
            self.attempts += 1
            try:
                layer = load_bounded(
                    self.hook, spec, backend, spec.option_float("timeout", self.timeout)
                )
                check_keys(spec, layer)
            except (SourceUnavailableError, SourcePermissionError):
                continue
            except ConfhubError as exc:  # broken content: reported, the inherited layer stays
                self.on_update(slot, exc)
                continue
            return i, layer
        return None

    def _publish(self, member: int, layer: Layer) -> None:
        slot = self.slot
        with self.follower.lock:
            if not self.follower.running():
                return
            slot.promote(member)
            self.on_update(slot, layer)
            if slot.layer is layer:  # else validation rejected it (reported); follow anyway
                slot.promoted()
        self.done.set()
        self.follower.follow(slot)


def resume_slots(
    slots: list[Slot],
    follower: Follower,
    *,
    parent: int,
    make_backend: Callable[[SourceSpec], Backend],
    timeout: float,
) -> list[Resumer]:
    """In the at-fork handler: forget the parent's threads, mark every slot that follows a
    store and start its :class:`Resumer`. Returns the resumers."""
    resumers = []
    for slot in slots:
        slot.threads = []  # the parent's; they do not exist here
        if not follows_a_store(slot):
            continue
        reason = inherited_error(slot, parent)
        # A cached or absent slot was reported failing in the parent and stays so.
        report = slot.state in (SlotState.LIVE, SlotState.FALLBACK)
        slot.inherit(reason)
        # Never used nor closed here: closing would act on what the parent shares with
        # this process (a watchdog observer removes its inotify watches from the shared
        # descriptor; a TLS socket would send close_notify). Kept until the child exits.
        inherited = [b for b in slot.backends if b is not None]
        slot.backends = [None] * len(slot.members)
        resumer = Resumer(
            slot, follower, make_backend=make_backend, timeout=timeout, reason=reason, report=report
        )
        resumer.inherited = inherited
        slot.threads.append(resumer)
        resumers.append(resumer)
    for resumer in resumers:
        resumer.start()
    return resumers

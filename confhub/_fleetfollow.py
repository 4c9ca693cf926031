"""A host group's follower thread (``confhub._fleet``): waits on the leader's wake-up
line, reads the latest state file on each poke, and hands each new layer (or error) to
the hub, in order.

:class:`GroupFollower` is given what it needs, not the :class:`SharedBackend` it serves:
the group's condition lock and stop event, a getter of the hub's ``notify``, and callables
to try the group's lock, to take over as leader, to detach, and to warn once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ._backend import Notify
from ._errors import (
    SourceError,
    SourceFormatError,
    SourcePermissionError,
    SourceUnavailableError,
)
from ._fleetstate import (
    Busy,
    FormatMismatch,
    GroupFileError,
    GroupPaths,
    GroupState,
    read_state,
    stat_key,
)
from ._fleetwake import Line, wait_readable
from ._merge import MISSING

#: A follower that lost its leader tries the lock and the new leader's socket again after
#: these delays (doubled up to the maximum): a failed connect costs microseconds, and each
#: millisecond here is a millisecond of every follower's takeover time.
_RECONNECT_FIRST = 0.001
_RECONNECT_MAX = 0.02

_ERROR_KINDS: Mapping[str, type[SourceError]] = {
    "unavailable": SourceUnavailableError,
    "refused": SourcePermissionError,
    "format": SourceFormatError,
}


def error_of(pair: tuple[str, str], source: str, pid: int) -> SourceError:
    """The error a leader wrote to the group's state (``(kind, message)``), as raised here."""
    kind, message = pair
    cls = _ERROR_KINDS.get(kind, SourceUnavailableError)
    return cls(f"{message} (as the group's leader, pid {pid}, reported it)", source=source)


class GroupFollower:
    """The follower side of one shared source: the latest state read, the leader's session,
    what the hub got, the wake-up pipe, and the thread that follows the leader.

    ``lock`` is the shared backend's condition (notified when a newer state arrives);
    ``notify()`` returns the hub's ``notify`` (``None`` before it watches); ``try_lead()``
    tries the group's lock; ``take_over()`` leads from here on (the thread then ends);
    ``detach(reason)`` reads the store without the group; ``warn(message)`` warns once.
    """

    def __init__(
        self,
        display: str,
        *,
        lock: threading.Condition,
        stop: threading.Event,
        notify: Callable[[], Notify | None],
        take_over: Callable[[], None],
        detach: Callable[[str], None],
        warn: Callable[[str], None],
    ) -> None:
        self.display = display
        self._lock = lock
        self._stop = stop
        self._notify = notify
        self._take_over = take_over
        self._detach = detach
        self._warn = warn
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread: threading.Thread | None = None
        self._paths: GroupPaths | None = None
        self._try_lead: Callable[[], bool] | None = None
        #: The latest state read (any session seen on the line), and the leader's session.
        self.latest: GroupState | None = None
        self._session: str | None = None
        #: The highest sequence number read.
        self.seen_seq = -1
        self._delivered_seq = -1
        self._delivered_revision: Any = MISSING
        self._delivered_error: tuple[str, str] | None = None
        self._stat: tuple[int, int, int] | None = None

    # -- what the shared backend asks ----------------------------------------------------------
    def start(self, paths: GroupPaths, try_lead: Callable[[], bool]) -> None:
        """Start the follower thread on the group's files."""
        self._paths, self._try_lead = paths, try_lead
        self._thread = threading.Thread(
            target=self._follow, name=f"confhub-follow[{self.display}]", daemon=True
        )
        self._thread.start()

    def current(self) -> GroupState | None:
        """The latest state of the current leader's session, else ``None`` (under ``lock``)."""
        state = self.latest
        if state is not None and state.session == self._session:
            return state
        return None

    def loaded(self, state: GroupState) -> None:
        """``state``'s layer went to the hub through a load (under ``lock``)."""
        assert state.layer is not None
        self._delivered_seq = state.seq
        self._delivered_revision = state.layer.revision
        self._delivered_error = None

    def catch_up(self, final: GroupState | None) -> GroupState | None:
        """Before taking over: ``final`` (the state file as the last leader left it) if it
        is newer, handed to the hub; returns the latest state seen."""
        with self._lock:
            if final is not None and final.seq > self.seen_seq:
                self.latest = final
                self.seen_seq = final.seq
        self._deliver()  # the hub has what the group saw before we go on
        with self._lock:
            return self.latest

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def join(self, timeout: float) -> None:
        """Wait for the thread (unless called on it)."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def close(self) -> None:
        """Close the wake-up pipe."""
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def forget_after_fork(self) -> None:
        """In a forked child: a new wake-up pipe; no thread, no state, no session."""
        self.close()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = None
        self.latest = None
        self._session = None

    # -- the follower thread -------------------------------------------------------------------
    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except OSError:
            pass

    def _follow(self) -> None:
        """Follow the leader until this process leads, detaches, or closes."""
        assert self._paths is not None
        assert self._try_lead is not None
        delay = _RECONNECT_FIRST
        while not self._stop.is_set():
            if self._try_lead():
                self._take_over()
                return
            try:
                line = Line(self._paths.socket)
            except (OSError, GroupFileError) as exc:
                if isinstance(exc, GroupFileError):
                    self._warn(str(exc))
                if wait_readable([self._wake_r], delay):
                    self._drain_wake()
                delay = min(delay * 2, _RECONNECT_MAX)
                continue
            delay = _RECONNECT_FIRST
            try:
                if self._follow_line(line) == "detach":
                    return
            finally:
                line.close()

    def _follow_line(self, line: Line) -> str:
        """Read states while the leader's line is up: ``"lost"`` when it ends."""
        while not self._stop.is_set():
            readable = wait_readable([line, self._wake_r], 1.0)
            if self._wake_r in readable:
                self._drain_wake()
            poked = line in readable
            alive = line.drain() if poked else True
            if not alive:
                return "lost"  # elect first; the state is read again from whoever leads
            if line.session is not None:
                with self._lock:
                    self._session = line.session
                # A poke always reads the file: (inode, mtime, size) can repeat across two
                # quick writes (coarse mtime, a reused inode); the stat is for the timeout.
                if self._refresh(force=poked or self.seen_seq < 0) == "detach":
                    return "detach"
        return "stopped"

    def _refresh(self, *, force: bool) -> str | None:
        """Read the state file (unless ``force`` is false and it looks unchanged); deliver
        what is new to the hub."""
        assert self._paths is not None
        key = stat_key(self._paths.state)
        if not force and key is not None and key == self._stat:
            self._deliver()
            return None
        try:
            state = read_state(self._paths.state, self.display)
        except Busy:
            return None  # a write under way: its poke follows (or the leader died in it)
        except FormatMismatch as exc:
            self._detach(str(exc))
            return "detach"
        except (OSError, GroupFileError) as exc:
            self._warn(f"not following the group state: {exc}")
            return None
        self._stat = key
        if state is None:
            return None
        with self._lock:
            if state.session == self._session and state.seq > self.seen_seq:
                self.latest = state
                self.seen_seq = state.seq
                self._lock.notify_all()
        self._deliver()
        return None

    def _deliver(self) -> None:
        """Hand the latest state to the hub if it has not had it (the follower thread
        alone calls this, so updates reach the hub in order).

        A state that repeats what the hub has (a new leader's first state, the same
        revision again) is not handed on: the layer goes when its revision is new (or
        unknown) or when the leader's trouble ended, the error when it is a new one."""
        with self._lock:
            notify, state = self._notify(), self.latest
            if notify is None or state is None or state.seq <= self._delivered_seq:
                return
            self._delivered_seq = state.seq
            layer = state.layer
            send_layer = layer is not None and (
                layer.revision is None
                or layer.revision != self._delivered_revision
                or (state.error is None and self._delivered_error is not None)
            )
            send_error = state.error is not None and state.error != self._delivered_error
            self._delivered_error = state.error
            if send_layer:
                assert layer is not None
                self._delivered_revision = layer.revision
        if send_layer:
            assert layer is not None
            notify(layer)
        if send_error:
            assert state.error is not None
            notify(error_of(state.error, self.display, state.pid))

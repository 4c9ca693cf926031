"""Fork: registry objects inherited by a child process.

A registration, a lock and an election *belong to the process that made them*: the store
knows them by a lease or session the parent keeps alive, and the parent still holds them
after it forks. In a child (gunicorn ``--preload``, ``multiprocessing`` fork) they are
therefore never kept alive, renewed, released nor deregistered: the child's object is
marked *inherited* (:attr:`RegistrationState.INHERITED`, ``Lock.held`` and
``Election.is_leader`` false, ``close()`` a no-op that does not touch the store) and a
warning says to register (or lock) in the worker instead (gunicorn's ``post_fork``). A
child that closed the parent's registration would make the whole service disappear.

A :class:`~confhub.Discovery` is read-only, so it resumes in the child like a hub: marked
stale at once (its health says it was inherited and is being re-read), then a thread of
its own makes a new store connection, reads the whole list again and watches from there.
A :class:`~confhub.Registry`'s shared connection is replaced by a new one on its first use
in the child.

As for hubs (:mod:`confhub._forks`), the at-fork handler only marks and allocates (new
locks and events; the parent's threads do not exist here) and starts threads; the parent's
connections are abandoned, never used nor closed (closing would act on sockets the parent
shares). Its warnings are logged from a thread (``confhub-registry-fork``), not from the
handler.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Protocol

log = logging.getLogger("confhub.registry")


class Inheritable(Protocol):
    def after_fork(self, parent: int) -> str | None:
        """Called in the child by the at-fork handler (allocations and thread starts only);
        returns a warning to log, or ``None``."""
        ...


# The registry objects alive in this process. Module state because os.register_at_fork
# cannot be undone; weak, so that nothing is kept alive by it.
_OBJECTS: weakref.WeakSet[Inheritable] = weakref.WeakSet()
_PID = [os.getpid()]


def track(obj: Inheritable) -> None:
    """Mark ``obj`` (made in this process) for the at-fork handler."""
    _OBJECTS.add(obj)


def untrack(obj: Inheritable) -> None:
    """``obj`` closed in its own process: nothing to do at a fork."""
    _OBJECTS.discard(obj)


def inherited_message(what: str, parent: int, fix: str) -> str:
    """The warning (and error) text of an object inherited from process ``parent``."""
    return (
        f"{what} was inherited across fork() from process {parent}, which owns it; "
        f"process {os.getpid()} does not keep it alive, release nor close it: {fix}"
    )


def _log_all(messages: list[str]) -> None:
    for message in messages:
        log.warning("%s", message)


def _after_fork_in_child() -> None:
    parent, _PID[0] = _PID[0], os.getpid()
    messages: list[str] = []
    for obj in list(_OBJECTS):
        try:
            message = obj.after_fork(parent)
        except Exception:  # noqa: BLE001 - reported from the thread below
            message = f"confhub: marking {obj!r} inherited after fork() failed"
        if message:
            messages.append(message)
    if messages:
        threading.Thread(
            target=_log_all, args=(messages,), name="confhub-registry-fork", daemon=True
        ).start()


os.register_at_fork(after_in_child=_after_fork_in_child)

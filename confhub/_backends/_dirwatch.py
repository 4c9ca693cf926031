"""The watchdog side of a watched file source: :class:`DirectoryWatch` keeps an observer on
the source's directory (and, through symlinks, the one its path resolves to), re-points it
when the path resolves elsewhere, starts a fresh one when the directory is recreated, and
stops it with its inotify instance released.

It knows nothing of what the source reads: the backend (:mod:`confhub._backends._watch`)
gives it the directories to watch, which event paths matter, and where to send a poke (an
event that may change the source) or an error. It never reads the backend's members.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from .._errors import SourceUnavailableError

log = logging.getLogger("confhub.file")


class DirectoryWatch:
    """One source's watchdog observer and the directories it watches.

    ``watch_dir()`` is the directory that must exist to watch; ``real_dir()`` the one the
    path resolves to through symlinks (watched too when it differs), re-resolved on every
    :meth:`rewatch`. ``is_relevant(path)`` says whether an event on ``path`` may change the
    source; ``poke()`` is called for such an event (and when a watched directory is
    deleted); ``report(error)`` gets a restart that failed. ``mode`` is ``"auto"`` (native,
    falling back to polling with one warning) or ``"poll"``.
    """

    def __init__(
        self,
        *,
        name: str,
        mode: str,
        poll_interval: float,
        watch_dir: Callable[[], str],
        real_dir: Callable[[], str],
        is_relevant: Callable[[str], bool],
        poke: Callable[[], None],
        report: Callable[[BaseException], None],
    ) -> None:
        self.name = name
        self.mode = mode
        self.poll_interval = poll_interval
        self._watch_dir = watch_dir
        self._real_dir = real_dir
        self._poke = poke
        self._report = report
        self._handler = _Handler(is_relevant, poke, self.directory_deleted)
        self._observer: BaseObserver | None = None
        self._watches: dict[str, ObservedWatch] = {}
        # The identity (device, inode) of each watched directory when it was scheduled: a
        # directory deleted and recreated is a new inode that the old watch does not see.
        self._watched_ids: dict[str, tuple[int, int]] = {}
        self._dir_lost = False  # set on an event saying a watched directory was deleted
        # Serialises start(), close() and restarts, so close() sees every observer that was
        # started and none is started after it.
        self._lock = threading.Lock()
        self._closed = False
        #: The observer class in use (``InotifyObserver``, ``PollingObserver`` ...), once started.
        self.observer_kind: str | None = None

    @property
    def directories(self) -> frozenset[str]:
        """The directories watched now, a snapshot (empty when not watching)."""
        return frozenset(self._watches.copy())  # dict.copy() is atomic: no size-change race

    def start(self) -> None:
        """Start watching; :class:`SourceUnavailableError` when the directory is missing or
        cannot be watched even by polling. Does nothing once closed."""
        with self._lock:
            if not self._closed and self._observer is None:
                self._observer = self._start_observer()

    def directory_deleted(self, path: str) -> bool:
        """An event said directory ``path`` was deleted: when it is one we watch, its watch
        died with it; note that, poke, and return True."""
        if path not in self._watched_ids:
            return False
        self._dir_lost = True
        self._poke()
        return True

    def parent_gone(self) -> bool:
        """Whether the watched directory is missing or was replaced by another."""
        if self._dir_lost:
            return True
        try:
            st = os.stat(self._watch_dir())
        except OSError:
            return True
        return self._watched_ids.get(self._watch_dir()) != (st.st_dev, st.st_ino)

    def rewatch(self) -> None:
        """Watch the directory the path now resolves to; drop ones it no longer does."""
        observer = self._observer
        if observer is None:
            return
        wanted = {d for d in self._dirs() if os.path.isdir(d)}
        if self._watch_dir() in wanted and self.parent_gone():
            # The directory was deleted and is back as a new inode. watchdog keeps its
            # bookkeeping by path, so a watch scheduled again on the same path can stay
            # attached to the dead inode: start a fresh observer instead.
            self._restart()
            return
        for d in set(self._watches) - wanted:
            watch = self._watches.pop(d)
            self._watched_ids.pop(d, None)
            try:
                observer.unschedule(watch)
            except (KeyError, OSError) as exc:  # already gone with its directory
                log.debug("%s: unwatching %s: %s", self.name, d, exc)
        for d in wanted - set(self._watches):
            try:
                self._schedule(observer, d)
            except OSError as exc:  # pragma: no cover - depends on the platform's limits
                log.warning("%s: cannot watch %s: %s", self.name, d, exc)

    def close(self) -> None:
        """Stop the observer and join its threads. Idempotent."""
        with self._lock:
            self._closed = True
            observer, self._observer = self._observer, None
        if observer is not None:
            stop_observer(observer)
        self._forget()

    # -- internals ---------------------------------------------------------------------------
    def _dirs(self) -> set[str]:
        parent = self._watch_dir()
        dirs = {parent}
        real = self._real_dir()
        if real != parent and os.path.isdir(real):
            dirs.add(real)
        return dirs

    def _forget(self) -> None:
        self._watches.clear()
        self._watched_ids.clear()

    def _schedule(self, observer: BaseObserver, directory: str) -> None:
        st = os.stat(directory)
        self._watches[directory] = observer.schedule(self._handler, directory, recursive=False)
        self._watched_ids[directory] = (st.st_dev, st.st_ino)

    def _start_observer(self) -> BaseObserver:
        parent = self._watch_dir()
        if not os.path.isdir(parent):
            raise SourceUnavailableError(
                f"{self.name}: directory {parent} does not exist, "
                "so the source cannot be watched; create it",
                source=self.name,
            )
        dirs = sorted(self._dirs())
        if self.mode != "poll":
            native: BaseObserver | None = None
            try:
                # InotifyObserver creates its inotify instance here: EMFILE when the
                # instance limit is reached, ENOSPC from a watch limit in schedule/start.
                native = Observer()
                for d in dirs:
                    self._schedule(native, d)
                native.start()
            except OSError as exc:
                self._forget()
                if native is not None:
                    # Its thread never started; stop() joins what did (emitters, inotify).
                    stop_observer(native)
                log.warning(
                    "%s: native file watching is unavailable (%s); polling every %.2fs instead",
                    self.name,
                    exc,
                    self.poll_interval,
                )
            else:
                self.observer_kind = type(native).__name__
                return native
        observer: BaseObserver = PollingObserver(timeout=self.poll_interval)
        try:
            for d in dirs:
                self._schedule(observer, d)
            observer.start()
        except OSError as exc:
            self._forget()
            stop_observer(observer)
            raise SourceUnavailableError(
                f"{self.name}: cannot watch {parent}, not even by polling: {exc}",
                source=self.name,
            ) from exc
        self.observer_kind = type(observer).__name__
        return observer

    def _restart(self) -> None:
        with self._lock:
            old, self._observer = self._observer, None
        if old is not None:
            stop_observer(old)
        self._forget()
        self._dir_lost = False
        if self._closed:
            return
        try:
            fresh = self._start_observer()
        except SourceUnavailableError as exc:
            self._report(exc)
            return
        with self._lock:
            closed = self._closed
            if not closed:
                self._observer = fresh
        if closed:  # close() ran meanwhile and saw no observer: this one is ours to stop
            stop_observer(fresh)
            return
        log.info("%s: %s was recreated; watching it again", self.name, self._watch_dir())


class _Handler(FileSystemEventHandler):
    """Pokes for any event that may concern the source (both ends of a move)."""

    def __init__(
        self,
        is_relevant: Callable[[str], bool],
        poke: Callable[[], None],
        directory_deleted: Callable[[str], bool],
    ) -> None:
        self._is_relevant = is_relevant
        self._poke = poke
        self._directory_deleted = directory_deleted

    def _relevant(self, path: Any) -> bool:
        if not path:
            return False
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        return self._is_relevant(str(path))

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Our own reads open and close the file: reacting to those would loop forever.
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.event_type == "deleted" and event.is_directory:
            src = (
                os.fsdecode(event.src_path) if isinstance(event.src_path, bytes) else event.src_path
            )
            if self._directory_deleted(src):
                return
        if self._relevant(event.src_path) or self._relevant(getattr(event, "dest_path", "")):
            self._poke()


def stop_observer(observer: BaseObserver) -> None:
    """Stop an observer, join its threads, and release its inotify instance.

    Closing the inotify descriptor is not left to watchdog alone: its reader
    (``watchdog.observers.inotify_c.InotifyFD``, 7.x) starts out marked as reading, so
    ``close()`` writes to the reader's wake-up pipe and leaves the closing to the reader,
    which closes on its way out of a read. A reader stopped before its first read (a hub
    closed right after it started, the reader thread not yet scheduled: a loaded machine)
    never reads, so the inotify descriptor and both pipe ends stayed open, every thread
    gone. Each such descriptor counts against the per-user limit of inotify instances.
    """
    observer.stop()
    if observer.is_alive() and observer is not threading.current_thread():
        observer.join(timeout=5)
    _release_inotify(observer)


def _release_inotify(observer: BaseObserver) -> None:
    """Close what a stopped InotifyFD reader left open (see :func:`stop_observer`).

    Only a reader whose thread has ended is touched, and only in the one state that means
    "closed, descriptors never released": ``_closed`` set while ``_is_reading`` is still
    true. Whoever closes the descriptors clears ``_is_reading`` first, under the reader's
    lock, and nothing sets it again once ``_closed`` is set. Other watchdog versions and
    other observers (polling) lack these members and are left alone. (This is the one
    place confhub reads a third party's private members: watchdog offers no public way.)
    """
    reader: Any = getattr(observer, "_inotify_fd", None)
    lock = getattr(reader, "_lock", None)
    release = getattr(reader, "_close_resources", None)
    is_thread = isinstance(reader, threading.Thread)
    if not is_thread or lock is None or not callable(release):
        return
    if reader.is_alive():
        if reader is threading.current_thread():
            return
        reader.join(timeout=5)
        if reader.is_alive():  # still reading: it will close on its way out
            return
    with lock:
        if getattr(reader, "_closed", False) is True and getattr(reader, "_is_reading", False):
            reader._is_reading = False
            try:
                release()
            except OSError as exc:  # pragma: no cover - already closed by someone else
                log.debug("releasing an inotify instance: %s", exc)

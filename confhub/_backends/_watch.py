"""The watching machinery every file-shaped builtin source shares (``file:``, ``dotenv:``,
``secrets:``): a bounded read of regular files, and :class:`WatchedBackend`, which watches a
directory through watchdog, debounces, hashes and re-reads.

A subclass says *what* it reads; this module says *how* it is watched:

- :meth:`WatchedBackend.read_content` returns the source's bytes (``None``: missing);
- :meth:`WatchedBackend.parse_content` turns them into a :class:`Layer`;
- :attr:`WatchedBackend.watch_dir` is the directory watched (a file's parent, a secrets
  directory itself), :meth:`WatchedBackend.real_dir` the directory the path resolves to
  through symlinks (watched too when it differs);
- :meth:`WatchedBackend.is_relevant` says whether an event on a path in those
  directories may change the source.

Watching follows the lessons of viper, Envoy and kubelet's atomic writer:

- Watch the *directory*, never the file: editors save by writing a new file and renaming
  it over the old one (vim, JetBrains), and Kubernetes swaps a ConfigMap or a Secret by
  re-pointing the ``..data`` symlink, so the watched inode disappears.
- Re-resolve the real path on every check, and also watch the directory the path resolves
  to when it differs (symlinked files); a directory the path no longer resolves to is
  unwatched again, so ConfigMap swaps do not pile up dead watches.
- Debounce: wait until no event arrived for ``settle`` seconds (at most ``max_settle``
  in all), then read.
- Compare a content hash, so duplicate events and touch-only saves publish nothing.
- Content that does not parse is re-read once after another ``settle`` (it may be half
  written); if it is still broken, the error is reported and the last good content stays.
- A source that is missing is looked for again after another ``settle`` (vim renames the
  original away before writing the new one): only one that stays missing is reported.
- The watched directory itself deleted: its watch dies with it (and a directory recreated
  at once may reuse the inode), so the backend looks for it every ``poll_interval`` and
  starts a fresh observer once it is back.
- The first check runs as soon as watching starts, so a change made between ``load()`` and
  ``watch()`` is not lost.
- The watching thread survives anything a check raises: the error is reported and the
  next event is handled (viper's watcher returned for good on the first error).
- inotify may be unavailable (instance or watch limits, some container filesystems): fall
  back to polling with one warning.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
import threading
import time
from typing import TYPE_CHECKING, Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from .._backend import Backend, Notify
from .._errors import (
    ConfhubError,
    SourceFormatError,
    SourcePermissionError,
    SourceUnavailableError,
    SpecError,
)
from .._fileio import read_at_most
from .._layer import Layer

if TYPE_CHECKING:
    from .._spec import SourceSpec

log = logging.getLogger("confhub.file")

DEFAULT_SETTLE = 0.02
DEFAULT_POLL_INTERVAL = 0.5
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
#: The revision (and content hash) of a source that is missing.
ABSENT = "absent"
_WATCH_MODES = {
    "auto": "auto",
    "true": "auto",
    "on": "auto",
    "yes": "auto",
    "poll": "poll",
    "false": "false",
    "off": "false",
    "no": "false",
}


#: The variable that names the active profile (``?profile_env=`` names another).
PROFILE_ENV = "CONFHUB_PROFILE"
_PROFILE = "{profile}"
_PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def profile_path(spec: SourceSpec, location: str) -> tuple[str | None, str | None]:
    """``location`` with ``{profile}`` replaced by the active profile, and the profile.

    The profile is the value of ``$CONFHUB_PROFILE`` (or of the variable the
    ``profile_env`` option names), read once, when the backend is made. A path without the
    placeholder is returned as is, with ``None``. When the variable is unset or empty, the
    path is ``None`` if the source is ``?optional=true`` (it contributes nothing), else a
    :class:`SpecError`. A profile must be a plain name (letters, digits, ``_ . -``, not
    ``..``): it picks a file beside the others, never a path elsewhere.
    """
    if _PROFILE not in location:
        return location, None
    variable = str(spec.option("profile_env", PROFILE_ENV))
    profile = os.environ.get(variable, "").strip()
    if not profile:
        if spec.optional:
            return None, None
        raise SpecError(
            f"{spec.display}: the path holds {{profile}} but ${variable} is not set; set it "
            f"(e.g. {variable}=prod) or add ?optional=true to read nothing without a profile",
            spec=spec.display,
        )
    if not _PROFILE_NAME.fullmatch(profile) or ".." in profile:
        raise SpecError(
            f"{spec.display}: ${variable}={profile!r} is not a profile name; use letters, "
            "digits, '_', '.' and '-' (no '/', no '..'), e.g. prod or staging-eu",
            spec=spec.display,
        )
    return location.replace(_PROFILE, profile), profile


def read_regular(path: str, max_bytes: int, *, source: str) -> bytes | None:
    """The bytes of the regular file at ``path``, or ``None`` when it does not exist.

    Opened with ``O_NONBLOCK`` so that a FIFO never blocks the open; only a regular file
    is read (symlinks are followed: only the final target's type counts), and at most
    ``max_bytes + 1`` bytes, so ``/dev/zero`` or a runaway file is refused, not loaded.
    Errors name ``source`` and ``path``: :class:`SourcePermissionError`,
    :class:`SourceUnavailableError` (not a regular file, an I/O error),
    :class:`SourceFormatError` (a directory, too big).
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise SourcePermissionError(
            f"{source}: cannot read {path}: {exc.strerror or exc}; fix its permissions",
            source=source,
        ) from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket (or a device with no driver)
            raise _not_regular(source, path, "a socket or an unconnected device") from None
        raise SourceUnavailableError(
            f"{source}: cannot read {path}: {exc.strerror or exc}", source=source
        ) from None
    try:
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise SourceFormatError(
                    f"{source}: {path} is a directory, not a file", source=source
                )
            if not stat.S_ISREG(st.st_mode):
                raise _not_regular(source, path, _file_type(st.st_mode))
            if st.st_size > max_bytes:
                raise _too_big(source, path, f"{st.st_size:,} bytes", max_bytes)
            data = read_at_most(fd, max_bytes)
        except OSError as exc:
            raise SourceUnavailableError(
                f"{source}: cannot read {path}: {exc.strerror or exc}", source=source
            ) from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew while being read
        raise _too_big(source, path, f"more than {max_bytes:,} bytes", max_bytes)
    return data


def _not_regular(source: str, path: str, kind: str) -> SourceUnavailableError:
    return SourceUnavailableError(
        f"{source}: {path} is {kind}, not a regular file; confhub reads only "
        "regular files (a symlink to one is fine): point the source at the file itself",
        source=source,
    )


def _too_big(source: str, path: str, size: str, max_bytes: int) -> SourceFormatError:
    return SourceFormatError(
        f"{source}: {path} is {size}, more than max_bytes={max_bytes:,}; "
        "refusing it: raise ?max_bytes= on the source if a file that big is intended",
        source=source,
    )


def _file_type(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def digest(content: bytes) -> str:
    """The revision of file content: a short SHA-256."""
    return hashlib.sha256(content).hexdigest()[:16]


def max_bytes_option(spec: SourceSpec, default: int) -> int:
    """The ``max_bytes`` option: a whole number >= 0, else :class:`SpecError`."""
    value = spec.option("max_bytes")
    if value is None:
        return default
    try:
        limit = int(str(value))
    except ValueError:
        limit = -1
    if limit < 0:
        raise SpecError(
            f"{spec.display}: max_bytes={value!r} is not a byte count; give a whole number >= 0",
            spec=spec.display,
        )
    return limit


class WatchedBackend(Backend):
    """A source read from the filesystem and watched; see the module docstring.

    Reads the options ``watch``, ``settle``, ``max_settle`` and ``poll_interval`` (see
    ``file.py``'s docstring) and ``optional``. ``path`` is what the source names (a file or
    a directory).
    """

    def __init__(
        self, spec: SourceSpec, location: str, *, kind: str, example: str, max_bytes: int
    ) -> None:
        if not location:
            raise SpecError(f"{kind}: needs a path, as in {example}", spec=spec.display)
        path, self.profile = profile_path(spec, location)
        #: True when the path names a ``{profile}`` and no profile is set (an optional
        #: source then contributes nothing and is not watched).
        self.no_profile = path is None
        self.path = os.path.abspath(os.path.expanduser(location if path is None else path))
        self.name = spec.display
        self.optional = spec.optional
        #: The largest file read (``?max_bytes=``, default ``max_bytes``).
        self.max_bytes = max_bytes_option(spec, max_bytes)
        self.settle = spec.option_float("settle", DEFAULT_SETTLE)
        self.max_settle = spec.option_float("max_settle", max(1.0, 10 * self.settle))
        self.poll_interval = spec.option_float("poll_interval", DEFAULT_POLL_INTERVAL)
        for option in ("settle", "max_settle", "poll_interval"):
            if getattr(self, option) < 0:
                raise SpecError(
                    f"{self.name}: {option}={getattr(self, option)} is negative; give seconds >= 0",
                    spec=self.name,
                )
        mode = str(spec.option("watch", "auto")).lower()
        if mode not in _WATCH_MODES:
            raise SpecError(f"{self.name}: watch={mode!r}; use auto, poll or false", spec=self.name)
        self.watch_mode = _WATCH_MODES[mode]
        self._last_hash: str | None = None
        self._reported_broken: str | None = None
        self._observer: BaseObserver | None = None
        self._handler = _Handler(self)
        self._watches: dict[str, ObservedWatch] = {}
        # The identity (device, inode) of each watched directory when it was scheduled: a
        # directory deleted and recreated is a new inode that the old watch does not see.
        self._watched_ids: dict[str, tuple[int, int]] = {}
        self._dir_lost = False  # set on an event saying a watched directory was deleted
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # Serialises watch(), close() and the settle thread's observer restarts, so close()
        # sees every observer that was started and none is started after it.
        self._lifecycle = threading.Lock()
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._first_event: float | None = None
        self._notify: Notify | None = None
        #: The observer class in use (``InotifyObserver``, ``PollingObserver`` ...), once watching.
        self.observer_kind: str | None = None

    # -- what a subclass says ----------------------------------------------------------------
    @property
    def watch_dir(self) -> str:
        """The directory watched, which must exist to watch (default: the path's parent)."""
        return os.path.dirname(self.path)

    def real_dir(self) -> str:
        """The directory the watched one resolves to through symlinks, re-resolved on every
        check (default: the parent of the path's real path)."""
        return os.path.dirname(os.path.realpath(self.path))

    def is_relevant(self, path: str) -> bool:
        """Whether an event on ``path`` (in a watched directory) may change the source
        (default: the source is one file)."""
        basename = os.path.basename(path)
        # ``..data``, ``..data_tmp`` and ``..<timestamp>``: a Kubernetes atomic-writer swap.
        if basename == os.path.basename(self.path) or basename.startswith(".."):
            return True
        # The file may be a symlink whose target lives in this directory.
        return os.path.basename(os.path.realpath(self.path)) == basename

    def read_content(self) -> bytes | None:
        """The source's bytes, or ``None`` when it does not exist (default: the file at
        ``path``, at most ``max_bytes``)."""
        return read_regular(self.path, self.max_bytes, source=self.name)

    def parse_content(self, content: bytes) -> Layer:
        """``content`` as a layer, or :class:`SourceFormatError`."""
        raise NotImplementedError

    def missing_layer(self) -> Layer:
        """What a missing source contributes: nothing when optional, else an error."""
        if self.optional:
            return Layer.from_flat({}, source=self.name, revision=ABSENT)
        raise SourceUnavailableError(
            f"{self.name}: {self.path} does not exist; create it, fix the path, "
            "or add ?optional=true",
            source=self.name,
        )

    @property
    def watched_directories(self) -> frozenset[str]:
        """The directories watched now (the source's own and, through symlinks, the ones it
        resolves to), a snapshot; empty when not watching. For diagnostics and tests."""
        return frozenset(self._watches.copy())  # dict.copy() is atomic: no size-change race

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> Layer:
        if self.no_profile:
            return Layer.from_flat({}, source=self.name, revision=ABSENT)
        content = self.read_content()
        if content is None:
            self._last_hash = ABSENT
            return self.missing_layer()
        layer = self.parse_content(content)
        self._last_hash = digest(content)
        return layer

    # -- watching --------------------------------------------------------------------------
    def watch(self, notify: Notify) -> None:
        if self.watch_mode == "false" or self.no_profile:
            return
        with self._lifecycle:
            if self._stop.is_set():
                return  # closed already: start nothing that close() would not stop
            self._notify = notify
            self._observer = self._start_observer()
            self._thread = threading.Thread(
                target=self._run,
                name=f"confhub-file-settle[{os.path.basename(self.path)}]",
                daemon=True,
            )
            self._thread.start()
        # The source may have changed between load() and now, before anything watched it.
        self.poke()

    def _dirs(self) -> set[str]:
        parent = self.watch_dir
        dirs = {parent}
        real = self.real_dir()
        if real != parent and os.path.isdir(real):
            dirs.add(real)
        return dirs

    def _schedule_all(self, observer: BaseObserver, dirs: set[str]) -> None:
        for d in sorted(dirs):
            self._schedule(observer, d)

    def _schedule(self, observer: BaseObserver, directory: str) -> None:
        st = os.stat(directory)
        self._watches[directory] = observer.schedule(self._handler, directory, recursive=False)
        self._watched_ids[directory] = (st.st_dev, st.st_ino)

    def _parent_gone(self) -> bool:
        """Whether the watched directory is missing or was replaced by another."""
        if self._dir_lost:
            return True
        parent = self.watch_dir
        try:
            st = os.stat(parent)
        except OSError:
            return True
        return self._watched_ids.get(parent) != (st.st_dev, st.st_ino)

    def _start_observer(self) -> BaseObserver:
        parent = self.watch_dir
        if not os.path.isdir(parent):
            raise SourceUnavailableError(
                f"{self.name}: directory {parent} does not exist, "
                "so the source cannot be watched; create it",
                source=self.name,
            )
        dirs = self._dirs()
        if self.watch_mode != "poll":
            native: BaseObserver | None = None
            try:
                # InotifyObserver creates its inotify instance here: EMFILE when the
                # instance limit is reached, ENOSPC from a watch limit in schedule/start.
                native = Observer()
                self._schedule_all(native, dirs)
                native.start()
            except OSError as exc:
                self._watches.clear()
                self._watched_ids.clear()
                if native is not None:
                    # Its thread never started; stop() joins what did (emitters, inotify).
                    _stop_observer(native)
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
            self._schedule_all(observer, dirs)
            observer.start()
        except OSError as exc:
            self._watches.clear()
            self._watched_ids.clear()
            _stop_observer(observer)
            raise SourceUnavailableError(
                f"{self.name}: cannot watch {parent}, not even by polling: {exc}",
                source=self.name,
            ) from exc
        self.observer_kind = type(observer).__name__
        return observer

    def poke(self) -> None:
        """Note an event: (re)start the debounce window, bounded by ``max_settle``."""
        with self._cond:
            now = time.monotonic()
            if self._first_event is None:
                self._first_event = now
            self._deadline = min(now + self.settle, self._first_event + self.max_settle)
            self._cond.notify()

    def directory_deleted(self, path: str) -> bool:
        """An event said directory ``path`` was deleted: when it is one we watch, its watch
        died with it; note that (the settle thread then looks for it) and return True."""
        if path not in self._watched_ids:
            return False
        self._dir_lost = True
        self.poke()
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                deadline = self._deadline
                if deadline is None:
                    if not self._parent_gone():
                        self._cond.wait()
                        continue
                    # The directory was deleted: no event will come from it. Look for it
                    # again every poll interval, and re-arm the watch when it is back.
                    self._cond.wait(self.poll_interval)
                    if self._deadline is None and os.path.isdir(self.watch_dir):
                        self._deadline = time.monotonic()
                    continue
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue  # re-check: a newer event may have moved the deadline
                self._deadline = None
                self._first_event = None
            try:
                self._check()
            except Exception as exc:  # the watcher must outlive any one check
                log.exception("%s: checking %s failed; still watching", self.name, self.path)
                self._report(exc)

    def _report(self, error: BaseException) -> None:
        notify = self._notify
        if notify is None or self._stop.is_set():
            return
        try:
            notify(error)
        except Exception:  # a failing consumer must not stop the watcher
            log.exception("%s: reporting an error failed", self.name)

    def _publish(self, update: Layer) -> None:
        notify = self._notify
        if notify is None or self._stop.is_set():
            return
        notify(update)

    def _read_or_report(self) -> tuple[bool, bytes | None]:
        try:
            return True, self.read_content()
        except (SourceUnavailableError, SourcePermissionError, SourceFormatError) as exc:
            self._last_hash = None  # whatever comes next is news
            self._reported_broken = None
            self._report(exc)
            return False, None

    def _check(self) -> None:
        """Read the settled source and report a new layer, its absence, or why it is broken."""
        self._rewatch()
        ok, content = self._read_or_report()
        if not ok:
            return
        if content is None:
            if self._last_hash == ABSENT:
                return
            # A rename-style save may leave the name missing for a moment: look again.
            if self._stop.wait(self.settle):
                return
            ok, content = self._read_or_report()
            if not ok:
                return
            if content is not None:
                self.poke()
                return
            self._last_hash = ABSENT
            self._reported_broken = None
            try:
                layer = self.missing_layer()
            except SourceUnavailableError as exc:
                self._report(exc)
            else:
                self._publish(layer)
            return
        content_hash = digest(content)
        if content_hash == self._last_hash and self._reported_broken is None:
            return  # a duplicate event or a touch: nothing changed
        try:
            layer = self.parse_content(content)
        except SourceFormatError as exc:
            # It may be half written: look again once the writer had time to finish.
            if self._stop.wait(self.settle):
                return
            try:
                again = self.read_content()
            except ConfhubError:
                again = None
            if again is not None and digest(again) == content_hash:
                if self._reported_broken != content_hash:
                    self._reported_broken = content_hash
                    self._report(exc)
            else:
                self.poke()
            return
        self._last_hash = content_hash
        self._reported_broken = None
        self._publish(layer)

    def _rewatch(self) -> None:
        """Watch the directory the path now resolves to; drop ones it no longer does."""
        observer = self._observer
        if observer is None:
            return
        wanted = {d for d in self._dirs() if os.path.isdir(d)}
        parent = self.watch_dir
        if parent in wanted and self._parent_gone():
            # The directory was deleted and is back as a new inode. watchdog keeps its
            # bookkeeping by path, so a watch scheduled again on the same path can stay
            # attached to the dead inode: start a fresh observer instead.
            self._restart_observer()
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

    def _restart_observer(self) -> None:
        with self._lifecycle:
            old, self._observer = self._observer, None
        if old is not None:
            _stop_observer(old)
        self._watches.clear()
        self._watched_ids.clear()
        self._dir_lost = False
        if self._stop.is_set():
            return
        try:
            fresh = self._start_observer()
        except SourceUnavailableError as exc:
            self._report(exc)
            return
        with self._lifecycle:
            closed = self._stop.is_set()
            if not closed:
                self._observer = fresh
        if closed:  # close() ran meanwhile and saw no observer: this one is ours to stop
            _stop_observer(fresh)
            return
        log.info("%s: %s was recreated; watching it again", self.name, self.watch_dir)

    def close(self) -> None:
        """Stop watching and join the observer's and the settle thread. Idempotent."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        with self._lifecycle:
            observer, self._observer = self._observer, None
            thread, self._thread = self._thread, None
        if observer is not None:
            _stop_observer(observer)
        self._watches.clear()
        self._watched_ids.clear()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


class _Handler(FileSystemEventHandler):
    """Pokes the backend for any event that may concern its source (both ends of a move)."""

    def __init__(self, backend: WatchedBackend) -> None:
        self._backend = backend

    def _relevant(self, path: Any) -> bool:
        if not path:
            return False
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        return self._backend.is_relevant(str(path))

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Our own reads open and close the file: reacting to those would loop forever.
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.event_type == "deleted" and event.is_directory:
            src = (
                os.fsdecode(event.src_path) if isinstance(event.src_path, bytes) else event.src_path
            )
            if self._backend.directory_deleted(src):
                return
        if self._relevant(event.src_path) or self._relevant(getattr(event, "dest_path", "")):
            self._backend.poke()


def _stop_observer(observer: BaseObserver) -> None:
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
    """Close what a stopped InotifyFD reader left open (see ``_stop_observer``).

    Only a reader whose thread has ended is touched, and only in the one state that means
    "closed, descriptors never released": ``_closed`` set while ``_is_reading`` is still
    true. Whoever closes the descriptors clears ``_is_reading`` first, under the reader's
    lock, and nothing sets it again once ``_closed`` is set. Other watchdog versions and
    other observers (polling) lack these members and are left alone.
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

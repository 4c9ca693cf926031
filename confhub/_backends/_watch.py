"""The watching machinery every file-shaped builtin source shares (``file:``, ``dotenv:``,
``secrets:``): :class:`WatchedBackend`, which reads through :mod:`._fileread` (bounded reads
of regular files), watches a directory through :mod:`._dirwatch` (the watchdog observer),
debounces, hashes and re-reads.

A subclass says *what* it reads; this module says *how* it is watched:

- :meth:`WatchedBackend.read_content` returns the source's bytes (``None``: missing);
- :meth:`WatchedBackend.parse_content` turns them into a :class:`Layer` (given their
  digest, the layer's revision, computed once by the caller);
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
  ``watch()`` is not lost; it is skipped only when :meth:`WatchedBackend.stamp` (device,
  inode, size, mtime and ctime, taken before the read) is the same at ``watch()`` and the
  file's ctime is more than ``RACY_SECONDS`` old (git's "racy" rule: a write in the same
  timestamp tick as the read could leave every field as it was).
- The settle thread starts with the first event (the first check is one), not at
  ``watch()``: a file that does not change between ``load()`` and ``watch()`` starts no
  thread of its own until it changes. ``close()`` joins it either way.
- The watching thread survives anything a check raises: the error is reported and the
  next event is handled (viper's watcher returned for good on the first error).
- inotify may be unavailable (instance or watch limits, some container filesystems): fall
  back to polling with one warning.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from .._backend import Backend, Notify
from .._errors import (
    ConfhubError,
    SourceFormatError,
    SourcePermissionError,
    SourceUnavailableError,
    SpecError,
)
from .._layer import Layer
from ._dirwatch import DirectoryWatch
from ._fileread import ABSENT, digest, max_bytes_option, profile_path, read_regular

if TYPE_CHECKING:
    from .._spec import SourceSpec

__all__ = [
    "ABSENT",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_SETTLE",
    "RACY_SECONDS",
    "WatchedBackend",
    "digest",  # re-exported from _fileread, with read_regular, for the builtins
    "read_regular",
]

log = logging.getLogger("confhub.file")

DEFAULT_SETTLE = 0.02
DEFAULT_POLL_INTERVAL = 0.5
#: A file whose ctime is younger than this at ``load()`` is always checked again once
#: watching starts: timestamps are coarse (a clock tick; FAT's mtime has 2 s steps), so a
#: write in the same tick as the read may leave its stamp unchanged.
RACY_SECONDS = 3.0
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
        self._loaded_stamp: tuple[int, ...] | None = None
        self._reported_broken: str | None = None
        self._dirwatch = DirectoryWatch(
            name=self.name,
            mode=self.watch_mode,
            poll_interval=self.poll_interval,
            watch_dir=lambda: self.watch_dir,
            real_dir=self.real_dir,
            is_relevant=self.is_relevant,
            poke=self.poke,
            report=self._report,
        )
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # Serialises watch() and close(), so close() joins every thread that was started.
        self._lifecycle = threading.Lock()
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._first_event: float | None = None
        self._notify: Notify | None = None

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

    def stamp(self) -> tuple[int, ...] | None:
        """What identifies the source's content without reading it, or ``None`` when that
        cannot be told (missing, unreadable, changed within ``RACY_SECONDS``): the device,
        inode, size, mtime and ctime of the file at ``path`` (a subclass reading something
        else returns ``None``: it is then always checked once watching starts)."""
        try:
            st = os.stat(self.path)
        except (OSError, ValueError):
            return None
        if time.time() - st.st_ctime < RACY_SECONDS:  # also a ctime in the future
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def parse_content(self, content: bytes, revision: str) -> Layer:
        """``content`` as a layer whose revision is ``revision`` (``digest(content)``, which
        the caller computed once for the layer and the watcher's change check alike), or
        :class:`SourceFormatError`."""
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
        return self._dirwatch.directories

    @property
    def observer_kind(self) -> str | None:
        """The observer class in use (``InotifyObserver``, ``PollingObserver`` ...), once
        watching."""
        return self._dirwatch.observer_kind

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> Layer:
        if self.no_profile:
            return Layer.from_flat({}, source=self.name, revision=ABSENT)
        # Taken before the read: a write after it changes the stamp (see watch()). Kept
        # only for content that loaded: anything else is checked again once watching.
        self._loaded_stamp = None
        stamp = self.stamp()
        content = self.read_content()
        if content is None:
            self._last_hash = ABSENT
            return self.missing_layer()
        content_hash = digest(content)  # hashed once: the revision and the change check
        layer = self.parse_content(content, content_hash)
        self._last_hash = content_hash
        self._loaded_stamp = stamp
        return layer

    # -- watching --------------------------------------------------------------------------
    def watch(self, notify: Notify) -> None:
        if self.watch_mode == "false" or self.no_profile:
            return
        with self._lifecycle:
            if self._stop.is_set():
                return  # closed already: start nothing that close() would not stop
            self._notify = notify
            self._dirwatch.start()
        # The source may have changed between load() and now, before anything watched it:
        # check it, unless its stamp says it did not (events report what comes next).
        loaded = self._loaded_stamp
        if loaded is None or self.stamp() != loaded:
            self.poke()

    def poke(self) -> None:
        """Note an event: (re)start the debounce window, bounded by ``max_settle``; the
        settle thread starts with the first."""
        with self._cond:
            now = time.monotonic()
            if self._first_event is None:
                self._first_event = now
            self._deadline = min(now + self.settle, self._first_event + self.max_settle)
            self._cond.notify()
        if self._thread is None:
            self._start_settling()

    def _start_settling(self) -> None:
        with self._lifecycle:
            if self._thread is not None or self._notify is None or self._stop.is_set():
                return  # started, not watching, or closed: close() joins what was started
            self._thread = threading.Thread(
                target=self._run,
                name=f"confhub-file-settle[{os.path.basename(self.path)}]",
                daemon=True,
            )
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                deadline = self._deadline
                if deadline is None:
                    if not self._dirwatch.parent_gone():
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
        self._dirwatch.rewatch()
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
            layer = self.parse_content(content, content_hash)
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

    def close(self) -> None:
        """Stop watching and join the observer's and the settle thread. Idempotent."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        with self._lifecycle:
            thread, self._thread = self._thread, None
        self._dirwatch.close()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

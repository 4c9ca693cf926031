"""The ``file`` backend: TOML, JSON or YAML, watched through watchdog on the parent directory.

Watching follows the lessons of viper, Envoy and kubelet's atomic writer:

- Watch the *parent directory*, never the file: editors save by writing a new file and
  renaming it over the old one (vim, JetBrains), and Kubernetes swaps a ConfigMap by
  re-pointing the ``..data`` symlink, so the watched inode disappears.
- Re-resolve the real path on every check, and also watch the directory the path resolves
  to when it differs (symlinked files).
- Debounce: wait until no event arrived for ``settle`` seconds, then read.
- Compare a content hash, so duplicate events and touch-only saves publish nothing.
- A file that does not parse is re-read once after another ``settle`` (it may be half
  written); if it is still broken, the error is reported and the last good content stays.
- inotify may be unavailable (instance limits, some container filesystems): fall back to
  polling with one warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from .._backend import BackendInfo, Notify, hookimpl
from .._errors import SourceFormatError, SourceUnavailableError, SpecError
from .._layer import Layer
from .._parsers import format_for_path, locate_key, parse_document

if TYPE_CHECKING:
    from .._hub import Hub
    from .._spec import SourceSpec

log = logging.getLogger("confhub.file")

DEFAULT_SETTLE = 0.02
DEFAULT_POLL_INTERVAL = 0.5


class FileBackend:
    """One configuration file; see the module docstring for how it is watched."""

    def __init__(self, spec: SourceSpec) -> None:
        if not spec.location:
            raise SpecError("file: needs a path, as in file:config.toml", spec=spec.display)
        self.path = os.path.abspath(os.path.expanduser(spec.location))
        self.name = spec.display
        self.format = format_for_path(self.path, spec.option("format"), source=self.name)
        self.optional = spec.optional
        self.settle = spec.option_float("settle", DEFAULT_SETTLE)
        self.poll_interval = spec.option_float("poll_interval", DEFAULT_POLL_INTERVAL)
        mode = str(spec.option("watch", "auto")).lower()
        if mode not in ("auto", "poll", "false", "off", "no", "true", "on", "yes"):
            raise SpecError(
                f"{self.name}: watch={mode!r}; use auto, poll or false", spec=self.name
            )
        self.watch_mode = {"true": "auto", "on": "auto", "yes": "auto", "off": "false",
                           "no": "false"}.get(mode, mode)
        self._last_hash: str | None = None
        self._reported_broken: str | None = None
        self._observer: BaseObserver | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._notify: Notify | None = None
        self._watched_dirs: set[str] = set()
        self.observer_kind: str | None = None

    # -- loading ---------------------------------------------------------------------------
    def _read(self) -> bytes | None:
        try:
            with open(self.path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise SourceFormatError(
                f"{self.name}: {self.path} is a directory, not a file", source=self.name
            ) from None
        except OSError as exc:
            raise SourceUnavailableError(
                f"{self.name}: cannot read {self.path}: {exc.strerror or exc}", source=self.name
            ) from None

    def _parse(self, content: bytes) -> Layer:
        data = parse_document(content, self.format, source=self.name)
        text = content.decode("utf-8-sig", errors="replace")
        path = self.path

        def locate(key: str) -> str | None:
            line = locate_key(text, key)
            return f"{path}:{line}" if line else path

        return Layer.from_mapping(
            data, source=self.name, revision=_digest(content), locate=locate
        )

    def _missing(self) -> Layer:
        if self.optional:
            return Layer.from_flat({}, source=self.name, revision="absent")
        raise SourceUnavailableError(
            f"{self.name}: {self.path} does not exist; create it, fix the path, "
            "or add ?optional=true",
            source=self.name,
        )

    def load(self) -> Layer:
        content = self._read()
        if content is None:
            self._last_hash = "absent"
            return self._missing()
        layer = self._parse(content)
        self._last_hash = layer.revision
        return layer

    # -- watching --------------------------------------------------------------------------
    def watch(self, notify: Notify) -> None:
        if self.watch_mode == "false":
            return
        self._notify = notify
        self._observer = self._start_observer()
        self._thread = threading.Thread(
            target=self._run, name=f"confhub-file-settle[{os.path.basename(self.path)}]",
            daemon=True,
        )
        self._thread.start()

    def _dirs(self) -> set[str]:
        dirs = {os.path.dirname(self.path)}
        real = os.path.realpath(self.path)
        if os.path.dirname(real) != os.path.dirname(self.path) and os.path.isdir(
            os.path.dirname(real)
        ):
            dirs.add(os.path.dirname(real))
        return dirs

    def _start_observer(self) -> BaseObserver:
        handler = _Handler(self)
        dirs = self._dirs()
        if not os.path.isdir(os.path.dirname(self.path)):
            raise SourceUnavailableError(
                f"{self.name}: directory {os.path.dirname(self.path)} does not exist, "
                "so the file cannot be watched; create it",
                source=self.name,
            )
        if self.watch_mode != "poll":
            observer: BaseObserver = Observer()
            try:
                for d in dirs:
                    observer.schedule(handler, d, recursive=False)
                observer.start()
                self._watched_dirs = dirs
                self.observer_kind = type(observer).__name__
                return observer
            except OSError as exc:
                log.warning(
                    "%s: native file watching is unavailable (%s); polling every %.2fs instead",
                    self.name, exc, self.poll_interval,
                )
                try:
                    observer.stop()
                except Exception:  # noqa: BLE001 - best effort on a half-started observer
                    pass
        observer = PollingObserver(timeout=self.poll_interval)
        for d in dirs:
            observer.schedule(handler, d, recursive=False)
        observer.start()
        self._watched_dirs = dirs
        self.observer_kind = type(observer).__name__
        return observer

    def _poke(self) -> None:
        with self._cond:
            self._deadline = time.monotonic() + self.settle
            self._cond.notify()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while self._deadline is None and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set():
                    return
                delay = self._deadline - time.monotonic()  # type: ignore[operator]
                if delay > 0:
                    self._cond.wait(delay)
                    continue  # re-check: a newer event may have moved the deadline
                self._deadline = None
            self._check()

    def _check(self) -> None:
        """Read the settled file and report a new layer, its absence, or why it is broken."""
        notify = self._notify
        assert notify is not None
        self._maybe_rewatch()
        try:
            content = self._read()
        except (SourceUnavailableError, SourceFormatError) as exc:
            notify(exc)
            return
        if content is None:
            if self._last_hash == "absent":
                return
            self._last_hash = "absent"
            try:
                notify(self._missing())
            except SourceUnavailableError as exc:
                notify(exc)
            return
        digest = _digest(content)
        if digest == self._last_hash and self._reported_broken is None:
            return  # a duplicate event or a touch: nothing changed
        try:
            layer = self._parse(content)
        except SourceFormatError as exc:
            # It may be half written: look again once the writer had time to finish.
            if self._stop.wait(self.settle):
                return
            try:
                again = self._read()
            except (SourceUnavailableError, SourceFormatError):
                again = None
            if again is not None and _digest(again) == digest:
                if self._reported_broken != digest:
                    self._reported_broken = digest
                    notify(exc)
            else:
                self._poke()
            return
        self._last_hash = digest
        self._reported_broken = None
        notify(layer)

    def _maybe_rewatch(self) -> None:
        """Watch the directory the path now resolves to (a symlink target may have moved)."""
        observer = self._observer
        if observer is None:
            return
        missing = self._dirs() - self._watched_dirs
        for d in missing:
            try:
                observer.schedule(_Handler(self), d, recursive=False)
                self._watched_dirs.add(d)
            except OSError as exc:  # pragma: no cover - depends on the platform's limits
                log.warning("%s: cannot watch %s: %s", self.name, d, exc)

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
            self._thread = None

    def __repr__(self) -> str:
        return f"<FileBackend {self.path} format={self.format}>"


class _Handler(FileSystemEventHandler):
    def __init__(self, backend: FileBackend) -> None:
        self._backend = backend
        self._names = {os.path.basename(backend.path)}

    def _relevant(self, path: Any) -> bool:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        base = os.path.basename(str(path))
        if base in self._names or base.startswith(".."):
            return True
        # The file may be a symlink whose target lives in this directory.
        real = os.path.realpath(self._backend.path)
        return os.path.basename(real) == base

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if self._relevant(event.src_path) or self._relevant(getattr(event, "dest_path", "")):
            self._backend._poke()


def _digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()[:16]


@hookimpl
def confhub_backend_schemes() -> list[BackendInfo]:
    return [
        BackendInfo(
            "file", "a TOML, JSON or YAML file (file:PATH, or a bare path)", watchable=True
        )
    ]


@hookimpl
def confhub_make_backend(spec: SourceSpec, hub: Hub) -> FileBackend | None:
    if spec.scheme != "file":
        return None
    return FileBackend(spec)

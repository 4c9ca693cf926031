"""The local persistent cache: the last good copy of each remote source, on disk.

One file per source, named by a fingerprint of the spec *without credentials*
(``etcd-3f2a....json``). The file is a canonical JSON envelope::

    {"magic": "confhub-cache", "format": 1, "source": "etcd://h:2379/app/",
     "identity": "<fingerprint>", "revision": 42, "fetched_at": 1795300000.0,
     "written_at": ..., "keys": 3, "data": {"db.port": "5432", ...},
     "details": {...}, "sha256": "<hash of everything above>"}

Rules (see ``docs/failure.md``):

- written only from layers that passed validation and were published, and only when the
  content changed; off the update path (on the hub's notifier thread);
- atomically: a temp file in the same directory (``mkstemp``: mode 0600 whatever the
  umask), write, ``fsync``, ``os.replace``, ``fsync`` of the directory; so several processes
  sharing a directory never see a torn file;
- the directory is created 0700; a directory or file that other users may write, or that
  another user owns, is refused (a planted cache is an injection vector);
- a corrupt, truncated, foreign or future-format file is ignored with one warning, moved
  aside as ``*.corrupt-<time>``, and never used; a read-only or full directory logs one
  warning per state change and never stops live updates;
- keys that look secret are kept out when the source says ``?cache_secrets=false``.

Why not a ``confhub_load_layer`` wrapper: the fallback order is live source, then the
*alternate live sources* of its slot, then the caches. A wrapper would fall back to a
member's cache before the alternates were tried, so the hub asks the cache explicitly
(``confhub_load_cached``) once every live member failed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ._backend import hookimpl, is_cacheable
from ._layer import Layer, freeze
from ._merge import MISSING
from ._redact import SECRET_OPTIONS, is_secret_key

if TYPE_CHECKING:
    from ._hub import Hub
    from ._spec import SourceSpec

log = logging.getLogger("confhub.cache")

MAGIC = "confhub-cache"
#: A temp file this old was left by a writer that died; newer ones may be in flight.
STALE_TEMP_SECONDS = 60.0
FORMAT = 1
#: The core's options (and the hub-wide timing ones a spec may override) that do not change
#: what a source holds, so are not part of its identity. A backend names its own such options
#: in ``BackendInfo.volatile_options``; the core lists no backend's.
CORE_VOLATILE_OPTIONS = frozenset(
    {
        "cache",
        "cache_secrets",
        "connect_timeout",
        "max_keys",
        "max_stale",
        "name",
        "optional",
        "poll",
        "retry_initial",
        "retry_max",
        "timeout",
        "watch",
    }
)


def default_cache_dir() -> Path:
    """The platform's per-user cache directory, plus ``confhub``.

    ``$CONFHUB_CACHE_DIR`` wins; then ``%LOCALAPPDATA%`` on Windows, ``~/Library/Caches``
    on macOS, ``$XDG_CACHE_HOME`` or ``~/.cache`` elsewhere.
    """
    explicit = os.environ.get("CONFHUB_CACHE_DIR")
    if explicit:
        return Path(explicit)
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "confhub"


def source_identity(spec: SourceSpec, volatile: Collection[str] = frozenset()) -> str:
    """A stable fingerprint of what a source holds: no credentials, no timeouts.

    Left out: credentials, :data:`CORE_VOLATILE_OPTIONS` and ``volatile`` (the options its
    backend declares in ``BackendInfo.volatile_options``).
    """
    location = spec.location
    if location.startswith("//"):
        parts = urlsplit(f"{spec.scheme}:{location}")
        hosts = ",".join(
            sorted(h.strip().lower() for h in parts.netloc.rpartition("@")[2].split(","))
        )
        location = f"//{hosts}{parts.path}"
    options = sorted(
        (k, str(v))
        for k, v in spec.options.items()
        if k not in CORE_VOLATILE_OPTIONS
        and k not in volatile
        and k.lower() not in SECRET_OPTIONS
        and not k.lower().endswith(("password", "token", "key", "cert", "ca"))
    )
    text = json.dumps([spec.scheme, location, options], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _checksum(envelope: dict[str, Any]) -> str:
    body = {k: v for k, v in envelope.items() if k != "sha256"}
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    if hasattr(value, "items"):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class CacheError(Exception):
    """A cache file that must not be used (the message says why)."""


class Cache:
    """The on-disk cache of one hub (one directory, one file per remote source)."""

    def __init__(
        self, directory: Path, volatile: Mapping[str, frozenset[str]] | None = None
    ) -> None:
        self.directory = directory
        #: scheme -> the options its backend declares volatile (kept out of the identity).
        self.volatile: Mapping[str, frozenset[str]] = dict(volatile or {})
        self._written: dict[str, str] = {}  # identity -> checksum last written or read
        self._write_failing = False
        self._lock = threading.Lock()

    def identity(self, spec: SourceSpec) -> str:
        """The fingerprint of ``spec`` (see :func:`source_identity`)."""
        return source_identity(spec, self.volatile.get(spec.scheme, frozenset()))

    def path_for(self, spec: SourceSpec) -> Path:
        """The cache file of ``spec``."""
        return self.directory / f"{spec.scheme}-{self.identity(spec)[:32]}.json"

    # -- directory safety ----------------------------------------------------------------
    def _check_owner_and_mode(self, path: Path, st: os.stat_result) -> None:
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise CacheError(f"{path} is owned by uid {st.st_uid}, not by this user")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise CacheError(
                f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
            )

    def _ensure_dir(self) -> None:
        d = self.directory
        if not d.exists():
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        if not d.is_dir():
            raise CacheError(f"{d} is not a directory")
        self._check_owner_and_mode(d, d.stat())

    # -- reading ---------------------------------------------------------------------------
    def read(self, spec: SourceSpec) -> Layer | None:
        """Return the cached layer of ``spec``, or ``None`` (with one warning if unusable)."""
        path = self.path_for(spec)
        try:
            st = path.lstat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cache of %s unreadable (%s); not using it", spec.display, exc)
            return None
        try:
            if not stat.S_ISREG(st.st_mode):
                raise CacheError("not a regular file")
            self._check_owner_and_mode(path, st)
            if self.directory.exists():
                self._check_owner_and_mode(self.directory, self.directory.stat())
            raw = path.read_bytes()
            envelope = json.loads(raw)
            if not isinstance(envelope, dict) or envelope.get("magic") != MAGIC:
                raise CacheError("not a confhub cache file")
            if envelope.get("format") != FORMAT:
                raise CacheError(f"format {envelope.get('format')!r}, this confhub reads {FORMAT}")
            if envelope.get("identity") != self.identity(spec):
                raise CacheError("written for another source")
            if envelope.get("sha256") != _checksum(envelope):
                raise CacheError("checksum mismatch (truncated or altered)")
            data = envelope["data"]
            if not isinstance(data, dict) or envelope.get("keys") != len(data):
                raise CacheError("key count mismatch")
            layer = Layer.from_flat(
                {k: freeze(v) for k, v in data.items()},
                source=spec.display,
                revision=envelope.get("revision"),
                details={k: f"{v} (cached)" for k, v in envelope.get("details", {}).items()},
                fetched_at=float(envelope["fetched_at"]),
            )
        except (CacheError, ValueError, KeyError, TypeError, OSError, Exception) as exc:  # noqa: BLE001
            self._quarantine(path, spec, exc)
            return None
        content_sum = _checksum({"data": data, "revision": envelope.get("revision")})
        with self._lock:
            self._written[envelope["identity"] + ":content"] = content_sum
        return layer

    def _quarantine(self, path: Path, spec: SourceSpec, exc: BaseException) -> None:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time() * 1000)}")
        try:
            os.replace(path, aside)
            moved = f"; moved aside to {aside.name}"
        except OSError:
            moved = ""
        log.warning("ignoring the cache file of %s: %s%s", spec.display, exc, moved)

    # -- writing ---------------------------------------------------------------------------
    def write(self, spec: SourceSpec, layer: Layer) -> bool:
        """Write ``layer`` as the last good copy of ``spec`` if it changed. Never raises."""
        keep_secrets = spec.option_bool("cache_secrets", True)
        data = {
            k: _to_json(v) for k, v in layer.values.items() if keep_secrets or not is_secret_key(k)
        }
        details = {k: v for k, v in layer.details.items() if k in data}
        identity = self.identity(spec)
        envelope: dict[str, Any] = {
            "magic": MAGIC,
            "format": FORMAT,
            "source": spec.display,
            "identity": identity,
            "revision": _to_json(layer.revision),
            "fetched_at": layer.fetched_at,
            "keys": len(data),
            "data": data,
            "details": details,
        }
        content_sum = _checksum({"data": data, "revision": envelope["revision"]})
        with self._lock:
            known = self._written.get(identity + ":content")
        if known is None:
            known = self._content_on_disk(spec)
        if known == content_sum:
            return False
        envelope["sha256"] = _checksum(envelope)
        try:
            self._ensure_dir()
            self._atomic_write(self.path_for(spec), json.dumps(envelope, sort_keys=True).encode())
        except (OSError, CacheError) as exc:
            if not self._write_failing:
                log.warning(
                    "cannot write the cache of %s in %s (%s); live updates continue, "
                    "but a restart while the store is down will have no cache",
                    spec.display,
                    self.directory,
                    exc,
                )
            self._write_failing = True
            return False
        if self._write_failing:
            log.info("cache writes in %s work again", self.directory)
            self._write_failing = False
        self._remove_stale_temps(self.path_for(spec))
        with self._lock:
            self._written[identity + ":content"] = content_sum
        return True

    def _content_on_disk(self, spec: SourceSpec) -> str | None:
        """The content checksum of the file already there (another process's, or ours)."""
        try:
            envelope = json.loads(self.path_for(spec).read_bytes())
            if envelope.get("sha256") != _checksum(envelope):
                return None
            return _checksum({"data": envelope["data"], "revision": envelope.get("revision")})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _remove_stale_temps(self, path: Path) -> None:
        """Delete temp files a killed writer left behind (old enough not to be in flight)."""
        cutoff = time.time() - STALE_TEMP_SECONDS
        for leftover in self.directory.glob(f".{path.name}.*.tmp"):
            try:
                if leftover.lstat().st_mtime < cutoff:
                    leftover.unlink()
            except OSError:
                pass

    def _atomic_write(self, path: Path, payload: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        try:
            dir_fd = os.open(self.directory, os.O_RDONLY)
        except OSError:  # pragma: no cover - platforms without directory fds
            return
        try:
            os.fsync(dir_fd)
        except OSError:  # pragma: no cover
            pass
        finally:
            os.close(dir_fd)


# -- the plugin ---------------------------------------------------------------------------


def _cacheable(spec: SourceSpec, backend: Any) -> bool:
    return is_cacheable(backend) and spec.option_bool("cache", True)


class CachePlugin:
    """Registers as ``cache``; block it (``Hub(block=["cache"])``) to turn caching off."""

    confhub_plugin_name = "cache"

    def __init__(self) -> None:
        self.cache: Cache | None = None

    @hookimpl
    def confhub_configure(self, hub: Hub) -> None:
        directory = hub.cache_dir
        if directory is MISSING:
            directory = default_cache_dir()
        if directory in (None, False, ""):
            self.cache = None
            return
        volatile: dict[str, frozenset[str]] = {}
        for infos in hub.pm.hook.confhub_backend_schemes():
            for info in infos:
                volatile[info.scheme] = volatile.get(info.scheme, frozenset()) | (
                    info.volatile_options
                )
        self.cache = Cache(Path(directory), volatile)

    @hookimpl
    def confhub_load_cached(self, spec: SourceSpec, backend: Any) -> Layer | None:
        if self.cache is None or not _cacheable(spec, backend):
            return None
        layer = self.cache.read(spec)
        if layer is None:
            return None
        max_stale = spec.options.get("max_stale")
        if max_stale is not None:
            age = time.time() - layer.fetched_at
            if age > spec.option_float("max_stale", 0.0):
                log.warning(
                    "the cache of %s is %.0fs old, older than max_stale=%s; not using it",
                    spec.display,
                    age,
                    max_stale,
                )
                return None
        return layer

    @hookimpl
    def confhub_layer_accepted(self, spec: SourceSpec, layer: Layer, backend: Any) -> None:
        if self.cache is not None and _cacheable(spec, backend):
            self.cache.write(spec, layer)

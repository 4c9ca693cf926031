"""The local persistent cache: the last good copy of each remote source, on disk.

One file per source, named by a fingerprint of the spec *without credentials*
(``etcd-3f2a....json``): scheme, hosts and key prefix as the core's one location parser
(:attr:`SourceSpec.url_parts`) reads them, and the options that change what the source
holds. When the backend declares who reads (``Backend.cache_principal``: an etcd user, a
Consul ACL token), the fingerprint also mixes in an HMAC of that principal keyed by a random
per-directory secret (``.confhub-salt``, 0600), so an identity never gets another
identity's copy and neither the principal nor its plain hash appears anywhere.
The file is a canonical JSON envelope::

    {"magic": "confhub-cache", "format": 1, "source": "etcd://h:2379/app/",
     "identity": "<fingerprint>", "revision": 42, "fetched_at": 1795300000.0,
     "written_at": ..., "keys": 3, "data": {"db.port": "5432", ...},
     "details": {...}, "sha256": "<hash of everything above>"}

Rules (see ``docs/failure.md``):

- written only from layers that passed validation and were published, and only when the
  content changed; off the update path and off the notifier thread (on the hub's
  ``confhub-persist`` thread, latest layer per source only);
- atomically: a temp file in the same directory (``mkstemp``: mode 0600 whatever the
  umask), write, ``fsync``, ``os.replace``, ``fsync`` of the directory; so several processes
  sharing a directory never see a torn file;
- the directory is created 0700; a directory or file that other users may write, or that
  another user owns, is refused (a planted cache is an injection vector), and nothing in a
  refused directory is opened, read or moved;
- files are opened with ``O_NOFOLLOW | O_NONBLOCK``, must be regular files of at most
  :data:`MAX_FILE_BYTES` (a symlink, FIFO or device planted at the predictable name is
  refused without blocking or reading it);
- a corrupt, truncated, foreign or future-format file is ignored with one warning, moved
  aside as ``*.corrupt-<time>``, and never used; a read-only or full directory logs one
  warning per state change and never stops live updates;
- keys that look secret (see :mod:`confhub._redact`, nested tables and lists included) are
  kept out when the source says ``?cache_secrets=false``, and so is every key of a layer
  marked ``secret`` (a secret store's); a secret layer that is cached is read back marked
  ``secret``, so it stays redacted.

Why not a ``confhub_load_layer`` wrapper: the fallback order is live source, then the
*alternate live sources* of its slot, then the caches. A wrapper would fall back to a
member's cache before the alternates were tried, so the hub asks the cache explicitly
(``confhub_load_cached``) once every live member failed.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import logging
import os
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._backend import cache_principal_of, hookimpl, is_cacheable, writes_cache
from ._fileio import read_at_most
from ._health import log_fields
from ._layer import Layer, freeze, to_json
from ._merge import MISSING
from ._redact import DROPPED, SECRET_OPTIONS, strip_secrets

if TYPE_CHECKING:
    from ._hub import Hub
    from ._spec import SourceSpec

log = logging.getLogger("confhub.cache")

MAGIC = "confhub-cache"
#: A temp file this old was left by a writer that died; newer ones may be in flight.
STALE_TEMP_SECONDS = 60.0
FORMAT = 1
#: The largest cache file read (a bigger one is refused, never loaded into memory).
MAX_FILE_BYTES = 512 * 1024 * 1024
#: The per-directory secret keying the principal's HMAC.
SALT_NAME = ".confhub-salt"
_SALT_BYTES = 32
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
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
        "share",
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


def source_identity(
    spec: SourceSpec, volatile: Collection[str] = frozenset(), principal: str | None = None
) -> str:
    """A stable fingerprint of what a source holds: no credentials, no timeouts.

    Left out: credentials, :data:`CORE_VOLATILE_OPTIONS` and ``volatile`` (the options its
    backend declares in ``BackendInfo.volatile_options``). ``principal`` is the keyed digest
    of who reads (see :meth:`Cache.principal_digest`); ``None`` (a backend that declares
    none) keeps the fingerprint of earlier versions.
    """
    location = spec.location
    parts = spec.url_parts
    if parts is not None:
        hosts = ",".join(sorted(h.lower() for h in parts.hosts))
        location = f"//{hosts}{parts.path}"
    options = sorted(
        (k, str(v))
        for k, v in spec.options.items()
        if k not in CORE_VOLATILE_OPTIONS
        and k not in volatile
        and k.lower() not in SECRET_OPTIONS
        and not k.lower().endswith(("password", "token", "key", "cert", "ca"))
    )
    identity: list[Any] = [spec.scheme, location, options]
    if principal is not None:
        identity.append(principal)
    text = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def volatile_options(hook: Any) -> dict[str, frozenset[str]]:
    """Each scheme's ``BackendInfo.volatile_options``, as the plugins declare them
    (``hook``: a plugin manager's ``pm.hook``)."""
    volatile: dict[str, frozenset[str]] = {}
    for infos in hook.confhub_backend_schemes():
        for info in infos:
            volatile[info.scheme] = volatile.get(info.scheme, frozenset()) | info.volatile_options
    return volatile


def _checksum(envelope: dict[str, Any]) -> str:
    body = {k: v for k, v in envelope.items() if k != "sha256"}
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


class CacheError(Exception):
    """A cache file that must not be used (the message says why)."""


def _read_regular(path: Path, limit: int = MAX_FILE_BYTES) -> tuple[bytes, os.stat_result]:
    """Read ``path`` if it is a regular file (not a symlink, FIFO or device) of at most
    ``limit`` bytes; never blocks on a FIFO, never follows a symlink."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EMLINK):
            # ELOOP/EMLINK: a symlink (O_NOFOLLOW); ENXIO: a socket.
            raise CacheError("not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CacheError("not a regular file")
        if st.st_size > limit:
            raise CacheError(f"{st.st_size} bytes, more than the {limit} a cache file may hold")
        data = read_at_most(fd, limit)
        if len(data) > limit:
            raise CacheError(f"more than the {limit} bytes a cache file may hold")
        return data, st
    finally:
        os.close(fd)


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
        self._salt_bytes: bytes | None = None  # read once, after the directory check

    def identity(self, spec: SourceSpec, principal: str | None = None) -> str:
        """The fingerprint of ``spec`` (see :func:`source_identity`; ``principal``: a digest
        from :meth:`principal_digest`)."""
        return source_identity(spec, self.volatile.get(spec.scheme, frozenset()), principal)

    def path_for(self, spec: SourceSpec, principal: str | None = None) -> Path:
        """The cache file of ``spec`` (``principal``: a digest from :meth:`principal_digest`)."""
        return self.directory / f"{spec.scheme}-{self.identity(spec, principal)[:32]}.json"

    # -- the principal -----------------------------------------------------------------------
    def principal_digest(self, principal: str | None, *, create: bool) -> str | None:
        """The HMAC-SHA256 of ``principal`` keyed by this directory's secret salt.

        ``None`` for no principal. The directory must have passed the safety check. With
        ``create`` a missing salt is made (``mkstemp``: 0600, ``O_EXCL``/``O_NOFOLLOW``,
        then linked into place so a concurrent process never reads half of it); without,
        a missing salt raises :class:`FileNotFoundError` (nothing was cached for a
        principal yet).
        """
        if principal is None:
            return None
        salt = self._salt(create=create)
        return hmac.new(salt, principal.encode("utf-8", "surrogatepass"), "sha256").hexdigest()

    def _salt(self, *, create: bool) -> bytes:
        if self._salt_bytes is not None:
            return self._salt_bytes
        path = self.directory / SALT_NAME
        try:
            data, st = _read_regular(path, _SALT_BYTES)
        except FileNotFoundError:
            if not create:
                raise
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f"{SALT_NAME}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(os.urandom(_SALT_BYTES))
                    fh.flush()
                    os.fsync(fh.fileno())
                try:
                    os.link(tmp, path)  # atomic; loses to a concurrent creator, then reads it
                except FileExistsError:
                    pass
            finally:
                os.unlink(tmp)
            data, st = _read_regular(path, _SALT_BYTES)
        self._check_owner_and_mode(path, st)
        if len(data) != _SALT_BYTES:
            raise CacheError(f"{path} is not a confhub salt ({len(data)} bytes)")
        self._salt_bytes = data
        return data

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
        self._check_dir()

    def _check_dir(self) -> None:
        """Raise :class:`CacheError` unless the directory is ours and private; before any
        file in it is touched."""
        d = self.directory
        st = d.stat()
        if not stat.S_ISDIR(st.st_mode):
            raise CacheError(f"{d} is not a directory")
        self._check_owner_and_mode(d, st)

    # -- reading ---------------------------------------------------------------------------
    def read(self, spec: SourceSpec, principal: str | None = None) -> Layer | None:
        """Return the cached layer of ``spec`` read as ``principal`` (the backend's
        ``cache_principal``), or ``None`` (with one warning if unusable)."""
        try:
            self._check_dir()
            digest = self.principal_digest(principal, create=False)
        except FileNotFoundError:
            return None
        except (OSError, CacheError) as exc:
            # Nothing in a refused directory is opened or moved aside.
            log.warning(
                "ignoring the cache file of %s: %s",
                spec.display,
                exc,
                extra=log_fields(spec.display),
            )
            return None
        path = self.path_for(spec, digest)
        try:
            raw, st = _read_regular(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning(
                "cache of %s unreadable (%s); not using it",
                spec.display,
                exc,
                extra=log_fields(spec.display),
            )
            return None
        except CacheError as exc:
            self._quarantine(path, spec, exc)
            return None
        try:
            self._check_owner_and_mode(path, st)
            envelope = json.loads(raw)
            if not isinstance(envelope, dict) or envelope.get("magic") != MAGIC:
                raise CacheError("not a confhub cache file")
            if envelope.get("format") != FORMAT:
                raise CacheError(f"format {envelope.get('format')!r}, this confhub reads {FORMAT}")
            if envelope.get("identity") != self.identity(spec, digest):
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
                secret=envelope.get("secret") is True,
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
        log.warning(
            "ignoring the cache file of %s: %s%s",
            spec.display,
            exc,
            moved,
            extra=log_fields(spec.display),
        )

    # -- writing ---------------------------------------------------------------------------
    def write(self, spec: SourceSpec, layer: Layer, principal: str | None = None) -> bool:
        """Write ``layer`` as the last good copy of ``spec`` read as ``principal`` (the
        backend's ``cache_principal``) if it changed. Never raises."""
        keep_secrets = spec.option_bool("cache_secrets", True)
        data: dict[str, Any] = {}
        # A layer marked secret (a secret store's) is secret whole.
        whole = layer.secret and not keep_secrets
        for k, v in ({} if whole else layer.values).items():
            kept = v if keep_secrets else strip_secrets(k, v)
            if kept is not DROPPED:
                data[k] = to_json(kept)
        details = {k: v for k, v in layer.details.items() if k in data}
        try:
            # The directory is checked before anything in it is read: no I/O in a refused one.
            self._ensure_dir()
            digest = self.principal_digest(principal, create=True)
        except (OSError, CacheError) as exc:
            self._write_failed(spec, exc)
            return False
        identity = self.identity(spec, digest)
        path = self.path_for(spec, digest)
        envelope: dict[str, Any] = {
            "magic": MAGIC,
            "format": FORMAT,
            "source": spec.display,
            "identity": identity,
            "revision": to_json(layer.revision),
            "fetched_at": layer.fetched_at,
            "keys": len(data),
            "data": data,
            "details": details,
        }
        if layer.secret:
            envelope["secret"] = True  # read back as a secret layer: still redacted
        content_sum = _checksum({"data": data, "revision": envelope["revision"]})
        with self._lock:
            known = self._written.get(identity + ":content")
        if known is None:
            known = self._content_on_disk(path)
        if known == content_sum:
            return False
        envelope["sha256"] = _checksum(envelope)
        try:
            self._atomic_write(path, json.dumps(envelope, sort_keys=True).encode())
        except (OSError, CacheError) as exc:
            self._write_failed(spec, exc)
            return False
        if self._write_failing:
            log.info("cache writes in %s work again", self.directory)
            self._write_failing = False
        self._remove_stale_temps(path)
        with self._lock:
            self._written[identity + ":content"] = content_sum
        return True

    def _write_failed(self, spec: SourceSpec, exc: BaseException) -> None:
        if not self._write_failing:
            log.warning(
                "cannot write the cache of %s in %s (%s); live updates continue, "
                "but a restart while the store is down will have no cache",
                spec.display,
                self.directory,
                exc,
            )
        self._write_failing = True

    def _content_on_disk(self, path: Path) -> str | None:
        """The content checksum of the file already there (another process's, or ours):
        a regular file of ours only, read without following links or blocking."""
        try:
            raw, st = _read_regular(path)
            self._check_owner_and_mode(path, st)
            envelope = json.loads(raw)
            if envelope.get("sha256") != _checksum(envelope):
                return None
            return _checksum({"data": envelope["data"], "revision": envelope.get("revision")})
        except (OSError, CacheError, ValueError, KeyError, TypeError, AttributeError):
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
        self.cache = Cache(Path(directory), volatile_options(hub.pm.hook))

    @hookimpl
    def confhub_load_cached(self, spec: SourceSpec, backend: Any) -> Layer | None:
        if self.cache is None or not _cacheable(spec, backend):
            return None
        layer = self.cache.read(spec, cache_principal_of(backend))
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
                    extra=log_fields(spec.display, revision=layer.revision),
                )
                return None
        return layer

    def takes(self, spec: SourceSpec, backend: Any) -> bool:
        """Whether :meth:`confhub_layer_accepted` writes this source's layers (the hub does
        not hand a layer to its persist thread when no plugin takes it)."""
        return self.cache is not None and _cacheable(spec, backend) and writes_cache(backend)

    @hookimpl
    def confhub_layer_accepted(self, spec: SourceSpec, layer: Layer, backend: Any) -> None:
        if self.cache is not None and self.takes(spec, backend):
            self.cache.write(spec, layer, cache_principal_of(backend))


def layers_wanted(hook: Any) -> Callable[[SourceSpec, Any], bool]:
    """Whether a plugin takes the accepted layers of a source, for the hub's persist stage:
    any implementation of ``confhub_layer_accepted`` (``hook``) but the builtin cache's, or
    the cache when it writes that source's layers."""

    def wanted(spec: SourceSpec, backend: Any) -> bool:
        for impl in hook.get_hookimpls():
            plugin = impl.plugin
            if not isinstance(plugin, CachePlugin) or plugin.takes(spec, backend):
                return True
        return False

    return wanted

"""Host-shared sources: one process per host talks to the store, the others follow it.

``Hub(sources, share="host")`` (or ``?share=host`` on a source, or ``CONFHUB_SHARE=host`` in
the environment) wraps each remote source's backend in a :class:`SharedBackend`. The hub
sees an ordinary backend: ``load``, ``watch``, ``write``, ``close``; the rest of the
pipeline (merge, validate/bind, swap, dispatch, health) is unchanged, so a follower keeps
every guarantee a hub gives: its own validation and binding, no torn snapshot, generations
that only grow.

The processes that open the same source (same cache identity: :meth:`Cache.identity`, who
reads included) in the same cache directory form a group (:mod:`confhub._fleetstate` holds
its files):

- **leader**: the process holding the group's ``flock``. It loads and watches the store
  through the real backend, and writes every layer the store sends (or the error it met)
  to the group's state file, then pokes the followers; it writes the cache.
- **follower**: everyone else. It never opens a store connection. Its thread (one per
  shared source; :class:`confhub._fleetfollow.GroupFollower`) waits on the wake-up line
  from the leader, reads the latest state file on each poke (a slow follower skips to the
  latest), and hands the layer (or the error) to its hub like any backend's update. When
  the line ends (the leader died: the kernel closed its socket and dropped its lock), the
  thread tries the lock; the one that gets it leads, resuming the store's watch right
  after the last revision the group saw (:meth:`Backend.resume`; a backend without it is
  loaded in full), and the others connect to it and keep serving meanwhile.
- **unshared**: sharing was asked for but cannot work here (the cache directory is
  missing, not writable, or not private; a group of another confhub state format): the
  process reads the store itself and says so in a warning and in ``health()``.

A follower's writes (``hub.write``) go to the store through a backend opened for the one
write, like a write to a fallback member that is not serving; the change arrives back
through the leader like any other.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import secrets
import threading
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ._backend import (
    Backend,
    Notify,
    Update,
    cache_principal_of,
    can_watch,
    is_cacheable,
    is_strict,
    resume_watch,
)
from ._cache import Cache, CacheError, default_cache_dir
from ._errors import (
    ConfhubError,
    SourceFormatError,
    SourcePermissionError,
    SourceUnavailableError,
    SpecError,
)
from ._fleetfollow import GroupFollower, error_of
from ._fleetstate import (
    Busy,
    Election,
    GroupFileError,
    GroupPaths,
    GroupState,
    StateWriter,
    encode_state,
    ensure_dir,
    read_state,
)
from ._fleetwake import Beacon
from ._health import Sharing
from ._layer import Layer, LayerDelta
from ._merge import MISSING
from ._spec import SourceSpec
from .kv import Backoff

log = logging.getLogger("confhub.fleet")

#: The environment variable that turns sharing on for hubs that do not say
#: (``CONFHUB_SHARE=host``); ``Hub(share=...)`` and a source's ``?share=`` win over it.
SHARE_ENV = "CONFHUB_SHARE"
#: The sharing modes: ``"host"`` (one process per host talks to the store), ``"none"``.
SHARE_MODES = ("host", "none")

#: The optional store operations a shared backend passes through when the real one has them.
_STORE_OPERATIONS = ("write", "delete", "commit", "read")


@functools.cache
def _version() -> str:
    """This confhub's version, written into the state file (read once: it scans sys.path)."""
    try:
        return importlib.metadata.version("confhub")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source checkout
        return "unknown"


def check_share(value: str | None, *, where: str) -> str | None:
    """``value`` as a sharing mode (``None``: not given); :class:`SpecError` otherwise."""
    if value is None or value is MISSING:
        return None
    mode = str(value).strip().lower()
    if mode in ("", "off", "false", "0"):
        mode = "none"
    if mode not in SHARE_MODES:
        raise SpecError(
            f"share={value!r} ({where}) is not a sharing mode; use share='host' (one process "
            "per host talks to the store) or share='none'",
            spec=where,
        )
    return mode


def hub_share(explicit: str | None) -> str | None:
    """The hub-wide sharing mode: ``Hub(share=)``, else ``$CONFHUB_SHARE``."""
    if explicit is not None:
        return check_share(explicit, where="Hub(share=...)")
    return check_share(os.environ.get(SHARE_ENV) or None, where=f"${SHARE_ENV}")


def share_source(
    backend: Backend,
    spec: SourceSpec,
    *,
    mode: str | None,
    cache_dir: Any,
    volatile: Callable[[], Mapping[str, frozenset[str]]],
    open_backend: Callable[[], Backend],
    timeout: float,
) -> Backend:
    """``backend``, wrapped in a :class:`SharedBackend` when ``spec`` is shared (its
    ``?share=`` option, else the hub's ``mode``) and the source is remote (``cacheable``).
    No I/O: the group is joined on the first ``load``."""
    chosen = check_share(spec.options.get("share"), where=spec.display) or mode
    if chosen != "host" or not is_cacheable(backend) or not can_watch(backend):
        return backend  # local sources need no sharing; a polled one is not shared
    directory = default_cache_dir() if cache_dir is MISSING else cache_dir
    return SharedBackend(
        backend,
        spec,
        directory=None if directory in (None, False, "") else Path(directory),
        volatile=volatile,
        open_backend=open_backend,
        timeout=spec.option_float("timeout", timeout),
    )


_LIVE: weakref.WeakSet[SharedBackend] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child holds copies of its parent's group descriptors: drop them, so that
    the parent's death frees the lock and ends its followers' lines (the child's own hub
    is the fork-handling code's business)."""
    for shared in list(_LIVE):
        shared.forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class SharedBackend(Backend):
    """A remote source's backend shared by the processes of one host (see the module
    docstring). The hub builds it around the plugin's backend; no I/O until ``load``."""

    cacheable = True

    def __init__(
        self,
        inner: Backend,
        spec: SourceSpec,
        *,
        directory: Path | None,
        volatile: Callable[[], Mapping[str, frozenset[str]]],
        open_backend: Callable[[], Backend],
        timeout: float,
    ) -> None:
        self.inner = inner
        self.spec = spec
        self.display = spec.display
        self.cache_principal = cache_principal_of(inner)
        self._directory = directory
        self._volatile = volatile
        self._open_backend = open_backend
        self._timeout = timeout
        self._lock = threading.Condition(threading.RLock())
        self._stop = threading.Event()
        self._role: str | None = None
        self._reason: str | None = None
        self._paths: GroupPaths | None = None
        self._election: Election | None = None
        self._beacon: Beacon | None = None
        self._notify: Notify | None = None
        self._warned: set[str] = set()
        # Follower: the thread, the latest state read, what the hub got.
        self._follower = GroupFollower(
            self.display,
            lock=self._lock,
            stop=self._stop,
            notify=lambda: self._notify,
            take_over=self._take_over,
            detach=self._detach,
            warn=self._warn_once,
        )
        # Leader: its session, the group's layer, the last error, the state's sequence number.
        self._session: str | None = None
        self._group_layer: Layer | None = None
        self._group_error: tuple[str, str] | None = None
        self._seq = 0
        self._writer: StateWriter | None = None
        self._write_lock = threading.Lock()
        self._closed = False
        self._forked = False  # a fork's child: its next load joins the group afresh
        # The store operations the real backend has, and only those (the hub's writer asks
        # ``can_write``/``can_delete``/...): each goes to the store (see _through_store).
        for operation in _STORE_OPERATIONS:
            if callable(getattr(inner, operation, None)):
                setattr(self, operation, functools.partial(self._through_store, operation))
        #: Whether unknown keys from this source count (strict binding): the real backend's.
        self.strict_keys = is_strict(inner)
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"SharedBackend({self.display!r}, role={self._role!r})"

    # -- what the hub reads ------------------------------------------------------------------
    @property
    def role(self) -> str | None:
        """``"leader"``, ``"follower"``, ``"unshared"``, or ``None`` before the first load."""
        return self._role

    @property
    def sharing(self) -> Sharing | None:  # type: ignore[override]
        role = self._role
        if role is None:
            return None
        pid: int | None = None
        if role == "leader":
            pid = os.getpid()
        elif role == "follower" and self._follower.latest is not None:
            pid = self._follower.latest.pid
        return Sharing(role, pid, self._reason)

    @property
    def cache_writes(self) -> bool:  # type: ignore[override]
        return self._role != "follower"

    @property
    def followers(self) -> int:
        """How many followers are connected (a leader's count; 0 otherwise)."""
        beacon = self._beacon
        return 0 if beacon is None else beacon.followers

    # -- joining the group -------------------------------------------------------------------
    def _join(self) -> None:
        """Find the group's files and take a role: leader if the lock is free."""
        try:
            if self._directory is None:
                raise GroupFileError(
                    "the hub has no cache directory (cache_dir=None); a group meets in one: "
                    "give the hub a cache_dir"
                )
            ensure_dir(self._directory)
            cache = Cache(self._directory, self._volatile())
            digest = cache.principal_digest(self.cache_principal, create=True)
            stem = f"{self.spec.scheme}-{cache.identity(self.spec, digest)[:32]}"
            self._paths = GroupPaths(self._directory, stem)
            self._election = Election(self._paths.lock)
        except (OSError, GroupFileError, CacheError) as exc:
            self._unshare(f"cannot use the cache directory for sharing: {exc}")
            return
        if self._election.try_lead():
            self._become_leader(previous=self._read_any())
            return
        self._role = "follower"
        self._follower.start(self._paths, self._election.try_lead)

    def _unshare(self, reason: str) -> None:
        log.warning(
            "%s: share='host' is not in effect (%s); this process reads the store itself",
            self.display,
            reason,
        )
        self._role = "unshared"
        self._reason = reason

    def _read_any(self) -> GroupState | None:
        """The state file as it is (any session), or ``None`` when absent or unusable."""
        assert self._paths is not None
        try:
            return read_state(self._paths.state, self.display)
        except Busy:
            return None  # the last leader died writing: what this process saw is the last
        except (OSError, GroupFileError) as exc:
            self._warn_once(str(exc))
            return None

    def _become_leader(self, previous: GroupState | None) -> None:
        assert self._paths is not None
        try:
            self._writer = StateWriter(self._paths.state)
        except (OSError, GroupFileError) as exc:
            self._warn_once(f"cannot write the group state: {exc}; followers will wait")
        with self._lock:
            self._role = "leader"
            self._seq = max(self._follower.seen_seq, previous.seq if previous else 0)
            self._session = secrets.token_hex(8)
            self._lock.notify_all()
        log.info("%s: this process (pid %d) leads its host group", self.display, os.getpid())

    def _start_beacon(self) -> None:
        if self._beacon is not None or self._paths is None or self._stop.is_set():
            return
        assert self._session is not None
        try:
            beacon = Beacon(self._paths.socket, self._session, self.display)
        except OSError as exc:
            self._warn_once(f"cannot open the wake-up socket {self._paths.socket}: {exc}")
            return
        self._beacon = beacon
        beacon.start()

    # -- the leader --------------------------------------------------------------------------
    def _publish(self) -> None:
        """Write the group's state (the leader's layer and error) and wake the followers."""
        writer = self._writer
        if writer is None or self._role != "leader":
            return
        with self._write_lock:
            self._seq += 1
            try:
                writer.write(
                    encode_state(
                        seq=self._seq,
                        session=self._session or "",
                        source=self.display,
                        version=_version(),
                        layer=self._group_layer,
                        error=self._group_error,
                    )
                )
            except (OSError, GroupFileError) as exc:
                self._warn_once(f"cannot write the group state {writer.path}: {exc}")
                return
        self._start_beacon()
        beacon = self._beacon
        if beacon is not None:
            beacon.poke()

    def _leader_notify(self, update: Update) -> None:
        """The real backend's update: hand it to the hub, then record it for the group.

        The hub first: the leader's own subscribers wait for nothing, and a leader that
        dies between the two leaves the group at the previous revision, from which the
        next leader resumes (so the change still reaches every follower, once)."""
        notify = self._notify
        if notify is not None:
            notify(update)
        if isinstance(update, BaseException):
            self._group_error = _error_pair(update)
        else:
            try:
                base = self._group_layer
                if isinstance(update, LayerDelta):
                    if base is not None:
                        self._group_layer = base.apply(update, source=self.display)
                else:
                    self._group_layer = update
                self._group_error = None
            except SourceFormatError as exc:
                self._group_error = _error_pair(exc)
        self._publish()

    def _load_as_leader(self) -> Layer:
        try:
            layer = self.inner.load()
        except ConfhubError as exc:
            self._group_error = _error_pair(exc)
            self._publish()
            raise
        self._group_layer = layer
        self._group_error = None
        self._publish()
        return layer

    # -- the backend contract ----------------------------------------------------------------
    def load(self) -> Layer:
        """Leader (or unshared): read the store. Follower: the group's latest state."""
        with self._lock:
            if self._closed:
                raise SourceUnavailableError(
                    f"{self.display}: the backend is closed", source=self.display
                )
            if self._role is None or self._forked:
                self._forked = False
                self._role, self._reason = None, None
                self._join()
            role = self._role
        if role == "leader":
            return self._load_as_leader()
        if role != "follower":
            return self.inner.load()
        return self._load_as_follower()

    def _load_as_follower(self) -> Layer:
        deadline = self._timeout
        with self._lock:
            self._lock.wait_for(
                lambda: (
                    self._role != "follower" or self._closed or self._follower.current() is not None
                ),
                timeout=deadline,
            )
            role, state = self._role, self._follower.current()
            if role == "follower" and state is not None:
                if state.layer is not None:
                    self._follower.loaded(state)
                    return state.layer
                assert state.error is not None
                raise error_of(state.error, self.display, state.pid)
        if role in ("leader", "unshared"):
            return self._load_as_leader() if role == "leader" else self.inner.load()
        raise SourceUnavailableError(
            f"{self.display}: the group's leader sent no state within {deadline:.2f}s; "
            "it may be starting (check its health), or raise the timeout",
            source=self.display,
        )

    def watch(self, notify: Notify) -> None:
        """Leader: watch the store (every update goes to the group first). Follower: the
        follower thread delivers each new state of the group to ``notify``."""
        with self._lock:
            self._notify = notify
            role = self._role
        if role == "leader":
            self.inner.watch(self._leader_notify)  # type: ignore[attr-defined]
        elif role == "unshared":
            self.inner.watch(notify)  # type: ignore[attr-defined]
        else:
            self._follower.wake()  # deliver what arrived between load() and now

    def _through_store(self, operation: str, *args: Any) -> Any:
        """A store operation (``write``, ``delete``, ``commit``, ``read``) that the hub's
        writer calls: the real backend's, or, for a follower, a backend opened for this one
        call and closed after it (a follower holds no store connection)."""
        if self._role != "follower":
            return getattr(self.inner, operation)(*args)
        backend = self._open_backend()
        try:
            return getattr(backend, operation)(*args)
        finally:
            backend.close()

    def close(self) -> None:
        """Stop following or leading (a follower takes over at once), close the real
        backend. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._lock.notify_all()
        self._stop.set()
        self._follower.wake()
        self._follower.join(10.0)
        self.inner.close()
        # The socket before the lock: its file is unlinked while no successor can bind one
        # (the followers that wake meanwhile retry within milliseconds).
        if self._beacon is not None:
            self._beacon.close()
        if self._writer is not None:
            self._writer.close()
        if self._election is not None:
            self._election.close()
        self._follower.close()
        _LIVE.discard(self)

    def forget_after_fork(self) -> None:
        """In a forked child: drop the copies of the group's descriptors it inherited (the
        lock, the state file, the leader's sockets, the wake-up pipe), without touching the
        parent's: a child never leads on its parent's lock, and a dead parent's followers
        see its socket end. Until its hub loads the source again (fork handling that
        resumes the hub), the child reports ``unshared`` with the reason; that next load
        joins the group afresh, as any process does."""
        if self._election is not None:
            self._election.close()  # the child's copy only: the parent keeps its lock
        if self._beacon is not None:
            self._beacon.forget()
        if self._writer is not None:
            self._writer.close()
        self._follower.forget_after_fork()
        self._election = None
        self._beacon = None
        self._writer = None
        self._session = None
        if self._role is not None:
            self._role = "unshared"
            self._reason = "inherited across fork(): the child does not take part in the group"
            self._forked = True

    # -- after the follower thread ---------------------------------------------------------
    def _take_over(self) -> None:
        """The lock is ours: lead from the last state the group saw."""
        final = self._read_any()
        latest = self._follower.catch_up(final)
        self._become_leader(previous=final)
        self._group_layer = latest.layer if latest is not None else None
        self._group_error = latest.error if latest is not None else None
        self._publish()
        self._start_watching(resume=self._group_layer)

    def _detach(self, reason: str) -> None:
        """A group this confhub cannot follow: read the store ourselves."""
        self._unshare(reason)
        self._start_watching(resume=None)

    def _start_watching(self, resume: Layer | None) -> None:
        """After a takeover (or detaching): the store's watch, from ``resume``'s revision
        when the backend can, else after a full load (retried until the store answers)."""
        with self._lock:
            notify = self._notify
        if notify is None:
            return  # the hub has not watched yet: its next load() reads as the new role
        target = self._leader_notify if self._role == "leader" else notify
        if resume is not None and resume_watch(self.inner, resume):
            log.info(
                "%s: resuming the store's watch after revision %s", self.display, resume.revision
            )
            self.inner.watch(target)  # type: ignore[attr-defined]
            return
        backoff = Backoff(0.05, 2.0)
        attempt = 0
        while not self._stop.is_set():
            try:
                layer = self.inner.load()
            except ConfhubError as exc:
                target(exc)
                self._stop.wait(backoff.delay(attempt))
                attempt += 1
                continue
            target(layer)
            self.inner.watch(target)  # type: ignore[attr-defined]
            return

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning("%s: %s", self.display, message)


def _error_pair(error: BaseException) -> tuple[str, str]:
    if isinstance(error, SourcePermissionError):
        kind = "refused"
    elif isinstance(error, SourceFormatError):
        kind = "format"
    else:
        kind = "unavailable"
    return kind, str(error)

"""Distributed locks and leader election on a store's :class:`~confhub.LockBackend`.

A :class:`Lock` held by this process is kept alive by its own thread every ``ttl/3``. It
claims the lock only until its *validity deadline*: the moment the last acknowledged
keepalive was sent, plus the TTL, minus a margin of ``ttl/5``. The store counts the TTL from
when it received that keepalive, which is later, so the holder stops claiming the lock
(``held`` turns false, ``on_lost`` is called, ``check()`` raises) before the store can
expire it and hand it to the next waiter. Writes guarded by the lock should also carry its
fencing ``token``, which grows with every new holder.

An :class:`Election` is a lock whose holder is the leader, plus an observer thread that
reports every change of leader.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Self

from ._errors import LockLostError, RegistryError, SourceError
from ._regforks import inherited_message, track, untrack

if TYPE_CHECKING:
    from ._registry_types import LockBackend

log = logging.getLogger("confhub.registry")

#: The fraction of the TTL a holder gives up before the store could expire its lease.
VALIDITY_MARGIN = 0.2


class Lock:
    """A distributed lock (:meth:`confhub.Registry.lock`).

    ``acquire(timeout=None)`` blocks until held and returns the fencing token (raises
    :class:`confhub.LockTimeoutError`); ``release()`` gives it up at once. A context manager
    (acquires with the ``timeout`` given to :meth:`Registry.lock`). ``on_lost()`` is called
    from the lock's thread when a held lock is lost (lease expired or revoked, keepalives
    failing past the validity deadline).
    """

    def __init__(
        self,
        backend: LockBackend,
        name: str,
        *,
        ttl: float,
        identity: str,
        timeout: float | None = None,
        on_lost: Callable[[LockLostError], None] | None = None,
        closer: Callable[[], None] | None = None,
        source: str = "",
    ) -> None:
        self._backend = backend
        self._name = name
        self._ttl = ttl
        self._identity = identity
        self._timeout = timeout
        self._on_lost = on_lost
        self._closer = closer
        self._source = source
        self._lock = threading.Lock()
        self._token: int | None = None
        self._valid_until = 0.0
        self._lost: LockLostError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._inherited_from: int | None = None
        track(self)

    def __repr__(self) -> str:
        return f"Lock({self._name!r}, identity={self._identity!r}, held={self.held})"

    @property
    def name(self) -> str:
        """The lock's name."""
        return self._name

    @property
    def identity(self) -> str:
        """Who this process is, as :meth:`holder` reports it to others."""
        return self._identity

    @property
    def token(self) -> int | None:
        """The fencing token of the current hold (``None`` when not held): larger for every
        later holder, so a store or service that remembers the largest token it has seen
        can refuse the writes of a holder that lost the lock without knowing it."""
        return self._token if self.held else None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock now (before its validity deadline)."""
        with self._lock:
            return (
                self._token is not None
                and self._lost is None
                and time.monotonic() < self._valid_until
            )

    @property
    def valid_for(self) -> float:
        """Seconds until the validity deadline (0 when not held)."""
        return max(0.0, self._valid_until - time.monotonic()) if self.held else 0.0

    def check(self) -> int:
        """Return the fencing token, or raise :class:`confhub.LockLostError` when the lock is
        not held: call it right before a write the lock guards."""
        token = self.token
        if token is None:
            raise self._lost or LockLostError(
                f"lock {self._name!r} is not held by {self._identity!r}; acquire it first",
                source=self._source,
                name=self._name,
            )
        return token

    def holder(self) -> tuple[str, int] | None:
        """``(identity, token)`` of whoever holds the lock now, per the store."""
        return self._backend.holder()

    def wait_holder(self, known: tuple[str, int] | None, timeout: float) -> tuple[str, int] | None:
        """Return the holder once it differs from ``known``, or after ``timeout`` seconds."""
        return self._backend.wait_holder(known, timeout)

    def acquire(self, timeout: float | None = None) -> int:
        """Block until the lock is held (at most ``timeout`` seconds) and return its token.

        Raises :class:`confhub.LockTimeoutError` when ``timeout`` runs out and
        :class:`confhub.SourceUnavailableError` when the store cannot be reached.
        """
        if self._closed:
            raise RegistryError(
                f"lock {self._name!r} is closed; create a new one with registry.lock()",
                source=self._source,
                name=self._name,
            )
        if self._inherited_from is not None:
            raise RegistryError(
                self._inherited_message("cannot be acquired with the parent's connection"),
                source=self._source,
                name=self._name,
            )
        if self.held:
            raise RegistryError(
                f"lock {self._name!r} is already held by this Lock object; release it first "
                "(locks are not re-entrant)",
                source=self._source,
                name=self._name,
            )
        self._join_keepalive()
        sent = time.monotonic()
        token = self._backend.acquire(timeout)
        if time.monotonic() - sent > self._ttl * 0.1:
            # We waited: the store's TTL counts from the waiter's last refresh, which we
            # do not know. Refresh now and count from here.
            sent = time.monotonic()
            try:
                self._backend.keepalive()
            except BaseException:
                self._backend.release()
                raise
        with self._lock:
            self._token = token
            self._lost = None
            self._valid_until = sent + self._ttl * (1 - VALIDITY_MARGIN)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._keepalive, name=f"confhub-lock-{self._name}", daemon=True
        )
        self._thread.start()
        log.info("lock %s acquired by %s (token %d)", self._name, self._identity, token)
        return token

    def release(self) -> None:
        """Give the lock up at once (the next waiter gets it). No error when not held.

        A lock inherited across ``fork()`` is never released by the child (it is not held
        here: the parent holds it)."""
        if self._inherited_from is not None:
            return
        self._join_keepalive()
        with self._lock:
            had = self._token is not None
            self._token = None
            self._valid_until = 0.0
        if had:
            self._backend.release()
            log.info("lock %s released by %s", self._name, self._identity)

    def close(self) -> None:
        """Release the lock and close its connection. Idempotent.

        In a process that inherited the lock across ``fork()``, only marks it closed: the
        store is not touched (the parent may hold the lock, on the parent's connection)."""
        if self._closed:
            return
        if self._inherited_from is not None:
            self._closed = True
            return
        untrack(self)
        try:
            self.release()
        except SourceError as exc:
            log.warning("releasing lock %s failed (%s); it expires within its TTL", self._name, exc)
        self._closed = True
        if self._closer is not None:
            self._closer()

    def __enter__(self) -> Self:
        self.acquire(self._timeout)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    # -- fork ----------------------------------------------------------------------------------

    def after_fork(self, parent: int) -> str | None:
        """In a child, from the at-fork handler: not held here, never kept alive nor
        released (new lock and event, no thread). Returns the warning to log."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        held = self._token is not None and self._lost is None
        if self._inherited_from is None:
            self._inherited_from = parent
        self._token = None
        self._valid_until = 0.0
        self._lost = LockLostError(
            self._inherited_message("not held here"), source=self._source, name=self._name
        )
        if self._closed or not held:
            return None
        return str(self._lost)

    def _inherited_message(self, what: str) -> str:
        return inherited_message(
            f"lock {self._name!r} of {self._identity!r} ({what})",
            self._inherited_from or 0,
            "create and acquire a lock in this process (registry.lock() after the fork, "
            "gunicorn: in post_fork) if it needs one",
        )

    # -- the keepalive thread ----------------------------------------------------------------

    def _join_keepalive(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._thread = None

    def _keepalive(self) -> None:
        interval = self._ttl / 3
        delay = interval
        while True:
            with self._lock:
                deadline = self._valid_until
            if self._stop.wait(max(0.0, min(delay, deadline - time.monotonic()))):
                return
            if time.monotonic() >= deadline:
                self._lose(
                    f"lock {self._name!r}: no keepalive was acknowledged before the validity "
                    f"deadline (TTL {self._ttl:g}s minus a margin); stop acting as its holder"
                )
                return
            sent = time.monotonic()
            try:
                self._backend.keepalive()
            except LockLostError as exc:
                self._lose(str(exc))
                return
            except Exception as exc:  # noqa: BLE001 - logged; the deadline still applies
                level = logging.INFO if isinstance(exc, SourceError) else logging.ERROR
                log.log(level, "keepalive of lock %s failed: %s", self._name, exc)
                delay = min(interval, 0.2)
                continue
            with self._lock:
                if self._token is not None and self._lost is None:
                    self._valid_until = max(
                        self._valid_until, sent + self._ttl * (1 - VALIDITY_MARGIN)
                    )
            delay = interval

    def _lose(self, message: str) -> None:
        error = LockLostError(message, source=self._source, name=self._name)
        with self._lock:
            if self._token is None:
                return
            self._lost = error
        log.warning("%s", message)
        try:
            self._backend.release()  # best effort: let the next waiter in sooner
        except Exception as exc:  # noqa: BLE001 - best effort, the lease expires anyway
            log.info("releasing lost lock %s failed: %s", self._name, exc)
        if self._on_lost is not None:
            try:
                self._on_lost(error)
            except Exception:
                log.exception("on_lost callback of lock %s raised", self._name)


class Election:
    """Leader election on a lock (:meth:`confhub.Registry.election`).

    ``campaign(timeout=None)`` blocks until this process leads and returns its fencing
    token; ``is_leader`` says whether it leads now (false from its validity deadline on,
    before anyone else can lead); ``leader()`` names the current leader as
    ``(identity, token)``; ``resign()`` steps down at once. ``subscribe(callback)`` calls
    ``callback(leader)`` from the observer thread whenever the leader changes (``None``: no
    leader), and ``on_lost`` is called when this process stops leading without resigning.
    """

    def __init__(
        self,
        lock: Lock,
        *,
        wait: float = 30.0,
        closer: Callable[[], None] | None = None,
    ) -> None:
        self._lock = lock
        self._wait = wait
        self._closer = closer
        self._guard = threading.Lock()
        self._subscribers: list[Callable[[tuple[str, int] | None], None]] = []
        self._stop = threading.Event()
        self._observer: threading.Thread | None = None
        self._closed = False
        self._inherited_from: int | None = None
        track(self)

    def __repr__(self) -> str:
        return f"Election({self._lock.name!r}, identity={self.identity!r}, leader={self.is_leader})"

    @property
    def name(self) -> str:
        """The election's name."""
        return self._lock.name

    @property
    def identity(self) -> str:
        """This process's identity in the election."""
        return self._lock.identity

    @property
    def is_leader(self) -> bool:
        """Whether this process leads now."""
        return self._lock.held

    @property
    def token(self) -> int | None:
        """The fencing token of this process's leadership, ``None`` when not leading."""
        return self._lock.token

    def leader(self) -> tuple[str, int] | None:
        """``(identity, token)`` of the current leader per the store, or ``None``."""
        return self._lock.holder()

    def campaign(self, timeout: float | None = None) -> int:
        """Block until this process leads (at most ``timeout`` seconds; then
        :class:`confhub.LockTimeoutError`) and return its fencing token."""
        return self._lock.acquire(timeout)

    def resign(self) -> None:
        """Step down at once (no error when not leading)."""
        self._lock.release()

    def subscribe(self, callback: Callable[[tuple[str, int] | None], None]) -> Callable[[], None]:
        """Call ``callback(leader)`` on every change of leader, from the observer thread
        (started by the first subscriber); returns a function that unsubscribes."""
        if self._inherited_from is not None:
            raise RegistryError(
                f"election {self.name!r} was inherited across fork() from process "
                f"{self._inherited_from}; create a new one with registry.election() in this "
                "process to observe it",
                name=self.name,
            )
        with self._guard:
            self._subscribers.append(callback)
            if self._observer is None and not self._closed:
                self._observer = threading.Thread(
                    target=self._observe, name=f"confhub-election-{self.name}", daemon=True
                )
                self._observer.start()

        def unsubscribe() -> None:
            with self._guard:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def close(self) -> None:
        """Resign, stop observing and close the connection. Idempotent."""
        with self._guard:
            if self._closed:
                return
            self._closed = True
            observer = self._observer
        if self._inherited_from is not None:
            self._lock.close()  # marks it closed only: the parent's lock is not touched
            return
        untrack(self)
        self._stop.set()
        self._lock.close()  # resigns, then closes the backend: ends a wait in progress
        if observer is not None:
            observer.join()
        if self._closer is not None:
            self._closer()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def after_fork(self, parent: int) -> str | None:
        """In a child, from the at-fork handler: no observer, never resigns (its
        :class:`Lock` is marked inherited by its own handler)."""
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._stop.set()
        self._observer = None
        if self._inherited_from is None:
            self._inherited_from = parent
        return None

    def _observe(self) -> None:
        known: tuple[str, int] | None = None
        first = True
        attempt = 0
        while not self._stop.is_set():
            try:
                now = self._lock.holder() if first else self._wait_holder(known)
            except Exception as exc:  # noqa: BLE001 - logged and retried
                if self._stop.is_set():
                    return
                log.info("observing election %s failed: %s", self.name, exc)
                self._stop.wait(min(5.0, 0.1 * 2**attempt))
                attempt += 1
                first = True
                continue
            attempt = 0
            if self._stop.is_set():
                return
            if first or now != known:
                first = False
                known = now
                with self._guard:
                    subscribers = list(self._subscribers)
                for callback in subscribers:
                    try:
                        callback(now)
                    except Exception:
                        log.exception("a subscriber of election %s raised", self.name)

    def _wait_holder(self, known: tuple[str, int] | None) -> tuple[str, int] | None:
        return self._lock.wait_holder(known, self._wait)

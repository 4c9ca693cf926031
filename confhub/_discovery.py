"""A live list of a service's instances: :class:`Discovery`, its changes and its health.

One thread per discovery (``confhub-discovery-SERVICE``) waits for the store's next listing
(``wait_instances`` from the last index: an etcd watch, a Consul blocking query) and turns
each into added / removed / changed instances for the subscribers. After a failure it reads
the whole listing again rather than resuming (that is what converges across a store restart,
a compaction or an index that went backwards).

While the store cannot be reached the last list is served and reported stale; after
``max_staleness`` seconds without a good read it is dropped to empty. A stale list of
instances is more dangerous than a stale configuration value: its addresses may since have
been given to other processes (a rescheduled container's IP, a reused port), so requests
would go to the wrong service rather than fail. The default, :data:`DEFAULT_MAX_STALENESS`
(60 s, six default TTLs), rides out a store restart or a leader election and then fails
visibly; set ``max_staleness=None`` to keep serving the last list forever.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Self

import attrs

from ._errors import NoInstanceError, SourceError, SourceFormatError, SourceUnavailableError
from ._listcache import ListingCache
from ._regforks import track, untrack
from ._registry_types import Instance

if TYPE_CHECKING:
    from ._registry_types import RegistryBackend, ServiceListing

log = logging.getLogger("confhub.registry")

#: Seconds without a good read after which a discovery drops its list to empty.
DEFAULT_MAX_STALENESS = 60.0
#: How long one ``wait_instances`` call may wait for a change before it is asked again.
DEFAULT_WAIT = 30.0
#: ``pick("random")``'s own generator: the ``random`` module's state stays the app's own,
#: and a forked child is reseeded (below) so that workers do not pick in step.
_SPREAD = random.Random()  # noqa: S311 - load spreading, not crypto
os.register_at_fork(after_in_child=_SPREAD.seed)

STRATEGIES = ("round_robin", "random")


@attrs.frozen
class DiscoveryChange:
    """What changed in a discovery's list: ``added``, ``removed`` and ``changed`` (the new
    values) instances, and the whole list after the change in ``instances``."""

    service: str
    added: tuple[Instance, ...] = ()
    removed: tuple[Instance, ...] = ()
    changed: tuple[Instance, ...] = ()
    instances: tuple[Instance, ...] = ()


@attrs.frozen
class DiscoveryHealth:
    """A discovery's state: ``stale`` when the last read failed (the last list is served),
    ``dropped`` when it went stale for longer than ``max_staleness`` (the list is empty),
    ``age`` the seconds since the last good read, ``error`` the last failure, ``skipped``
    the messages of the records that could not be read."""

    service: str
    stale: bool
    dropped: bool
    age: float
    instances: int
    error: str | None = None
    skipped: tuple[str, ...] = ()


def _diff(
    before: dict[str, Instance], after: dict[str, Instance]
) -> tuple[tuple[Instance, ...], tuple[Instance, ...], tuple[Instance, ...]]:
    added = tuple(i for k, i in after.items() if k not in before)
    removed = tuple(i for k, i in before.items() if k not in after)
    changed = tuple(
        i
        for k, i in after.items()
        if k in before and before[k] is not i and not before[k].same_record(i)
    )
    return added, removed, changed


class Discovery:
    """The live instances of one service (:meth:`confhub.Registry.discover`).

    ``instances`` holds the passing ones (every status with ``passing_only=False``), sorted
    by instance id. ``subscribe`` calls back with a :class:`DiscoveryChange` from the
    discovery's thread; ``async for change in discovery`` yields the same (the first one
    lists the current instances as added). ``pick()`` chooses one (round robin or random).
    A context manager; :meth:`close` stops the thread and closes the discovery's own store
    connection.

    With ``cache_path``, every list read is also saved to that JSON file, and a discovery
    whose first read fails because the store is unreachable starts from it (reported
    stale) when it is younger than ``max_staleness`` (:class:`confhub._listcache.ListingCache`
    holds the file). Off by default: see the module's note on stale lists.
    """

    def __init__(
        self,
        backend: RegistryBackend,
        service: str,
        *,
        passing_only: bool = True,
        strategy: str = "round_robin",
        max_staleness: float | None = DEFAULT_MAX_STALENESS,
        wait: float = DEFAULT_WAIT,
        retry: Callable[[int], float] = lambda attempt: min(5.0, 0.1 * 2**attempt),
        source: str = "",
        cache_path: str | os.PathLike[str] | None = None,
        renew: Callable[[], RegistryBackend] | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(
                f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}; pass one of them"
            )
        if max_staleness is not None and not max_staleness > 0:
            raise ValueError(
                f"max_staleness={max_staleness!r} must be above 0 seconds, or None to keep "
                "the last list forever"
            )
        self._backend = backend
        self._renew = renew
        self._inherited: list[RegistryBackend] = []  # the parents' (after fork: never closed)
        self._service = service
        self._passing_only = passing_only
        self._strategy = strategy
        self._max_staleness = max_staleness
        self._wait = wait
        self._retry = retry
        self._source = source
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._subscribers: list[Callable[[DiscoveryChange], None]] = []
        self._counter = itertools.count()
        self._current: dict[str, Instance] = {}
        self._sorted: tuple[Instance, ...] = ()  # _current by id, built once per change
        self._index = 0
        self._last_ok = time.monotonic()
        self._error: BaseException | None = None
        self._dropped = False
        self._skipped: tuple[SourceFormatError, ...] = ()
        self._reported: set[str] = set()
        self._closed = False
        self._cache = None if cache_path is None else ListingCache(cache_path, service)
        try:
            listing = backend.list_instances(service)
        except SourceError as exc:
            if not self._load_cache(exc):
                raise
        else:
            self._apply(listing)
            self._save_cache({i.instance_id: i for i in listing.instances})
        self._thread = threading.Thread(
            target=self._run, name=f"confhub-discovery-{service}", daemon=True
        )
        self._thread.start()
        track(self)

    def __repr__(self) -> str:
        return f"Discovery({self._service!r}, instances={len(self._current)})"

    # -- reading -----------------------------------------------------------------------------

    @property
    def service(self) -> str:
        """The service's name."""
        return self._service

    @property
    def instances(self) -> tuple[Instance, ...]:
        """The instances served now, sorted by id (passing only unless asked otherwise)."""
        return self._sorted

    @property
    def index(self) -> int:
        """The store index of the list served now."""
        return self._index

    @property
    def skipped(self) -> tuple[SourceFormatError, ...]:
        """The records of the last listing that could not be read (each names its key)."""
        return self._skipped

    def health(self) -> DiscoveryHealth:
        """The discovery's :class:`DiscoveryHealth`."""
        with self._lock:
            error = self._error
            return DiscoveryHealth(
                service=self._service,
                stale=error is not None,
                dropped=self._dropped,
                age=time.monotonic() - self._last_ok,
                instances=len(self._current),
                error=None if error is None else str(error),
                skipped=tuple(str(e) for e in self._skipped),
            )

    def pick(self, strategy: str | None = None) -> Instance:
        """One instance, by ``strategy`` (``"round_robin"`` or ``"random"``; default the
        discovery's). Raises :class:`confhub.NoInstanceError` when none is served."""
        chosen = strategy or self._strategy
        if chosen not in STRATEGIES:
            raise ValueError(
                f"strategy {chosen!r} is not one of {', '.join(STRATEGIES)}; pass one of them"
            )
        instances = self.instances
        if not instances:
            raise NoInstanceError(self._why_empty(), source=self._source, name=self._service)
        if chosen == "random":
            return _SPREAD.choice(instances)
        return instances[next(self._counter) % len(instances)]

    def _why_empty(self) -> str:
        what = "passing instance" if self._passing_only else "instance"
        if self._dropped:
            return (
                f"no {what} of service {self._service!r}: the registry {self._source} has "
                f"not answered for over {self._max_staleness:g}s (max_staleness), so the "
                "last list was dropped; check the store, or raise max_staleness"
            )
        return (
            f"no {what} of service {self._service!r} is registered in {self._source}; "
            "start one, or check the service name and its health checks"
        )

    # -- following ---------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[DiscoveryChange], None]) -> Callable[[], None]:
        """Call ``callback(change)`` on every change, from the discovery's thread; returns a
        function that unsubscribes. An exception ``callback`` raises is logged."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def __aiter__(self) -> AsyncIterator[DiscoveryChange]:
        return self._changes()

    async def _changes(self) -> AsyncIterator[DiscoveryChange]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[DiscoveryChange] = asyncio.Queue()

        def deliver(change: DiscoveryChange) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, change)
            except RuntimeError:  # the loop closed
                pass

        unsubscribe = self.subscribe(deliver)
        try:
            current = self.instances
            yield DiscoveryChange(self._service, added=current, instances=current)
            while not self._closed:
                try:
                    yield await asyncio.wait_for(queue.get(), 1.0)
                except TimeoutError:
                    continue  # look at _closed again: close() ends the iteration
        finally:
            unsubscribe()

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop following the service and close the discovery's connection. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        untrack(self)
        self._stop.set()
        backend = self._backend
        if not any(backend is b for b in self._inherited):  # never the parent's connection
            backend.close()  # ends a wait in progress
        self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- fork ----------------------------------------------------------------------------------

    def after_fork(self, parent: int) -> str | None:
        """In a child, from the at-fork handler: mark the list stale (inherited, being
        re-read) and start the thread that makes a new connection, reads the whole list
        again and watches it. Without a way to make a connection the list stays stale (and
        is dropped after ``max_staleness``)."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._inherited.append(self._backend)
        self._index = -1  # read the whole list again before watching
        if self._renew is None:
            self._error = SourceUnavailableError(
                f"discovery of {self._service!r}: inherited across fork() from process "
                f"{parent} without a way to reconnect; the list is not followed in process "
                f"{os.getpid()}: call registry.discover() after the fork",
                source=self._source,
            )
            self._thread = threading.Thread(target=lambda: None, daemon=True)
            return str(self._error)
        self._error = SourceUnavailableError(
            f"discovery of {self._service!r}: inherited across fork() from process {parent}; "
            f"re-reading it and watching again in process {os.getpid()} (serving the "
            "inherited list meanwhile)",
            source=self._source,
        )
        self._thread = threading.Thread(
            target=self._resume, name=f"confhub-discovery-{self._service}", daemon=True
        )
        self._thread.start()
        return None

    def _resume(self) -> None:
        renew = self._renew
        assert renew is not None
        log.warning("%s", self._error)
        attempt = 0
        while not self._stop.is_set():
            try:
                backend = renew()
                break
            except Exception as exc:  # noqa: BLE001 - reported and retried
                log.error("discovery of %s: cannot reconnect after fork(): %s", self._service, exc)
                self._stop.wait(self._retry(attempt))
                attempt += 1
        else:
            return
        self._backend = backend
        if self._stop.is_set():  # closed meanwhile (close() saw the parent's connection)
            backend.close()
            return
        self._run()

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        reread = self._index < 0  # started from the cache
        while not self._stop.is_set():
            try:
                if reread:
                    listing = self._backend.list_instances(self._service)
                else:
                    listing = self._backend.wait_instances(self._service, self._index, self._wait)
            except Exception as exc:
                if self._stop.is_set():
                    return
                if not isinstance(exc, SourceError):
                    log.exception("discovery of %s failed", self._service)
                self._failed(exc)
                reread = True
                self._stop.wait(self._retry(attempt))
                attempt += 1
                continue
            if self._stop.is_set():
                return
            attempt = 0
            reread = False
            self._apply(listing)
            self._save_cache({i.instance_id: i for i in listing.instances})

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            first = self._error is None
            self._error = exc
            overdue = (
                self._max_staleness is not None
                and time.monotonic() - self._last_ok > self._max_staleness
            )
        if first:
            log.warning("discovery of %s: %s; serving the last list (stale)", self._service, exc)
        if overdue and not self._dropped:
            log.warning(
                "discovery of %s: no good read for over %gs (max_staleness); dropping the list",
                self._service,
                self._max_staleness,
            )
            self._publish({}, dropped=True)

    def _apply(self, listing: ServiceListing) -> None:
        for error in listing.skipped:
            message = str(error)
            if message not in self._reported:
                self._reported.add(message)
                log.warning("discovery of %s skipped a record: %s", self._service, message)
        after = {
            i.instance_id: i
            for i in listing.instances
            if i.status == "passing" or not self._passing_only
        }
        with self._lock:
            if self._error is not None:
                log.info("discovery of %s: the registry answers again", self._service)
            self._error = None
            self._last_ok = time.monotonic()
            self._index = listing.index
            self._skipped = listing.skipped
        self._publish(after, dropped=False)

    # -- the opt-in cache of the last list -----------------------------------------------------

    def _save_cache(self, instances: dict[str, Instance]) -> None:
        if self._cache is not None:
            self._cache.save(instances.values())

    def _load_cache(self, error: SourceError) -> bool:
        """Serve the cached list (stale) when the first read failed; False if there is none
        fit to serve (missing, unreadable, for another service, older than max_staleness)."""
        if self._cache is None or not isinstance(error, SourceUnavailableError):
            return False
        cached = self._cache.load()
        if cached is None:
            return False
        instances, age = cached
        if self._max_staleness is not None and age > self._max_staleness:
            log.warning(
                "discovery of %s: its cache is %.0fs old, over max_staleness; not using it",
                self._service,
                age,
            )
            return False
        log.warning(
            "discovery of %s: %s; serving its cached list (%.0fs old)", self._service, error, age
        )
        with self._lock:
            self._error = error
            self._last_ok = time.monotonic() - age
            self._index = -1  # nothing read from the store yet: the thread reads first
        self._publish(
            {k: i for k, i in instances.items() if i.status == "passing" or not self._passing_only},
            dropped=False,
        )
        return True

    def _publish(self, after: dict[str, Instance], *, dropped: bool) -> None:
        with self._lock:
            before = self._current
            self._dropped = dropped
            subscribers = list(self._subscribers)
        added, removed, changed = _diff(before, after)
        if not (added or removed or changed):
            return
        ordered = tuple(after[k] for k in sorted(after))
        with self._lock:
            self._current, self._sorted = after, ordered
        change = DiscoveryChange(
            self._service,
            added=added,
            removed=removed,
            changed=changed,
            instances=ordered,
        )
        for callback in subscribers:
            try:
                callback(change)
            except Exception:
                log.exception("a subscriber of discovery %s raised", self._service)

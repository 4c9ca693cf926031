"""The blocking-query loop that watches one Consul prefix (or document key).

It follows Consul's documented client contract (``features/blocking``):

- the index is parsed as an integer; a query never blocks on an index below 1;
- when a returned index is *lower* than the one asked for (snapshot restore, tombstone GC,
  another cluster), the index is reset: that response is a full read of the current state,
  so it is delivered as a whole :class:`Layer` (the hub diffs it) and becomes the new base;
- a wake-up with the same index, or with a new index but the same content, delivers
  nothing;
- the loop is rate-limited by a token bucket (``rate`` per second, ``burst``), so a server
  that answers at once forever cannot turn it into a busy loop;
- every request has a client-side read timeout of ``wait + wait/16 + timeout``, so a hung
  connection is noticed;
- errors back off exponentially with jitter (``retry_initial`` .. ``retry_max``) and are
  reported to the hub once per kind of failure; after an error the next good answer is read
  at once (index 0) and tells the hub the source is back, with its changes if any;
- an answer whose content cannot be used (bad value, broken document, a required document
  key deleted) keeps the last good and moves the index on: the loop blocks until the next
  change;
- a listing over ``max_keys``, refused while it is read (so with no index to block on), is
  handled like a failed read: reported once, re-read with the backoff, and delivered as a
  whole layer once the prefix is back under the cap.

The watcher knows the backend through nothing but what it is given: a
:class:`~confhub_consul._reader.ConsulReader`, a connection of its own (closed by
:meth:`Watcher.stop`), the :class:`~confhub_consul._reader.WatchedState` it starts from and
records into, and the hub's ``notify``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from confhub import Layer, LayerDelta, Notify, SourceError, kv

from ._http import Aborted, Connection
from ._index import query_index, went_back
from ._reader import ConsulReader, KVListing, WatchedState, failure_kind

log = logging.getLogger("confhub.consul")

Update = Layer | LayerDelta


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved; :meth:`take` waits for one."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self, stop: threading.Event) -> bool:
        """Take a token, waiting for one; False when ``stop`` was set meanwhile."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            if stop.wait((1.0 - self.tokens) / self.rate):
                return False
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        self.tokens -= 1.0
        return not stop.is_set()


class Watcher:
    """One watch thread: blocking queries through ``connection``, updates to ``notify``."""

    def __init__(
        self,
        reader: ConsulReader,
        connection: Connection,
        state: WatchedState,
        notify: Notify,
    ) -> None:
        self.reader = reader
        self.options = reader.options
        self.source = reader.source
        self.connection = connection
        self.state = state
        self.notify = notify
        self._backoff = kv.Backoff(self.options.retry_initial, self.options.retry_max)
        self._reports = kv.ReportOnce()  # failing: reported, and no good answer since
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"confhub-consul-watch[{self.source}]", daemon=True
        )

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop, wake a blocked query, join the thread and close the connection."""
        self._stop.set()
        self.connection.abort()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self.connection.close()

    def _run(self) -> None:
        try:
            self._loop()
        except Aborted:
            pass
        except Exception:  # pragma: no cover - a bug must not kill the watch silently
            log.exception("%s: the Consul watch stopped on an unexpected error", self.source)

    def _report(self, exc: SourceError) -> None:
        if self._reports.changed(failure_kind(exc)):
            log.debug("%s", exc)  # the hub logs the state change
            self.notify(exc)

    def _loop(self) -> None:
        opts = self.options
        bucket = TokenBucket(opts.rate, opts.burst)
        failures = 0  # failed reads in a row
        resync = False  # read at once and treat the next good answer as a whole state
        index, modify_indexes, layer = self.state.get()
        while bucket.take(self._stop):
            try:
                # After a failure, read at once (index 0) so recovery is delivered promptly.
                listing = self.reader.fetch(
                    self.connection, index=0 if resync else query_index(index), wait=opts.wait
                )
            except SourceError as exc:
                # Unreachable, refused, or a listing over max_keys (refused mid-read).
                if self._stop.is_set():
                    return
                self._report(exc)
                resync = True
                if self._stop.wait(self._backoff.delay(failures)):
                    return
                failures += 1
                continue
            if self._stop.is_set():
                return
            failures = 0
            back = went_back(index, listing.index)
            if back:
                log.info(
                    "%s: the Consul index went back from %d to %d (snapshot restore or "
                    "tombstone GC); resyncing",
                    self.source,
                    index,
                    listing.index,
                )
            if not back and not resync and listing.index == index:
                continue  # a wait that timed out: nothing changed
            whole, resync = back or resync, False
            index = query_index(listing.index)
            try:
                update, modify_indexes, layer = self._next(
                    listing, modify_indexes, layer, whole=whole
                )
            except SourceError as exc:
                # The read worked but its content cannot be used. Last good stays; the
                # index moved on, so the loop blocks until the next change (a deleted
                # document's query wakes when it is created again). Reading again at once
                # would get the same content, in a loop only the token bucket slows down.
                self._report(exc)
                continue
            self._delivered(index, modify_indexes, layer, update)

    def _next(
        self,
        listing: KVListing,
        modify_indexes: Mapping[str, int],
        layer: Layer | None,
        *,
        whole: bool,
    ) -> tuple[Update | None, Mapping[str, int], Layer]:
        """What to tell the hub about ``listing`` (None: nothing changed), the new
        ModifyIndex per key and the new layer; raises the SourceError of unusable content."""
        if whole or layer is None or self.options.document is not None:
            new_layer = self.reader.build(listing)
            new_indexes = listing.modify_indexes()
            if layer is not None and new_layer.values == layer.values:
                # Same content (a touch of the document, a resync that found no change).
                return self._back(listing), new_indexes, new_layer
            return new_layer, new_indexes, new_layer
        delta, new_indexes, new_layer = self.reader.delta(listing, modify_indexes, layer)
        # A new ModifyIndex with the same value (a flags-only change, a CAS rewrite)
        # changes no value: deliver nothing, as for a touched document.
        if _changes_values(delta, layer):
            return delta, new_indexes, new_layer
        return self._back(listing), new_indexes, new_layer

    def _back(self, listing: KVListing) -> Update | None:
        """What to send for an answer that changes no value: nothing, unless the hub was
        told of a failure; then "the source is back" (say a bad value was put back as it
        was, or an outage ended with no change)."""
        if not self._reports.failing:
            return None
        return kv.recovered(self.source, listing.index)

    def _delivered(
        self, index: int, modify_indexes: Mapping[str, int], layer: Layer, update: Update | None
    ) -> None:
        if self._reports.failing:
            log.info("%s: Consul answers again", self.source)
        self._reports.reset()
        self.state.record(index, modify_indexes, layer)
        if update is not None:
            self.notify(update)


def _changes_values(delta: LayerDelta, layer: Layer) -> bool:
    """Whether ``delta`` changes a value of ``layer`` (O(keys in the delta))."""
    if delta.deleted:
        return True
    values = layer.values
    return any(key not in values or values[key] != value for key, value in delta.set.items())

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
  reported to the hub once per state change (same kind of failure: reported once); after
  an error the next good answer is delivered as a whole layer (a resync);
- an answer whose content cannot be used (bad value, broken or deleted document) keeps the
  last good and moves the index on: the loop blocks until the next change;
- a listing over ``max_keys``, refused while it is read (so with no index to block on), is
  handled like a failed read: reported once, re-read with the backoff, and delivered as a
  whole layer once the prefix is back under the cap.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import TYPE_CHECKING

from confhub import Layer, LayerDelta, Notify, SourceError

from ._http import Aborted

if TYPE_CHECKING:
    from ._backend import ConsulBackend

log = logging.getLogger("confhub.consul")


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
    """One watch thread for a :class:`~confhub_consul._backend.ConsulBackend`."""

    def __init__(self, backend: ConsulBackend, notify: Notify) -> None:
        self.backend = backend
        self.notify = notify
        self.source = backend.source
        self._stop = threading.Event()
        self._conn = backend.new_connection()
        self._thread = threading.Thread(
            target=self._run, name=f"confhub-consul-watch[{self.source}]", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop, wake a blocked query and join the thread."""
        self._stop.set()
        self._conn.abort()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._conn.close()

    def _run(self) -> None:
        try:
            self._loop()
        except Aborted:
            pass
        except Exception:  # pragma: no cover - a bug must not kill the watch silently
            log.exception("%s: the Consul watch stopped on an unexpected error", self.source)

    def _loop(self) -> None:
        opts = self.backend.opts
        bucket = TokenBucket(opts.rate, opts.burst)
        backoff = opts.retry_initial
        reported: tuple[str, str] | None = None  # the failure last reported to the hub
        resync = False  # deliver the next good read as a whole layer
        index, mod, layer = self.backend.state()
        while bucket.take(self._stop):
            try:
                # After a failure, read at once (index 0) so recovery is delivered promptly.
                snap = self.backend.fetch(
                    self._conn, index=0 if resync else max(index, 1), wait=opts.wait
                )
            except SourceError as exc:
                # Unreachable, refused, or a listing over max_keys (a SourceFormatError
                # raised mid-read, naming max_keys + 1: the same text on every retry).
                if self._stop.is_set():
                    return
                state = (type(exc).__name__, _kind(exc))
                if state != reported:
                    reported = state
                    log.debug("%s", exc)  # the hub logs the state change
                    self.notify(exc)
                resync = True
                delay = backoff * random.uniform(0.5, 1.0)
                backoff = min(backoff * 2, opts.retry_max)
                if self._stop.wait(delay):
                    return
                continue
            if self._stop.is_set():
                return
            backoff = opts.retry_initial
            went_back = snap.index < index
            if went_back:
                log.info(
                    "%s: the Consul index went back from %d to %d (snapshot restore or "
                    "tombstone GC); resyncing",
                    self.source,
                    index,
                    snap.index,
                )
            if not went_back and not resync and snap.index == index:
                continue  # a wait that timed out: nothing changed
            # After a reported failure the hub shows the source stale: the next good answer
            # is delivered even when it only restores the last good values (a bad value
            # put back as it was), or the hub would never hear that the source is well.
            deliver = resync or reported is not None
            try:
                if went_back or resync or layer is None or opts.document is not None:
                    new_layer = self.backend.build(snap)
                    new_mod = {k: m for k, (m, _) in snap.entries.items()}
                    update: Layer | LayerDelta | None = new_layer
                    if not deliver and layer is not None and new_layer.values == layer.values:
                        update = None  # same content (a touch of the document)
                else:
                    delta, new_mod, new_layer = self.backend.delta(snap, mod, layer)
                    # A new ModifyIndex with the same value (a flags-only change, a CAS
                    # rewrite) changes no value: deliver nothing, as for a touched document.
                    update = delta if deliver or _changes_values(delta, layer) else None
            except SourceError as exc:
                # The read worked but its content cannot be used (a bad value, a leaf/parent
                # clash, a broken or deleted document). Last good stays; the index moves on
                # and the loop blocks until the next change (a deleted document's query
                # wakes when it is created again). Reading again at once would get the same
                # content, in a loop only the token bucket would slow down.
                index = max(snap.index, 1)
                resync = False
                state = (type(exc).__name__, str(exc))
                if state != reported:
                    reported = state
                    self.notify(exc)
                continue
            index = max(snap.index, 1)
            mod, layer = new_mod, new_layer
            if reported is not None:
                log.info("%s: Consul answers again", self.source)
            reported = None
            resync = False
            self.backend.set_state(index, mod, layer)
            if update is not None:
                self.notify(update)


def _changes_values(delta: LayerDelta, layer: Layer) -> bool:
    """Whether ``delta`` changes a value of ``layer`` (O(keys in the delta))."""
    if delta.deleted:
        return True
    values = layer.values
    return any(key not in values or values[key] != value for key, value in delta.set.items())


def _kind(exc: SourceError) -> str:
    """A coarse description of a failure, so the same failure is reported once."""
    text = str(exc)
    for word in ("cannot reach", "refused", "filtered", "answered 5", "answered 4", "closed"):
        if word in text:
            return word
    return text

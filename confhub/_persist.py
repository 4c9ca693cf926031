"""Persist: hands accepted layers to the plugins (the cache) on a thread of its own.

The cache writes a file with two fsyncs for each accepted layer. That must never delay a
subscriber, so it does not share the notifier's queue: :class:`Persister` keeps only the
latest accepted layer of each slot (a burst of updates writes once) and calls the
``confhub_layer_accepted`` hook from its ``confhub-persist`` thread. ``close()`` flushes
what is still pending, so nothing accepted before close is missing from disk, then joins.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ._layer import Layer
from ._spec import SourceSpec

log = logging.getLogger("confhub")

#: The hook call: ``accepted(spec=..., layer=..., backend=...)``.
Accepted = Callable[..., Any]
#: ``wanted(spec, backend)``: whether any plugin takes this source's layers (else they are
#: not offered at all, and a hub of sources nobody persists starts no thread).
Wanted = Callable[[SourceSpec, Any], bool]


class Persister:
    """Calls ``accepted(spec=, layer=, backend=)`` off the update path, coalesced per slot."""

    def __init__(self, accepted: Accepted, wanted: Wanted | None = None) -> None:
        self._accepted = accepted
        self._wanted = wanted
        self._cond = threading.Condition()
        # slot index -> the latest accepted (spec, layer, backend); insertion-ordered.
        self._pending: dict[int, tuple[SourceSpec, Layer, Any]] = {}
        self._stopping = False
        self._started = False
        self._thread: threading.Thread | None = None

    def offer(self, slot: int, spec: SourceSpec, layer: Layer, backend: Any) -> None:
        """Record ``layer`` as the latest accepted one of ``slot`` (replaces a pending one),
        unless no plugin takes the layers of this source."""
        if self._wanted is not None and not self._wanted(spec, backend):
            return
        with self._cond:
            self._pending.pop(slot, None)  # re-insert: written after the older slots
            self._pending[slot] = (spec, layer, backend)
            self._cond.notify()
            if self._started and self._thread is None and not self._stopping:
                self._spawn()

    @property
    def pending(self) -> int:
        """How many slots have an accepted layer not handed to the plugins yet."""
        return len(self._pending)

    def start(self) -> None:
        """Let the thread run: it starts with the first layer offered, so a hub whose
        sources are never cached (files, env) starts none."""
        with self._cond:
            self._started = True
            if self._pending and self._thread is None and not self._stopping:
                self._spawn()

    def _spawn(self) -> None:  # under self._cond
        self._thread = threading.Thread(target=self._run, name="confhub-persist", daemon=True)
        self._thread.start()

    def after_fork(self) -> None:
        """In a forked child (the hub's at-fork handler): a new condition, and a new thread
        once started; what is pending is written by this process."""
        self._cond = threading.Condition()
        self._thread = None
        if self._started:
            self.start()

    def close(self, timeout: float = 10.0) -> None:
        """Hand over what is pending, then stop and join the thread. Idempotent."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread  # none is started once _stopping is set
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=timeout)
        elif thread is None:
            self._flush()  # never started: flush on the closing thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return
            self._flush()

    def _flush(self) -> None:
        while True:
            with self._cond:
                if not self._pending:
                    return
                slot = next(iter(self._pending))
                spec, layer, backend = self._pending.pop(slot)
            try:
                self._accepted(spec=spec, layer=layer, backend=backend)
            except Exception:
                log.exception("a confhub plugin failed after an update; ignored")

"""Start-up retries: a required source keeps trying until the start ceiling.

At start a remote source gets one attempt of ``connect_timeout`` per member; when none
answered, no cache could serve and the source is required, the start would fail. On a
store that is slow because many processes start at once (a deploy, a host reboot), one
attempt each makes most of them fail together. :class:`StartRetries` gives such a slot more
rounds instead: it waits a capped, jittered backoff (``retry_initial`` doubling up to
``retry_max``, :class:`confhub.kv.Backoff`, so that the processes spread out instead of
coming back in step) and tries again, as long as the start ceiling (``start_timeout``)
leaves time for another attempt; the :class:`StartupError` then says how many rounds were
made and over how long. An optional source, a refusal (permissions) and broken content are
not retried: they are decided at once, as before.
"""

from __future__ import annotations

import threading
import time

from .kv import Backoff

#: A round is not started with less than this left before the ceiling (seconds): it could
#: not get an answer from a store that is merely slow.
MIN_ROUND = 0.05


class StartRetries:
    """The rounds of one slot's start: ``again()`` waits and says whether to try again."""

    def __init__(self, deadline: float, backoff: Backoff, stop: threading.Event | None) -> None:
        self.deadline = deadline
        self.backoff = backoff
        self.stop = stop
        self.started = time.monotonic()
        #: Rounds tried so far (each tries every member once).
        self.rounds = 1

    def again(self) -> bool:
        """Wait the next jittered delay; False (without waiting) when the ceiling would
        leave no time for a round after it, or when the hub was closed meanwhile."""
        delay = self.backoff.delay(self.rounds - 1)
        if self.deadline - time.monotonic() - delay < MIN_ROUND:
            return False
        stop = self.stop or threading.Event()
        if stop.wait(delay):
            return False
        self.rounds += 1
        return True

    def describe(self) -> str:
        """``"after 4 attempts in 9.6s"`` for the error message."""
        noun = "attempt" if self.rounds == 1 else "attempts"
        return f"after {self.rounds} {noun} in {time.monotonic() - self.started:.1f}s"

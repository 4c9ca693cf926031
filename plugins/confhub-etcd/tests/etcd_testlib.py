"""Helpers shared by the etcd tests (a separate module so its name cannot clash with the
core's ``conftest``)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

from confhub_etcd._client import Backoff, WatchBatch, WatchEvent, WatchStatus

#: Short reconnect backoff so fault tests finish quickly.
FAST = Backoff(initial=0.05, maximum=0.3, jitter=0.5)


class Recorder:
    """Collects watch batches and state reports; waits are bounded."""

    def __init__(self) -> None:
        self.batches: list[WatchBatch] = []
        self.states: list[WatchStatus] = []
        self._cond = threading.Condition()

    def on_batch(self, batch: WatchBatch) -> None:
        with self._cond:
            self.batches.append(batch)
            self._cond.notify_all()

    def on_state(self, status: WatchStatus) -> None:
        with self._cond:
            self.states.append(status)
            self._cond.notify_all()

    @property
    def events(self) -> list[WatchEvent]:
        with self._cond:
            return [e for b in self.batches for e in b.events]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"condition not met within {timeout}s; batches={self.batches[-5:]}, "
                        f"states={[s.state for s in self.states]}"
                    )
                self._cond.wait(min(left, 0.1))

    def wait_revision(self, revision: int, timeout: float = 10.0) -> None:
        self.wait_for(lambda: bool(self.batches) and self.batches[-1].revision >= revision, timeout)

    def state_names(self) -> list[str]:
        with self._cond:
            return [s.state.value for s in self.states]


def apply(state: dict[bytes, bytes], batches: list[WatchBatch]) -> dict[bytes, bytes]:
    """Fold batches into a key->value mapping, the way a consumer would."""
    for batch in batches:
        for event in batch.events:
            if event.kind.value == "delete":
                state.pop(event.key, None)
            else:
                state[event.key] = event.value
    return state


def assert_history_valid(batches: list[WatchBatch]) -> None:
    """Ordered, unique and atomic: revisions never go back, no (revision, key) twice, and no
    revision appears in two batches."""
    seen: set[tuple[int, bytes]] = set()
    last = 0
    for batch in batches:
        if batch.resync:
            assert batch.revision >= last
            last = batch.revision
            continue
        revisions = [e.mod_revision for e in batch.events]
        assert revisions == sorted(revisions), batch
        assert min(revisions) > last, f"revision {min(revisions)} after {last}: not ordered/atomic"
        for event in batch.events:
            assert (event.mod_revision, event.key) not in seen
            seen.add((event.mod_revision, event.key))
        assert batch.revision == max(revisions)
        last = batch.revision


@contextlib.contextmanager
def unanswered_endpoint() -> Iterator[str]:
    """``127.0.0.1:PORT`` where a TCP connect never completes: a listening socket that never
    accepts, its accept queue filled, so the kernel drops further SYNs (a blackhole on
    loopback, no root needed)."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        for _ in range(2):  # listen(0) queues one connection; one more to be sure
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(address)
        time.sleep(0.1)  # let the fillers' handshakes complete
        yield f"{address[0]}:{address[1]}"

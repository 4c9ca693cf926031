"""The faults injected into a test server (``ConsulTestServer.inject_status``, ``hang``,
``delay``, ``drip``, ``drop_connections``...): :class:`Faults` keeps them, picks the ones a
request matches (consuming one use of each), and parks a request a ``hang`` fault holds
until it is released, the fault is cleared, or the server stops. What each fault does to
the reply is the engine's (:meth:`confhub_consul._testserver.Engine.handle`).
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from typing import Literal

from confhub_consul._testproto import Request

__all__ = ["Fault", "FaultHandle", "FaultKind", "Faults"]

FaultKind = Literal["status", "drop", "hang", "delay", "drip"]


@dataclasses.dataclass
class Fault:
    """One injected fault; ``remaining`` uses left (``None``: until cleared)."""

    id: int
    kind: FaultKind
    path_prefix: str
    methods: frozenset[str] | None
    remaining: int | None
    status: int = 0
    body: str = ""
    delay: float = 0.0
    drip_headers: bool = False

    def matches(self, req: Request) -> bool:
        """Whether the fault applies to ``req`` (and has uses left)."""
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.methods is not None and req.method not in self.methods:
            return False
        return req.path.startswith(self.path_prefix)


@dataclasses.dataclass(frozen=True)
class FaultHandle:
    """A handle on one injected fault; ``clear()`` removes it."""

    id: int
    _faults: Faults = dataclasses.field(repr=False, compare=False)

    def clear(self) -> None:
        """Remove this fault; requests hung by it are released."""
        self._faults.clear(self.id)

    @property
    def remaining(self) -> int | None:
        """How many more requests the fault applies to (``None``: until cleared)."""
        return self._faults.remaining(self.id)


class Faults:
    """The faults of one test server; ``stopping`` ends every hang when set."""

    def __init__(self, stopping: threading.Event) -> None:
        self._stopping = stopping
        self._lock = threading.Lock()
        self._faults: dict[int, Fault] = {}
        self._ids = itertools.count(1)
        self._hang_release = threading.Condition()
        self._hang_generation = 0
        self._hung = 0

    def add(
        self,
        fault_kind: FaultKind,
        *,
        path_prefix: str,
        methods: frozenset[str] | None,
        times: int | None,
        status: int = 0,
        body: str = "",
        delay: float = 0.0,
        drip_headers: bool = False,
    ) -> FaultHandle:
        """Register a fault and return its handle."""
        if times is not None and times < 1:
            raise ValueError("times must be >= 1, or None for 'until cleared'")
        with self._lock:
            fid = next(self._ids)
            self._faults[fid] = Fault(
                fid, fault_kind, path_prefix, methods, times, status, body, delay, drip_headers
            )
        return FaultHandle(fid, self)

    def clear(self, fault_id: int) -> None:
        """Remove one fault and release requests it hung."""
        with self._lock:
            self._faults.pop(fault_id, None)
        self.release_hung()

    def clear_all(self) -> None:
        """Remove every fault and release every hung request."""
        with self._lock:
            self._faults.clear()
        self.release_hung()

    def remaining(self, fault_id: int) -> int | None:
        """A fault's remaining count (0 once used up or cleared)."""
        with self._lock:
            fault = self._faults.get(fault_id)
            if fault is None:
                return 0
            return fault.remaining

    def release_hung(self) -> None:
        """Let every currently hung request go on (they are answered normally)."""
        with self._hang_release:
            self._hang_generation += 1
            self._hang_release.notify_all()

    def take(self, req: Request) -> list[Fault]:
        """The faults that apply to ``req`` (copies), consuming one use of each."""
        picked: list[Fault] = []
        with self._lock:
            for fault in self._faults.values():
                if fault.matches(req):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    picked.append(dataclasses.replace(fault))
        return picked

    def hang(self, fault_id: int) -> bool:
        """Park until released, the fault is cleared, or the server stops; True if stopping."""
        with self._hang_release:
            generation = self._hang_generation
            self._hung += 1
            try:
                while not self._stopping.is_set():
                    if self._hang_generation != generation:
                        return False
                    with self._lock:
                        if fault_id not in self._faults:
                            return False
                    self._hang_release.wait(0.25)
            finally:
                self._hung -= 1
        return True

    @property
    def hung(self) -> int:
        """Number of requests currently parked by a ``hang`` fault."""
        with self._hang_release:
            return self._hung

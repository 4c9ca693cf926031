"""Value types of the etcd client layer: what reads, watches and writes hand back.

Frozen dataclasses and named tuples, not attrs: this layer stays confhub-independent (as
httpcore sits under httpx) and needs nothing beyond the standard library and gRPC.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ._errors import EtcdCASConflict

__all__ = [
    "Backoff",
    "CASResult",
    "Credentials",
    "EventKind",
    "KeyValue",
    "PrefixSnapshot",
    "TLSConfig",
    "WatchBatch",
    "WatchEvent",
    "WatchState",
    "WatchStatus",
    "fold",
    "key_text",
    "prefix_range_end",
    "resync_events",
    "to_bytes",
]


def to_bytes(value: str | bytes) -> bytes:
    """``value`` as bytes (UTF-8 for text)."""
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def key_text(key: bytes) -> str:
    """``key`` as text for messages and logs: UTF-8, undecodable bytes as ``\\xNN``
    (never a ``b'...'`` repr)."""
    return key.decode("utf-8", "backslashreplace")


def prefix_range_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix`` (``b"\\0"`` = all)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


#: Jitter from the OS's entropy: never touches the ``random`` module's state, and forked
#: children do not draw the same delays.
_JITTER = random.SystemRandom()


@dataclass(frozen=True, slots=True)
class Credentials:
    """User name and password for etcd's auth; the password never appears in a repr."""

    user: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """PEM files for TLS: the CA to trust and, for ``--client-cert-auth``, a client cert/key.

    ``ca_file=None`` trusts the system roots. Files are read when the client is created.
    """

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None


class KeyValue(NamedTuple):
    """One key as stored at a revision. ``repr`` shows the value's length, not the value.

    A named tuple, not a frozen dataclass: a load builds one per key, and a frozen
    dataclass's ``__init__`` (one ``object.__setattr__`` per field) cost ~1 us each, a
    quarter of reading 10,000 keys.
    """

    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int
    version: int

    def __repr__(self) -> str:
        return (
            f"KeyValue(key={self.key!r}, value=<{len(self.value)} bytes>, "
            f"mod_revision={self.mod_revision}, create_revision={self.create_revision}, "
            f"version={self.version})"
        )


@dataclass(frozen=True, slots=True)
class PrefixSnapshot:
    """Every key under a prefix at one ``revision`` (the store revision of the read)."""

    revision: int
    items: tuple[KeyValue, ...]

    def as_dict(self) -> dict[bytes, KeyValue]:
        return {kv.key: kv for kv in self.items}

    def revisions(self) -> dict[bytes, int]:
        """Each key's ``mod_revision``: all a watcher keeps to diff a later read against."""
        return {kv.key: kv.mod_revision for kv in self.items}


class EventKind(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change. For ``DELETE`` the value is ``b""`` and ``mod_revision`` is the deletion's
    revision (in a resync batch: the snapshot revision, the exact one being unknowable)."""

    kind: EventKind
    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int = 0
    version: int = 0

    def __repr__(self) -> str:
        return (
            f"WatchEvent({self.kind.name}, key={self.key!r}, value=<{len(self.value)} bytes>, "
            f"mod_revision={self.mod_revision})"
        )


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """The events of one watch response, or of one resync, applied as a unit.

    ``revision`` is the highest revision the batch completes: after applying it, the consumer
    has every change up to ``revision``. A response can span several revisions but a revision
    never spans batches. ``resync=True`` marks a batch computed by a full read (initial load or
    after compaction); ``compact_revision`` is the server's compaction point that forced it
    (0 for the initial load).
    """

    revision: int
    events: tuple[WatchEvent, ...]
    resync: bool = False
    compact_revision: int = 0


class WatchState(enum.Enum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    RESYNCED = "resynced"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class WatchStatus:
    """Passed to ``on_state``: the new state, the last applied revision, the endpoint in use,
    and for ``DISCONNECTED`` the error that caused it (an :class:`EtcdError`)."""

    state: WatchState
    revision: int
    endpoint: str | None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class CASResult:
    """Outcome of :meth:`EtcdClient.put_if_revision`.

    On success ``revision`` is the new revision (the key's new mod_revision). On a conflict
    ``revision`` is the store revision at the time and ``actual`` the key's current mod_revision
    (0 = absent).
    """

    succeeded: bool
    revision: int
    key: bytes
    expected: int
    actual: int

    def check(self) -> int:
        """Return the new revision, or raise :class:`EtcdCASConflict`."""
        if not self.succeeded:
            raise EtcdCASConflict(
                f"compare-and-swap on key {self.key!r} lost: expected mod_revision "
                f"{self.expected}, found {self.actual}; re-read the key and retry",
                key=self.key,
                expected=self.expected,
                actual=self.actual,
            )
        return self.revision


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter: attempt ``n`` waits about
    ``min(maximum, initial * multiplier**n)``, reduced by up to ``jitter`` (a fraction).

    The client layer's default for a :class:`PrefixWatcher`, kept here because this layer
    imports nothing from confhub; the confhub backend passes ``confhub.kv.Backoff`` (same
    ``delay(attempt)``), and a watcher takes any object with that method."""

    initial: float = 0.2
    maximum: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))
        return base * (1.0 - self.jitter * _JITTER.random())


# -- what a watcher keeps: each key's mod_revision ------------------------------------------------


def fold(known: dict[bytes, int], events: list[WatchEvent]) -> None:
    """Apply ``events`` to ``known`` (key -> mod_revision)."""
    for event in events:
        if event.kind is EventKind.DELETE:
            known.pop(event.key, None)
        else:
            known[event.key] = event.mod_revision


def resync_events(
    known: dict[bytes, int], snapshot: PrefixSnapshot, new: dict[bytes, int]
) -> list[WatchEvent]:
    """What changed between ``known`` and a full read (``new`` is its key -> mod_revision):
    puts for new or changed keys, deletes (at the read's revision) for the keys gone."""
    events = [
        WatchEvent(EventKind.PUT, kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.version)
        for kv in snapshot.items
        if known.get(kv.key) != kv.mod_revision
    ]
    events.extend(
        WatchEvent(EventKind.DELETE, key, b"", snapshot.revision) for key in known if key not in new
    )
    return events

"""In-memory Consul state behind :class:`confhub_consul.testing.ConsulTestServer`.

(The records it stores, :class:`KVEntry`, :class:`Session`, :class:`AclToken` and a
transaction's :class:`TxnKVOp`, are :mod:`confhub_consul._testrecords`'.)

One :class:`ConsulState` holds what a Consul cluster's state store would: the KV table, the KV
tombstones ("graveyard"), sessions, lock-delays and the single Raft index they all share. Every
method is thread-safe: state changes happen under one :class:`threading.Condition`, which is
notified on each commit so blocking queries can re-evaluate (see ``_testserver``).

Index rules follow ``shared/consul-api.md`` section 2.7; write rules follow sections 2.5, 2.6,
2.10 and 2.11 (idempotent writes keep ModifyIndex, CAS, lock/unlock, delete-CAS, txn rollback).
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable, Iterable

from confhub_consul._testrecords import (
    ANONYMOUS_ACCESSOR,
    READ_VERBS,
    AclToken,
    Behavior,
    KVEntry,
    Session,
    TxnKVOp,
)

__all__ = [  # the records are _testrecords', re-exported for the server's modules
    "ANONYMOUS_ACCESSOR",
    "READ_VERBS",
    "AclToken",
    "Behavior",
    "ConsulState",
    "InvalidSessionError",
    "KVEntry",
    "Session",
    "TxnKVOp",
]

MAX_LOCK_DELAY = 60.0
"""Consul's ``MaxLockDelay``: a longer LockDelay is stored but enforced as 60 s."""


class _OpError(Exception):
    """A txn op failed; the message is Consul's error text for it."""


class InvalidSessionError(_OpError):
    """An acquire named a session that does not exist (Consul answers 500)."""


class _Table:
    """The KV table plus graveyard, copied for a transaction and swapped in on success."""

    def __init__(self) -> None:
        self.entries: dict[str, KVEntry] = {}
        self.tombstones: dict[str, int] = {}
        self.index = 0  # max index of the KV and graveyard tables

    def copy(self) -> _Table:
        other = _Table()
        other.entries = dict(self.entries)
        other.tombstones = dict(self.tombstones)
        other.index = self.index
        return other


class ConsulState:
    """The whole in-memory state store, shared by every handler thread.

    ``clock`` is read for session TTLs and lock-delays only (inject a manual clock to drive them
    from tests); blocking-query timeouts always use real time.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        start_index: int = 10,
        session_ttl_multiplier: float = 2.0,
    ) -> None:
        self.cond = threading.Condition()
        self.clock = clock
        self.raft_index = start_index
        self.generation = 0  # bumped on snapshot restore: every blocking query returns
        self.session_ttl_multiplier = session_ttl_multiplier
        self._kv = _Table()
        self._sessions: dict[str, Session] = {}
        self._session_index = 0
        self._lock_delays: dict[str, float] = {}

    # ------------------------------------------------------------------ reads

    def get(self, key: str) -> KVEntry | None:
        """Return the entry stored under ``key``, or ``None``."""
        with self.cond:
            return self._kv.entries.get(key)

    def list_prefix(self, prefix: str) -> list[KVEntry]:
        """Return entries whose key starts with ``prefix`` (a string prefix), in byte order."""
        with self.cond:
            return self._list(self._kv, prefix)

    @staticmethod
    def _list(table: _Table, prefix: str) -> list[KVEntry]:
        found = [e for k, e in table.entries.items() if k.startswith(prefix)]
        found.sort(key=lambda e: e.key.encode("utf-8"))
        return found

    def kv_table_index(self) -> int:
        """Return the KV + tombstone table index (0 before the first KV write)."""
        with self.cond:
            return self._kv.index

    def key_index(self, key: str) -> int:
        """Index of a single-key read: its ModifyIndex, else the KV table index."""
        with self.cond:
            entry = self._kv.entries.get(key)
            return entry.modify_index if entry is not None else self._kv.index

    def prefix_index(self, prefix: str) -> int:
        """Index of a recurse/keys read: max ModifyIndex and tombstone under ``prefix``.

        Falls back to the KV table index when nothing (not even a tombstone) is under the
        prefix, and for the empty prefix, exactly as Consul's ``kvsListTxn``.
        """
        with self.cond:
            if not prefix:
                return self._kv.index
            best = 0
            for k, e in self._kv.entries.items():
                if k.startswith(prefix):
                    best = max(best, e.modify_index)
            for k, idx in self._kv.tombstones.items():
                if k.startswith(prefix):
                    best = max(best, idx)
            return best or self._kv.index

    def session_table_index(self) -> int:
        """Index of session reads."""
        with self.cond:
            return self._session_index

    def session(self, session_id: str) -> Session | None:
        """Return a live session, or ``None``."""
        with self.cond:
            return self._sessions.get(session_id)

    def sessions(self) -> list[Session]:
        """Return every live session ordered by creation."""
        with self.cond:
            return sorted(self._sessions.values(), key=lambda s: s.create_index)

    def in_lock_delay(self, key: str) -> bool:
        """Tell whether ``key`` is inside a lock-delay window."""
        with self.cond:
            until = self._lock_delays.get(key)
            return until is not None and self.clock() < until

    # ----------------------------------------------------------------- writes

    def _next_index(self) -> int:
        self.raft_index += 1
        return self.raft_index

    def _commit(self) -> None:
        self.cond.notify_all()

    def next_index(self) -> int:
        """Take the next Raft index (call under :attr:`cond`), for the agent's catalog."""
        return self._next_index()

    def commit(self) -> None:
        """Wake every blocking query to re-evaluate (call under :attr:`cond`)."""
        self._commit()

    def apply_kv(
        self, ops: list[TxnKVOp]
    ) -> tuple[list[tuple[KVEntry, bool]], list[tuple[int, str]]]:
        """Apply KV ops atomically under one Raft index, as ``/v1/txn`` and KV writes do.

        Returns ``(results, errors)``; ``errors`` lists ``(op_index, message)`` for every
        failing op, and when it is non-empty nothing was applied. Each result is
        ``(entry, with_value)``: Consul sends values only for ``get``, ``get-or-empty`` and
        ``get-tree`` results.
        """
        with self.cond:
            writes = any(op.verb not in READ_VERBS for op in ops)
            idx = self.raft_index + 1 if writes else self.raft_index
            table = self._kv.copy() if writes else self._kv
            results: list[tuple[KVEntry, bool]] = []
            errors: list[tuple[int, str]] = []
            for i, op in enumerate(ops):
                try:
                    out = self._apply_one(table, op, idx)
                except _OpError as exc:
                    errors.append((i, str(exc)))
                    continue
                with_value = op.verb in {"get", "get-or-empty", "get-tree"}
                results.extend((entry, with_value) for entry in out)
            if writes and not errors:
                self.raft_index = idx
                if table.index != self._kv.index:
                    self._kv = table
                    self._commit()
            return (results if not errors else []), errors

    def _apply_one(self, table: _Table, op: TxnKVOp, idx: int) -> list[KVEntry]:
        verb, key = op.verb, op.key
        existing = table.entries.get(key)
        if verb in {"get", "get-or-empty"}:
            if existing is None:
                if verb == "get":
                    raise _OpError(f'key "{key}" doesn\'t exist')
                return [KVEntry(key=key)]
            return [existing]
        if verb == "get-tree":
            return self._list(table, key)
        if verb == "check-index":
            if existing is None:
                raise _OpError(f'failed to check index, key "{key}" doesn\'t exist')
            if existing.modify_index != op.index:
                raise _OpError(
                    f'failed index check for key "{key}", current modify index '
                    f"{existing.modify_index} != {op.index}"
                )
            return [existing]
        if verb == "check-session":
            if existing is None:
                raise _OpError(f'failed to check session, key "{key}" doesn\'t exist')
            if (existing.session or "") != op.session:
                raise _OpError(
                    f'failed session check for key "{key}", current session '
                    f'"{existing.session or ""}" != "{op.session}"'
                )
            return [existing]
        if verb == "check-not-exists":
            if existing is not None:
                raise _OpError(f'key "{key}" exists')
            return []
        if verb == "set":
            return [self._set(table, op, idx)]
        if verb == "cas":
            ok = (
                existing is None
                if op.index == 0
                else (existing is not None and existing.modify_index == op.index)
            )
            if not ok:
                raise _OpError(f'failed to set key "{key}", index is stale')
            return [self._set(table, op, idx)]
        if verb == "lock":
            if op.session not in self._sessions:
                raise InvalidSessionError(f'invalid session "{op.session}"')
            if existing is not None and existing.session and existing.session != op.session:
                raise _OpError(f'failed to lock key "{key}", lock is already held')
            lock_index = existing.lock_index if existing is not None else 0
            if existing is None or existing.session != op.session:
                lock_index += 1
            entry = KVEntry(
                key=key,
                value=op.value,
                flags=op.flags,
                lock_index=lock_index,
                session=op.session,
            )
            return [self._put(table, entry, idx)]
        if verb == "unlock":
            if existing is None or existing.session != op.session:
                raise _OpError(
                    f'failed to unlock key "{key}", lock isn\'t held, or is held by another session'
                )
            entry = KVEntry(
                key=key,
                value=op.value,
                flags=op.flags,
                lock_index=existing.lock_index,
                session=None,
            )
            return [self._put(table, entry, idx)]
        if verb == "delete":
            self._delete(table, key, idx)
            return []
        if verb == "delete-cas":
            if existing is not None and existing.modify_index != op.index:
                raise _OpError(f'failed to delete key "{key}", index is stale')
            self._delete(table, key, idx)
            return []
        if verb == "delete-tree":
            for entry in self._list(table, key):
                self._delete(table, entry.key, idx)
            return []
        raise _OpError(f'unknown KV verb "{verb}"')

    @staticmethod
    def _put(table: _Table, entry: KVEntry, idx: int) -> KVEntry:
        existing = table.entries.get(entry.key)
        if existing is not None and existing.same_content(entry):
            return existing  # idempotent write: no index change, nobody woken
        entry = dataclasses.replace(
            entry,
            create_index=existing.create_index if existing is not None else idx,
            modify_index=idx,
        )
        table.entries[entry.key] = entry
        table.index = idx
        return entry

    def _set(self, table: _Table, op: TxnKVOp, idx: int) -> KVEntry:
        key, value, flags = op.key, op.value, op.flags
        existing = table.entries.get(key)
        # A plain set keeps the lock holder; LockIndex comes from the request (0), as in
        # Consul's kvsSetTxn.
        keep = existing.session if existing is not None else None
        entry = KVEntry(key=key, value=value, flags=flags, lock_index=0, session=keep)
        return self._put(table, entry, idx)

    @staticmethod
    def _delete(table: _Table, key: str, idx: int) -> None:
        if table.entries.pop(key, None) is not None:
            table.tombstones[key] = idx
            table.index = idx

    # Single-request KV writes, as the HTTP KV endpoint issues them.

    def set(self, key: str, value: bytes, *, flags: int = 0, cas: int | None = None) -> bool:
        """Store ``value`` (optionally check-and-set); return Consul's ``true``/``false``."""
        op = TxnKVOp("set" if cas is None else "cas", key, value, flags, cas or 0)
        return not self.apply_kv([op])[1]

    def acquire(self, key: str, value: bytes, session: str, *, flags: int = 0) -> bool:
        """Lock ``key`` for ``session``; ``False`` if held elsewhere or in lock-delay.

        Raises :class:`InvalidSessionError` for an unknown session.
        """
        with self.cond:
            if self.in_lock_delay(key):
                return False
            errors = self.apply_kv([TxnKVOp("lock", key, value, flags, 0, session)])[1]
            if errors and errors[0][1].startswith("invalid session"):
                raise InvalidSessionError(errors[0][1])
            return not errors

    def release(self, key: str, value: bytes, session: str, *, flags: int = 0) -> bool:
        """Unlock ``key`` if ``session`` holds it, storing ``value``."""
        return not self.apply_kv([TxnKVOp("unlock", key, value, flags, 0, session)])[1]

    def delete(self, key: str, *, cas: int | None = None, recurse: bool = False) -> bool:
        """Delete a key (CAS or recursive on request); return Consul's ``true``/``false``."""
        verb = "delete-tree" if recurse else ("delete" if cas is None else "delete-cas")
        return not self.apply_kv([TxnKVOp(verb, key, index=cas or 0)])[1]

    # -------------------------------------------------------------- sessions

    def create_session(
        self,
        *,
        name: str,
        node: str,
        lock_delay: float,
        behavior: Behavior,
        ttl: float,
        ttl_text: str,
        node_checks: tuple[str, ...] = ("serfHealth",),
        service_checks: tuple[str, ...] = (),
    ) -> Session:
        """Create a session and return it."""
        with self.cond:
            idx = self._next_index()
            sess = Session(
                id=str(uuid.uuid4()),
                name=name,
                node=node,
                lock_delay=lock_delay,
                behavior=behavior,
                ttl=ttl,
                ttl_text=ttl_text,
                create_index=idx,
                modify_index=idx,
                expires_at=self._expiry(ttl),
                node_checks=node_checks,
                service_checks=service_checks,
            )
            self._sessions[sess.id] = sess
            self._session_index = idx
            self._commit()
            return sess

    def _expiry(self, ttl: float) -> float | None:
        return self.clock() + ttl * self.session_ttl_multiplier if ttl > 0 else None

    def renew_session(self, session_id: str) -> Session | None:
        """Reset a session's TTL timer; ``None`` when unknown or already expired."""
        with self.cond:
            self.expire_sessions()
            sess = self._sessions.get(session_id)
            if sess is None:
                return None
            sess = dataclasses.replace(sess, expires_at=self._expiry(sess.ttl))
            self._sessions[session_id] = sess
            return sess

    def destroy_session(self, session_id: str) -> None:
        """Invalidate a session (idempotent), releasing or deleting the keys it holds."""
        with self.cond:
            sess = self._sessions.pop(session_id, None)
            if sess is None:
                return
            idx = self._next_index()
            self._session_index = idx
            now = self.clock()
            for entry in list(self._kv.entries.values()):
                if entry.session != session_id:
                    continue
                if sess.lock_delay > 0:
                    # Consul caps the enforced delay at MaxLockDelay (60 s).
                    self._lock_delays[entry.key] = now + min(sess.lock_delay, MAX_LOCK_DELAY)
                if sess.behavior == "delete":
                    self._delete(self._kv, entry.key, idx)
                else:
                    released = dataclasses.replace(entry, session=None, modify_index=idx)
                    self._kv.entries[entry.key] = released
                    self._kv.index = idx
            self._commit()

    def sessions_bound_to(self, check_ids: Iterable[str]) -> list[str]:
        """IDs of live sessions bound to any of ``check_ids`` (node or service checks)."""
        wanted = set(check_ids)
        with self.cond:
            return [
                s.id
                for s in self._sessions.values()
                if wanted & set(s.node_checks) or wanted & set(s.service_checks)
            ]

    def expire_sessions(self) -> list[str]:
        """Invalidate every session whose TTL timer ran out; return their IDs."""
        with self.cond:
            now = self.clock()
            expired = [
                s.id
                for s in self._sessions.values()
                if s.expires_at is not None and s.expires_at <= now
            ]
            for sid in expired:
                self.destroy_session(sid)
            return expired

    # ------------------------------------------------------- fault injection

    def restore_snapshot(self, index: int) -> None:
        """Simulate a snapshot restore: every index drops to at most ``index``.

        Tombstones are dropped (they were GC'd before the snapshot) and every blocking query
        is woken, as Consul abandons its state store on restore.
        """
        if index < 1:
            raise ValueError("index must be >= 1")
        with self.cond:
            self.raft_index = index
            self._kv.entries = {
                k: dataclasses.replace(
                    e,
                    create_index=min(e.create_index, index),
                    modify_index=min(e.modify_index, index),
                )
                for k, e in self._kv.entries.items()
            }
            self._kv.tombstones.clear()
            self._kv.index = min(self._kv.index, index)
            self._session_index = min(self._session_index, index)
            self.generation += 1
            self._commit()

    def gc_tombstones(self) -> None:
        """Drop every tombstone, as Consul's tombstone GC does (prefix indexes may go back)."""
        with self.cond:
            self._kv.tombstones.clear()

    def wake_all(self) -> None:
        """Wake every waiter so it re-checks stop flags."""
        with self.cond:
            self._commit()

    def keys(self) -> list[str]:
        """Every stored key, in byte order."""
        return [e.key for e in self.list_prefix("")]

    def load(self, entries: Iterable[tuple[str, bytes, int]]) -> None:
        """Store several ``(key, value, flags)`` at one index (fixtures)."""
        self.apply_kv([TxnKVOp("set", k, v, f) for k, v, f in entries])

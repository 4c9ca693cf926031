"""In-memory Consul state behind :class:`confhub_consul.testing.ConsulTestServer`.

One :class:`ConsulState` holds what a Consul cluster's state store would: the KV table, the KV
tombstones ("graveyard"), sessions, lock-delays and the single Raft index they all share. Every
method is thread-safe: state changes happen under one :class:`threading.Condition`, which is
notified on each commit so blocking queries can re-evaluate (see ``_testserver``).

Index rules follow ``shared/consul-api.md`` section 2.7; write rules follow sections 2.5, 2.6,
2.10 and 2.11 (idempotent writes keep ModifyIndex, CAS, lock/unlock, delete-CAS, txn rollback).
"""

from __future__ import annotations

import base64
import dataclasses
import threading
import types
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

__all__ = [
    "ANONYMOUS_ACCESSOR",
    "AclToken",
    "ConsulState",
    "KVEntry",
    "Session",
    "TxnKVOp",
]

ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
"""AccessorID of Consul's built-in anonymous token."""

_LEVELS = {"deny": 0, "read": 1, "list": 2, "write": 3}
MAX_LOCK_DELAY = 60.0
"""Consul's ``MaxLockDelay``: a longer LockDelay is stored but enforced as 60 s."""

Behavior = Literal["release", "delete"]


@dataclasses.dataclass(frozen=True)
class KVEntry:
    """One stored KV entry, as Consul's ``structs.DirEntry``.

    Attributes mirror the JSON fields: ``lock_index`` (LockIndex), ``key`` (Key), ``flags``
    (Flags, a uint64), ``value`` (raw bytes; empty is sent as ``null``), ``session`` (the lock
    holder or ``None``), ``create_index`` and ``modify_index`` (Raft indexes).
    """

    key: str
    value: bytes = b""
    flags: int = 0
    lock_index: int = 0
    session: str | None = None
    create_index: int = 0
    modify_index: int = 0

    def to_json(self, *, with_value: bool = True) -> dict[str, Any]:
        """Return the entry as Consul's JSON object, in Consul's field order."""
        out: dict[str, Any] = {
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            "Value": (
                base64.b64encode(self.value).decode("ascii") if with_value and self.value else None
            ),
        }
        if self.session:
            out["Session"] = self.session
        out["CreateIndex"] = self.create_index
        out["ModifyIndex"] = self.modify_index
        return out

    def same_content(self, other: KVEntry) -> bool:
        """Tell whether a write of ``other`` over ``self`` would be a no-op (Consul >= 1.6)."""
        return (
            self.value == other.value
            and self.flags == other.flags
            and self.session == other.session
            and self.lock_index == other.lock_index
        )


@dataclasses.dataclass(frozen=True)
class Session:
    """A Consul session as the test server keeps it.

    ``lock_delay`` and ``ttl`` are seconds (``ttl`` 0 means no TTL); ``ttl_text`` is the TTL as
    the client sent it (Consul echoes that string); ``expires_at`` is a reading of the server's
    clock, or ``None`` without TTL.
    """

    id: str
    name: str
    node: str
    lock_delay: float
    behavior: Behavior
    ttl: float
    ttl_text: str
    create_index: int
    modify_index: int
    expires_at: float | None
    #: Checks the session is bound to: it is invalidated when one turns critical or goes.
    node_checks: tuple[str, ...] = ("serfHealth",)
    service_checks: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Return the session as Consul's JSON object."""
        return {
            "ID": self.id,
            "Name": self.name,
            "Node": self.node,
            "LockDelay": round(self.lock_delay * 1e9),
            "Behavior": self.behavior,
            "TTL": self.ttl_text,
            "NodeChecks": list(self.node_checks),
            "ServiceChecks": (
                [{"ID": c, "Namespace": ""} for c in self.service_checks]
                if self.service_checks
                else None
            ),
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclasses.dataclass(frozen=True)
class AclToken:
    """An ACL token and its rules, for a test server started with ``acl_enabled=True``.

    ``key_prefix`` maps a key prefix to ``"deny"``, ``"read"``, ``"list"`` or ``"write"`` (the
    longest matching prefix wins, as in Consul); ``key`` does the same for exact keys and wins
    over prefixes. ``session`` and ``agent`` grant ``session:<level>`` and ``agent:<level>`` on
    every node. A ``management`` token may do everything. Rules not given fall back to the
    server's ``acl_default_policy``.
    """

    secret_id: str
    accessor_id: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    key_prefix: Mapping[str, str] = dataclasses.field(default_factory=dict)
    key: Mapping[str, str] = dataclasses.field(default_factory=dict)
    session: str | None = None
    agent: str | None = None
    management: bool = False
    #: ``service:<level>`` on every service (registration needs write, health reads read).
    service: str | None = None

    def __post_init__(self) -> None:
        for rules in (self.key_prefix, self.key):
            for level in rules.values():
                if level not in _LEVELS:
                    raise ValueError(f"unknown ACL policy {level!r}; use one of {sorted(_LEVELS)}")
        # Freeze the rule tables so the token really is a value.
        object.__setattr__(self, "key_prefix", types.MappingProxyType(dict(self.key_prefix)))
        object.__setattr__(self, "key", types.MappingProxyType(dict(self.key)))

    @property
    def is_anonymous(self) -> bool:
        """Whether this is the built-in anonymous token."""
        return self.accessor_id == ANONYMOUS_ACCESSOR

    def key_level(self, key: str, default: str) -> int:
        """Return the numeric policy level this token has on ``key``."""
        if self.management:
            return _LEVELS["write"]
        if key in self.key:
            return _LEVELS[self.key[key]]
        best: str | None = None
        for prefix in self.key_prefix:
            if key.startswith(prefix) and (best is None or len(prefix) > len(best)):
                best = prefix
        if best is None:
            return _LEVELS[default]
        return _LEVELS[self.key_prefix[best]]

    def can_write_prefix(self, prefix: str, default: str) -> bool:
        """Tell whether the token may write every key under ``prefix`` (recursive delete)."""
        if self.key_level(prefix, default) < _LEVELS["write"]:
            return False
        rules = [*self.key_prefix.items(), *self.key.items()]
        return all(
            _LEVELS[level] >= _LEVELS["write"]
            for rule, level in rules
            if rule.startswith(prefix) and rule != prefix
        )

    def other_level(self, resource: Literal["session", "agent", "service"], default: str) -> int:
        """Return the numeric level for a ``session``, ``agent`` or ``service`` rule."""
        if self.management:
            return _LEVELS["write"]
        level = {"session": self.session, "agent": self.agent, "service": self.service}[resource]
        return _LEVELS[level if level is not None else default]


@dataclasses.dataclass(frozen=True)
class TxnKVOp:
    """One decoded ``{"KV": {...}}`` transaction operation."""

    verb: str
    key: str
    value: bytes = b""
    flags: int = 0
    index: int = 0
    session: str = ""


READ_VERBS = frozenset(
    {"get", "get-tree", "check-index", "check-session", "check-not-exists", "get-or-empty"}
)
"""Txn verbs that do not write; a txn made only of these takes the read path."""


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

"""The records of the Consul test server's state (:mod:`confhub_consul._teststate`): a KV
entry, a session, an ACL token and its rules, one KV operation of a transaction, each shown
as Consul's JSON shows it. Frozen values, no behaviour beyond reading them.
"""

from __future__ import annotations

import base64
import dataclasses
import types
import uuid
from collections.abc import Mapping
from typing import Any, Literal

__all__ = [
    "ANONYMOUS_ACCESSOR",
    "READ_VERBS",
    "AclToken",
    "Behavior",
    "KVEntry",
    "Session",
    "TxnKVOp",
]

ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
"""AccessorID of Consul's built-in anonymous token."""

_LEVELS = {"deny": 0, "read": 1, "list": 2, "write": 3}

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

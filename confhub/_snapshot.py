"""Snapshots (the immutable merged view) and the events that describe their changes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

import attrs

from ._errors import ConfigKeyError, HubStateError
from ._layer import Layer, unflatten
from ._merge import EMPTY, MISSING, Merged

#: At most this many leaves are memoized per snapshot for fast reads (see Snapshot.read).
_MEMO_MAX = 4096


def _deep_freeze_tree(tree: dict[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(
        {k: _deep_freeze_tree(v) if isinstance(v, dict) else v for k, v in tree.items()}
    )


class Snapshot(Mapping[str, Any]):
    """One immutable, merged configuration, numbered by ``generation``.

    A snapshot is a read-only mapping: ``snap["db"]["port"]`` and ``snap["db.port"]`` both
    work (dotted keys address nested values), ``snap.get("db.port", 5432)`` too. Iteration
    yields the top-level keys. Nested mappings are read-only views; lists are tuples.
    Snapshots never change once published, so they can be shared between threads freely.
    """

    __slots__ = (
        "_layers",
        "_memo",
        "_merged",
        "_names",
        "_nested",
        "_values",
        "generation",
        "memo",
    )

    def __init__(
        self,
        generation: int,
        merged: Merged,
        layers: tuple[Layer | None, ...],
        names: tuple[str, ...],
    ) -> None:
        self.generation = generation
        self._merged = merged
        self._values = merged.values
        self._layers = layers
        self._names = names
        self._nested: Mapping[str, Any] | None = None
        #: Leaves already read, in a plain dict: a hit costs one dict lookup, a few ns
        #: under the persistent map's. Filled by :meth:`read`, at most _MEMO_MAX keys.
        self._memo: dict[str, Any] = {}
        #: A read-only view of the leaves already read: the hub's fast path reads
        #: ``snap.memo[key]`` and, on a ``KeyError``, :meth:`read` (not every leaf is in it).
        self.memo: Mapping[str, Any] = MappingProxyType(self._memo)

    # -- what it was built from (read-only; for the hub's stages) ----------------------------
    @property
    def layers(self) -> tuple[Layer | None, ...]:
        """The layer of each precedence slot, lowest first (``None``: contributes nothing)."""
        return self._layers

    @property
    def names(self) -> tuple[str, ...]:
        """The display name of each precedence slot, lowest first."""
        return self._names

    @property
    def merged(self) -> Merged:
        """The merge result this snapshot wraps (values, origins, parent counts)."""
        return self._merged

    def tree(self) -> Mapping[str, Any]:
        """The configuration as nested read-only mappings (built once, on first need)."""
        return self._tree()

    def lookup(self, key: str, default: Any = MISSING) -> Any:
        """The slow path of a read: a table (a read-only mapping), ``default``, or
        :class:`ConfigKeyError` naming the sources when ``default`` is not given."""
        return self._lookup(key, default)

    def ensure_usable(self) -> Snapshot:
        """Return this snapshot; before start and after close, raise :class:`HubStateError`."""
        return self

    # -- reads ---------------------------------------------------------------------------
    def _tree(self) -> Mapping[str, Any]:
        # Built on first need and memoized; a benign race builds it twice at worst.
        tree = self._nested
        if tree is None:
            tree = self._nested = _deep_freeze_tree(unflatten(self._values.items()))
        return tree

    def read(self, key: str, default: Any = MISSING) -> Any:
        """A read that missed :attr:`memo`: the leaf (now memoized), else :meth:`lookup`.

        The fast path of a read is ``snap.memo[key]``, falling back to this on a
        ``KeyError``; both answer from this one snapshot.
        """
        try:
            value = self._values[key]
        except KeyError:
            return self._lookup(key, default)
        memo = self._memo
        if len(memo) < _MEMO_MAX:
            memo[key] = value  # a benign race: two readers store the same value
        return value

    def _lookup(self, key: str, default: Any) -> Any:
        """Slow path of a read: a parent key (returns a mapping) or a missing key."""
        if key in self._merged.inner:
            node: Any = self._tree()
            for part in key.split("."):
                node = node[part]
            return node
        if default is not MISSING:
            return default
        raise ConfigKeyError(key, self._missing_message(key))

    def _missing_message(self, key: str) -> str:
        parent = key.rpartition(".")[0]
        while parent and parent not in self._merged.inner and parent not in self._values:
            parent = parent.rpartition(".")[0]
        hint = ""
        if parent in self._values:
            hint = f"; {parent!r} is a value, not a table"
        elif parent:
            siblings = sorted(
                {
                    k[len(parent) + 1 :].split(".", 1)[0]
                    for k in self._values
                    if k.startswith(parent + ".")
                }
            )
            hint = f"; keys under {parent!r}: {', '.join(siblings[:10])}"
        return (
            f"no source provides {key!r}{hint}; sources (lowest first): "
            f"{', '.join(self._names) or 'none'}; pass default= or add the key to a source"
        )

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value at dotted ``key``, or ``default`` when no source provides it."""
        try:
            return self._memo[key]
        except KeyError:
            return self.read(key, default)

    def __getitem__(self, key: str) -> Any:
        try:
            return self._memo[key]
        except KeyError:
            return self.read(key, MISSING)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (key in self._values or key in self._merged.inner)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tree())

    def __len__(self) -> int:
        return len(self._tree())

    def flat(self) -> Mapping[str, Any]:
        """Return the leaves keyed by dotted path (a read-only mapping)."""
        return self._values

    def to_dict(self) -> dict[str, Any]:
        """Return a plain, mutable nested ``dict`` copy (lists stay tuples)."""
        return unflatten(self._values.items())

    def origin_index(self, key: str) -> int | None:
        """The precedence slot the leaf ``key`` came from, or ``None``."""
        return self._merged.origins.get(key)

    def __repr__(self) -> str:
        return f"<Snapshot generation={self.generation} keys={len(self._values)}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Snapshot):
            return bool(self._values == other._values)
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]


class UnusableSnapshot(Snapshot):
    """Stands in for a snapshot before start and after close, so reads fail clearly."""

    __slots__ = ("_why",)

    def __init__(self, why: str) -> None:
        super().__init__(-1, EMPTY, (), ())
        self._why = why

    def _lookup(self, key: str, default: Any) -> Any:
        raise HubStateError(self._why)

    def ensure_usable(self) -> Snapshot:
        raise HubStateError(self._why)

    def __iter__(self) -> Iterator[str]:
        raise HubStateError(self._why)

    def __len__(self) -> int:
        raise HubStateError(self._why)

    def flat(self) -> Mapping[str, Any]:
        raise HubStateError(self._why)

    def to_dict(self) -> dict[str, Any]:
        raise HubStateError(self._why)


@attrs.frozen
class KeyChange:
    """One effective key that changed; ``old``/``new`` is :data:`confhub.MISSING` when absent."""

    key: str
    old: Any
    new: Any


@attrs.frozen
class Change:
    """A published change of the merged view.

    ``generation`` is the new snapshot's number, ``changes`` the effective keys that changed
    (sorted by key) and ``source`` the display name of the source whose update caused it.
    A change a higher layer masks is never published. ``fetched_at`` is when confhub read
    that update from its source (``time.time()``; the earliest one when the notifier merged
    several updates into one change), so ``time.time() - change.fetched_at`` in a callback is
    the update's delay through confhub; ``None`` when unknown.
    """

    generation: int
    changes: tuple[KeyChange, ...]
    source: str
    fetched_at: float | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        """The dotted keys that changed."""
        return tuple(c.key for c in self.changes)

    def __iter__(self) -> Iterator[KeyChange]:
        return iter(self.changes)

    def __len__(self) -> int:
        return len(self.changes)

    def get(self, key: str) -> KeyChange | None:
        """Return the change of ``key`` in this event, or ``None``."""
        return next((c for c in self.changes if c.key == key), None)

    def filtered(self, prefix: str) -> Change | None:
        """This change restricted to keys at or below ``prefix``; ``None`` if none are."""
        if not prefix:
            return self
        dotted = prefix + "."
        kept = tuple(c for c in self.changes if c.key == prefix or c.key.startswith(dotted))
        if not kept:
            return None
        if len(kept) == len(self.changes):
            return self
        return Change(self.generation, kept, self.source, self.fetched_at)


@attrs.frozen
class ErrorEvent:
    """A source update that was rejected; the last good configuration stays in force.

    ``error`` is the exception (a :class:`SourceFormatError`, :class:`ConfigValidationError`
    or :class:`SourceUnavailableError`), ``generation`` the generation still being served.
    """

    source: str
    error: BaseException
    generation: int

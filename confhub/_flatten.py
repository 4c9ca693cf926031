"""Flat data: nested documents made into dotted keys, and the read-only mapping a layer
keeps them in.

:func:`flatten_counted` walks a parsed document once: dotted keys, read-only leaves, and
the parent counts a layer needs (``Layer.inner``). :class:`Leaves` holds a layer's values
as a plain dict that refuses changes (reads at dict speed, nothing to build at load), and
:func:`persistent` gives the persistent map (:mod:`immutables`) that updates need, built
once, on the first update, and shared by every later one.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from itertools import repeat
from operator import itemgetter
from types import MappingProxyType
from typing import Any, NoReturn, TypeAlias

import immutables

from . import _docbounds
from ._docbounds import _Where, check_bounds
from ._errors import SourceFormatError

#: ``immutables.Map`` is generic at runtime but not in its stubs; these names keep it readable.
Values: TypeAlias = "immutables.Map[str, Any]"


def prefixes(key: str) -> Iterator[str]:
    """Yield the proper prefixes of a dotted key, shortest first: ``a.b.c`` -> ``a``, ``a.b``."""
    start = 0
    while True:
        dot = key.find(".", start)
        if dot < 0:
            return
        yield key[:dot]
        start = dot + 1


_SCALARS = frozenset({str, int, bool, type(None)})


def freeze(value: Any) -> Any:
    """Return ``value`` made read-only all the way down (lists become tuples)."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze(v) for k, v in value.items()})
    if type(value) is tuple:
        items = [freeze(v) for v in value]
        # Already frozen all the way down: keep it (a cached or re-delivered layer).
        return value if all(a is b for a, b in zip(items, value, strict=True)) else tuple(items)
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(freeze(v) for v in value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return value


def frozen_leaves(values: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    """``values`` with every leaf read-only (see :func:`freeze`); the same mapping when all
    already are. A non-finite float is a :class:`SourceFormatError` naming its key."""
    out: dict[str, Any] | None = None
    scalars = _SCALARS
    for key, value in values.items():
        kind = type(value)
        if kind in scalars or (kind is float and -math.inf < value < math.inf):
            continue
        try:
            frozen = freeze(value)
        except ValueError as exc:
            raise SourceFormatError(
                f"{source}: value of {key!r} is not allowed: {exc}", source=source, key=key
            ) from None
        if frozen is not value:
            if out is None:
                out = dict(values)
            out[key] = frozen
    return values if out is None else out


def flatten(data: Mapping[str, Any], *, source: str, _prefix: str = "") -> dict[str, Any]:
    """Flatten a nested mapping into dotted keys, freezing leaves.

    Empty mappings contribute no key. Keys that collide once flattened (``{"a.b": 1,
    "a": {"b": 2}}``) raise :class:`SourceFormatError` naming both.
    """
    out: dict[str, Any] = {}
    _flatten_into(out, data, _prefix, source, {}, True, 0, None)
    return out


def flatten_counted(
    data: Mapping[str, Any], *, source: str, bounds: _Where | None = None
) -> tuple[dict[str, Any], dict[str, int]]:
    """:func:`flatten`, plus the parent counts of the result (``Layer.inner``).

    The counts come from the walk itself (the leaves each nested mapping added); only when
    a source key holds a dot (``"a.b" = 1``, whose parents the walk does not visit) or is
    not a string are they counted again from the dotted keys.

    ``bounds``: the document's bounds were not checked yet (``parse_unwalked``): this walk
    checks the nesting depth and the value count too. On anything it refuses, the
    parser's own walk runs and raises the parser's error, else the plain walk raises its
    own: the same error, whichever walk found it, as when the parser had walked first.
    """
    if bounds is not None:
        try:
            return _flatten_counted(data, source, [_docbounds.MAX_NODES])
        except (_OutOfBounds, SourceFormatError):
            check_bounds(data, bounds)  # a bound is broken: the parser's error
    return _flatten_counted(data, source, None)


def _flatten_counted(
    data: Mapping[str, Any], source: str, budget: list[int] | None
) -> tuple[dict[str, Any], dict[str, int]]:
    out: dict[str, Any] = {}
    counts: dict[str, int] = {}
    if not _flatten_into(out, data, "", source, counts, True, 0, budget):
        counts = _inner_counts(out)
    return out, counts


class _OutOfBounds(Exception):
    """A document bound is broken (the parser's walk then says which)."""


def _charge(node: Any, depth: int, budget: list[int]) -> None:
    """What the parser's walk charges for ``node`` and what it holds (tables, lists)."""
    stack = [(node, depth)]
    while stack:
        node, depth = stack.pop()
        budget[0] -= len(node) + 1
        if depth > _docbounds.MAX_DEPTH or budget[0] < 0:
            raise _OutOfBounds
        for child in node.values() if isinstance(node, Mapping) else node:
            if isinstance(child, (Mapping, list, tuple)):
                stack.append((child, depth + 1))


#: Leaf types a mapping can be flattened with in one step (floats still need a finite check).
_PLAIN = frozenset({str, int, bool, type(None), float})


def _flatten_into(
    out: dict[str, Any],
    data: Mapping[str, Any],
    prefix: str,
    source: str,
    counts: dict[str, int],
    clean: bool,
    depth: int,
    budget: list[int] | None,
) -> bool:
    """Flatten ``data`` (under ``prefix``) into ``out``, adding to ``counts`` the leaves each
    nested mapping contributed.

    ``clean``: no source key so far held a dot or was not a string, so a new dotted key
    cannot already be in ``out`` (each is a distinct path of the tree). Returns the same
    for the walk up to the end of ``data``; False also means ``counts`` may be incomplete.
    ``budget``: see :func:`flatten_counted` (``None``: bounds checked already).
    """
    if budget is not None:
        budget[0] -= len(data) + 1
        if depth > _docbounds.MAX_DEPTH or budget[0] < 0:
            raise _OutOfBounds
    # The common case, a mapping of plain leaves under plain keys, in C-level steps: every
    # key a non-empty string without a dot, every leaf a scalar (floats finite).
    kinds = set(map(type, data.values()))
    if kinds <= _PLAIN and "" not in data:
        try:
            joined = "".join(data)
        except TypeError:
            joined = "."  # a key that is not a string: the loop below
        if "." not in joined and (
            float not in kinds
            or all(map(math.isfinite, [v for v in data.values() if type(v) is float]))
        ):
            keys = map((prefix + ".").__add__, data) if prefix else iter(data)
            if clean:
                out.update(zip(keys, data.values(), strict=True))
                return True
            # A dotted key elsewhere ("a.b" = 1) may have reached one of these first.
            listed = list(keys)
            if out.keys().isdisjoint(listed):
                out.update(zip(listed, data.values(), strict=True))
                return False
    scalars = _SCALARS
    for raw_key, value in data.items():
        if not isinstance(raw_key, str):
            raw_key = str(raw_key)
            clean = False
        key = f"{prefix}.{raw_key}" if prefix else raw_key
        kind = type(value)
        if (
            (kind in scalars or (kind is float and -math.inf < value < math.inf))
            and "." not in raw_key
            and raw_key
            and key not in out
        ):
            out[key] = value  # the common case, checked cheaply
            continue
        if not raw_key or raw_key.startswith(".") or raw_key.endswith(".") or ".." in raw_key:
            raise SourceFormatError(
                f"{source}: key {key!r} has an empty segment; rename it",
                source=source,
                key=key,
            )
        if "." in raw_key:
            clean = False  # its parents inside raw_key are not walked
        if isinstance(value, Mapping):
            before = len(out)
            clean = _flatten_into(out, value, key, source, counts, clean, depth + 1, budget)
            added = len(out) - before
            if added:
                counts[key] = counts.get(key, 0) + added
        else:
            if key in out:
                raise SourceFormatError(
                    f"{source}: key {key!r} is given twice (once with dots in its name); keep one",
                    source=source,
                    key=key,
                )
            if budget is not None and isinstance(value, (list, tuple)):
                _charge(value, depth + 1, budget)
            try:
                out[key] = freeze(value)
            except ValueError as exc:
                raise SourceFormatError(
                    f"{source}: value of {key!r} is not allowed: {exc}", source=source, key=key
                ) from None
    return clean


_HEAD = itemgetter(0, 1)


def _inner_counts(keys: Iterable[str]) -> dict[str, int]:
    """Parent counts of dotted keys: how many keys lie below each proper prefix."""
    # Count each key's direct parent in C-level steps (rpartition; a key without a dot has
    # no separator), then add those counts to the parents' own prefixes: one short walk
    # per distinct parent instead of one per key.
    direct = Counter(map(_HEAD, map(str.rpartition, keys, repeat("."))))
    counts: dict[str, int] = {}
    get = counts.get
    for (parent, sep), below in direct.items():
        if not sep:
            continue
        counts[parent] = get(parent, 0) + below
        dot = parent.find(".")
        while dot >= 0:
            p = parent[:dot]
            counts[p] = get(p, 0) + below
            dot = parent.find(".", dot + 1)
    return counts




def _refuse(self: Leaves, *args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError(f"a layer's values are read-only ({type(self).__name__})")


class Leaves(dict[str, Any]):
    """A layer's (or a merge's) values: a dict that refuses changes.

    Reads are a dict's (``leaves[key]``, ``get``, ``in``, iteration: C speed, nothing built
    at load time); every method that would change it raises :class:`TypeError`, and
    nothing else holds the dict it was copied into, so readers never see a change. Updates
    go through :func:`persistent`, which builds the persistent map of the same items once
    (on the first update) and keeps it here for every later one.
    """

    __slots__ = ("_map",)

    def __init__(self, items: Any = ()) -> None:
        dict.__init__(self, items)
        self._map: Values | None = None

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        return (Leaves, (dict(self),))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, immutables.Map):
            # A Map compares only to Maps: compare the items here, for either side.
            return len(self) == len(other) and all(
                other.get(k, _ABSENT) == v for k, v in self.items()
            )
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None

    def __repr__(self) -> str:
        return f"Leaves({dict.__repr__(self)})"


_ABSENT: Any = object()


def persistent(values: Mapping[str, Any]) -> Values:
    """``values`` as a persistent map (``mutate()`` for an update in O(log n)): the map
    itself, or the one a :class:`Leaves` built on its first update and kept."""
    if isinstance(values, immutables.Map):
        return values
    if isinstance(values, Leaves):
        built = values._map
        if built is None:
            built = values._map = immutables.Map(values)
        return built
    return immutables.Map(values)


def leaves(values: Mapping[str, Any]) -> Mapping[str, Any]:
    """``values`` as a layer keeps them: a :class:`Leaves` or persistent map as it is,
    anything else copied into a :class:`Leaves` (nobody else can change the copy)."""
    if isinstance(values, (Leaves, immutables.Map)):
        return values
    return Leaves(values)

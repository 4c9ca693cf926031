"""Strict binding: keys a bound class does not declare, and tables that are not tables.

Before a snapshot is bound to a class, :func:`inspect` walks the input against the class's
:data:`~confhub._bindtypes.Shape` and finds

- *unknown keys*: a key under a bound table that no field reads (``db.pool_sise``, a
  ``[database]`` table when the class has ``db``). What happens to them is the view's
  policy (:data:`UnknownPolicy`): ``"forbid"`` (the default) refuses the binding,
  ``"warn"`` logs them once and binds, ``"ignore"`` binds without a word;
- *shape errors*, under every policy: a value where a table is expected (``db = "oops"``)
  or a table where a value is expected.

:func:`locate` then finds where each unknown key came from: the sources (precedence slots)
whose layer holds it, with the layer's provenance of it (a file's path and line, an etcd
key, a Consul key). Sources whose backend says ``strict_keys = False`` (the environment,
which holds the variables of every program on the machine) never make a key unknown: a
key only they hold is passed over.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, TypeAlias

import attrs

from ._bindtypes import Leaf, ListOf, MapOf, Shape, Table
from ._errors import UnknownKey
from ._snapshot import Snapshot

log = logging.getLogger("confhub.binding")

#: What a bound view does with a key its class does not declare.
UnknownPolicy: TypeAlias = Literal["forbid", "warn", "ignore"]
POLICIES: tuple[str, ...] = ("forbid", "warn", "ignore")

#: The fix, once per error message.
FIX = (
    "fix or remove the key, give the field an alias (metadata={'confhub_key': ...}), "
    'or bind with unknown="warn" or unknown="ignore"'
)


def check_policy(value: Any) -> UnknownPolicy:
    """``value`` if it is a policy; else a ``ValueError`` listing the policies."""
    if value not in POLICIES:
        raise ValueError(f"unknown={value!r} is not a policy; use one of {', '.join(POLICIES)}")
    return value  # type: ignore[no-any-return]




@attrs.frozen
class Unknown:
    """An unknown key found by :func:`inspect`: ``path`` (``$.db.pool_sise``), ``key``
    (the dotted key in the snapshot whose sources to ask: the list holding it, for a key
    inside a list item), ``name`` as written, and the closest declared key."""

    path: str
    key: str
    name: str
    suggestion: str | None


@attrs.frozen
class Findings:
    """What :func:`inspect` found: unknown keys, and ``(message, path)`` shape errors."""

    unknown: tuple[Unknown, ...] = ()
    shapes: tuple[tuple[str, str], ...] = ()


_NONE = Findings()


def inspect(data: Any, shape: Shape, prefix: str | None, *, unknown: bool) -> Findings:
    """Walk ``data`` (the input bound at ``prefix``) against ``shape``; collect unknown keys
    only when ``unknown`` (the policy is not ``"ignore"``)."""
    found: list[Unknown] = []
    shapes: list[tuple[str, str]] = []
    _walk(data, shape, "$", prefix or "", True, found if unknown else None, shapes)
    if not found and not shapes:
        return _NONE
    return Findings(tuple(found), tuple(shapes))


def _walk(
    data: Any,
    shape: Shape,
    path: str,
    key: str,
    flat: bool,
    found: list[Unknown] | None,
    shapes: list[tuple[str, str]],
) -> None:
    """``flat``: ``key`` is a key of the snapshot (not yet inside a list item).

    Written for the common case, a table of plain values under declared keys: the unknown
    keys are one set difference, and only fields with a shape below them are walked into.
    """
    if shape is None or data is None:
        return
    if isinstance(shape, Table):
        if not isinstance(data, Mapping):
            shapes.append((f"expected a table ({shape.name}), got {_kind(data)}", path))
            return
        fields = shape.fields
        if found is not None and not shape.open and not data.keys() <= fields.keys():
            for name in data:
                if name not in fields:
                    below = _below(key, name, flat)
                    hint = suggest(name, data[name], shape, data)
                    found.append(Unknown(_join(path, name), below, name, hint))
        for name, inner in shape.nested:
            value = data.get(name)
            if value is not None:
                _walk(value, inner, _join(path, name), _below(key, name, flat), flat, found, shapes)
        if shape.leaves and not _TABLES.isdisjoint(map(type, data.values())):
            for name, leaf in shape.leaves:
                if isinstance(data.get(name), Mapping):
                    shapes.append((f"expected {leaf.name}, got a table", _join(path, name)))
    elif isinstance(shape, MapOf):
        if not isinstance(data, Mapping):
            shapes.append((f"expected a table, got {_kind(data)}", path))
            return
        inner = shape.values
        if isinstance(inner, Leaf):
            if _TABLES.isdisjoint(map(type, data.values())):
                return
        elif inner is None:
            return
        for name, value in data.items():
            _walk(value, inner, _join(path, name), _below(key, name, flat), flat, found, shapes)
    elif isinstance(shape, ListOf):
        if isinstance(data, list | tuple) and shape.items is not None:
            for i, item in enumerate(data):
                _walk(item, shape.items, f"{path}[{i}]", key, False, found, shapes)
    elif isinstance(data, Mapping):  # a Leaf
        shapes.append((f"expected {shape.name}, got a table", path))


#: The types a table has in a binding's input (plain dicts, or a snapshot's read-only views).
_TABLES = frozenset({dict, MappingProxyType})


def _below(key: str, name: str, flat: bool) -> str:
    """The snapshot key of ``name`` under ``key`` (inside a list item: the list's key)."""
    if not flat:
        return key
    return f"{key}.{name}" if key else name


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if name.isidentifier() or "-" in name else f"{path}[{name!r}]"


def _kind(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def suggest(name: str, value: Any, table: Table, data: Mapping[str, Any]) -> str | None:
    """The declared key ``name`` was probably meant to be (difflib), if any."""
    keys = list(table.fields)
    normal = name.replace("-", "_").lower()
    for key in keys:
        if key.replace("-", "_").lower() == normal:
            return key
    close = difflib.get_close_matches(name, keys, n=1, cutoff=0.6)
    if close:
        return close[0]
    # ``[database]`` for ``[db]``: the one table the input lacks is a fair guess.
    if isinstance(value, Mapping):
        missing = [k for k, s in table.fields.items() if isinstance(s, Table) and k not in data]
        if len(missing) == 1:
            return missing[0]
    return None


#: At most this many unknown keys are located and listed (a whole foreign tree under a
#: bound prefix would otherwise make an error of thousands of lines).
MAX_LISTED = 20


def locate(
    snapshot: Snapshot, unknown: Iterable[Unknown], lenient: frozenset[int]
) -> list[UnknownKey]:
    """Where each unknown key comes from; keys held by ``lenient`` sources only are dropped.

    A key held by several strict sources names the highest (the value in force); the error
    line lists the others after it. At most :data:`MAX_LISTED` keys are returned.
    """
    out: list[UnknownKey] = []
    for item in unknown:
        if len(out) == MAX_LISTED:
            break
        holders = [
            i
            for i, layer in enumerate(snapshot.layers)
            if layer is not None and (item.key in layer.values or item.key in layer.inner)
        ]
        strict = [i for i in reversed(holders) if i not in lenient]
        if holders and not strict:
            continue  # only the environment has it: not ours to judge
        places = tuple((snapshot.names[i], _detail(snapshot, i, item.key)) for i in strict)
        source, detail = places[0] if places else ("", None)
        out.append(
            UnknownKey(
                key=item.key,
                name=item.name,
                path=item.path,
                source=source,
                detail=detail,
                suggestion=item.suggestion,
                also=tuple(p[0] for p in places[1:]),
            )
        )
    return out


def _detail(snapshot: Snapshot, index: int, key: str) -> str | None:
    """The layer's provenance of ``key``; for a table, of its first leaf (an etcd or Consul
    key) unless the layer can place the table itself (a file's line of ``[database]``)."""
    layer = snapshot.layers[index]
    assert layer is not None
    detail = layer.detail(key)
    if detail is not None or key in layer.values:
        return detail
    first = min((k for k in layer.values if k.startswith(key + ".")), default=None)
    return None if first is None else layer.detail(first)


def line(item: UnknownKey) -> str:
    """The error line of one unknown key: ``unknown key ... @ $.db.pool_sise (from ...)``."""
    name = item.name
    hint = f" (did you mean {item.suggestion!r}?)" if item.suggestion else ""
    if item.suggestion and _not_a_name(name, item.suggestion):
        hint = (
            f" (did you mean {item.suggestion!r}? a key that is not a Python name needs an "
            f"alias: metadata={{'confhub_key': {name!r}}})"
        )
    where = ""
    if item.source:
        where = f" (from {item.source}" + (f" ({item.detail})" if item.detail else "") + ")"
        if item.also:
            where += f" (also in {', '.join(item.also)})"
    return f"unknown key {name!r}{hint} @ {item.path}{where}"


def _not_a_name(name: str, suggestion: str) -> bool:
    return name != suggestion and name.replace("-", "_").lower() == suggestion.lower()


class Warned:
    """The unknown keys a ``"warn"`` view logged last: logged again only when they change."""

    __slots__ = ("keys",)

    def __init__(self) -> None:
        self.keys: frozenset[str] = frozenset()

    def report(self, items: Sequence[UnknownKey], message: Callable[[], str]) -> None:
        """Log ``message()`` if ``items`` differ from the keys logged last."""
        keys = frozenset(i.path for i in items)
        if keys and keys != self.keys:
            log.warning("%s", message())
        self.keys = keys

"""The kinds of classes confhub binds, and the shape of keys each accepts.

Four kinds bind, through one cattrs converter per hub:

- attrs classes and stdlib dataclasses, structured by cattrs with confhub's text coercions;
  a field whose key in a source is not a Python name (``max-size``) names that key in its
  metadata: ``attrs.field(metadata={"confhub_key": "max-size"})`` or
  ``dataclasses.field(metadata={"confhub_key": "max-size"})`` (attrs' own ``alias`` is the
  ``__init__`` argument and must be a Python name, so it cannot say ``max-size``);
- pydantic v2 models, through the model's own validation (``model_validate``): its
  aliases, validators and coercions apply as written; confhub adds where each bad value
  came from;
- ``TypedDict`` classes, structured by cattrs (keys declared in the functional form, such
  as ``TypedDict("Limits", {"max-size": int})``, need no alias).

:func:`shape_of` reads a class once into a :data:`Shape`: the keys each table accepts and
what sits below them, which the strict check (:mod:`confhub._strict`) walks. pydantic is
never imported here: a class can only be a pydantic model if pydantic is imported already.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import sys
import types
import typing
from collections.abc import (
    Callable,
    Mapping,
    MutableMapping,
    MutableSequence,
    MutableSet,
    Sequence,
    Set,
)
from typing import Any, TypeAlias

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.gen import typeddicts as _typeddicts

#: The metadata key of an attrs or dataclass field naming its key in the sources.
ALIAS_KEY = "confhub_key"


@attrs.define(eq=False)
class Table:
    """A class's keys as written in a source (alias or name) and the shape below each.

    ``open``: the class takes keys it does not declare (a pydantic model with
    ``extra="allow"``), so none is unknown. ``nested`` lists the fields with a shape to
    walk into (tables, mappings, lists) and ``leaves`` those that hold a value, for the
    strict check's fast path. A table is filled in by :func:`shape_of` right after it is
    made (a class may refer to itself) and never changed after that returns.
    """

    name: str
    fields: dict[str, Shape] = attrs.Factory(dict)
    open: bool = False
    nested: list[tuple[str, Shape]] = attrs.Factory(list)
    leaves: list[tuple[str, Leaf]] = attrs.Factory(list)


@attrs.frozen
class MapOf:
    """``dict[str, X]``: any key, each value of shape ``values``."""

    values: Shape


@attrs.frozen
class ListOf:
    """``list[X]`` or ``tuple[X, ...]``: each item of shape ``items``."""

    items: Shape


@attrs.frozen
class Leaf:
    """A value that is not a table (``int``, ``str``, a ``timedelta``, an enum ...)."""

    name: str


#: ``None``: anything goes (``Any``, a union of tables, a type confhub does not look into).
Shape: TypeAlias = Table | MapOf | ListOf | Leaf | None

_LEAVES: tuple[type, ...] = (
    int,
    float,
    str,
    bool,
    bytes,
    datetime.timedelta,
    datetime.datetime,
    datetime.date,
    datetime.time,
    enum.Enum,
)
_MAPPINGS: frozenset[Any] = frozenset({dict, Mapping, MutableMapping})
_SEQUENCES: frozenset[Any] = frozenset(
    {list, tuple, set, frozenset, Sequence, MutableSequence, Set, MutableSet}
)


def pydantic_model(cls: Any) -> bool:
    """Whether ``cls`` is a pydantic v2 model class (without importing pydantic)."""
    pydantic = sys.modules.get("pydantic")
    return (
        pydantic is not None
        and isinstance(cls, type)
        and issubclass(cls, pydantic.BaseModel)
        and hasattr(cls, "model_validate")
    )


def is_typeddict(cls: Any) -> bool:
    """Whether ``cls`` is a ``TypedDict`` class."""
    return bool(typing.is_typeddict(cls))


def shape_of(tp: Any, memo: dict[Any, Table] | None = None) -> Shape:
    """The :data:`Shape` of type ``tp`` (a class to bind, or a field's annotation)."""
    memo = {} if memo is None else memo
    if tp in memo:
        return memo[tp]
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return shape_of(args[0], memo)
    if origin is typing.Union or origin is types.UnionType:
        shapes = [shape_of(a, memo) for a in args if a is not type(None)]
        if len(shapes) == 1:
            return shapes[0]
        return (
            Leaf(" | ".join(s.name for s in shapes if isinstance(s, Leaf)))
            if all(isinstance(s, Leaf) for s in shapes)
            else None
        )
    if origin is typing.Literal:
        return Leaf(" | ".join(repr(a) for a in args))
    if origin in _MAPPINGS or tp in _MAPPINGS:
        return MapOf(shape_of(args[1], memo) if len(args) == 2 else None)
    if origin in _SEQUENCES or tp in _SEQUENCES:
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return None  # a fixed tuple: cattrs checks its items
        return ListOf(shape_of(args[0], memo) if args else None)
    if not isinstance(tp, type):
        return None
    if attrs.has(tp) or dataclasses.is_dataclass(tp) or pydantic_model(tp) or is_typeddict(tp):
        table = memo[tp] = Table(tp.__qualname__, open=_open(tp))
        for key, annotation in _fields(tp):
            shape = table.fields[key] = shape_of(annotation, memo)
            if isinstance(shape, Leaf):
                table.leaves.append((key, shape))
            elif shape is not None:
                table.nested.append((key, shape))
        return table
    if issubclass(tp, _LEAVES):
        return Leaf(tp.__name__)
    return None


def _open(cls: type) -> bool:
    if pydantic_model(cls):
        return bool(cls.model_config.get("extra") == "allow")  # type: ignore[attr-defined]
    return False


def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of ``cls`` (``{}`` for names that cannot be resolved)."""
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except Exception:  # noqa: BLE001 - a forward reference that does not resolve: look no deeper
        return {}


def _fields(cls: type) -> list[tuple[str, Any]]:
    """``(key as written in a source, annotation)`` for each field of ``cls``."""
    hints = _hints(cls)
    if attrs.has(cls):
        return [
            (a.metadata.get(ALIAS_KEY, a.name), hints.get(a.name, a.type))
            for a in attrs.fields(cls)
            if a.init
        ]
    if dataclasses.is_dataclass(cls):
        return [
            (f.metadata.get(ALIAS_KEY, f.name), hints.get(f.name, f.type))
            for f in dataclasses.fields(cls)
            if f.init
        ]
    if pydantic_model(cls):
        out: list[tuple[str, Any]] = []
        config = cls.model_config  # type: ignore[attr-defined]
        by_name = config.get("populate_by_name") or config.get("validate_by_name")
        for name, info in cls.model_fields.items():  # type: ignore[attr-defined]
            keys = {_pydantic_key(name, info)}
            if by_name:
                keys.add(name)
            out.extend((key, info.annotation) for key in sorted(keys))
        return out
    return list(hints.items())  # a TypedDict


def _pydantic_key(name: str, info: Any) -> str:
    """The key a pydantic field reads: its validation alias (a plain one), alias, or name."""
    alias = info.validation_alias
    if isinstance(alias, str):
        return alias
    return info.alias if isinstance(info.alias, str) else name


def field_key(cls: type, name: str) -> str:
    """The key in a source of the attrs or dataclass field ``name`` of ``cls``."""
    if attrs.has(cls):
        for a in attrs.fields(cls):
            if a.name == name:
                return str(a.metadata.get(ALIAS_KEY, name))
    elif dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if f.name == name:
                return str(f.metadata.get(ALIAS_KEY, name))
    return name


# -- converter hooks ---------------------------------------------------------------------


def _aliases(cls: type) -> dict[str, str]:
    """``{attribute name: key}`` of the fields of ``cls`` that name another key."""
    if attrs.has(cls):
        named = [(a.name, a.metadata) for a in attrs.fields(cls)]
    elif dataclasses.is_dataclass(cls):
        named = [(f.name, f.metadata) for f in dataclasses.fields(cls)]
    else:
        return {}
    return {name: str(meta[ALIAS_KEY]) for name, meta in named if ALIAS_KEY in meta}


def _has_aliases(cls: Any) -> bool:
    return isinstance(cls, type) and bool(_aliases(cls))


def register_hooks(converter: cattrs.Converter) -> None:
    """Teach ``converter`` field aliases, pydantic models and closed TypedDicts."""

    def structure_aliased(cls: type) -> Callable[[Any, type], Any]:
        renames = {name: override(rename=key) for name, key in _aliases(cls).items()}
        return make_dict_structure_fn(cls, converter, **renames)  # type: ignore[arg-type]

    def unstructure_aliased(cls: type) -> Callable[[Any], Any]:
        renames = {name: override(rename=key) for name, key in _aliases(cls).items()}
        return make_dict_unstructure_fn(cls, converter, **renames)  # type: ignore[arg-type]

    converter.register_structure_hook_factory(_has_aliases, structure_aliased)
    converter.register_unstructure_hook_factory(_has_aliases, unstructure_aliased)
    converter.register_structure_hook_func(pydantic_model, _validate_model)
    converter.register_unstructure_hook_func(pydantic_model, _dump_model)
    converter.register_structure_hook_factory(is_typeddict, lambda cls: _closed(cls, converter))


def _validate_model(data: Any, cls: Any) -> Any:
    return cls.model_validate(data)


def _dump_model(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True)


def _closed(cls: Any, converter: cattrs.Converter) -> Callable[[Any, type], Any]:
    """cattrs' TypedDict hook, keeping only the declared keys (cattrs keeps every key of
    the input; a TypedDict holds what it declares, as an attrs class does)."""
    base = _typeddicts.make_dict_structure_fn(cls, converter)
    declared = frozenset(_hints(cls))

    def structure(data: Any, tp: type) -> Any:
        if isinstance(data, Mapping) and not declared.issuperset(data):
            data = {k: v for k, v in data.items() if k in declared}
        return base(data, tp)

    return structure


def pydantic_errors(exc: BaseException) -> list[tuple[str, str]] | None:
    """``(message, path below the model)`` per error of a pydantic ``ValidationError``,
    else ``None``. Inputs are left out: a message never quotes the value."""
    pydantic = sys.modules.get("pydantic")
    if pydantic is None or not isinstance(exc, pydantic.ValidationError):
        return None
    out = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = error["loc"]
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
        out.append((str(error["msg"]), path))
    return out

"""Merging layers into the effective view: pure functions, no I/O, no locks.

Semantics (the same as merging nested mappings one layer after another, lowest first):
mappings merge deeply, lists and scalars replace, and on a scalar/mapping clash the higher
layer wins whole. In flat terms, a leaf ``k`` of layer ``i`` is effective unless a higher
layer has a leaf at ``k``, a leaf at a proper prefix of ``k``, or a leaf below ``k``.

:func:`merge_full` computes that from scratch. :func:`merge_update` applies one layer's delta
in time proportional to the delta for the common cases (a value changes, a key appears or
disappears without a shape clash with another layer) and falls back to a full merge for
shape changes, so that an update to a 100,000-key layer does not rebuild everything.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs
import immutables

from ._flatten import Leaves, persistent
from ._layer import Layer, LayerDelta, Values, add_parents, prefixes, remove_parents

#: Marks a key that is absent on one side of a change.
MISSING: Any = type(
    "MissingType", (), {"__repr__": lambda self: "MISSING", "__bool__": lambda self: False}
)()

Changed = list[tuple[str, Any, Any]]


class Origins(Mapping[str, int]):
    """The slot each effective leaf came from: ``base`` unless ``other`` says otherwise.

    Most leaves come from the highest contributing layer (all of them when one layer
    contributes), so only the others are stored: a 10,000-key single-layer start builds no
    map of 10,000 origins, and an update touches ``other`` only for the keys it changes.
    """

    __slots__ = ("_base", "_other", "_values")

    def __init__(self, values: Mapping[str, Any], other: Values, base: int) -> None:
        self._values = values
        self._other = other
        self._base = base

    def __getitem__(self, key: str) -> int:
        if key in self._values:
            found: int = self._other.get(key, self._base)
            return found
        raise KeyError(key)

    def get(self, key: str, default: int | None = None) -> int | None:  # type: ignore[override]
        if key in self._values:
            found: int = self._other.get(key, self._base)
            return found
        return default

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"<Origins base={self._base} other={len(self._other)} of {len(self._values)}>"


@attrs.frozen(eq=False)
class Merged:
    """The effective view: leaf values, the slot each came from, and parent-key counts.

    ``values`` is read-only: a layer's own values when one layer contributes, a
    :class:`~confhub._flatten.Leaves` after a full merge, a persistent map after an update.
    """

    values: Mapping[str, Any]
    origins: Origins
    inner: Values


_NONE: Values = immutables.Map()
EMPTY = Merged(_NONE, Origins(_NONE, _NONE, -1), _NONE)


def merge_full(layers: Sequence[Layer | None]) -> Merged:
    """Merge ``layers`` (lowest precedence first; ``None`` for a slot with no data)."""
    present = [i for i, layer in enumerate(layers) if layer is not None and layer.values]
    if not present:
        return EMPTY
    top = present[-1]
    top_layer = layers[top]
    assert top_layer is not None
    if len(present) == 1:
        # One contributing layer is the effective view as it is.
        return Merged(top_layer.values, Origins(top_layer.values, _NONE, top), top_layer.inner)
    # The highest layer is entirely effective: start from it, then add what shows through.
    values: dict[str, Any] = dict(top_layer.values.items())
    origins: dict[str, int] = {}  # the leaves not from ``top``
    inner: dict[str, int] = dict(top_layer.inner.items())
    seen: set[str] = set(values)
    for index in range(top - 1, -1, -1):
        layer = layers[index]
        if layer is None:
            continue
        for key, value in layer.values.items():
            if key in seen or key in inner or any(p in seen for p in prefixes(key)):
                continue
            values[key] = value
            origins[key] = index
            add_parents(inner, key)
        seen.update(layer.values.keys())
    final = Leaves(values)
    return Merged(final, Origins(final, immutables.Map(origins), top), immutables.Map(inner))


def diff_values(old: Mapping[str, Any], new: Mapping[str, Any]) -> Changed:
    """Return ``(key, old, new)`` for every key whose effective value differs."""
    changed: Changed = [
        (k, old.get(k, MISSING), v) for k, v in new.items() if old.get(k, MISSING) != v
    ]
    changed.extend((k, v, MISSING) for k, v in old.items() if k not in new)
    return changed


def _touch(layer: Layer | None, key: str) -> str | None:
    """How ``layer`` relates to ``key``: 'leaf', 'inner' (has keys below), 'prefix', or None."""
    if layer is None:
        return None
    if key in layer.values:
        return "leaf"
    if key in layer.inner:
        return "inner"
    if any(p in layer.values for p in prefixes(key)):
        return "prefix"
    return None


def merge_update(
    merged: Merged,
    layers: Sequence[Layer | None],
    index: int,
    new_layer: Layer | None,
    delta: LayerDelta,
) -> tuple[Merged, Changed]:
    """Apply ``delta`` (which turned ``layers[index]`` into ``new_layer``) to ``merged``.

    Returns the new effective view and the effective changes. ``layers`` are the layers
    *before* the update.
    """
    old_layer = layers[index]
    new_layers = list(layers)
    new_layers[index] = new_layer
    if old_layer is None or new_layer is None or not merged.values:
        return _slow(merged, new_layers)
    lower = [layers[j] for j in range(index)]
    higher = [layers[j] for j in range(index + 1, len(layers))]
    values = persistent(merged.values).mutate()  # built on the first update, then shared
    base = merged.origins._base
    origins = merged.origins._other.mutate()  # the leaves not from ``base``
    inner = merged.inner.mutate()

    def origin(key: str) -> int | None:
        return origins.get(key, base) if key in values else None

    def set_origin(key: str, slot: int) -> None:
        if slot == base:
            origins.pop(key, None)
        else:
            origins[key] = slot

    changed: Changed = []
    old_values = old_layer.values

    for key in delta.deleted:
        if key not in old_values or key in delta.set:
            continue
        touches = [_touch(layer, key) for layer in lower]
        if any(t not in (None, "leaf") for t in touches):
            return _slow(merged, new_layers)
        if origin(key) != index:
            continue  # masked by a higher layer: removing it reveals nothing
        old_value = values[key]
        below = next((j for j in range(index - 1, -1, -1) if touches[j] == "leaf"), None)
        if below is None:
            del values[key]
            origins.pop(key, None)
            remove_parents(inner, key)
            changed.append((key, old_value, MISSING))
        else:
            value = lower[below].values[key]  # type: ignore[union-attr]
            values[key] = value
            set_origin(key, below)
            if value != old_value:
                changed.append((key, old_value, value))

    for key, value in delta.set.items():
        if key not in old_values:
            if any(_touch(layer, key) not in (None, "leaf") for layer in lower):
                return _slow(merged, new_layers)
            if any(_touch(layer, key) is not None for layer in higher):
                continue  # masked
        elif origin(key) != index:
            continue  # an existing leaf masked by a higher layer
        old_value = values.get(key, MISSING)
        if old_value is MISSING:
            add_parents(inner, key)
        values[key] = value
        set_origin(key, index)
        if old_value != value:
            changed.append((key, old_value, value))

    final = values.finish()
    return Merged(final, Origins(final, origins.finish(), base), inner.finish()), changed


def _slow(merged: Merged, layers: Sequence[Layer | None]) -> tuple[Merged, Changed]:
    new = merge_full(layers)
    return new, diff_values(merged.values, new.values)

"""The merge: deep-merge semantics, and incremental updates equal to a full merge."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confhub import Layer, LayerDelta, SourceFormatError
from confhub._layer import flatten
from confhub._merge import MISSING, merge_full, merge_update


def deep_merge(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """The reference semantics: merge nested dicts lowest first; higher wins whole on clash."""

    def merge(a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(a)
            for k, v in b.items():
                out[k] = merge(a[k], v) if k in a else v
            return out
        return b

    result: dict[str, Any] = {}
    for layer in layers:
        result = merge(result, layer)
    return result


def layer(data: dict[str, Any]) -> Layer:
    return Layer.from_mapping(data, source="test")


def test_later_layers_win_and_mappings_merge() -> None:
    """Mappings merge deeply and a later layer's scalar wins."""
    merged = merge_full([layer({"db": {"host": "a", "port": 1}}), layer({"db": {"port": 2}})])
    assert dict(merged.values) == {"db.host": "a", "db.port": 2}


def test_scalar_replaces_mapping_from_higher_layer() -> None:
    """A higher layer's scalar replaces a lower layer's whole table."""
    merged = merge_full([layer({"db": {"host": "a"}}), layer({"db": "sqlite"})])
    assert dict(merged.values) == {"db": "sqlite"}


def test_mapping_replaces_scalar_from_higher_layer() -> None:
    """A higher layer's table replaces a lower layer's scalar."""
    merged = merge_full([layer({"db": "sqlite"}), layer({"db": {"host": "a"}})])
    assert dict(merged.values) == {"db.host": "a"}


def test_masked_scalar_still_hides_lower_table() -> None:
    """A middle scalar, itself replaced by a higher table, still erases the lowest table."""
    merged = merge_full(
        [layer({"db": {"host": "a"}}), layer({"db": "x"}), layer({"db": {"port": 1}})]
    )
    assert dict(merged.values) == {"db.port": 1}


def test_lists_replace() -> None:
    """Lists are leaves: a higher list replaces a lower one."""
    merged = merge_full([layer({"hosts": [1, 2]}), layer({"hosts": [3]})])
    assert dict(merged.values) == {"hosts": (3,)}


def test_leaf_and_parent_in_one_layer_is_an_error_naming_both() -> None:
    """A key that is both a value and a table is rejected, naming both keys."""
    with pytest.raises(SourceFormatError) as info:
        Layer.from_flat({"app.db": "x", "app.db.host": "h"}, source="kv")
    assert "'app.db'" in str(info.value)
    assert "'app.db.host'" in str(info.value)


def test_delta_creating_leaf_parent_clash_is_rejected() -> None:
    """A delta that would make a key both a leaf and a parent raises."""
    base = Layer.from_flat({"a.b": 1}, source="kv")
    with pytest.raises(SourceFormatError):
        base.apply(LayerDelta(set={"a.b.c": 2}), source="kv")


# -- properties --------------------------------------------------------------------------

keys = st.sampled_from(["a", "b", "c"])
leaves = st.one_of(st.integers(0, 3), st.text("xy", max_size=2))
trees = st.recursive(
    leaves,
    lambda children: st.dictionaries(keys, children, min_size=1, max_size=3),
    max_leaves=8,
)
layer_dicts = st.dictionaries(keys, trees, max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.lists(layer_dicts, min_size=1, max_size=4))
def test_merge_full_equals_sequential_deep_merge(layers: list[dict[str, Any]]) -> None:
    """merge_full gives exactly the leaves of merging the nested layers in order."""
    merged = merge_full([layer(d) for d in layers])
    assert dict(merged.values) == flatten(deep_merge(layers), source="ref")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(layer_dicts, min_size=1, max_size=4),
    st.data(),
)
def test_incremental_update_equals_full_merge(layers: list[dict[str, Any]], data: Any) -> None:
    """Applying one layer's new content incrementally equals merging everything again."""
    built = [layer(d) for d in layers]
    index = data.draw(st.integers(0, len(built) - 1))
    new_layer = layer(data.draw(layer_dicts))
    merged = merge_full(built)
    delta = built[index].diff(new_layer)
    updated, changed = merge_update(merged, built, index, new_layer, delta)
    after = list(built)
    after[index] = new_layer
    expected = merge_full(after)
    assert dict(updated.values) == dict(expected.values)
    assert dict(updated.origins) == dict(expected.origins)
    assert dict(updated.inner) == dict(expected.inner)
    want = {
        k: (merged.values.get(k, MISSING), expected.values.get(k, MISSING))
        for k in set(merged.values) | set(expected.values)
        if merged.values.get(k, MISSING) != expected.values.get(k, MISSING)
    }
    assert {k: (o, n) for k, o, n in changed} == want


def test_layers_from_plugins_are_frozen_whatever_they_pass() -> None:
    """A plugin handing mutable leaves to ``Layer.from_flat`` or a ``LayerDelta`` cannot make
    a published snapshot change later: leaves are frozen on the way in; NaN is refused."""
    inner = [2, 3]
    shared: list[object] = [1, inner]
    layer = Layer.from_flat({"a": shared, "s": "x"}, source="p")
    shared.append(4)
    inner.append(5)
    assert layer.values["a"] == (1, (2, 3))
    changed = layer.apply(LayerDelta(set={"a": shared}), source="p")
    shared.clear()
    assert changed.values["a"] == (1, (2, 3, 5), 4)
    with pytest.raises(SourceFormatError, match="value of 'n' is not allowed"):
        Layer.from_flat({"n": float("nan")}, source="p")
    with pytest.raises(SourceFormatError, match="value of 'n' is not allowed"):
        layer.apply(LayerDelta(set={"n": float("inf")}), source="p")
    frozen = (1, (2,))
    assert Layer.from_flat({"t": frozen}, source="p").values["t"] is frozen  # no copy

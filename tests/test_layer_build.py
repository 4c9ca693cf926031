"""Layer construction: the parent counts ``flatten`` computes, and merged origins."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import immutables
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confhub import Layer, LayerDelta, SourceFormatError
from confhub._layer import _inner_counts, flatten, flatten_counted
from confhub._merge import merge_full, merge_update

CASES: list[dict[Any, Any]] = [
    {},
    {"a": 1},
    {"a": {"b": 1, "c": {"d": 2.5, "e": None}}, "f": [1, 2]},
    {"a.b": 1, "a": {"c": 2}},  # a dotted key beside a nested table
    {"a": {"c": 2}, "a.b": 1},
    {"x": {"y.z": True}},
    {1: {"a": 1}, "1": {"b": 2}},  # non-string keys merge with their string twin
    {"a": {}, "b": {"c": {}}},  # empty tables contribute nothing
    {"a": {"b": {"c": {"d": "deep"}}}, "a2": {"b": 1}},
]


@pytest.mark.parametrize("data", CASES)
def test_counts_from_the_walk_equal_counts_from_the_keys(data: dict[Any, Any]) -> None:
    values, counts = flatten_counted(data, source="t")
    assert values == flatten(data, source="t")
    assert list(values) == list(flatten(data, source="t"))  # same order
    assert counts == _inner_counts(values)
    assert dict(Layer.from_mapping(data, source="t").inner) == _inner_counts(values)


@pytest.mark.parametrize(
    "data",
    [
        {"a.b": 1, "a": {"b": 2}},
        {"a": {"b": 2}, "a.b": 1},
        {"a": {"": 1}},
        {"a": {"b.": 1}},
        {"a": {"b": float("inf")}},
        {"a": {"b": float("nan")}},
        {"a": 1, "a.b": 2},
        {"a": {"b": 1}, "a.b.c": 2},
    ],
)
def test_the_batched_walk_keeps_every_error(data: dict[str, Any]) -> None:
    with pytest.raises(SourceFormatError):
        Layer.from_mapping(data, source="t")


def test_leaves_are_frozen_on_the_batched_path() -> None:
    layer = Layer.from_mapping({"a": {"b": [1, {"c": 2}], "d": {"e": 1}}}, source="t")
    assert layer.values["a.b"] == (1, {"c": 2})
    with pytest.raises(TypeError):
        layer.values["a.b"][1]["c"] = 3  # type: ignore[index]


nested = st.recursive(
    st.one_of(st.integers(), st.text(max_size=3), st.booleans(), st.none(), st.floats()),
    lambda children: st.dictionaries(st.sampled_from(["a", "b", "a.b", "c", "b.c", ""]), children),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "a.b", "c", 1]), nested))
def test_counts_match_for_any_nested_input(data: dict[Any, Any]) -> None:
    try:
        values, counts = flatten_counted(data, source="t")
    except SourceFormatError:
        with pytest.raises(SourceFormatError):
            flatten(data, source="t")
        return
    assert counts == _inner_counts(values)


def test_origins_of_one_layer_and_after_updates() -> None:
    low = Layer.from_flat({"a": 1, "b.c": 2, "d": 3}, source="low")
    high = Layer.from_flat({"a": 10, "e": 5}, source="high")
    merged = merge_full([low, high])
    assert dict(merged.origins) == {"a": 1, "b.c": 0, "d": 0, "e": 1}
    assert merged.origins.get("b") is None
    assert "b" not in merged.origins
    single = merge_full([None, high])
    assert dict(single.origins) == {"a": 1, "e": 1}
    assert single.values is high.values  # taken whole, nothing rebuilt
    delta = LayerDelta(set={"d": 30, "f": 6}, deleted={"b.c"})
    new_low = low.apply(delta, source="low")
    updated, _ = merge_update(merged, [low, high], 0, new_low, delta)
    assert dict(updated.origins) == dict(merge_full([new_low, high]).origins)
    assert dict(updated.origins) == {"a": 1, "d": 0, "e": 1, "f": 0}


class _LazyDetails(Mapping[str, str]):
    """A backend's lazy details: each string made when read, counting the reads."""

    def __init__(self, keys: list[str]) -> None:
        self.keys_ = keys
        self.reads = 0

    def __getitem__(self, key: str) -> str:
        if key not in self.keys_:
            raise KeyError(key)
        self.reads += 1
        return f"from {key}"

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_)

    def __len__(self) -> int:
        return len(self.keys_)


def test_lazy_details_are_kept_and_changes_recorded_on_top() -> None:
    lazy = _LazyDetails(["a", "b.c", "d"])
    layer = Layer(values=immutables.Map({"a": 1, "b.c": 2, "d": 3}), details=lazy)
    assert layer.detail("b.c") == "from b.c"
    assert lazy.reads == 1
    delta = LayerDelta(set={"a": 10, "e": 5}, deleted={"d"}, details={"a": "new a", "e": "new e"})
    applied = layer.apply(delta, source="t")
    assert lazy.reads == 1  # applying a delta reads no detail of the base
    assert applied.detail("a") == "new a"
    assert applied.detail("e") == "new e"
    assert applied.detail("d") is None
    assert applied.detail("b.c") == "from b.c"
    assert dict(applied.details) == {"a": "new a", "e": "new e", "b.c": "from b.c"}
    assert "d" not in applied.details
    again = applied.apply(
        LayerDelta(set={"d": 4}, deleted={"a"}, details={"d": "back d"}), source="t"
    )
    assert dict(again.details) == {"e": "new e", "b.c": "from b.c", "d": "back d"}
    assert len(again.details) == 3
    # from_flat copies a mutable mapping into a persistent map, keeps an immutable one.
    copied = Layer.from_flat(dict(again.values), source="t", details=dict(again.details))
    assert isinstance(copied.details, immutables.Map)
    assert dict(copied.details) == dict(again.details)
    kept = Layer.from_flat(dict(again.values), source="t", details=again.details)
    assert kept.details is again.details


@pytest.mark.parametrize(
    "keys",
    [
        ["a", ".a", "a..b", "a.b.c", "x.y", "x", "", ".", "..", "a.b.", "q.r.s.t"],
        [f"s{i // 10}.k{i % 10}" for i in range(100)],
        [f"a.b{i % 7}.c{i % 5}.d{i}" for i in range(100)],
    ],
)
def test_parent_counts_count_every_proper_prefix(keys: list[str]) -> None:
    expected: dict[str, int] = {}
    for key in keys:
        for dot, char in enumerate(key):
            if char == ".":
                expected[key[:dot]] = expected.get(key[:dot], 0) + 1
    assert _inner_counts(keys) == expected


# -- a layer's values: read-only at load, the persistent map built on the first update -------


def test_a_loaded_layers_values_refuse_every_change() -> None:
    """Values built from a document or a flat mapping are read-only, however written to."""
    for layer in (
        Layer.from_mapping({"a": {"b": 1}}, source="t"),
        Layer.from_flat({"a.b": 1}, source="t"),
    ):
        values: Any = layer.values
        for method, args in (
            ("__setitem__", ("x", 1)),
            ("__delitem__", ("a.b",)),
            ("update", ({"x": 1},)),
            ("pop", ("a.b",)),
            ("popitem", ()),
            ("setdefault", ("x", 1)),
            ("clear", ()),
        ):
            with pytest.raises(TypeError, match="read-only"):
                getattr(values, method)(*args)
        with pytest.raises(TypeError, match="read-only"):
            values |= {"x": 1}
        assert dict(layer.values) == {"a.b": 1}


def test_a_layer_copies_a_mapping_its_caller_could_change() -> None:
    """Layer(values=...) and from_flat keep a copy of a plain dict: the caller changing it
    later changes no layer (readers never see a change)."""
    given = {"a": 1}
    built = Layer(values=given)
    flat = Layer.from_flat(given, source="t")
    given["a"] = 2
    given["b"] = 3
    assert dict(built.values) == {"a": 1} == dict(flat.values)


def test_updates_leave_the_loaded_layer_as_it_was() -> None:
    """Applying deltas to a loaded layer (again and again, to the same one, as a rejected
    update followed by another does) gives the right values each time, and the loaded layer
    and every earlier result stay as they were."""
    base = Layer.from_mapping({"a": {"b": 1, "c": 2}, "d": 3}, source="t")
    one = base.apply(LayerDelta(set={"a.b": 10}, deleted={"d"}), source="t")
    two = base.apply(LayerDelta(set={"e": 5}), source="t")
    three = one.apply(LayerDelta(set={"a.c": 20}), source="t")
    assert dict(base.values) == {"a.b": 1, "a.c": 2, "d": 3}
    assert dict(one.values) == {"a.b": 10, "a.c": 2}
    assert dict(two.values) == {"a.b": 1, "a.c": 2, "d": 3, "e": 5}
    assert dict(three.values) == {"a.b": 10, "a.c": 20}
    assert dict(three.inner) == {"a": 2}
    # A loaded layer and its update compare by their items, whatever holds them.
    assert base.values == Layer.from_flat(dict(base.values), source="t").values
    assert one.values == Layer.from_flat(dict(one.values), source="t").values
    assert Layer.from_flat(dict(one.values), source="t").values == one.values
    assert one.values != base.values


def test_the_persistent_map_of_a_loaded_layer_is_built_once() -> None:
    """The first update of a loaded layer builds its persistent map; later updates of the
    same layer (and of a merge holding the same values) share it, so each is O(log n)."""
    from confhub._flatten import persistent

    layer = Layer.from_flat({f"k{i}": i for i in range(100)}, source="t")
    merged = merge_full([layer])
    first = persistent(layer.values)
    assert persistent(layer.values) is first
    assert persistent(merged.values) is first  # one layer: the merge holds the same values
    assert isinstance(first, immutables.Map)
    assert dict(first) == dict(layer.values)

"""Layers: the frozen data one source contributes, and the deltas that update it.

A layer is *flat*: it maps dotted keys (``"db.pool.size"``) to leaf values. Dots always nest:
a file key ``"a.b" = 1`` and a nested ``[a] b = 1`` are the same key. Flat layers let an
update touch only the keys it changes (see :mod:`confhub._merge`), which keeps applying one
change to a 100,000-key layer about as cheap as to a 10-key one.

A layer built from a document or a flat mapping keeps its values in a read-only dict
(:class:`~confhub._flatten.Leaves`: nothing more to build at load); its first update makes
the persistent map (:mod:`immutables`, a hash array mapped trie) whose ``set`` and
``delete`` return a new map in O(log n) sharing the rest, and every later update uses that.
Flattening itself (nested -> dotted keys) is :mod:`confhub._flatten`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import attrs
import immutables

from ._errors import SourceFormatError
from ._flatten import Values as Values
from ._flatten import _inner_counts as _inner_counts
from ._flatten import flatten as flatten
from ._flatten import flatten_counted as flatten_counted
from ._flatten import freeze as freeze
from ._flatten import frozen_leaves as frozen_leaves
from ._flatten import leaves, persistent
from ._flatten import prefixes as prefixes


def add_parents(inner: Any, key: str) -> None:
    """Count ``key`` under each of its parents in a (mutable) parent-count map."""
    for p in prefixes(key):
        inner[p] = inner.get(p, 0) + 1


def remove_parents(inner: Any, key: str) -> None:
    """Undo :func:`add_parents`, dropping parents that no longer have any key below them."""
    for p in prefixes(key):
        n = inner[p] - 1
        if n:
            inner[p] = n
        else:
            del inner[p]


def _check_no_leaf_parent(
    values: Mapping[str, Any],
    inner: Mapping[str, int],
    keys: Iterable[str],
    source: str,
    details: Mapping[str, str],
) -> None:
    for key in keys:
        if key in inner:
            child = next(k for k in values if k.startswith(key + "."))
            raise _leaf_parent_error(key, child, source, details)
        for p in prefixes(key):
            if p in values:
                raise _leaf_parent_error(p, key, source, details)


def _leaf_parent_error(
    parent: str, child: str, source: str, details: Mapping[str, str]
) -> SourceFormatError:
    return leaf_parent_clash(
        source, details.get(parent, parent), details.get(child, child), key=parent
    )


def leaf_parent_clash(
    source: str, parent: str, child: str, *, key: str | None = None, noun: str = ""
) -> SourceFormatError:
    """The error for ``parent`` holding a value while ``child`` sits below it.

    ``parent`` and ``child`` are the names shown (dotted keys, or the store's own keys);
    ``noun`` goes before the first (``"Consul key"``); ``key`` is the error's ``.key``
    (default: ``parent``). The one wording of this clash, for the core and every backend.
    """
    shown = f"{noun} {parent!r}" if noun else repr(parent)
    return SourceFormatError(
        f"{source}: {shown} is both a value and the parent of {child!r}; "
        "a key cannot be both a leaf and a parent: delete or rename one of them",
        source=source,
        key=parent if key is None else key,
    )


def too_many_keys(
    source: str, count: int, cap: int, *, at_least: bool = False
) -> SourceFormatError:
    """The error for a layer of ``count`` keys above its source's ``max_keys=`` ``cap``.

    ``at_least=True`` is for a backend that stopped reading once ``count`` (above ``cap``)
    keys were seen, so the real count is unknown: give the same ``count`` on every retry
    (``cap + 1`` does) and the error is reported once, not once per attempt.
    """
    if at_least:
        counted = f"at least {count:,} keys"
        refusing = f"refusing them (stopped reading at {count:,} keys)"
    else:
        counted, refusing = f"{count:,} keys", "refusing them"
    return SourceFormatError(
        f"{source}: {counted}, more than max_keys={cap:,}; {refusing}: raise ?max_keys= on "
        "the source if that many keys are intended, or delete the runaway keys",
        source=source,
    )


#: The details of a layer without any (one shared empty map).
_NO_DETAILS: Values = immutables.Map()


@attrs.frozen(eq=False, repr=False)
class Layer:
    """The frozen contribution of one source: flat dotted keys to leaf values.

    - ``values``: the leaves, a read-only mapping (a read-only dict, or a persistent
      ``immutables.Map`` once the layer was updated; ``Layer(values=...)`` copies any other
      mapping); build layers with :meth:`from_mapping` or :meth:`from_flat`.
    - ``revision``: the source's revision of this content (etcd revision, Consul index,
      a file's content hash), shown by ``explain`` and recorded in the cache.
    - ``details``: per-key provenance (``"/myapp/db/port mod_revision=12"``, ``"APP_DB__PORT"``),
      an ``immutables.Map``; ``Layer(...)`` also takes any immutable mapping that computes
      its entries when read (a backend with many keys need not build a string per key at
      load time: see the etcd plugin), and :meth:`apply` keeps it, recording changes on top.
    - ``locate``: an optional function computing a detail lazily (a file's line number), used
      for keys without an entry in ``details``.
    - ``fetched_at``: when the content was read (``time.time()``); cached layers keep the
      time they were originally fetched.
    - ``secret``: every value of this layer is a secret, whatever its key (a secrets
      directory): ``explain``, the CLI's output and its change lines show ``<redacted>``
      for its keys (see :func:`secret_keys`).
    """

    values: Mapping[str, Any] = attrs.field(converter=leaves)
    inner: Values = attrs.field(default=None)
    revision: Any = None
    details: Mapping[str, str] = attrs.field(factory=immutables.Map)
    locate: Callable[[str], str | None] | None = None
    fetched_at: float = attrs.field(factory=time.time)
    secret: bool = False

    def __attrs_post_init__(self) -> None:
        if self.inner is None:
            object.__setattr__(self, "inner", immutables.Map(_inner_counts(self.values)))

    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        *,
        source: str,
        revision: Any = None,
        details: Mapping[str, str] | None = None,
        locate: Callable[[str], str | None] | None = None,
        fetched_at: float | None = None,
        secret: bool = False,
        bounds: Any = None,
    ) -> Layer:
        """Build a layer from a (possibly nested) mapping; raises :class:`SourceFormatError`.

        ``bounds``: what :func:`~confhub._parsers.parse_unwalked` returned with ``data``
        (the document's bounds, checked while flattening; ``None``: checked already).
        """
        # Freezes every leaf already.
        values, counts = flatten_counted(data, source=source, bounds=bounds)
        return cls._from_frozen(
            values,
            counts=counts,
            source=source,
            revision=revision,
            details=details,
            locate=locate,
            fetched_at=fetched_at,
            secret=secret,
        )

    @classmethod
    def from_flat(
        cls,
        values: Mapping[str, Any],
        *,
        source: str,
        revision: Any = None,
        details: Mapping[str, str] | None = None,
        locate: Callable[[str], str | None] | None = None,
        fetched_at: float | None = None,
        secret: bool = False,
    ) -> Layer:
        """Build a layer from dotted keys to leaves, checking leaf/parent clashes.

        Leaves are made read-only (lists become tuples, mappings read-only views), so a
        snapshot never changes under a reader; a non-finite float is a
        :class:`SourceFormatError` naming its key.
        """
        return cls._from_frozen(
            frozen_leaves(values, source),
            source=source,
            revision=revision,
            details=details,
            locate=locate,
            fetched_at=fetched_at,
            secret=secret,
        )

    @classmethod
    def _from_frozen(
        cls,
        values: Mapping[str, Any],
        *,
        source: str,
        counts: dict[str, int] | None = None,
        revision: Any = None,
        details: Mapping[str, str] | None = None,
        locate: Callable[[str], str | None] | None = None,
        fetched_at: float | None = None,
        secret: bool = False,
    ) -> Layer:
        if counts is None:
            counts = _inner_counts(values)
        dets = _NO_DETAILS if details is None else _read_only_details(details)
        # A leaf/parent clash is exactly a key that is both a leaf and a parent.
        clash = values.keys() & counts.keys()
        vals = leaves(values)  # the dict flatten made, or a copy of the caller's
        inner = immutables.Map(counts)
        if clash:
            _check_no_leaf_parent(vals, inner, sorted(clash), source, dets)
        return cls(
            values=vals,
            inner=inner,
            revision=revision,
            details=dets,
            locate=locate,
            fetched_at=time.time() if fetched_at is None else fetched_at,
            secret=secret,
        )

    def detail(self, key: str) -> str | None:
        """Return the provenance detail of ``key`` (file line, env var, KV key), if known."""
        found = self.details.get(key)
        if found is None and self.locate is not None:
            found = self.locate(key)
        return found

    def diff(self, new: Layer) -> LayerDelta:
        """Return the delta that turns this layer into ``new``."""
        old_values, new_values = self.values, new.values
        changed = {k: v for k, v in new_values.items() if old_values.get(k, _ABSENT) != v}
        deleted = frozenset(k for k in old_values if k not in new_values)
        return LayerDelta(
            set=changed,
            deleted=deleted,
            revision=new.revision,
            details=new.details,
            locate=new.locate,
            replace_details=True,
        )

    def apply(self, delta: LayerDelta, *, source: str) -> Layer:
        """Return a new layer with ``delta`` applied; raises on a leaf/parent clash."""
        values = persistent(self.values).mutate()
        inner = self.inner.mutate()
        for key in delta.deleted:
            if key in values and key not in delta.set:
                del values[key]
                remove_parents(inner, key)
        added = []
        for key, value in frozen_leaves(delta.set, source).items():
            if key not in values:
                added.append(key)
                add_parents(inner, key)
            values[key] = value
        new_values, new_inner = values.finish(), inner.finish()
        details: Mapping[str, str]
        if delta.replace_details:
            details = _read_only_details(delta.details)
        elif not (delta.details or delta.deleted):
            details = self.details
        elif isinstance(self.details, immutables.Map):
            d = self.details.mutate()
            for key in delta.deleted:
                d.pop(key, None)
            d.update(delta.details)
            details = d.finish()
        else:
            details = Overlaid.of(self.details, delta.deleted, delta.details)
        _check_no_leaf_parent(new_values, new_inner, added, source, details)
        return Layer(
            values=new_values,
            inner=new_inner,
            revision=delta.revision if delta.revision is not None else self.revision,
            details=details,
            locate=delta.locate if delta.replace_details else self.locate,
            fetched_at=delta.fetched_at if delta.fetched_at is not None else time.time(),
            secret=self.secret,
        )

    def nested(self) -> dict[str, Any]:
        """Return the layer as a plain nested dict (a new one on each call)."""
        return unflatten(self.values.items())

    def __repr__(self) -> str:
        return f"<Layer {len(self.values)} keys revision={self.revision!r}>"


_ABSENT: Any = object()


def secret_keys(layers: Iterable[Layer | None]) -> frozenset[str]:
    """The keys of the layers marked ``secret`` (a secrets directory's): redaction treats
    them as secret whatever their names (``redact_value(key, value, secret_keys)``)."""
    return frozenset(
        k for layer in layers if layer is not None and layer.secret for k in layer.values
    )


def _read_only_details(details: Mapping[str, str]) -> Mapping[str, str]:
    """``details`` as a layer keeps them: a persistent map as it is, anything else copied
    into one (a lazy mapping is kept only when given to ``Layer(...)`` itself)."""
    if isinstance(details, (immutables.Map, Overlaid)):
        return details
    return immutables.Map(details)


class Overlaid(Mapping[str, str]):
    """Details: a lazily computed base mapping with the changes applied since on top.

    ``changes`` holds the details set by deltas, ``gone`` the keys deleted since (both
    persistent maps, so an update costs O(log n), not a copy of the base).
    """

    __slots__ = ("_base", "_changes", "_gone")

    def __init__(self, base: Mapping[str, str], changes: Values, gone: Values) -> None:
        self._base = base
        self._changes = changes
        self._gone = gone

    @classmethod
    def of(
        cls, details: Mapping[str, str], deleted: Iterable[str], new: Mapping[str, str]
    ) -> Overlaid:
        """``details`` with the keys ``deleted`` removed, then ``new`` set."""
        if isinstance(details, Overlaid):
            base, changes, gone = details._base, details._changes.mutate(), details._gone.mutate()
        else:
            base, changes, gone = details, _NO_DETAILS.mutate(), _NO_DETAILS.mutate()
        for key in deleted:
            changes.pop(key, None)
            gone[key] = True
        for key, text in new.items():
            changes[key] = text
            gone.pop(key, None)
        return cls(base, changes.finish(), gone.finish())

    def __getitem__(self, key: str) -> str:
        found = self._changes.get(key)
        if found is not None:
            return str(found)
        if key in self._gone:
            raise KeyError(key)
        return self._base[key]

    def __contains__(self, key: object) -> bool:
        return key in self._changes or (key not in self._gone and key in self._base)

    def __iter__(self) -> Iterator[str]:
        changes, gone = self._changes, self._gone
        yield from changes
        for key in self._base:
            if key not in changes and key not in gone:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"<Overlaid details: {len(self._changes)} changed, {len(self._gone)} deleted>"


def _read_only(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


def _frozen_keys(keys: Iterable[str]) -> frozenset[str]:
    return frozenset(keys)


@attrs.frozen(repr=False)
class LayerDelta:
    """A change to a layer: keys set (added or changed) and keys deleted.

    Backends that watch report deltas (one per revision: all keys of an etcd transaction
    together) so that the core touches only what changed. ``details`` gives provenance for
    the keys in ``set``; with ``replace_details`` it replaces the layer's details entirely.
    """

    set: Mapping[str, Any] = attrs.field(factory=dict, converter=_read_only)
    deleted: frozenset[str] = attrs.field(factory=frozenset, converter=_frozen_keys)
    revision: Any = None
    details: Mapping[str, str] = attrs.field(factory=dict)
    locate: Callable[[str], str | None] | None = None
    replace_details: bool = False
    fetched_at: float | None = None

    def __bool__(self) -> bool:
        return bool(self.set) or bool(self.deleted)

    def __repr__(self) -> str:
        return (
            f"<LayerDelta set={len(self.set)} deleted={len(self.deleted)} "
            f"revision={self.revision!r}>"
        )


def unflatten(items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Build a nested dict from ``(dotted key, value)`` pairs of a conflict-free layer."""
    root: dict[str, Any] = {}
    for key, value in items:
        node = root
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return root


def to_json(value: Any) -> Any:
    """``value`` (a leaf of a layer: text, numbers, booleans, null, and frozen lists and
    tables of them) as plain JSON-able data; anything else becomes its text."""
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)

"""etcd keys to confhub layers: a tree load (bulk, else key by key), a document, a watch delta.

Every etcd key in a layer has the detail ``etcd key /myapp/db/port (mod_revision 12)``
(:func:`detail`); :func:`owner` reads the etcd key back from it, which is how a later watch
event tells a key's own update from another etcd key mapping to the same dotted key. A tree
load keeps the etcd keys and mod revisions and makes each detail string when it is read
(:class:`LoadDetails`), so a load of 10,000 keys builds no 10,000 strings nor a second
persistent map for them.

**The fast path of a tree load** (:func:`fast_tree_layer`). A load of 10,000 keys spends as
long building its layer as etcd takes to send the keys when each key goes through a Python
loop (decode, map, check, detail, parent counts). Here every step is one C-level operation
over all keys: the keys are joined and decoded once, mapped to dotted keys with two
``str.replace`` calls, checked with a few substring searches, and the parent counts come from
a ``Counter`` of the distinct parents. Anything unusual (a key or value that is not UTF-8, a
key holding a newline or a value holding NUL, a directory marker, an empty segment, a
duplicate dotted key, a leaf/parent clash) returns ``None``: the caller then takes the
key-by-key path (:func:`checked_tree_layer`), which skips or reports it exactly, in the
kit's words (:mod:`confhub.kv`).
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from operator import attrgetter, itemgetter
from typing import Any, Final

import immutables
from confhub import Layer, LayerDelta, SourceFormatError, SourceUnavailableError, parse_document
from confhub.kv import KeyMap, decode_text, leaf_parent_clash

from ._types import EventKind, KeyValue, WatchEvent

__all__ = [
    "LoadDetails",
    "checked_tree_layer",
    "detail",
    "document_layer",
    "fast_tree_layer",
    "owner",
    "tree_delta",
]

NOUN: Final = "etcd key"
_first = itemgetter(0)
_KEY, _VALUE, _MOD_REVISION = attrgetter("key"), attrgetter("value"), attrgetter("mod_revision")

#: A key's detail is ``etcd key /myapp/db/port (mod_revision 12)``.
DETAIL_HEAD: Final = "etcd key "
DETAIL_TAIL: Final = " (mod_revision "
# Patterns of the joined, prefix-stripped keys that need the key-by-key path: the prefix key
# itself or an empty key ("\n\n"), a directory marker ("/\n"), a leading empty segment.
_RAW_SUSPECT: Final = ("\n\n", "/\n", "\n/")
# ... and of the dotted keys: an empty segment, a leading or trailing dot.
_DOTTED_SUSPECT: Final = ("..", "\n.", ".\n")


def fast_tree_layer(items: Sequence[Any], prefix: str, revision: int) -> Layer | None:
    """The layer of ``items`` (etcd ``KeyValue`` messages under ``prefix``, at ``revision``),
    or ``None`` when a key or value needs the checked key-by-key path."""
    count = len(items)
    if not count:
        return None
    try:
        full = b"\n".join(map(_KEY, items)).decode("utf-8")
        texts = b"\0".join(map(_VALUE, items)).decode("utf-8").split("\0")
    except UnicodeDecodeError:
        return None
    rel = ("\n" + full).replace("\n" + prefix, "\n") + "\n"
    if rel.count("\n") != count + 1 or len(texts) != count:
        return None  # a key with a newline, a value with NUL
    if any(p in rel for p in _RAW_SUSPECT):
        return None
    dotted = rel.replace("/", ".")
    if any(p in dotted for p in _DOTTED_SUSPECT):
        return None
    keys = dotted[1:-1].split("\n")
    # A plain dict: the layer keeps it read-only, and makes the persistent map that
    # updates need on the first one (a load builds none).
    values = dict(zip(keys, texts, strict=True))
    if len(values) != count:
        return None  # two etcd keys map to one dotted key
    inner = _parent_counts(keys)
    if any(parent in values for parent in inner):
        return None  # a leaf/parent clash
    return Layer(
        values=values,
        inner=immutables.Map(inner),
        revision=revision,
        details=LoadDetails(keys, full, array("q", map(_MOD_REVISION, items))),
    )


class LoadDetails(Mapping[str, str]):
    """The details of a tree load, each :func:`detail` string made when it is read.

    Holds the dotted keys, the etcd keys (one joined string) and the mod revisions of the
    load, instead of 10,000 strings in a persistent map; the dotted key -> position index is
    built on the first lookup. Immutable; ``Layer.apply`` records later changes on top.
    """

    __slots__ = ("_index", "_joined", "_keys", "_names", "_revisions")

    def __init__(self, keys: list[str], joined: str, revisions: array[int]) -> None:
        self._keys = keys
        self._joined = joined  # the etcd keys, "\n"-joined
        self._revisions = revisions
        self._index: dict[str, int] | None = None
        self._names: list[str] | None = None

    def __getitem__(self, key: str) -> str:
        index, names = self._index, self._names
        if index is None or names is None:  # a benign race: two readers build the same
            index = self._index = dict(zip(self._keys, range(len(self._keys)), strict=True))
            names = self._names = self._joined.split("\n")
        at = index[key]
        return f"{DETAIL_HEAD}{names[at]}{DETAIL_TAIL}{self._revisions[at]})"

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except (KeyError, TypeError):
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"<LoadDetails {len(self._keys)} etcd keys>"


def _parent_counts(keys: list[str]) -> dict[str, int]:
    """``Layer.inner``: for every parent of a key, how many keys lie below it."""
    # Each key's direct parent ("" for a top-level key), in C-level steps.
    direct = Counter(map(_first, map(str.rpartition, keys, repeat("."))))
    direct.pop("", None)
    counts: dict[str, int] = {}
    for parent, below in direct.items():
        counts[parent] = counts.get(parent, 0) + below
        dot = parent.rfind(".")
        while dot > 0:
            ancestor = parent[:dot]
            counts[ancestor] = counts.get(ancestor, 0) + below
            dot = parent.rfind(".", 0, dot)
    return counts


def detail(key: str, mod_revision: int) -> str:
    """The provenance of a key from etcd key ``key`` at ``mod_revision``."""
    return f"{DETAIL_HEAD}{key}{DETAIL_TAIL}{mod_revision})"


def owner(text: str | None) -> str | None:
    """The etcd key named by a :func:`detail` (cached details too), else None."""
    if text is None or not text.startswith(DETAIL_HEAD):
        return None
    end = text.rfind(DETAIL_TAIL)
    return text[len(DETAIL_HEAD) : end] if end > 0 else None


def _name(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


def _both_map(source: str, dotted: str, first: str | None, second: str) -> SourceFormatError:
    return SourceFormatError(
        f"{source}: etcd keys {first!r} and {second!r} both map to {dotted!r} (dots nest "
        "like slashes); delete or rename one of them",
        source=source,
        key=dotted,
    )


def checked_tree_layer(items: Iterable[Any], keys: KeyMap, revision: int) -> Layer:
    """The layer of ``items`` key by key: the prefix key and folder markers skipped, every
    problem a :class:`confhub.SourceFormatError` naming the etcd key(s) at fault."""
    source = keys.source
    values: dict[str, str] = {}
    details: dict[str, str] = {}
    inner: dict[str, int] = {}
    for kv in items:
        dotted = keys.to_dotted(kv.key)  # raises for a key that is not UTF-8 or has a gap
        if dotted is None:
            continue
        name = _name(kv.key)
        if dotted in values:
            raise _both_map(source, dotted, owner(details[dotted]), name)
        values[dotted] = decode_text(kv.value, source=source, key=name, noun=NOUN)
        details[dotted] = detail(name, kv.mod_revision)
        dot = dotted.rfind(".")
        while dot > 0:
            parent = dotted[:dot]
            inner[parent] = inner.get(parent, 0) + 1
            dot = dotted.rfind(".", 0, dot)
    both = values.keys() & inner.keys()
    if both:
        parent = min(both)
        child = next(k for k in sorted(values) if k.startswith(parent + "."))
        raise leaf_parent_clash(
            source, str(owner(details[parent])), str(owner(details[child])), key=parent, noun=NOUN
        )
    return Layer(
        values=values,
        inner=immutables.Map(inner),
        revision=revision,
        details=immutables.Map(details),
    )


def document_layer(
    kv: KeyValue | None, fmt: str, *, key: str, source: str, revision: int, optional: bool
) -> Layer:
    """The layer of document key ``key`` holding ``kv`` (parsed as ``fmt``). A missing key
    (``kv`` None) is a missing file: an empty layer when ``optional``, else
    :class:`confhub.SourceUnavailableError` naming the key and the fix."""
    if kv is None:
        if optional:
            return Layer.from_flat({}, source=source, revision=revision)
        raise SourceUnavailableError(
            f"{source}: document key {key} does not exist (revision {revision}); create it, "
            "fix the path, or add ?optional=true",
            source=source,
        )
    name = _name(kv.key)
    data = parse_document(kv.value, fmt, source=source, path=name)
    layer = Layer.from_mapping(data, source=source)
    text = detail(name, kv.mod_revision)
    return Layer.from_flat(
        dict(layer.values),
        source=source,
        revision=revision,
        details=dict.fromkeys(layer.values, text),
    )


def tree_delta(
    base: Layer, events: Iterable[WatchEvent], keys: KeyMap, revision: int
) -> LayerDelta:
    """The delta that applies ``events`` (the latest event of each etcd key) to ``base``.

    Raises :class:`confhub.SourceFormatError` for a key or value that cannot apply (the
    caller holds the events back until a later one fixes it). A delete removes a dotted key
    only when ``base`` got it from that same etcd key.
    """
    source = keys.source
    events = list(events)
    base_values, base_details = base.values, base.details
    deleted: set[str] = set()
    for event in events:
        if event.kind is EventKind.DELETE:
            try:
                dotted = keys.to_dotted(event.key)
            except SourceFormatError:
                continue  # a key that never applied (not UTF-8, an empty segment)
            if dotted is not None and owner(base_details.get(dotted)) in (None, _name(event.key)):
                deleted.add(dotted)
    to_set: dict[str, str] = {}
    set_from: dict[str, str] = {}
    details: dict[str, str] = {}
    for event in events:
        if event.kind is not EventKind.PUT:
            continue
        dotted = keys.to_dotted(event.key)
        if dotted is None:
            continue
        name = _name(event.key)
        if dotted in set_from:
            raise _both_map(source, dotted, set_from[dotted], name)
        current = owner(base_details.get(dotted))
        if dotted in base_values and dotted not in deleted and current not in (None, name):
            raise _both_map(source, dotted, current, name)
        to_set[dotted] = decode_text(event.value, source=source, key=name, noun=NOUN)
        set_from[dotted] = name
        details[dotted] = detail(name, event.mod_revision)
    return LayerDelta(
        set=to_set, deleted=deleted - to_set.keys(), revision=revision, details=details
    )

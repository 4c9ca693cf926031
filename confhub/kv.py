"""A kit for key-value backends: what every KV plugin needs and should not rewrite.

The etcd and Consul plugins are built on it, and a third-party backend for another store
(ZooKeeper, Redis, a database table) should be too, so that every KV source maps keys,
words its errors, backs off and reports failures the same way. It imports no client
library::

    from confhub import kv

    keys = kv.KeyMap("myapp/", source=spec.display, noun="etcd key")
    keys.to_dotted(b"myapp/db/port")      # "db.port"
    keys.to_dotted("myapp/db/")           # None: a folder marker
    keys.to_store("db.port")              # "myapp/db/port"

- Key mapping: :class:`KeyMap` (prefix, folder markers, empty segments, UTF-8).
- Values: :func:`decode_text` (store bytes to text), :func:`encode_value` (a written value to
  bytes).
- Writes: :func:`check_write_shape` refuses a write that would turn a table into a value or a
  value into a table (read the keys under :meth:`KeyMap.write_scope` first, map them with
  :meth:`KeyMap.index`); :func:`check_transaction` does the same for a transaction of
  :class:`confhub.WriteOp` (puts and deletes, checked against the keys it leaves);
  :func:`write_into_document` / :func:`commit_into_document` are the new text of a
  document-layout write or transaction (read-modify-CAS).
- Errors, in the words the core uses: :func:`too_many_keys`, :func:`leaf_parent_clash`.
- Watching: :class:`Backoff` (capped, jittered), :class:`ReportOnce` (one report per state
  change), :func:`recovered` (the "source is back" signal).
- Options: :data:`CORE_OPTIONS` (accept them), :data:`DEFAULT_MAX_KEYS`,
  :func:`check_options` (warn about the rest).
"""

from __future__ import annotations

import difflib
import json
import logging
import random
import threading
from collections.abc import Collection, Hashable, Iterable, Mapping
from typing import Any

import attrs

from ._backend import WriteOp
from ._errors import SourceFormatError, WriteError
from ._layer import Layer, LayerDelta, leaf_parent_clash, too_many_keys
from ._spec import CORE_OPTIONS, DEFAULT_MAX_KEYS, SourceSpec

__all__ = [
    "CORE_OPTIONS",
    "DEFAULT_MAX_KEYS",
    "Backoff",
    "KeyMap",
    "ReportOnce",
    "check_options",
    "check_transaction",
    "check_write_shape",
    "commit_into_document",
    "decode_text",
    "encode_value",
    "leaf_parent_clash",
    "recovered",
    "too_many_keys",
    "write_into_document",
]

_log = logging.getLogger("confhub.kv")


# -- keys ------------------------------------------------------------------------------------


@attrs.frozen
class KeyMap:
    """Maps the keys under a store prefix to dotted keys and back.

    ``prefix`` is the store's key prefix (``"myapp/"``, ``"/config/app/"``, or ``""`` for the
    whole store); ``separator`` nests (``/``); dots in a store key nest too, so
    ``myapp/db/port`` and ``myapp/db.port`` are both ``db.port``. ``source`` (the spec's
    display name) and ``noun`` (``"etcd key"``) word the errors.
    """

    prefix: str
    source: str = attrs.field(kw_only=True)
    separator: str = attrs.field(default="/", kw_only=True)
    noun: str = attrs.field(default="key", kw_only=True)

    def to_dotted(self, store_key: str | bytes) -> str | None:
        """The dotted key of ``store_key``; ``None`` for a key that carries none: the prefix
        itself, a folder marker (``myapp/db/``), or a key outside the prefix.

        A key that is not UTF-8, or that has an empty segment once dots and separators nest
        (``myapp//a``, ``myapp/a./b``, ``myapp/.a``), is a :class:`SourceFormatError` naming
        the store key (also its ``.key``): rename the key.
        """
        if isinstance(store_key, bytes):
            try:
                name = store_key.decode("utf-8")
            except UnicodeDecodeError:
                raise SourceFormatError(
                    f"{self.source}: {self.noun} {store_key!r} is not valid UTF-8; rename it",
                    source=self.source,
                    key=store_key.decode("utf-8", "backslashreplace"),
                ) from None
        else:
            name = store_key
        if not name.startswith(self.prefix):
            return None
        rel = name[len(self.prefix) :]
        if not rel or rel.endswith(self.separator):
            return None
        dotted = rel.replace(self.separator, ".")
        if dotted[0] == "." or dotted[-1] == "." or ".." in dotted:
            raise SourceFormatError(
                f"{self.source}: {self.noun} {name!r} has an empty path segment; rename it",
                source=self.source,
                key=name,
            )
        return dotted

    def to_store(self, dotted: str) -> str:
        """The store key of ``dotted`` (the inverse of :meth:`to_dotted` for plain keys)."""
        return self.prefix + dotted.replace(".", self.separator)

    def index(self, store_keys: Iterable[str | bytes]) -> dict[str, list[str]]:
        """The dotted keys of ``store_keys`` (a listing under :meth:`write_scope`), each with
        the store keys that hold it (``myapp/db/port`` and ``myapp/db.port`` are both
        ``db.port``). Keys this source cannot read (not UTF-8, empty segments) and folder
        markers are left out: they are refused when it reads. A transaction writes a key
        where it already is, and deletes every store key that holds it."""
        found: dict[str, list[str]] = {}
        for name in store_keys:
            try:
                dotted = self.to_dotted(name)
            except SourceFormatError:
                continue
            if dotted is not None:
                text = name.decode("utf-8") if isinstance(name, bytes) else name
                found.setdefault(dotted, []).append(text)
        return found

    def write_scope(self, dotted: str) -> str:
        """The store prefix holding every key a write of ``dotted`` could clash with.

        Its keys (``myapp/db`` for ``db.port.x``) are the only ones whose dotted key can be
        a parent or a child of ``dotted``, whether they nest with separators or dots
        (``myapp/db/port``, ``myapp/db.port``), so a write reads just the keys under it
        (keys only) and passes their dotted keys to :func:`check_write_shape`.
        """
        return self.prefix + dotted.split(".", 1)[0]


# -- values ----------------------------------------------------------------------------------


def decode_text(raw: bytes, *, source: str, key: str, noun: str = "key") -> str:
    """The text of a stored value: UTF-8, or a :class:`SourceFormatError` naming ``key``
    (the store key, also the error's ``.key``) and the offending byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SourceFormatError(
            f"{source}: the value of {noun} {key!r} is not valid UTF-8 (byte {exc.start}); "
            "store text",
            source=source,
            key=key,
        ) from None


def encode_value(value: object, *, source: str = "", key: str | None = None) -> bytes:
    """The bytes to store for a written leaf ``value``.

    ``bytes`` are kept; ``str`` is UTF-8; ``True``/``False`` are ``true``/``false`` (the
    text binding reads back as booleans); other ints and floats their ``str()``. Anything
    else (a mapping, a list, ``None``, text that cannot be UTF-8) is a :class:`WriteError`
    naming ``key`` of ``source``: KV stores hold one text value per key.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            problem = "text that is not valid UTF-8 (a lone surrogate)"
    elif isinstance(value, int | float):
        return str(value).encode("utf-8")
    else:
        problem = f"a {type(value).__name__}"
    where = f"{source}: " if source else ""
    raise WriteError(
        f"{where}cannot write {problem} to {key!r}: a KV store holds text; write one leaf "
        "key at a time as a string, number or boolean",
        source=source,
        key=key,
    )


# -- writes ----------------------------------------------------------------------------------

#: How many of a table's keys a refused write names before it counts the rest.
_SHOWN_KEYS = 3


def check_write_shape(
    existing: Layer | Mapping[str, Any] | Iterable[str],
    key: str,
    value: object = None,
    *,
    source: str,
) -> None:
    """Refuse a write of dotted ``key`` that would change the shape of what a source holds.

    ``existing`` is what the source holds now, read at write time: a :class:`Layer`, a
    mapping (a parsed document, nested or with dotted keys: dots nest), or the dotted keys
    of the store (a tree layout's keys under :meth:`KeyMap.write_scope`; values are not
    needed). A write is refused with a :class:`WriteError` (``.key`` is ``key``, ``.source``
    is ``source``) before anything is sent when it would

    - put a value where a table is (``db`` over ``db.host`` and ``db.port``): the table's
      keys would be shadowed or lost; the message names the first few and counts them;
    - put a key under a value (``db.port.x`` under ``db.port = 5432``): the value would be
      replaced by a table, or the store would hold a key that is both a leaf and a parent,
      which every reader refuses.

    The way out is named too: write the table's keys one by one, or delete first. A
    ``value`` that is a non-empty mapping is written as its leaves (a table over a table
    merges). Overwriting a leaf, creating a key, or writing beside others is accepted.
    Values are never quoted (they may be secrets).
    """
    leaves = _leaves(existing)
    written = [key]
    if isinstance(value, Mapping) and value:
        written = sorted(_leaf_names(value, key))
    for target in written:
        parts = target.split(".")
        for depth in range(1, len(parts)):
            parent = ".".join(parts[:depth])
            if parent in leaves:
                raise WriteError(
                    f"{source}: cannot write {key!r}: {parent!r} holds a value, and the write "
                    f"would turn it into a table (the parent of {target!r}), losing that "
                    f"value; delete {parent!r} first, or write a key that is not under it",
                    source=source,
                    key=key,
                )
        below = target + "."
        shadowed = sorted(k for k in leaves if k.startswith(below))
        if shadowed:
            shown = ", ".join(repr(k) for k in shadowed[:_SHOWN_KEYS])
            if len(shadowed) > _SHOWN_KEYS:
                shown += f" and {len(shadowed) - _SHOWN_KEYS:,} more"
            count = f"{len(shadowed):,} key" + ("s" if len(shadowed) != 1 else "")
            raise WriteError(
                f"{source}: cannot write {key!r}: {target!r} is a table of {count} "
                f"({shown}), which a value there would shadow; write its keys one by one "
                f"(such as {shadowed[0]!r}), or delete them first to replace the table",
                source=source,
                key=key,
            )


def check_transaction(
    existing: Layer | Mapping[str, Any] | Iterable[str],
    ops: Iterable[WriteOp],
    *,
    source: str,
    force: bool = False,
) -> None:
    """Refuse a transaction of :class:`confhub.WriteOp` before anything is sent, as
    :func:`check_write_shape` refuses one write (``existing`` as there: the keys under the
    :meth:`KeyMap.write_scope` of every key the transaction touches).

    Always refused (:class:`WriteError`, ``.key`` the op's key): no operation, or a key
    written or deleted twice (which one wins would be the store's accident). Unless
    ``force``: a delete of a key that holds no value but a table (delete its keys), and a
    put that would shadow a table or sit under a value *in the keys the transaction
    leaves*, so a transaction that deletes a table's keys and puts a value at its name
    replaces the table, as intended. ``force`` writes it anyway: readers then refuse the
    source until it is fixed (a hub with a cached copy serves that meanwhile).
    """
    ops = list(ops)
    if not ops:
        raise WriteError(
            f"{source}: an empty transaction; add puts or deletes before commit()",
            source=source,
        )
    seen: set[str] = set()
    for op in ops:
        if op.key in seen:
            raise WriteError(
                f"{source}: {op.key!r} is written or deleted twice in one transaction; "
                "keep one operation per key",
                source=source,
                key=op.key,
            )
        seen.add(op.key)
    if force:
        return
    leaves = set(_leaves(existing))
    deleted = {op.key for op in ops if op.action == "delete"}
    for key in sorted(deleted - leaves):
        below = key + "."
        table = sorted(k for k in leaves if k.startswith(below))
        if table:
            shown = ", ".join(repr(k) for k in table[:_SHOWN_KEYS])
            if len(table) > _SHOWN_KEYS:
                shown += f" and {len(table) - _SHOWN_KEYS:,} more"
            raise WriteError(
                f"{source}: cannot delete {key!r}: it holds no value but a table of "
                f"{len(table):,} key{'s' if len(table) != 1 else ''} ({shown}); delete "
                "those keys (in one transaction to delete them together)",
                source=source,
                key=key,
            )
    after = (leaves - deleted) | {op.key for op in ops if op.action == "put"}
    for op in ops:
        if op.action == "put":
            check_write_shape(after, op.key, op.value, source=source)


def commit_into_document(
    document: Mapping[str, Any] | None,
    fmt: str,
    ops: Iterable[WriteOp],
    *,
    source: str,
    force: bool = False,
) -> bytes:
    """The text of a document-layout transaction: ``document`` (parsed; ``None``: none yet)
    with every op applied (a put sets a dotted key, a delete removes it and the tables it
    leaves empty), dumped in ``fmt``. Refused first by :func:`check_transaction`; with
    ``force`` a put replaces whatever is at its key (a table, or a value above it)."""
    ops = list(ops)
    data: dict[str, Any] = _thaw(document) if document is not None else {}
    check_transaction(data, ops, source=source, force=force)
    for op in ops:
        parts = op.key.split(".")
        if op.action == "delete":
            _remove(data, parts)
            continue
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):  # absent, or (forced) a value in the way
                child = node[part] = {}
            node = child
        node[parts[-1]] = list(op.value) if isinstance(op.value, tuple) else op.value
    return _dump_document(data, fmt, source=source, key=ops[0].key)


def _remove(data: dict[str, Any], parts: list[str]) -> None:
    """Delete ``parts`` from nested ``data``, then the tables that left empty."""
    trail = [data]
    for part in parts[:-1]:
        child = trail[-1].get(part)
        if not isinstance(child, dict):
            return
        trail.append(child)
    trail[-1].pop(parts[-1], None)
    for depth in range(len(parts) - 1, 0, -1):
        if trail[depth]:
            break
        del trail[depth - 1][parts[depth - 1]]


def write_into_document(
    document: Mapping[str, Any] | None, fmt: str, key: str, value: object, *, source: str
) -> bytes:
    """The text of a document-layout write: ``document`` (as :func:`confhub.parse_document`
    returned it; ``None`` for a document key that does not exist yet) with dotted ``key``
    set to ``value``, dumped in ``fmt`` (``json``, ``yaml`` or ``toml``) as UTF-8.

    The write is refused first by :func:`check_write_shape` (a value over a table, a key
    under a value). The backend then writes the returned bytes with compare-and-swap on the
    document key's revision, so a concurrent writer is never overwritten. Comments and
    formatting of the original text are not kept. TOML needs the ``tomli_w`` package; without
    it the write is a :class:`WriteError` saying so.
    """
    data: dict[str, Any] = _thaw(document) if document is not None else {}
    check_write_shape(data, key, value, source=source)  # a WriteError naming what it hides
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):  # check_write_shape refused this; never replace it
            raise WriteError(f"{source}: cannot write {key!r}", source=source, key=key)
        node = child
    node[parts[-1]] = list(value) if isinstance(value, tuple) else value
    return _dump_document(data, fmt, source=source, key=key)


def _thaw(value: Any) -> Any:
    """A mutable copy of a frozen parsed document (read-only mappings, tuples)."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_thaw(v) for v in value]
    return value


def _dump_document(data: Mapping[str, Any], fmt: str, *, source: str, key: str) -> bytes:
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True).encode("utf-8")
    try:
        import tomli_w  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise WriteError(
            f"{source}: writing into a TOML document needs the tomli_w package "
            "(pip install tomli_w), or write the whole document key yourself",
            source=source,
            key=key,
        ) from None
    dumped: str = tomli_w.dumps(dict(data))
    return dumped.encode("utf-8")


def _leaves(existing: Layer | Mapping[str, Any] | Iterable[str]) -> frozenset[str] | set[str]:
    """The dotted leaf keys of what a source holds (see :func:`check_write_shape`)."""
    if isinstance(existing, Layer):
        return frozenset(existing.values)
    if isinstance(existing, Mapping):
        return set(_leaf_names(existing, ""))
    if isinstance(existing, str | bytes):
        raise TypeError("check_write_shape needs the source's keys (a list), not one string")
    return {k for k in existing if isinstance(k, str)}


def _leaf_names(data: Mapping[Any, Any], prefix: str) -> Iterable[str]:
    """The dotted keys of the leaves of a nested mapping (an empty table holds none)."""
    stack = [(prefix, data)]
    while stack:
        base, node = stack.pop()
        for name, child in node.items():
            dotted = f"{base}.{name}" if base else str(name)
            if isinstance(child, Mapping):
                stack.append((dotted, child))
            else:
                yield dotted


# -- watching --------------------------------------------------------------------------------


def _positive(_: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"Backoff {attribute.name} must be above 0, not {value!r}")


#: The jitter's own source: drawing from it never changes the ``random`` module's state (an
#: app that seeds ``random`` gets the same sequence with confhub running), and it needs no
#: reseeding after ``fork()`` (each draw reads the OS's entropy), so forked workers do
#: not retry in step.
_JITTER = random.SystemRandom()


@attrs.frozen
class Backoff:
    """Capped exponential backoff with jitter.

    Attempt ``n`` (from 0) waits ``min(maximum, initial * multiplier**n)``, shortened by up
    to ``jitter`` (a fraction: 0.5 waits between half and all of it) so that many clients
    that lost one server do not come back in step. Build it from the spec's ``retry_initial``
    / ``retry_max`` options, defaulting to :class:`confhub.BackendSettings`.
    """

    initial: float = attrs.field(validator=_positive)
    maximum: float = attrs.field(validator=_positive)
    jitter: float = attrs.field(default=0.5, kw_only=True)
    multiplier: float = attrs.field(default=2.0, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.maximum < self.initial:
            raise ValueError(
                f"Backoff maximum ({self.maximum}) must be at least initial ({self.initial})"
            )
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"Backoff jitter must be between 0 and 1, not {self.jitter!r}")
        if not self.multiplier >= 1.0:
            raise ValueError(f"Backoff multiplier must be at least 1, not {self.multiplier!r}")

    def delay(self, attempt: int) -> float:
        """The seconds to wait before retry ``attempt`` (0 for the first retry)."""
        base = min(self.maximum, self.initial * self.multiplier ** min(max(attempt, 0), 64))
        return base * (1.0 - self.jitter * _JITTER.random())


class ReportOnce:
    """Remembers the last failure reported, so each is reported once per state change.

    Pass a structured kind, never message text (an exception type, an enum, a tuple of
    them): ``if reports.changed((type(exc), status)): notify(exc)``. Call :meth:`reset` when
    the source is well again, so the next failure is reported even if it is the same kind.
    Safe to share between threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kind: Hashable | type[Any] | None = None
        self._failing = False

    def changed(self, kind: Hashable | type[Any]) -> bool:
        """Record a failure of ``kind``; ``True`` when it differs from the last one recorded
        (or none was), i.e. when it should be reported."""
        with self._lock:
            if self._failing and self._kind == kind:
                return False
            self._kind, self._failing = kind, True
            return True

    def reset(self) -> None:
        """The source is well again: the next failure is a change."""
        with self._lock:
            self._kind, self._failing = None, False

    @property
    def failing(self) -> bool:
        """Whether a failure was recorded since the last :meth:`reset`."""
        return self._failing


def recovered(source: str, revision: Any) -> LayerDelta:
    """The "source is back" signal: pass it to ``notify`` when a watch that reported a
    failure works again at ``revision`` and nothing may have changed meanwhile.

    It is an empty :class:`confhub.LayerDelta` carrying the revision: the hub marks the
    source live again (it logs the recovery) and changes made meanwhile follow as usual.
    ``source`` is the spec's display name, logged at debug level.
    """
    _log.debug("%s: the source is back at revision %r", source, revision)
    return LayerDelta(revision=revision)


# -- options ---------------------------------------------------------------------------------


def check_options(
    spec: SourceSpec, known: Collection[str], *, logger: logging.Logger
) -> frozenset[str]:
    """Warn about the options of ``spec`` that neither the backend (``known``) nor the core
    (:data:`CORE_OPTIONS`) reads, one WARNING each on ``logger`` naming the option, the
    source and the closest known name. Never an error: a fleet that rolls out a new option
    keeps working on older plugins. Returns the unknown names."""
    accepted = frozenset(known) | CORE_OPTIONS
    unknown = frozenset(spec.options) - accepted
    for name in sorted(unknown):
        close = difflib.get_close_matches(name, sorted(accepted), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(sorted(known))
        logger.warning("%s: ignoring unknown option %r; %s", spec.display, name, hint)
    return unknown

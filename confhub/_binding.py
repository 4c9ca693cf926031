"""Typed binding: the merged configuration into attrs classes through a cattrs converter.

:class:`Binder` is the stage of the hub that owns the converter and the live :class:`View`
objects: it binds a snapshot (``bind``), keeps one view per class and prefix (``view``), and
re-binds the views a change touches before the hub publishes it (``rebind``).

Each hub owns one converter (never a global). It understands the text that env vars and KV
stores deliver: ``"false"``, ``"0"``, ``"no"`` and ``"off"`` are False (cattrs alone would make
``bool("false")`` True), ``"5433"`` is an int, ``"1.5"`` a float, and ``"30s"``, ``"5m"``,
``"1h30m"``, ``"250ms"`` or a number of seconds a :class:`datetime.timedelta`; ISO 8601 text
(``"1979-05-27T07:32:00Z"``, ``"1979-05-27"``, ``"07:32:00"``) a ``datetime``, ``date`` or
``time`` (documents deliver their dates as that text, like every other source).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from typing import Any, Generic, TypeVar

import attrs
import cattrs

from ._errors import ConfigValidationError
from ._merge import MISSING
from ._redact import is_secret_key, redact_value
from ._snapshot import Snapshot

T = TypeVar("T")

_TRUE = frozenset({"true", "yes", "on", "1", "y", "t"})
_FALSE = frozenset({"false", "no", "off", "0", "n", "f"})
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|s|m|h|d)")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _to_bool(value: Any, _: type) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError(f"expected bool (true/false, yes/no, on/off, 1/0), got {value!r}")


def _to_int(value: Any, _: type) -> int:
    if isinstance(value, bool):
        raise TypeError(f"expected int, got bool {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        digits = text.lstrip("-+")
        if len(digits) > 1 and digits[0] == "0":
            if digits[1].isdigit():
                raise ValueError(
                    f"{text!r} is ambiguous (a leading zero means octal to some readers); "
                    "write it without the zero, or with 0o for octal"
                )
            return int(text, 0)  # 0x..., 0o..., 0b...
        return int(text)
    raise TypeError(f"expected int, got {type(value).__name__} {value!r}")


def _to_float(value: Any, _: type) -> float:
    if isinstance(value, bool):
        raise TypeError(f"expected float, got bool {value!r}")
    if isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str):
        result = float(value.strip())
    else:
        raise TypeError(f"expected float, got {type(value).__name__} {value!r}")
    if not math.isfinite(result):
        raise ValueError(f"expected a finite float, got {value!r}")
    return result


def _to_str(value: Any, _: type) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"expected str, got {type(value).__name__} {value!r}")


def parse_duration(value: Any) -> timedelta:
    """Parse ``"1h30m"``, ``"250ms"``, ``"30s"`` or a number of seconds into a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        try:
            return timedelta(seconds=float(text))
        except ValueError:
            pass
        pos, total = 0, 0.0
        for match in _DURATION.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        else:
            if pos == len(text) and pos:
                return timedelta(seconds=total)
    raise ValueError(f"expected a duration like '30s', '5m', '1h30m' or seconds, got {value!r}")


def make_converter() -> cattrs.Converter:
    """Return a new converter with confhub's coercions for text values."""
    converter = cattrs.Converter(detailed_validation=True)
    converter.register_structure_hook(bool, _to_bool)
    converter.register_structure_hook(int, _to_int)
    converter.register_structure_hook(float, _to_float)
    converter.register_structure_hook(str, _to_str)
    converter.register_structure_hook(timedelta, lambda v, _: parse_duration(v))
    converter.register_unstructure_hook(timedelta, lambda td: td.total_seconds())
    for kind in (datetime, date, time):
        converter.register_structure_hook(kind, _iso(kind))
        converter.register_unstructure_hook(kind, lambda value: value.isoformat())
    return converter


def _iso(kind: type[datetime] | type[date] | type[time]) -> Any:
    """The structure hook of ``kind``: ISO 8601 text (``Z`` for UTC accepted) or the value."""

    def structure(value: Any, _: type) -> Any:
        if isinstance(value, kind) and (kind is not date or not isinstance(value, datetime)):
            return value
        if not isinstance(value, str):
            raise TypeError(f"expected ISO 8601 {kind.__name__} text, got {type(value).__name__}")
        try:
            return kind.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"expected an ISO 8601 {kind.__name__} such as "
                f"{_ISO_EXAMPLES[kind]!r}, got {value!r}"
            ) from None

    return structure


_ISO_EXAMPLES: dict[type, str] = {
    datetime: "1979-05-27T07:32:00Z",
    date: "1979-05-27",
    time: "07:32:00",
}


def error_lines(exc: BaseException) -> list[str]:
    """Turn a cattrs structuring error into lines such as ``expected int @ $.db.port``."""
    if isinstance(exc, (cattrs.ClassValidationError, cattrs.IterableValidationError)):
        return cattrs.transform_error(exc, path="$", format_exception=_format)
    return [f"{_format(exc, None)} @ $"]


def _format(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    name = getattr(type_, "__name__", None) or (str(type_) if type_ is not None else None)
    message = str(exc)
    if message.startswith("expected"):
        return message
    if isinstance(exc, ValueError) and name:
        return f"expected {name}, got an invalid value ({message})"
    if isinstance(exc, TypeError) and name:
        return f"expected {name} ({message})"
    return message or type(exc).__name__


def path_to_key(path: str) -> str:
    """Turn ``$.db.port`` (or ``$.servers[0].port``) into the dotted key ``db.port``."""
    key = path.removeprefix("$").lstrip(".")
    return re.sub(r"\[.*", "", key)


# -- views and the binder ----------------------------------------------------------------


class View(Generic[T]):
    """A live typed view: ``view.current`` is always the latest valid bound instance.

    ``current`` is a plain attribute that the hub replaces when it publishes a snapshot
    (after binding succeeded), so reading it costs one attribute load.
    """

    __slots__ = ("__weakref__", "cls", "current", "generation", "prefix")

    def __init__(self, cls: type[T], prefix: str | None, current: T, generation: int) -> None:
        self.cls = cls
        self.prefix = prefix
        self.current = current
        self.generation = generation

    def __repr__(self) -> str:
        return f"<View {self.cls.__name__} generation={self.generation}>"


class _ViewInput:
    """What the binder keeps per view: the nested input of its last binding, kept up to
    date with each change so that an update re-binds from it instead of rebuilding the
    whole tree (``data is None``: rebuild)."""

    __slots__ = ("data", "fields", "prefix")

    def __init__(self, cls: type[Any], prefix: str | None, data: dict[str, Any] | None) -> None:
        self.prefix = prefix
        self.data = data
        self.fields: frozenset[str] | None = (
            frozenset(a.name for a in attrs.fields(cls)) if attrs.has(cls) else None
        )

    def relevant(self, changed: Sequence[tuple[str, Any, Any]]) -> list[tuple[str, Any]] | None:
        """The changes under this view as ``(relative key, new)``; ``None``: rebind all.

        Changes to keys the bound class does not declare are left out: cattrs ignores them.
        """
        prefix = self.prefix
        out: list[tuple[str, Any]] = []
        for key, _, new in changed:
            if prefix:
                if key == prefix or prefix.startswith(key + "."):
                    return None  # the table itself was replaced by a value, or back
                if not key.startswith(prefix + "."):
                    continue
                key = key[len(prefix) + 1 :]
            if self.fields is None or key.split(".", 1)[0] in self.fields:
                out.append((key, new))
        return out

    def apply(self, changes: list[tuple[str, Any]]) -> dict[str, Any]:
        """Apply ``changes`` to the kept input and return it."""
        data = self.data
        assert data is not None
        for key, new in sorted(changes, key=lambda c: c[1] is not MISSING):
            parts = key.split(".")
            node = data
            if new is MISSING:
                trail = []
                for part in parts[:-1]:
                    trail.append((node, part))
                    child = node.get(part)
                    if not isinstance(child, dict):
                        break
                    node = child
                else:
                    node.pop(parts[-1], None)
                    for parent, part in reversed(trail):
                        if parent[part]:
                            break
                        del parent[part]
                continue
            for part in parts[:-1]:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
            node[parts[-1]] = new
        return data


class Binder:
    """Binds snapshots to attrs classes and keeps the hub's live views.

    Not thread-safe by itself: the hub calls ``view``, ``rebind``, ``forget`` and ``commit``
    under its lock; ``bind`` is safe from any thread.
    """

    def __init__(self, converter: cattrs.Converter) -> None:
        self.converter = converter
        self._views: dict[tuple[type[Any], str | None], tuple[View[Any], _ViewInput]] = {}

    def bind(self, snapshot: Snapshot, cls: type[T], prefix: str | None) -> T:
        """An instance of ``cls`` built from ``snapshot`` (at ``prefix``)."""
        return self._structure(snapshot, cls, prefix, _subtree(snapshot.tree(), prefix))

    def view(self, snapshot: Snapshot, cls: type[T], prefix: str | None) -> View[T]:
        """The live view of ``cls`` at ``prefix``, bound to ``snapshot`` when new."""
        key = (cls, prefix)
        entry = self._views.get(key)
        if entry is None:
            data = _plain(_subtree(snapshot.tree(), prefix))
            view = View(
                cls, prefix, self._structure(snapshot, cls, prefix, data), snapshot.generation
            )
            entry = self._views[key] = (view, _ViewInput(cls, prefix, data))
        return entry[0]

    def rebind(
        self, snapshot: Snapshot, changed: Sequence[tuple[str, Any, Any]]
    ) -> list[tuple[View[Any], Any]]:
        """Bind the views that ``changed`` touches to ``snapshot``; raise if one does not fit.

        A view whose declared fields did not change keeps its instance (cattrs ignores
        undeclared keys, so binding again would give an equal one). Nothing is published
        here: :meth:`commit` does that once the snapshot is accepted.
        """
        bound = []
        for view, kept in self._views.values():
            relevant = kept.relevant(changed)
            if relevant is not None and not relevant:
                continue
            if relevant is None or kept.data is None:
                kept.data = None
                data = _plain(_subtree(snapshot.tree(), view.prefix))
                kept.data = data
            else:
                data = kept.apply(relevant)
            bound.append((view, self._structure(snapshot, view.cls, view.prefix, data)))
        return bound

    def forget(self) -> None:
        """Drop every view's kept input (it holds a rejected state): rebuild next time."""
        for _, kept in self._views.values():
            kept.data = None

    @staticmethod
    def commit(bound: list[tuple[View[Any], Any]], generation: int) -> None:
        """Publish what :meth:`rebind` built: one attribute assignment per view."""
        for view, instance in bound:
            view.current = instance
            view.generation = generation

    def _structure(self, snapshot: Snapshot, cls: type[T], prefix: str | None, data: Any) -> T:
        try:
            return self.converter.structure(data, cls)
        except Exception as exc:
            lines = [annotate(snapshot, line, prefix) for line in error_lines(exc)]
            error = ConfigValidationError(
                f"configuration does not fit {cls.__qualname__}:\n  " + "\n  ".join(lines),
                errors=lines,
            )
            if any(_REDACTED_LINE in line for line in lines):
                # cattrs' own exception quotes the secret value: do not chain it.
                raise error from None
            raise error from exc


_REDACTED_LINE = "redacted: the key looks secret"


def annotate(snapshot: Snapshot, line: str, prefix: str | None) -> str:
    """Add the source of the bad value to a ``... @ $.db.port`` line."""
    _, _, path = line.rpartition(" @ ")
    key = path_to_key(path)
    if prefix:
        key = f"{prefix}.{key}" if key else prefix
    full = path.removeprefix("$").lstrip(".")
    if prefix:
        full = f"{prefix}.{full}" if full else prefix
    value = snapshot.flat().get(key)
    if is_secret_key(full) or redact_value(key, value) != value:
        # The message may quote the value (``got 'hunter2'``): never for a secret, checked
        # with the whole path (``$.items[0].token``) and inside lists and tables.
        line = f"invalid value ({_REDACTED_LINE}) @ {path}"
    index = snapshot.origin_index(key)
    if index is None:
        return line
    layer = snapshot.layers[index]
    detail = layer.detail(key) if layer is not None else None
    where = snapshot.names[index] + (f" ({detail})" if detail else "")
    return f"{line} (from {where})"


def _subtree(tree: Any, prefix: str | None) -> Any:
    """The part of a nested mapping at dotted ``prefix`` (an empty dict if absent)."""
    if prefix:
        for part in prefix.split("."):
            tree = tree.get(part, {}) if hasattr(tree, "get") else {}
    return tree


def _plain(tree: Any) -> Any:
    """A mutable plain-dict copy of a nested read-only mapping."""
    if hasattr(tree, "items"):
        return {k: _plain(v) for k, v in tree.items()}
    return tree

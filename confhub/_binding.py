"""Typed binding: the merged configuration into classes through a cattrs converter.

:class:`Binder` is the stage of the hub that owns the converter and the live :class:`View`
objects: it binds a snapshot (``bind``), keeps one view per class, prefix and policy
(``view``), and re-binds the views a change touches before the hub publishes it
(``rebind``). attrs classes, dataclasses, pydantic v2 models and TypedDicts bind
(:mod:`confhub._bindtypes`); keys a class does not declare are refused, logged or ignored
by the view's policy (:mod:`confhub._strict`).

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
import threading
from collections.abc import Callable, Sequence
from datetime import date, datetime, time, timedelta
from typing import Any, Generic, TypeVar

import cattrs

from ._bindtypes import Shape, Table, field_key, pydantic_errors, register_hooks, shape_of
from ._errors import ConfigValidationError, UnknownKey, UnknownKeyError
from ._merge import MISSING
from ._redact import is_secret_key, redact_value
from ._snapshot import Snapshot
from ._strict import (
    FIX,
    MAX_LISTED,
    UnknownPolicy,
    Warned,
    check_policy,
    inspect,
    line,
    locate,
)

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
    register_hooks(converter)
    return converter


class LazyConverter:
    """A hub's converter, built on first need (:meth:`get`): :func:`make_converter`, then
    ``register(converter)`` (the plugins' ``confhub_register_converters``). An error raised
    there is raised again by every later :meth:`get`; a ``register`` that reads the
    converter back (from its own thread) gets the one being built."""

    def __init__(self, register: Callable[[cattrs.Converter], None]) -> None:
        self._register = register
        self._converter: cattrs.Converter | None = None
        self._building: cattrs.Converter | None = None
        self._error: BaseException | None = None
        self._lock = threading.RLock()

    def get(self) -> cattrs.Converter:
        converter = self._converter
        if converter is not None:
            return converter
        with self._lock:
            if self._converter is not None:
                return self._converter
            if self._error is not None:
                raise self._error
            if self._building is not None:  # register() reading it back
                return self._building
            converter = self._building = make_converter()
            try:
                self._register(converter)
            except BaseException as exc:
                self._error = exc
                raise
            finally:
                self._building = None
            self._converter = converter
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


def error_lines(exc: BaseException, path: str = "$", type_: Any = None) -> list[str]:
    """Turn a structuring error into lines such as ``expected int @ $.db.port``.

    cattrs' ``transform_error``, with three differences: a field with an alias is shown
    by its key in the sources (``$.max-size``), a mapping's string key as a dotted step
    (``$.pools.main``, the key a source has) and a pydantic ``ValidationError`` as one line
    per error, below the model's path.
    """
    lines: list[str] = []
    if isinstance(exc, cattrs.IterableValidationError):
        with_notes, without = exc.group_exceptions()
        for inner, note in with_notes:
            index = note.index
            step = f".{index}" if isinstance(index, str) and _dotted(index) else f"[{index!r}]"
            lines.extend(error_lines(inner, path + step, note.type))
        return lines + [f"{_format(inner, None)} @ {path}" for inner in without]
    if isinstance(exc, cattrs.ClassValidationError):
        notes, rest = exc.group_exceptions()
        for inner, field in notes:
            key = field_key(exc.cl, field.name) if isinstance(exc.cl, type) else field.name
            lines.extend(error_lines(inner, f"{path}.{key}", field.type))
        return lines + [f"{_format(inner, None)} @ {path}" for inner in rest]
    found = pydantic_errors(exc)
    if found is not None:
        return [f"{message} @ {path}{below}" for message, below in found]
    return [f"{_format(exc, type_)} @ {path}"]


def _dotted(key: str) -> bool:
    return bool(key) and "." not in key and "[" not in key and "'" not in key


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
    (after binding succeeded), so reading it costs one attribute load. ``unknown`` is the
    view's policy for keys its class does not declare.
    """

    __slots__ = ("__weakref__", "cls", "current", "generation", "prefix", "unknown")

    def __init__(
        self,
        cls: type[T],
        prefix: str | None,
        current: T,
        generation: int,
        unknown: UnknownPolicy = "forbid",
    ) -> None:
        self.cls = cls
        self.prefix = prefix
        self.current = current
        self.generation = generation
        self.unknown = unknown

    def __repr__(self) -> str:
        name = getattr(self.cls, "__name__", repr(self.cls))
        return f"<View {name} generation={self.generation}>"


class _ViewInput:
    """What the binder keeps per view: the nested input of its last binding, kept up to
    date with each change so that an update re-binds from it instead of rebuilding the
    whole tree (``data is None``: rebuild), and the unknown keys a ``"warn"`` view logged."""

    __slots__ = ("data", "fields", "prefix", "warned")

    def __init__(
        self, shape: Shape, prefix: str | None, data: dict[str, Any] | None, policy: str
    ) -> None:
        self.prefix = prefix
        self.data = data
        self.warned = Warned()
        # Under "ignore", a change to a key the class does not declare cannot change the
        # instance; under the other policies it may make the input unknown-keyed.
        self.fields: frozenset[str] | None = (
            frozenset(shape.fields) if isinstance(shape, Table) and policy == "ignore" else None
        )

    def relevant(self, changed: Sequence[tuple[str, Any, Any]]) -> list[tuple[str, Any]] | None:
        """The changes under this view as ``(relative key, new)``; ``None``: rebind all.

        Under the ``"ignore"`` policy, changes to keys the bound class does not declare are
        left out: binding ignores them.
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


def _no_lenient_sources() -> frozenset[int]:
    return frozenset()


class Binder:
    """Binds snapshots to classes and keeps the hub's live views.

    ``unknown`` is the default policy for keys a class does not declare; ``lenient``
    returns the precedence slots whose sources never make a key unknown (the environment:
    see :mod:`confhub._strict`). Not thread-safe by itself: the hub calls ``view``,
    ``rebind``, ``forget`` and ``commit`` under its lock; ``bind`` is safe from any thread.
    """

    def __init__(
        self,
        converter: Callable[[], cattrs.Converter],
        *,
        unknown: UnknownPolicy = "forbid",
        lenient: Callable[[], frozenset[int]] = _no_lenient_sources,
    ) -> None:
        self._converter = converter  # called on each use: the hub builds it on first need
        self.unknown: UnknownPolicy = check_policy(unknown)
        self._lenient = lenient
        self._shapes: dict[Any, Shape] = {}
        self._views: dict[tuple[Any, str | None, str], tuple[View[Any], _ViewInput]] = {}

    def bind(
        self, snapshot: Snapshot, cls: type[T], prefix: str | None, unknown: str | None = None
    ) -> T:
        """An instance of ``cls`` built from ``snapshot`` (at ``prefix``)."""
        policy = self._policy(unknown)
        data = _subtree(snapshot.tree(), prefix)
        return self._structure(snapshot, cls, prefix, data, policy, None)

    def view(
        self, snapshot: Snapshot, cls: type[T], prefix: str | None, unknown: str | None = None
    ) -> View[T]:
        """The live view of ``cls`` at ``prefix`` (and policy), bound to ``snapshot`` when new."""
        policy = self._policy(unknown)
        key = (cls, prefix, policy)
        entry = self._views.get(key)
        if entry is None:
            data = _plain(_subtree(snapshot.tree(), prefix))
            kept = _ViewInput(self._shape(cls), prefix, data, policy)
            instance = self._structure(snapshot, cls, prefix, data, policy, kept.warned)
            view = View(cls, prefix, instance, snapshot.generation, policy)
            entry = self._views[key] = (view, kept)
        return entry[0]

    def rebind(
        self, snapshot: Snapshot, changed: Sequence[tuple[str, Any, Any]]
    ) -> list[tuple[View[Any], Any]]:
        """Bind the views that ``changed`` touches to ``snapshot``; raise if one does not fit.

        A view none of whose input changed keeps its instance (under ``"ignore"``, changes
        to undeclared keys do not count: binding would give an equal instance). Nothing is
        published here: :meth:`commit` does that once the snapshot is accepted.
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
            instance = self._structure(
                snapshot, view.cls, view.prefix, data, view.unknown, kept.warned
            )
            bound.append((view, instance))
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

    def _policy(self, unknown: str | None) -> UnknownPolicy:
        return self.unknown if unknown is None else check_policy(unknown)

    def _shape(self, cls: Any) -> Shape:
        try:
            return self._shapes[cls]
        except KeyError:
            shape = self._shapes[cls] = shape_of(cls)
            return shape
        except TypeError:  # an unhashable type form
            return shape_of(cls)

    def _structure(
        self,
        snapshot: Snapshot,
        cls: type[T],
        prefix: str | None,
        data: Any,
        policy: UnknownPolicy,
        warned: Warned | None,
    ) -> T:
        findings = inspect(data, self._shape(cls), prefix, unknown=policy != "ignore")
        unknown = locate(snapshot, findings.unknown, self._lenient()) if findings.unknown else []
        name = getattr(cls, "__qualname__", repr(cls))
        if unknown and policy == "warn":
            lines = [line(item) for item in unknown]
            report = Warned() if warned is None else warned
            report.report(unknown, lambda: _warning(name, lines))
            unknown = []
        elif warned is not None:
            warned.report((), str)
        # Outside the try: a plugin's error while the converter is built is its own error.
        converter = self._converter()
        if not unknown and not findings.shapes:
            try:
                return converter.structure(data, cls)
            except Exception as exc:
                error = _error(snapshot, name, prefix, error_lines(exc), [], more=False)
                if any(_REDACTED_LINE in text for text in error.errors):
                    # cattrs' own exception quotes the secret value: do not chain it.
                    raise error from None
                raise error from exc
        # Shape errors and unknown keys first; then what structuring says of the rest.
        lines = [f"{message} @ {path}" for message, path in findings.shapes]
        try:
            converter.structure(data, cls)
        except Exception as exc:  # noqa: BLE001 - reported with the findings
            # Not twice: a model with extra="forbid" refuses the unknown keys too.
            bad = [path for _, path in findings.shapes] + [item.path for item in unknown]
            lines += [e for e in error_lines(exc) if not _under(e.rpartition(" @ ")[2], bad)]
        more = len(findings.unknown) > MAX_LISTED
        raise _error(snapshot, name, prefix, lines, unknown, more=more) from None


def _error(
    snapshot: Snapshot,
    name: str,
    prefix: str | None,
    lines: list[str],
    unknown: list[UnknownKey],
    *,
    more: bool,
) -> ConfigValidationError:
    """The error of a binding: one line per unknown key, then each other line annotated
    with the source of its value."""
    annotated = [line(item) for item in unknown]
    if more:
        annotated.append(f"(only the first {MAX_LISTED} unknown keys are listed)")
    annotated += [annotate(snapshot, text, prefix) for text in lines]
    message = f"configuration does not fit {name}:\n  " + "\n  ".join(annotated)
    if unknown:
        return UnknownKeyError(f"{message}\n{FIX}", errors=annotated, unknown=unknown)
    return ConfigValidationError(message, errors=annotated)


def _warning(name: str, lines: list[str]) -> str:
    return (
        f'configuration has keys {name} does not declare (bound without them: unknown="warn"; '
        'fix the keys, or say unknown="ignore"):\n  ' + "\n  ".join(lines)
    )


def _under(path: str, bad: list[str]) -> bool:
    """Whether ``path`` is one of ``bad`` or below one (``$.db.host`` is below ``$.db``)."""
    return any(path == b or path.startswith((b + ".", b + "[")) for b in bad)


_REDACTED_LINE = "redacted: the key looks secret"


def annotate(snapshot: Snapshot, line: str, prefix: str | None) -> str:
    """Add the source of the bad value to a ``... @ $.db.port`` line.

    A line about a table (``expected int, got a table @ $.db.port``) names the source of
    the table's first key.
    """
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
    if index is None and key in snapshot:
        below = sorted(k for k in snapshot.flat() if k.startswith(key + "."))
        if below:
            key = below[0]
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

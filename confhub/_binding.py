"""Typed binding: the merged configuration into attrs classes through a cattrs converter.

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
from datetime import date, datetime, time, timedelta
from typing import Any

import cattrs

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

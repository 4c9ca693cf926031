"""What every document parser shares: the bounds against resource bombs, the walk that
checks them on a parsed document (:func:`check_bounds`) and the error wording ("in PATH at
line N, column C"). Imported by :mod:`confhub._parsers` (TOML, JSON, the entry point),
:mod:`confhub._yaml` (the YAML loaders) and :mod:`confhub._flatten` (a JSON file's bounds
are checked while it is flattened; the walk here decides the error)."""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from typing import Any

from ._errors import SourceFormatError

#: Bounds against resource bombs: nesting levels, and values after YAML alias expansion.
#: A layer holds every value flattened, so MAX_NODES also bounds a layer's memory.
MAX_DEPTH = 64
MAX_NODES = 1_000_000
#: Integers may have at most MAX_INT_DIGITS decimal digits: Python's own limit for decimal
#: literals (``sys.get_int_max_str_digits()`` default). Hex, octal and binary literals (YAML
#: ``0x...``, TOML ``0x...``) are not limited by Python, and an integer above the limit could
#: not be turned back into text later (``str()`` raises), so the parser refuses it.
MAX_INT_DIGITS = 4300
_INT_LIMIT = 10**MAX_INT_DIGITS  # the smallest integer with MAX_INT_DIGITS + 1 digits
_INT_BITS = _INT_LIMIT.bit_length() - 1  # below this many bits, an integer is below the limit


class _Where:
    """Formats "in PATH at line N, column C" for error messages."""

    def __init__(self, source: str, path: str | None) -> None:
        self.source = source
        self.path = path

    def error(
        self,
        what: str,
        line: int | None = None,
        column: int | None = None,
        *,
        key: str | None = None,
        hint: str = "",
    ) -> SourceFormatError:
        where = f" in {self.path}" if self.path else ""
        if line is not None:
            where += f" at line {line}"
            if column is not None:
                where += f", column {column}"
        return SourceFormatError(
            f"{self.source}: {what}{where}{hint}", source=self.source, key=key, line=line
        )


def check_bounds(data: Any, where: _Where) -> bool:
    """Walk the document once, bounded, refusing deep nesting, bombs and non-finite floats;
    returns whether it holds dates or times (TOML's)."""
    dates = False
    budget = MAX_NODES
    stack: list[tuple[Any, int]] = [(data, 0)]
    pop, push = stack.pop, stack.append
    isfinite = math.isfinite
    while stack:
        node, depth = pop()
        if depth > MAX_DEPTH:
            raise where.error(f"nesting deeper than {MAX_DEPTH} levels; refusing it")
        budget -= len(node) + 1
        if budget < 0:
            raise where.error(
                f"the document expands to more than {MAX_NODES:,} values; refusing it"
            )
        children = node.values() if isinstance(node, Mapping) else node
        for value in children:
            # Exact type checks first: they are what the parsers produce, and cheap.
            kind = type(value)
            if kind is str or kind is bool:
                continue
            if kind is int:
                if value.bit_length() >= _INT_BITS and abs(value) >= _INT_LIMIT:
                    raise where.error(
                        f"an integer with more than {MAX_INT_DIGITS:,} decimal digits; refusing it",
                        hint="; store such a number as a string",
                    )
                continue
            if kind is float:
                if not isfinite(value):
                    raise where.error(f"{value!r} is not allowed in configuration")
            elif kind is dict or kind is list or isinstance(value, (Mapping, list, tuple)):
                push((value, depth + 1))
            elif isinstance(value, _DATES):
                dates = True
    return dates


#: TOML's date and time values; they become ISO 8601 strings (see :func:`_dates_to_text`).
_DATES = (datetime.date, datetime.time)  # datetime.datetime is a date

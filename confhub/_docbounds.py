"""What every document parser shares: the bounds against resource bombs and the error
wording ("in PATH at line N, column C"). Imported by :mod:`confhub._parsers` (TOML, JSON,
the entry point) and :mod:`confhub._yaml` (the YAML loaders)."""

from __future__ import annotations

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


"""The ``dotenv`` backend: a ``.env`` file, read and watched like ``file:``.

Spec: ``dotenv:PATH`` with the ``file:`` options (``optional``, ``watch``, ``settle``,
``max_settle``, ``poll_interval``, ``max_bytes``, ``{profile}`` in the path) and:

- ``prefix=APP_``: only variables starting with it are read, and it is stripped; without it,
  every variable is read. Names map to keys as the ``env:`` source maps them: lower-cased,
  ``__`` nests (``APP_DB__PORT`` -> ``db.port``). Values are strings (binding converts).
- ``interpolate=false``: keep ``${VAR}`` as written (default: expand it, below).

The syntax is python-dotenv's (``dotenv_values``), checked against it on a corpus in the
tests:

- ``KEY=value``; blank lines and ``#`` comment lines; an ``export`` prefix is ignored;
  whitespace around ``=`` is dropped; a key may be single-quoted (``'KEY'=v``).
- Unquoted values end at the line's end, lose trailing whitespace and an inline comment
  (`` #`` after whitespace: ``KEY=a #c`` is ``a``, ``KEY=a#c`` is ``a#c``).
- ``'single'`` quotes are literal (only ``\\'`` and ``\\\\`` are escapes); ``"double"`` quotes
  decode ``\\n \\t \\r \\" \\' \\\\ \\a \\b \\f \\v``. Both may span lines.
- ``${NAME}`` and ``${NAME:-default}`` in unquoted and double-quoted values expand to an
  earlier key of the same file, else the process environment, else the default (else
  empty). Only earlier keys, in one pass: no cycle is possible; nothing is executed
  (``$(cmd)`` and bare ``$NAME`` stay literal) and no other file is read. ``explain`` shows
  the expansion: the detail reads ``.env:3 (expanded ${HOST})``.
- The same name twice: the last one wins.

Where confhub is stricter than python-dotenv (which warns and skips): a line that does not
parse, and a name with no ``=`` (python-dotenv's ``None`` value), are a
:class:`SourceFormatError` naming the file and line; two names mapping to one key
(``APP_DB__PORT`` and ``app_db__port``) are an error naming both lines, as for ``env:``.
The file must be UTF-8 (a BOM is dropped).
"""

from __future__ import annotations

import codecs
import logging
import os
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import attrs

from .._backend import BackendInfo, BackendSettings, hookimpl
from .._errors import SourceFormatError
from .._layer import Layer
from ..kv import check_options
from ._watch import WatchedBackend
from .env import env_key

if TYPE_CHECKING:
    from .._spec import SourceSpec

_log = logging.getLogger("confhub.dotenv")
#: The options the dotenv backend reads (besides the core's).
DOTENV_OPTIONS = frozenset(
    {"prefix", "interpolate", "settle", "max_settle", "max_bytes", "profile_env"}
)

#: A .env file is a few hundred lines; 1 MiB refuses a runaway file (``?max_bytes=``).
DEFAULT_MAX_BYTES = 1024 * 1024

_WS = r"[^\S\r\n]*"
_LINE = re.compile(
    rf"""
    [\s]*                                   # blank lines and leading whitespace
    (?:export[^\S\r\n]+)?
    (?:'(?P<qkey>[^']+)'|(?P<key>[^=\#\s'][^=\#\s]*))  # a key opening a quote closes it
    {_WS}
    (?P<eq>={_WS})?
    """,
    re.VERBOSE,
)
_SINGLE = re.compile(r"'((?:\\.|[^'\\])*)'", re.DOTALL)
_DOUBLE = re.compile(r'"((?:\\.|[^"\\])*)"', re.DOTALL)
_UNQUOTED = re.compile(r"[^\r\n]*")
_TAIL = re.compile(rf"(?:{_WS}#[^\r\n]*)?{_WS}(?:\r\n|\n|\r|$)")
_BLANK_OR_COMMENT = re.compile(r"\s*(?:#[^\r\n]*)?(?:\r\n|\n|\r|$)")
_DOUBLE_ESCAPES = re.compile(r"\\[\\'\"abfnrtv]")
_SINGLE_ESCAPES = re.compile(r"\\[\\']")
_VARIABLE = re.compile(r"\$\{(?P<name>[^}:]*)(?::-(?P<default>[^}]*))?\}")


@attrs.frozen
class Binding:
    """One ``NAME=value`` of a .env file: ``line`` is where it starts (1-based);
    ``expands`` says whether ``${VAR}`` in it is expanded (not in single quotes)."""

    name: str
    value: str
    line: int
    expands: bool


def _decode(pattern: re.Pattern[str], text: str) -> str:
    return pattern.sub(lambda m: codecs.decode(m.group(0), "unicode-escape"), text)


def parse_dotenv(text: str, *, where: str) -> Iterator[Binding]:
    """The bindings of .env ``text`` in file order (see the module docstring).

    ``where`` names the file in errors: a :class:`SourceFormatError` with the line.
    """
    text = text.removeprefix("\ufeff")
    pos, line, size = 0, 1, len(text)

    def advance(to: int) -> None:
        nonlocal pos, line
        line += _newlines(text[pos:to])
        pos = to

    def fail(reason: str) -> SourceFormatError:
        return SourceFormatError(f"{where}:{line}: {reason}", source=where)

    while pos < size:
        blank = _BLANK_OR_COMMENT.match(text, pos)
        if blank is not None and blank.end() > pos:
            advance(blank.end())
            continue
        head = _LINE.match(text, pos)
        if head is None:
            advance(len(text) - len(text[pos:].lstrip()))
            raise fail("cannot read this line; write NAME=value (quote values with spaces or #)")
        advance(head.start("qkey") if head["qkey"] else head.start("key"))
        first = line
        name = head["qkey"] or head["key"]
        if head["eq"] is None:
            raise fail(f"{name} has no '='; write {name}= for an empty value")
        advance(head.end())
        expands = True
        char = text[pos : pos + 1]
        if head["eq"] != "=" and char == "#":
            value = ""  # ``KEY= # comment``: empty, the rest is a comment
        elif char in ("'", '"'):
            match = (_SINGLE if char == "'" else _DOUBLE).match(text, pos)
            if match is None:
                raise fail(f"the {char} quote of {name} is never closed; close it")
            escapes = _SINGLE_ESCAPES if char == "'" else _DOUBLE_ESCAPES
            value, expands = _decode(escapes, match.group(1)), char == '"'
            advance(match.end())
        else:
            match = _UNQUOTED.match(text, pos)
            assert match is not None  # it matches the empty string
            value = re.sub(r"\s+#.*", "", match.group(0)).rstrip()
            advance(match.end())
        tail = _TAIL.match(text, pos)
        if tail is None:
            raise fail(
                f"unexpected text after the value of {name}; "
                "quote the whole value or start a comment with ' #'"
            )
        advance(tail.end())
        yield Binding(name, value, first, expands)


def _newlines(text: str) -> int:
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def expand(
    value: str, known: Mapping[str, str], environ: Mapping[str, str]
) -> tuple[str, list[str]]:
    """``value`` with ``${NAME}``/``${NAME:-default}`` replaced (``known`` first, then
    ``environ``), and the names it expanded."""
    used: list[str] = []

    def one(match: re.Match[str]) -> str:
        name = match["name"]
        used.append(name)
        if name in known:
            return known[name]
        if name in environ:
            return environ[name]
        return match["default"] or ""

    return _VARIABLE.sub(one, value), used


def dotenv_values(
    text: str, *, where: str, interpolate: bool = True, environ: Mapping[str, str] | None = None
) -> dict[str, tuple[str, int, list[str]]]:
    """Every name of .env ``text`` to ``(value, line, names expanded)``, the last binding
    of a name winning, as python-dotenv's ``dotenv_values`` reads it."""
    env = os.environ if environ is None else environ
    out: dict[str, tuple[str, int, list[str]]] = {}
    plain: dict[str, str] = {}
    for b in parse_dotenv(text, where=where):
        value, used = expand(b.value, plain, env) if interpolate and b.expands else (b.value, [])
        out[b.name] = (value, b.line, used)
        plain[b.name] = value
    return out


class DotenvBackend(WatchedBackend):
    """One ``.env`` file, watched as ``file:`` watches its file."""

    #: A ``.env`` file is shared with other tools (docker compose, the shell): like the
    #: environment, a key only this source holds is not a typo, so strict binding passes it.
    strict_keys = False

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(
            spec, spec.location, kind="dotenv", example="dotenv:.env", max_bytes=DEFAULT_MAX_BYTES
        )
        self.prefix = str(spec.option("prefix", ""))
        self.interpolate = spec.option_bool("interpolate", True)

    def parse_content(self, content: bytes, revision: str) -> Layer:
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = content[: exc.start].count(b"\n") + 1
            raise SourceFormatError(
                f"{self.name}: {self.path}:{line} is not valid UTF-8; save the file as UTF-8",
                source=self.name,
            ) from None
        values: dict[str, str] = {}
        details: dict[str, str] = {}
        names: dict[str, str] = {}
        parsed = dotenv_values(
            text, where=f"{self.name}: {self.path}", interpolate=self.interpolate
        )
        for name, (value, line, used) in parsed.items():
            key = env_key(name, self.prefix)
            if key is None:
                continue
            if key in values:
                raise SourceFormatError(
                    f"{self.name}: {names[key]} and {name} (line {line}) both map to {key!r}; "
                    "remove one",
                    source=self.name,
                    key=key,
                )
            values[key] = value
            names[key] = f"{name} (line {line})"
            expanded = f" (expanded {', '.join('${' + u + '}' for u in used)})" if used else ""
            details[key] = f"{self.path}:{line}{expanded}"
        return Layer.from_flat(values, source=self.name, revision=revision, details=details)

    def __repr__(self) -> str:
        return f"<DotenvBackend {self.path} prefix={self.prefix!r}>"


@hookimpl
def confhub_backend_schemes() -> list[BackendInfo]:
    return [
        BackendInfo(
            "dotenv",
            "a .env file: dotenv:PATH?prefix=APP_ (APP_A__B -> a.b)",
            watchable=True,
        )
    ]


@hookimpl
def confhub_make_backend(spec: SourceSpec, settings: BackendSettings) -> DotenvBackend | None:
    if spec.scheme != "dotenv":
        return None
    check_options(spec, DOTENV_OPTIONS, logger=_log)
    return DotenvBackend(spec)

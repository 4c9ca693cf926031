"""Document parsers (TOML, JSON, YAML): strict, safe, bounded, with line numbers in errors.

Strict means: duplicate keys, ``NaN``/``Infinity``, documents that are not a mapping at the
top, invalid UTF-8 and (in YAML) non-string keys such as ``true:`` are errors, not surprises;
values keep JSON's types whatever the format (YAML plain scalars are typed only where YAML
1.1 and 1.2 agree, TOML dates become ISO 8601 text). Safe means YAML is loaded with a
``SafeLoader``: Python tags such as ``!!python/object`` are refused. YAML is scanned by
libyaml (PyYAML's ``CSafeLoader`` base) when PyYAML has it, by PyYAML's pure-Python loader
otherwise or with ``CONFHUB_YAML_LOADER=pure``; values are built by the same Python code
either way, and a document libyaml refuses is read again by the pure loader so that errors
keep their words and lines. The one difference: libyaml reads some valid YAML that the pure
scanner refuses: a tab used as separation space (``a: 1<TAB># note``), ``|#``, and a ``?``
inside a plain scalar in a flow collection (``[a?b]``). Bounded means a
document may nest at most :data:`MAX_DEPTH` levels and expand to at most :data:`MAX_NODES`
values; YAML aliases are counted as expanded *before* anything is constructed, so an alias
bomb ("billion laughs") is refused in time and memory proportional to its text.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._docbounds import _DATES, _Where
from ._docbounds import MAX_DEPTH as MAX_DEPTH
from ._docbounds import MAX_INT_DIGITS as MAX_INT_DIGITS
from ._docbounds import MAX_NODES as MAX_NODES
from ._docbounds import check_bounds as _check_bounds
from ._errors import SourceFormatError, SpecError
from ._yaml import YAML_LOADER_ENV as YAML_LOADER_ENV
from ._yaml import _Decided, _parse_yaml, _RetryPure, yaml_loader_kind

if TYPE_CHECKING:
    pass

FORMATS = ("toml", "json", "yaml")
_SUFFIXES = {".toml": "toml", ".json": "json", ".yaml": "yaml", ".yml": "yaml"}



def format_for_path(path: str, explicit: str | None, *, source: str) -> str:
    """Pick the format from an explicit ``format=`` option or the file suffix."""
    if explicit:
        fmt = explicit.lower()
        if fmt == "yml":
            fmt = "yaml"
        if fmt not in FORMATS:
            raise SpecError(
                f"{source}: unknown format {explicit!r}; use one of {', '.join(FORMATS)}",
                spec=source,
            )
        return fmt
    for suffix, fmt in _SUFFIXES.items():
        if path.lower().endswith(suffix):
            return fmt
    raise SpecError(
        f"{source}: cannot tell the format of {path!r} from its suffix; "
        "name it .toml/.json/.yaml or add ?format=toml|json|yaml",
        spec=source,
    )



def parse_document(
    content: bytes | str, fmt: str, *, source: str, path: str | None = None
) -> Mapping[str, Any]:
    """Parse a whole document into a mapping; raise :class:`SourceFormatError` with the line.

    ``source`` names the source in messages and in the error's ``.source``; ``path``, when
    given, is named too (``... in /etc/app.toml at line 3, column 7``). See the module
    docstring for what is rejected.
    """
    return _parse_document(content, fmt, _Where(source, path), walk=True)[0]


def parse_unwalked(
    content: bytes | str, fmt: str, *, source: str, path: str | None = None
) -> tuple[Mapping[str, Any], _Where | None]:
    """:func:`parse_document`, leaving the bounds walk to the flatten that follows when
    that gives the same result: returns the document and the bounds still to check (give
    them to ``Layer.from_mapping(bounds=...)``), or ``None`` when they were checked here.

    Only JSON is left unwalked (its node count is already exact before parsing, see
    :func:`_precount_json`), and only without ``\\u`` escapes (the surrogate check that
    follows the walk keeps its place) and with Python's default integer digit limit (the
    parser itself then refuses a longer integer).
    """
    return _parse_document(content, fmt, _Where(source, path), walk=False)


def _parse_document(
    content: bytes | str, fmt: str, where: _Where, *, walk: bool
) -> tuple[Mapping[str, Any], _Where | None]:
    if isinstance(content, bytes):
        try:
            text = content.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = content.count(b"\n", 0, exc.start) + 1
            raise where.error(
                f"not valid UTF-8 at byte {exc.start}",
                line,
                hint="; save the file as UTF-8",
            ) from None
    else:
        text = content
    if fmt == "yaml" and yaml_loader_kind() == "c":
        try:
            return _parse_text(text, fmt, where, "c"), None
        except _Decided as decided:
            raise decided.error from None
        except (SourceFormatError, _RetryPure):
            # Only a broken or refused document gets here: libyaml words and places some
            # syntax errors differently, so the pure loader reads it again and says what
            # it always said (or, where libyaml refused what it accepts, returns it).
            pass
    if (
        not walk
        and fmt == "json"
        and "\\u" not in text
        and "\\U" not in text
        and 0 < sys.get_int_max_str_digits() <= MAX_INT_DIGITS
    ):
        return _parse_text(text, fmt, where, "pure", walk=False), where
    return _parse_text(text, fmt, where, "pure"), None


def _parse_text(
    text: str, fmt: str, where: _Where, yaml_kind: str, *, walk: bool = True
) -> Mapping[str, Any]:
    source = where.source
    try:
        if fmt == "toml":
            data = _parse_toml(text, where)
        elif fmt == "json":
            data = _parse_json(text, where)
        elif fmt == "yaml":
            data = _parse_yaml(text, where, yaml_kind)
        else:  # pragma: no cover - format_for_path validates
            raise SpecError(f"{source}: unknown format {fmt!r}", spec=source)
    except RecursionError:
        if yaml_kind == "c" and fmt == "yaml":  # pragma: no cover - libyaml caps nesting
            raise _RetryPure from None
        raise where.error(f"nesting deeper than {MAX_DEPTH} levels; refusing it") from None
    except ValueError as exc:
        # Raised by the parsers outside their own error types: an integer longer than
        # Python's int_max_str_digits (4300), say. Bad input all the same.
        raise where.error(f"invalid {fmt.upper()}: a value cannot be read ({exc})") from None
    if data is None and fmt != "json":
        return {}  # an empty (or comments-only) document
    if not isinstance(data, Mapping):
        raise where.error(
            f"the document must be a mapping (a table/object) at the top, not {type(data).__name__}"
        )
    if walk and _check_bounds(data, where):
        _dates_to_text(data)
    if fmt != "toml" and ("\\u" in text or "\\U" in text):
        # Only a \u/\U escape can produce a lone surrogate (TOML refuses them itself).
        _check_surrogates(data, where)
    return data


# What can hold a "=" that is no key/value separator: strings of the four kinds, comments.
_TOML_NOT_CODE = re.compile(
    r'"""(?:[^"\\]|\\[\s\S]|"(?!""))*"{3,5}'  # multi-line basic (may end in up to 2 more ")
    r"|'''[\s\S]*?'{3,5}"  # multi-line literal
    r'|"(?:[^"\\\n]|\\.)*"'  # basic
    r"|'[^'\n]*'"  # literal
    r"|#[^\n]*"  # comment
)


def _precount_toml(text: str, where: _Where) -> None:
    """Refuse a TOML document over MAX_NODES before tomllib (pure Python: ~4 s for a million
    keys) builds it. Every key/value pair is one value, so the walk of :func:`_check_bounds`
    charges at least ``pairs + 1`` (the root): refused here only when that lower bound is
    over, counting the ``=`` outside strings and comments; the walk decides the rest."""
    if text.count("=") < MAX_NODES:
        return
    pairs = _TOML_NOT_CODE.sub("", text).count("=")
    if pairs + 1 > MAX_NODES:
        raise where.error(f"the document expands to more than {MAX_NODES:,} values; refusing it")


def _parse_toml(text: str, where: _Where) -> Any:
    _precount_toml(text, where)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\s*\(at line (\d+), column (\d+)\)", message)
        if match is None:
            raise where.error(f"invalid TOML: {message}") from None
        message = message[: match.start()] + message[match.end() :]
        raise where.error(
            f"invalid TOML: {message}", int(match.group(1)), int(match.group(2))
        ) from None


class _JSONConstant(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _reject_constant(name: str) -> Any:
    raise _JSONConstant(name)


def _unique_pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(items)  # in C; a duplicate shows as a shorter dict, then is looked for
    if len(out) != len(items):
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return out


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_JSON_EMPTY = re.compile(r"\{\s*\}|\[\s*\]")


def _precount_json(text: str, where: _Where) -> None:
    """Refuse a JSON document over MAX_NODES *before* building it (a million keys would cost
    hundreds of MiB and seconds), counting what :func:`_check_bounds` would count.

    The walk charges every container ``len + 1``: children are the commas plus one per
    non-empty container, so the charge is ``commas + 2 * containers - empty``. Counted over
    the raw text, that is an upper bound (strings can hold commas and brackets), cheap enough
    for every document; only a document over the bound has its strings replaced by one
    character for the exact count (regex in C, ~0.25 s for 16 MiB).
    """
    if text.count(",") + 2 * (text.count("{") + text.count("[")) <= MAX_NODES:
        return
    bare = _JSON_STRING.sub("0", text)  # a string is one token: ["x"] must not look empty
    containers = bare.count("{") + bare.count("[")
    empty = sum(1 for _ in _JSON_EMPTY.finditer(bare))
    if bare.count(",") + 2 * containers - empty > MAX_NODES:
        raise where.error(f"the document expands to more than {MAX_NODES:,} values; refusing it")


def _load_json_fast(text: str) -> Any:
    """``json.loads`` with C-built objects, or ``_NOT_FAST`` when the document may hold a
    duplicate key or fails (the strict parse then decides, with today's exact error).

    An ``object_pairs_hook`` (needed to see duplicates) makes the C scanner build a list
    of pairs per object and call Python with it: twice the time of ``json.loads``. Instead,
    ``object_hook`` counts the keys each object kept; every key in the text is followed by
    one ``:`` outside strings, so when the colons outside strings number the same, no key
    was given twice."""
    kept = 0

    def count(obj: dict[str, Any]) -> dict[str, Any]:
        nonlocal kept
        kept += len(obj)
        return obj

    try:
        data = json.loads(text, object_hook=count, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return _NOT_FAST
    # Colons in strings (URLs, times) only make the cheap count differ: then count exactly.
    if text.count(":") != kept and _JSON_STRING.sub("", text).count(":") != kept:
        return _NOT_FAST
    return data


_NOT_FAST: Any = object()


def _parse_json(text: str, where: _Where) -> Any:
    _precount_json(text, where)
    data = _load_json_fast(text)
    if data is not _NOT_FAST:
        return data
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise where.error(f"invalid JSON: {exc.msg}", exc.lineno, exc.colno) from None
    except _DuplicateKey as exc:
        raise where.error(
            f"duplicate key {exc.key!r}",
            _find_key_line(text, exc.key, second=True),
            key=exc.key,
            hint="; keep one",
        ) from None
    except _JSONConstant as exc:
        match = re.search(r"(?<![\w\"])-?" + re.escape(exc.name.lstrip("-")) + r"(?![\w\"])", text)
        line = text.count("\n", 0, match.start()) + 1 if match else None
        raise where.error(
            f"{exc.name} is not allowed in configuration",
            line,
            hint="; write a finite number or a string",
        ) from None



def _dates_to_text(data: Any) -> None:
    """Replace TOML dates and times in ``data`` (in place) by their ISO 8601 text.

    Values keep the same types whatever their source: env, etcd and Consul deliver text,
    and the cache stores JSON, so a date read from a file would come back from the cache
    as a string. Typed binding turns the text back into a ``datetime``/``date``/``time``.
    """
    stack = [data]
    while stack:
        node = stack.pop()
        items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        for name, value in items:
            if isinstance(value, _DATES):
                node[name] = value.isoformat()
            elif isinstance(value, dict | list):
                stack.append(value)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_surrogates(data: Any, where: _Where) -> None:
    """Refuse a lone UTF-16 surrogate (``"\\ud800"`` in JSON or YAML) in a key or a value: it
    is not a character, cannot be encoded as UTF-8 (the cache, the CLI and most clients would
    fail on it later) and is never what the author meant."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        node, path = stack.pop()
        items = node.items() if isinstance(node, Mapping) else enumerate(node)
        for name, value in items:
            bad = None
            if type(name) is str and not name.isascii():
                bad = _SURROGATE.search(name)
            if bad is None and type(value) is str and not value.isascii():
                bad = _SURROGATE.search(value)
            if bad is not None:
                # The key itself may hold the surrogate: escape it, or naming it would fail.
                key = ".".join((*path, str(name))).encode("utf-8", "backslashreplace").decode()
                raise where.error(
                    f"a lone surrogate \\u{ord(bad.group()):04x} (half of a UTF-16 pair) "
                    f"in key {key!r}; it is not a character and cannot be stored as UTF-8",
                    key=key,
                    hint="; write the character itself, or both halves of its \\u pair",
                )
            if isinstance(value, Mapping | list):
                stack.append((value, (*path, str(name))))


def _find_key_line(text: str, key: str, *, second: bool = False, start: int = 0) -> int | None:
    pattern = re.compile(r"""(^|[\s\[{,.])["']?""" + re.escape(key) + r"""["']?\s*([=:\]]|\.)""")
    found = 0
    lines = text.splitlines()
    for number in range(start, len(lines)):
        if pattern.search(lines[number]):
            found += 1
            if not second or found == 2:
                return number + 1
    return None


def locate_key(text: str, key: str) -> int | None:
    """Best-effort 1-based line of dotted ``key`` in a TOML/JSON/YAML text, for ``explain``."""
    line = 0
    for segment in key.split("."):
        found = _find_key_line(text, segment, start=line)
        if found is None:
            return None
        line = found - 1
    return line + 1

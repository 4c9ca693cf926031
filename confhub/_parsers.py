"""Document parsers (TOML, JSON, YAML): strict, safe, bounded, with line numbers in errors."""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from ._errors import SourceFormatError, SpecError

FORMATS = ("toml", "json", "yaml")
_SUFFIXES = {".toml": "toml", ".json": "json", ".yaml": "yaml", ".yml": "yaml"}

#: Bounds against resource bombs (deep nesting, YAML alias expansion).
MAX_DEPTH = 64
MAX_NODES = 2_000_000


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


def parse_document(content: bytes | str, fmt: str, *, source: str) -> Mapping[str, Any]:
    """Parse a whole document into a mapping; raise :class:`SourceFormatError` with the line.

    Duplicate keys, NaN/Infinity, non-mapping documents, nesting deeper than
    :data:`MAX_DEPTH` and documents expanding to more than :data:`MAX_NODES` values are
    rejected. YAML is loaded safely only (no Python tags).
    """
    if isinstance(content, bytes):
        try:
            text = content.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise SourceFormatError(
                f"{source}: not valid UTF-8 at byte {exc.start}; save the file as UTF-8",
                source=source,
            ) from None
    else:
        text = content
    if fmt == "toml":
        data = _parse_toml(text, source)
    elif fmt == "json":
        data = _parse_json(text, source)
    elif fmt == "yaml":
        data = _parse_yaml(text, source)
    else:  # pragma: no cover - format_for_path validates
        raise SpecError(f"{source}: unknown format {fmt!r}", spec=source)
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise SourceFormatError(
            f"{source}: the document must be a mapping (a table/object) at the top, "
            f"not {type(data).__name__}",
            source=source,
        )
    _check_bounds(data, source)
    return data


def _parse_toml(text: str, source: str) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        line = int(match.group(1)) if match else None
        raise SourceFormatError(
            f"{source}: invalid TOML: {exc}", source=source, line=line
        ) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in configuration")


def _parse_json(text: str, source: str) -> Any:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise _DuplicateKey(key)
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise SourceFormatError(
            f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
            source=source,
            line=exc.lineno,
        ) from None
    except _DuplicateKey as exc:
        line = _find_key_line(text, exc.key, second=True)
        where = f" (line {line})" if line else ""
        raise SourceFormatError(
            f"{source}: duplicate key {exc.key!r}{where}; keep one",
            source=source,
            key=exc.key,
            line=line,
        ) from None
    except ValueError as exc:
        raise SourceFormatError(f"{source}: invalid JSON: {exc}", source=source) from None


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _parse_yaml(text: str, source: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise SpecError(
            f"{source}: YAML support is not installed; pip install 'confhub[yaml]'",
            spec=source,
        ) from None

    class StrictLoader(yaml.SafeLoader):
        """Safe loading that refuses duplicate keys."""

    def construct_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
        loader.flatten_mapping(node)
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen[key] = True
        return loader.construct_mapping(node, deep=deep)

    StrictLoader.add_constructor(
        yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
        construct_mapping,  # type: ignore[arg-type]
    )
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or "invalid YAML"
        where = f" at line {line}" if line else ""
        raise SourceFormatError(
            f"{source}: invalid YAML{where}: {problem}", source=source, line=line
        ) from None
    except yaml.YAMLError as exc:
        raise SourceFormatError(f"{source}: invalid YAML: {exc}", source=source) from None


def _check_bounds(data: Any, source: str) -> None:
    """Walk the document once, bounded, refusing deep nesting, bombs and non-finite floats."""
    budget = MAX_NODES
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        node, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise SourceFormatError(
                f"{source}: the document expands to more than {MAX_NODES:,} values "
                "(a YAML alias bomb?); refusing it",
                source=source,
            )
        if depth > MAX_DEPTH:
            raise SourceFormatError(
                f"{source}: nesting deeper than {MAX_DEPTH} levels; refusing it", source=source
            )
        if isinstance(node, Mapping):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, float) and not math.isfinite(node):
            raise SourceFormatError(
                f"{source}: {node!r} is not allowed in configuration", source=source
            )


def _find_key_line(text: str, key: str, *, second: bool = False, start: int = 0) -> int | None:
    pattern = re.compile(
        r"""(^|[\s\[{,.])["']?""" + re.escape(key) + r"""["']?\s*([=:\]]|\.)"""
    )
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

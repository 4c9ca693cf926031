"""How the CLI writes a configuration: JSON-able values and TOML (``dump --format toml``)."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any, TextIO

from ._layer import to_json
from ._merge import MISSING
from ._redact import redact_value


def jsonable(value: Any) -> Any:
    """``value`` as JSON-able data; :data:`MISSING` (a key added or removed) is null."""
    return None if value is MISSING else to_json(value)


def redact_tree(tree: dict[str, Any], secret_keys: Collection[str] = ()) -> dict[str, Any]:
    """``tree`` with secret-looking keys and ``secret_keys`` (a secret source's) redacted."""
    redacted: dict[str, Any] = redact_value("", tree, secret_keys)
    return redacted


def null_paths(value: Any, path: str = "") -> list[str]:
    """The paths (``a.b``, ``a.list[2]``) of the nulls in ``value``: TOML cannot write them."""
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [
            n for k, v in sorted(value.items()) for n in null_paths(v, f"{path}.{k}" if path else k)
        ]
    if isinstance(value, (list, tuple)):
        return [n for i, v in enumerate(value) for n in null_paths(v, f"{path}[{i}]")]
    return []


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in items) + "}"
    return json.dumps(str(value), ensure_ascii=False)


def _toml_key(key: str) -> str:
    if key and all(c.isalnum() or c in "-_" for c in key):
        return key
    return json.dumps(key, ensure_ascii=False)


def to_toml(tree: dict[str, Any], out: TextIO, _path: tuple[str, ...] = ()) -> None:
    """Write a nested dict as TOML (scalars first, then one table per sub-mapping), keys
    sorted like the JSON and YAML dumps."""
    scalars = {k: v for k, v in sorted(tree.items()) if not isinstance(v, dict)}
    tables = {k: v for k, v in sorted(tree.items()) if isinstance(v, dict)}
    if _path and scalars:
        out.write(f"\n[{'.'.join(_toml_key(p) for p in _path)}]\n")
    for k, v in scalars.items():
        out.write(f"{_toml_key(k)} = {_toml_value(v)}\n")
    for k, v in tables.items():
        to_toml(v, out, (*_path, k))

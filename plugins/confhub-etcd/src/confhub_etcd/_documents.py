"""Writing one key into a document held by one etcd key (read-modify-CAS in the backend).

The core parses documents (``confhub.parse_document``); writing them back is the backend's
job: thaw the frozen tree, set the dotted key, dump it in the document's format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from confhub import WriteError, kv, parse_document

__all__ = ["updated_document"]


def updated_document(raw: bytes | None, fmt: str, key: str, value: Any, *, source: str) -> bytes:
    """The document ``raw`` (``None``: an empty one) with dotted ``key`` set to ``value``,
    dumped as ``fmt``; a :class:`confhub.WriteError` when it cannot be written, or when the
    write would put a value over a table or a key under a value
    (:func:`confhub.kv.check_write_shape`)."""
    data = _thaw(parse_document(raw, fmt, source=source)) if raw is not None else {}
    kv.check_write_shape(data, key, value, source=source)  # a WriteError naming what it hides
    _set_nested(data, key, value)
    return _dump(data, fmt, source=source, key=key)


def _set_nested(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})  # check_write_shape refused a value on the way
    node[parts[-1]] = value


def _dump(data: Mapping[str, Any], fmt: str, *, source: str, key: str) -> bytes:
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
    if fmt == "yaml":
        import yaml  # noqa: PLC0415 - optional, as in the core's parsers

        return yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True).encode("utf-8")
    try:
        import tomli_w  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
    except ImportError:
        raise WriteError(
            f"{source}: writing into a TOML document needs the tomli_w package "
            "(pip install tomli_w), or write the whole document key yourself",
            source=source,
            key=key,
        ) from None
    dumped: str = tomli_w.dumps(dict(data))
    return dumped.encode("utf-8")


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value

"""Writing one key into a document held by one etcd key (read-modify-CAS in the backend).

The core parses documents (``confhub.parse_document``) and builds the new text
(``confhub.kv.write_into_document``, shared with every KV backend); the backend reads the key,
calls this, and writes the result with compare-and-swap on the key's revision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from confhub import MISSING, WriteOp, kv, parse_document

__all__ = ["committed_document", "updated_document", "value_in_document"]


def updated_document(raw: bytes | None, fmt: str, key: str, value: Any, *, source: str) -> bytes:
    """The document ``raw`` (``None``: an empty one) with dotted ``key`` set to ``value``,
    dumped as ``fmt``; a :class:`confhub.WriteError` when it cannot be written, or when the
    write would put a value over a table or a key under a value
    (:func:`confhub.kv.check_write_shape`)."""
    document = parse_document(raw, fmt, source=source) if raw is not None else None
    return kv.write_into_document(document, fmt, key, value, source=source)


def committed_document(
    raw: bytes | None, fmt: str, ops: Sequence[WriteOp], *, source: str, force: bool
) -> bytes:
    """The document ``raw`` with every op of a transaction applied
    (:func:`confhub.kv.commit_into_document`)."""
    document = parse_document(raw, fmt, source=source) if raw is not None else None
    return kv.commit_into_document(document, fmt, ops, source=source, force=force)


def value_in_document(raw: bytes | None, fmt: str, key: str, *, source: str) -> Any:
    """The value at dotted ``key`` in the document ``raw``; ``MISSING`` when absent."""
    node: Any = parse_document(raw, fmt, source=source) if raw is not None else {}
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    return node

"""Writes into a Consul source's document key (``?format=json|yaml|toml``): every write is
a read-modify-CAS of that one key. :class:`DocumentWriter` reads it with its ModifyIndex,
parses it, sets the dotted key (or applies a transaction's ops) inside, and writes it back
in the same format with CAS on that index. A plain write that loses the race re-reads and
retries (``DOCUMENT_ATTEMPTS`` times); with an expected revision (the document key's
ModifyIndex) it raises :class:`~confhub.WriteConflictError`, as a tree-layout CAS does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confhub import (
    MISSING,
    SourceFormatError,
    WriteConflictError,
    WriteError,
    WriteOp,
    kv,
    parse_document,
)

from ._kvrequests import KVRequests
from ._options import ConsulOptions

__all__ = ["DOCUMENT_ATTEMPTS", "DocumentWriter"]

#: How many times a document write re-reads and retries after losing a CAS race.
DOCUMENT_ATTEMPTS = 5


class DocumentWriter:
    """Writes, transactions and reads of one source's document key."""

    def __init__(self, options: ConsulOptions, requests: KVRequests) -> None:
        self.source = options.display
        self._document = options.document or ""
        self._fmt = options.fmt or "json"
        self._requests = requests

    def read(self, key: str, segments: list[str]) -> tuple[Any, int]:
        """``(value inside the document, the document key's ModifyIndex)``;
        ``(MISSING, index)`` when the document does not hold ``key``."""
        document = self._document
        found = self._requests.read(self._requests.connection(), document, key=key)
        node: Any = self.parsed(found, document, self._fmt, key) or {}
        for part in segments:
            if not isinstance(node, Mapping) or part not in node:
                return MISSING, 0 if found is None else found[0]
            node = node[part]
        return node, 0 if found is None else found[0]

    def commit(
        self, ops: tuple[WriteOp, ...], expected: Mapping[str, int | None], force: bool
    ) -> int:
        """A transaction into the document key: one read-modify-CAS (retried when another
        writer changed it and no op named a revision)."""
        document = self._document
        fmt = self._fmt
        for op in ops:
            if op.action == "put":
                _check_document_value(self.source, op.key, op.value)
        wanted = {v for v in expected.values() if v is not None}
        conn = self._requests.connection()
        for _ in range(DOCUMENT_ATTEMPTS):
            found = self._requests.read(conn, document, key=ops[0].key)
            actual = 0 if found is None else found[0]
            if wanted - {actual}:
                raise WriteConflictError(
                    f"{self.source}: document key {document!r} is at revision {actual}, not "
                    f"{min(wanted - {actual})}; nothing was written: re-read it and retry",
                    source=self.source,
                    key=ops[0].key,
                    expected=min(wanted - {actual}),
                    actual=actual,
                )
            parsed = self.parsed(found, document, fmt, ops[0].key)
            payload = kv.commit_into_document(parsed, fmt, ops, source=self.source, force=force)
            try:
                return self._requests.put(document, payload, actual, key=ops[0].key)
            except WriteConflictError:
                if wanted:
                    raise
        raise WriteConflictError(
            f"{self.source}: document key {document!r} kept changing during "
            f"{DOCUMENT_ATTEMPTS} attempts to commit; retry later",
            source=self.source,
            key=ops[0].key,
        )

    def parsed(
        self, found: tuple[int, bytes] | None, document: str, fmt: str, key: str
    ) -> Mapping[str, Any] | None:
        if found is None:
            return None
        try:
            return parse_document(found[1], fmt, source=self.source, path=document)
        except SourceFormatError as exc:
            raise WriteError(
                f"{self.source}: cannot write {key!r}: the document key {document!r} "
                f"does not hold a valid {fmt} document ({exc}); fix or rewrite it first",
                source=self.source,
                key=key,
            ) from exc

    def write(self, key: str, value: object, cas: int | None) -> int:
        """Read-modify-CAS of the document key; see the module docstring."""
        document = self._document
        fmt = self._fmt
        _check_document_value(self.source, key, value)
        conn = self._requests.connection()
        for _ in range(DOCUMENT_ATTEMPTS):
            found = self._requests.read(conn, document, key=key)
            actual = 0 if found is None else found[0]
            expected = actual if cas is None else cas
            if expected != actual:
                now = "does not exist" if found is None else f"is at revision {actual}"
                want = "absent" if expected == 0 else f"at revision {expected}"
                raise WriteConflictError(
                    f"{self.source}: document key {document!r} {now}, not {want}; re-read "
                    "it and retry",
                    source=self.source,
                    key=key,
                    expected=expected,
                    actual=actual,
                )
            parsed: Mapping[str, Any] | None = None
            if found is not None:
                try:
                    parsed = parse_document(found[1], fmt, source=self.source, path=document)
                except SourceFormatError as exc:
                    raise WriteError(
                        f"{self.source}: cannot write {key!r}: the document key {document!r} "
                        f"does not hold a valid {fmt} document ({exc}); fix or rewrite it "
                        "first",
                        source=self.source,
                        key=key,
                    ) from exc
            payload = kv.write_into_document(parsed, fmt, key, value, source=self.source)
            try:
                return self._requests.put(document, payload, expected, key=key)
            except WriteConflictError:
                if cas is not None:
                    raise
        raise WriteConflictError(
            f"{self.source}: document key {document!r} kept changing during "
            f"{DOCUMENT_ATTEMPTS} attempts to write {key!r}; retry later",
            source=self.source,
            key=key,
        )


def _check_document_value(source: str, key: str, value: object) -> None:
    scalars = (str, int, float, bool)
    if isinstance(value, scalars):
        return
    if isinstance(value, (list, tuple)) and all(isinstance(v, scalars) for v in value):
        return
    raise WriteError(
        f"{source}: cannot write a {type(value).__name__} to {key!r} in a document; write "
        "a str, int, float or bool (or a list of them), one dotted key at a time",
        source=source,
        key=key,
    )

"""Writes to Consul: one KV key per dotted key (tree layout), or into one document key.

- **Tree layout**: a dotted key is the Consul key under the prefix. A write is a ``/v1/txn``
  ``set`` (or ``cas`` with ``expected_revision``), which answers with the new ModifyIndex;
  a value too big for a transaction body is a plain ``PUT`` (``?cas=`` when asked), then a
  read of the new ModifyIndex.
- **Document layout**: read-modify-CAS of the document key: read it with its ModifyIndex,
  parse it, set the dotted key inside, write it back in the same format with CAS on that
  ModifyIndex. A plain write that loses the race re-reads and retries (a bounded number of
  times); with ``expected_revision`` (the document key's ModifyIndex) it raises
  :class:`WriteConflictError`, as a tree-layout CAS does.

In both layouts a write that would turn a table into a value, or a value into a table, is
refused before anything is sent, with :func:`confhub.kv.check_write_shape`: against the
parsed document, or against the Consul keys under :meth:`confhub.kv.KeyMap.write_scope`
(a ``?keys`` listing read at write time, asked of the leader).

Transactions (:meth:`ConsulWriter.commit`, and ``delete`` as a one-op one) are ONE
``/v1/txn``: ``set``/``cas`` for puts, ``delete`` for deletes (every Consul key holding the
dotted key), ``check-index``/``check-not-exists`` for a delete's expected revision; Consul
applies all or nothing (409 lists every failing op). They are refused first by
:func:`confhub.kv.check_transaction`, against the same listing. Unlike etcd, a Consul
transaction cannot compare a whole prefix, so a key created under the scope between the
listing and the commit is not seen (as for a single write). In the document layout a
transaction is one read-modify-CAS of the document key.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confhub import (
    MISSING,
    SourceFormatError,
    SourceUnavailableError,
    WriteConflictError,
    WriteError,
    WriteOp,
    kv,
    parse_document,
)

from ._http import TRANSPORT_ERRORS, Aborted, Connection, Response, kv_path
from ._options import ConsulOptions
from ._reader import b64, body_text

#: Consul's default ``limits.kv_max_value_size``.
MAX_VALUE_SIZE = 524_288
#: Consul's default ``limits.txn_max_req_len``: larger writes use a plain PUT instead.
MAX_TXN_BODY = 524_288
#: How many times a document write re-reads and retries after losing a CAS race.
DOCUMENT_ATTEMPTS = 5
#: Consul's default ``txn_max_ops``: operations in one transaction.
MAX_TXN_OPS = 128
#: One dotted-key segment a write may use: passes every released Consul key validator.
_SEGMENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_,-")


class ConsulWriter:
    """Writes dotted keys of one source; ``connection`` gives the backend's shared one."""

    def __init__(self, options: ConsulOptions, connection: Callable[[], Connection]) -> None:
        self.options = options
        self.source = options.display
        self._connection = connection
        self._keys = kv.KeyMap(options.prefix, source=self.source, noun="Consul key")

    def write(self, key: str, value: object, expected_revision: object = None) -> int:
        """Write one dotted key; compare-and-swap when ``expected_revision`` is given.

        ``expected_revision``: None for a plain write, 0 for "must not exist", N for "only if
        the ModifyIndex is N" (of the key; in the document layout, of the document key).
        Returns the new ModifyIndex. Raises :class:`WriteConflictError` when the CAS loses,
        :class:`WriteError` for a refused write, :class:`SourceUnavailableError` when Consul
        cannot be reached.
        """
        segments = self._segments(key)
        cas = self._cas(key, expected_revision)
        if self.options.document is not None:
            return self._write_document(key, value, cas)
        data = kv.encode_value(value, source=self.source, key=key)
        existing = self._related_keys(self._connection(), key)
        kv.check_write_shape(existing, key, value, source=self.source)
        return self._put(self.options.prefix + "/".join(segments), data, cas, key=key)

    def _related_keys(self, conn: Connection, key: str) -> list[str]:
        """The dotted keys of the Consul keys a write of ``key`` could clash with: a
        ``?keys`` listing of :meth:`~confhub.kv.KeyMap.write_scope`, asked of the leader
        (keys the source cannot read are left out: they are refused when it reads)."""
        return list(self._held(conn, key))

    def _held(self, conn: Connection, key: str) -> dict[str, list[str]]:
        """The dotted keys under ``key``'s write scope, each with its Consul keys."""
        names, _index = self._listing(conn, key)
        return self._keys.index(n for n in names if isinstance(n, str))

    def _listing(self, conn: Connection, key: str) -> tuple[list[Any], int]:
        """The Consul keys under ``key``'s write scope and the listing's X-Consul-Index."""
        scope = self._keys.write_scope(key)
        query = [("keys", "")] + ([("dc", self.options.dc)] if self.options.dc else [])
        resp = self._send(conn, "GET", kv_path(scope), query, None, key=key)
        index = _index_of(resp)
        if resp.status == 404:
            return [], index
        if resp.status != 200:
            self._check_status(resp, key)
            raise SourceUnavailableError(
                f"{self.source}: Consul answered {resp.status} {body_text(resp)} to the "
                f"listing of {scope!r} before the write of {key!r}; retry later",
                source=self.source,
                key=key,
            )
        try:
            names = json.loads(resp.body)
        except ValueError:
            names = None
        if not isinstance(names, list):
            raise SourceUnavailableError(
                f"{self.source}: Consul sent a malformed key listing of {scope!r}; retry later",
                source=self.source,
                key=key,
            )
        return names, index

    def _segments(self, key: object) -> list[str]:
        segments = key.split(".") if isinstance(key, str) else []
        if self.options.document is not None:
            if segments and all(segments):
                return segments
            raise WriteError(
                f"{self.source}: {key!r} is not a dotted key such as db.pool.size (no "
                "empty segments)",
                source=self.source,
                key=str(key),
            )
        if not segments or not all(s and set(s) <= _SEGMENT_CHARS for s in segments):
            raise WriteError(
                f"{self.source}: cannot write key {key!r}: each dotted segment must be "
                "non-empty and use only letters, digits, '_', ',' and '-' (Consul redirects "
                "'//', '.' and '..' paths, which would store an empty value)",
                source=self.source,
                key=str(key),
            )
        return segments

    def _cas(self, key: str, expected_revision: object) -> int | None:
        if expected_revision is None:
            return None
        try:
            cas: int = int(expected_revision)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            cas = -1
        if cas < 0 or isinstance(expected_revision, bool):
            raise WriteError(
                f"{self.source}: expected_revision must be a ModifyIndex >= 0 (0: must not "
                f"exist), not {expected_revision!r}",
                source=self.source,
                key=key,
            )
        return cas

    # -- one Consul key ------------------------------------------------------------------------
    def _put(self, ckey: str, data: bytes, cas: int | None, *, key: str) -> int:
        """Store ``data`` at Consul key ``ckey`` (CAS on ``cas``); the new ModifyIndex."""
        if len(data) > MAX_VALUE_SIZE:
            raise WriteError(
                f"{self.source}: the value for {key!r} is {len(data)} bytes; Consul's limit "
                f"is {MAX_VALUE_SIZE} bytes (512 KiB): store less, or split it",
                source=self.source,
                key=key,
            )
        op: dict[str, Any] = {
            "Verb": "set" if cas is None else "cas",
            "Key": ckey,
            "Value": base64.b64encode(data).decode("ascii"),
        }
        if cas is not None:
            op["Index"] = cas
        body = json.dumps([{"KV": op}]).encode()
        conn = self._connection()
        query = [("dc", self.options.dc)] if self.options.dc else []
        if len(body) <= MAX_TXN_BODY:
            resp = self._send(conn, "PUT", "/v1/txn", query, body, key=key)
            return self._txn_result(resp, key, ckey, cas)
        # Too big for a transaction body (base64 grows it by 4/3): a plain PUT, then a read
        # for the new ModifyIndex (another writer may have written in between).
        if cas is not None:
            query.append(("cas", str(cas)))
        resp = self._send(conn, "PUT", kv_path(ckey), query, data, key=key)
        self._check_status(resp, key)
        if resp.body.strip() != b"true":
            raise self._conflict(conn, key, ckey, cas)
        found = self._read(conn, ckey, key=key)
        return 0 if found is None else found[0]

    def _send(
        self,
        conn: Connection,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        body: bytes | None,
        *,
        key: str,
    ) -> Response:
        try:
            return conn.request(
                method, path, query=query, body=body, read_timeout=self.options.timeout
            )
        except Aborted:
            raise WriteError(
                f"{self.source}: the backend is closed", source=self.source, key=key
            ) from None
        except TRANSPORT_ERRORS as exc:
            raise SourceUnavailableError(
                f"{self.source}: cannot reach Consul at {self.options.host}:"
                f"{self.options.port} ({type(exc).__name__}: {exc}); the write of {key!r} "
                "may or may not have happened: re-read before retrying",
                source=self.source,
                key=key,
            ) from exc

    def _check_status(self, resp: Response, key: str) -> None:
        if resp.status in (200, 409):
            return
        if resp.status == 403:
            raise WriteError(
                f"{self.source}: Consul refused the write of {key!r} (403 {body_text(resp)}); "
                "the ACL token needs key_prefix write on the prefix",
                source=self.source,
                key=key,
            )
        if resp.status == 413:
            raise WriteError(
                f"{self.source}: Consul refused the write of {key!r} as too large "
                f"({body_text(resp)})",
                source=self.source,
                key=key,
            )
        if resp.status >= 500 or resp.status == 429:
            raise SourceUnavailableError(
                f"{self.source}: Consul answered {resp.status} {body_text(resp)} to the write "
                f"of {key!r}; retry later",
                source=self.source,
                key=key,
            )
        raise WriteError(
            f"{self.source}: Consul refused the write of {key!r} ({resp.status} {body_text(resp)})",
            source=self.source,
            key=key,
        )

    def _txn_result(self, resp: Response, key: str, ckey: str, cas: int | None) -> int:
        self._check_status(resp, key)
        try:
            payload = json.loads(resp.body)
        except ValueError:
            payload = None
        if resp.status == 409:
            errors = (payload or {}).get("Errors") or []
            what = "; ".join(str(e.get("What", "")) for e in errors if isinstance(e, dict))
            # Consul's transaction errors are text only: an ACL refusal is told from a lost
            # CAS by the words Consul uses for it.
            if "Permission denied" in what or "ACL" in what:
                raise WriteError(
                    f"{self.source}: Consul refused the write of {key!r} ({what}); the ACL "
                    "token needs key_prefix write on the prefix",
                    source=self.source,
                    key=key,
                )
            raise self._conflict(self._connection(), key, ckey, cas)
        try:
            return int(payload["Results"][0]["KV"]["ModifyIndex"])
        except (TypeError, KeyError, IndexError, ValueError) as exc:
            raise WriteError(
                f"{self.source}: Consul accepted the write of {key!r} but sent no ModifyIndex back",
                source=self.source,
                key=key,
            ) from exc

    def _read(self, conn: Connection, ckey: str, *, key: str) -> tuple[int, bytes] | None:
        """``(ModifyIndex, value)`` of Consul key ``ckey``, or None when it is missing.

        Asked of the leader whatever ``consistency`` says: a stale server may not have the
        last write yet and would report an older ModifyIndex.
        """
        query = [("dc", self.options.dc)] if self.options.dc else []
        resp = self._send(conn, "GET", kv_path(ckey), query, None, key=key)
        if resp.status == 404:
            return None
        if resp.status != 200:
            self._check_status(resp, key)
            raise SourceUnavailableError(
                f"{self.source}: Consul answered {resp.status} {body_text(resp)} to the read "
                f"of {ckey!r}; retry later",
                source=self.source,
                key=key,
            )
        try:
            entry = json.loads(resp.body)[0]
            return int(entry["ModifyIndex"]), b64(self.source, ckey, entry.get("Value"))
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise SourceUnavailableError(
                f"{self.source}: Consul sent a malformed answer for {ckey!r}; retry later",
                source=self.source,
                key=key,
            ) from exc

    def _conflict(
        self, conn: Connection, key: str, ckey: str, cas: int | None
    ) -> WriteConflictError:
        try:
            found = self._read(conn, ckey, key=key)
        except (SourceUnavailableError, WriteError):
            found = None
        actual = None if found is None else found[0]
        now = "does not exist" if actual is None else f"is at revision {actual}"
        want = "absent" if cas == 0 else f"at revision {cas}"
        what = repr(key) if self.options.document is None else f"document key {ckey!r}"
        return WriteConflictError(
            f"{self.source}: {what} {now}, not {want}; re-read it and retry",
            source=self.source,
            key=key,
            expected=cas,
            actual=actual if actual is not None else 0,
        )

    # -- delete, transactions, read ------------------------------------------------------------
    def delete(self, key: str, expected_revision: object = None) -> int:
        """Delete dotted ``key`` (every Consul key holding it) in one ``/v1/txn``."""
        return self.commit((WriteOp.delete(key, expected_revision),))

    def commit(self, ops: Sequence[WriteOp], force: bool = False) -> int:
        """Apply ``ops`` in ONE ``/v1/txn`` (see the module docstring); the new index."""
        ops = tuple(ops)
        expected = {op.key: self._cas(op.key, op.expected_revision) for op in ops}
        for op in ops:
            self._segments(op.key)
        if self.options.document is not None:
            return self._commit_document(ops, expected, force)
        conn = self._connection()
        held: dict[str, list[str]] = {}
        for scope_key in {self._keys.write_scope(op.key): op.key for op in ops}.values():
            held.update(self._held(conn, scope_key))
        kv.check_transaction(held.keys(), ops, source=self.source, force=force)
        body: list[dict[str, Any]] = []
        owner: list[str] = []  # the dotted key of each txn op, for a 409's OpIndex
        for op in ops:
            names = held.get(op.key) or [self.options.prefix + op.key.replace(".", "/")]
            cas = expected[op.key]
            if op.action == "put":
                data = kv.encode_value(op.value, source=self.source, key=op.key)
                self._check_size(data, op.key)
                entry: dict[str, Any] = {
                    "Verb": "set" if cas is None else "cas",
                    "Key": names[0],
                    "Value": base64.b64encode(data).decode("ascii"),
                }
                if cas is not None:
                    entry["Index"] = cas
                body.append({"KV": entry})
                owner.append(op.key)
                continue
            if cas == 0:
                body.append({"KV": {"Verb": "check-not-exists", "Key": names[0]}})
                owner.append(op.key)
            elif cas is not None:
                body.append({"KV": {"Verb": "check-index", "Key": names[0], "Index": cas}})
                owner.append(op.key)
            if op.key in held:
                body += [{"KV": {"Verb": "delete", "Key": name}} for name in names]
                owner += [op.key] * len(names)
        return self._send_txn(conn, body, owner, ops)

    def _check_size(self, data: bytes, key: str) -> None:
        if len(data) > MAX_VALUE_SIZE:
            raise WriteError(
                f"{self.source}: the value for {key!r} is {len(data)} bytes; Consul's limit "
                f"is {MAX_VALUE_SIZE} bytes (512 KiB): store less, or split it",
                source=self.source,
                key=key,
            )

    def _send_txn(
        self, conn: Connection, body: list[dict[str, Any]], owner: list[str], ops: Sequence[WriteOp]
    ) -> int:
        first = ops[0].key
        if not body:  # only deletes of keys that are not there
            return self._listing(conn, first)[1]
        payload = json.dumps(body).encode()
        if len(body) > MAX_TXN_OPS or len(payload) > MAX_TXN_BODY:
            raise WriteError(
                f"{self.source}: the transaction needs {len(body)} operations and "
                f"{len(payload):,} bytes; Consul accepts at most {MAX_TXN_OPS} and "
                f"{MAX_TXN_BODY:,} (txn_max_ops, txn_max_req_len): split the change",
                source=self.source,
                key=first,
            )
        query = [("dc", self.options.dc)] if self.options.dc else []
        resp = self._send(conn, "PUT", "/v1/txn", query, payload, key=first)
        self._check_status(resp, first)
        try:
            answer = json.loads(resp.body)
        except ValueError:
            answer = None
        if resp.status == 409:
            errors = [e for e in (answer or {}).get("Errors") or [] if isinstance(e, dict)]
            what = "; ".join(str(e.get("What", "")) for e in errors)
            if "Permission denied" in what or "ACL" in what:
                raise WriteError(
                    f"{self.source}: Consul refused the transaction ({what}); the ACL token "
                    "needs key_prefix write on the prefix",
                    source=self.source,
                    key=first,
                )
            at = errors[0].get("OpIndex") if errors else None
            key = owner[at] if isinstance(at, int) and 0 <= at < len(owner) else first
            raise WriteConflictError(
                f"{self.source}: nothing was written: {what or 'a check failed'} (the "
                f"expected revision of {key!r}); re-read and retry",
                source=self.source,
                key=key,
                expected=next((op.expected_revision for op in ops if op.key == key), None),
            )
        indexes = []
        for result in (answer or {}).get("Results") or []:
            try:
                indexes.append(int(result["KV"]["ModifyIndex"]))
            except (TypeError, KeyError, ValueError):
                continue
        if indexes:
            return max(indexes)
        return self._listing(conn, first)[1]  # deletes only: the scope's index after them

    def _commit_document(
        self, ops: tuple[WriteOp, ...], expected: Mapping[str, int | None], force: bool
    ) -> int:
        """A transaction into the document key: one read-modify-CAS (retried when another
        writer changed it and no op named a revision)."""
        document = self.options.document or ""
        fmt = self.options.fmt or "json"
        for op in ops:
            if op.action == "put":
                _check_document_value(self.source, op.key, op.value)
        wanted = {v for v in expected.values() if v is not None}
        conn = self._connection()
        for _ in range(DOCUMENT_ATTEMPTS):
            found = self._read(conn, document, key=ops[0].key)
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
            parsed = self._parsed(found, document, fmt, ops[0].key)
            payload = kv.commit_into_document(parsed, fmt, ops, source=self.source, force=force)
            try:
                return self._put(document, payload, actual, key=ops[0].key)
            except WriteConflictError:
                if wanted:
                    raise
        raise WriteConflictError(
            f"{self.source}: document key {document!r} kept changing during "
            f"{DOCUMENT_ATTEMPTS} attempts to commit; retry later",
            source=self.source,
            key=ops[0].key,
        )

    def _parsed(
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

    def read(self, key: str) -> tuple[Any, int]:
        """``(value, ModifyIndex)`` of dotted ``key``, asked of the leader; ``(MISSING, 0)``
        when absent. In the document layout: the value inside the document and the
        document key's ModifyIndex (what ``write``'s ``expected_revision`` compares)."""
        segments = self._segments(key)
        conn = self._connection()
        if self.options.document is not None:
            document = self.options.document
            found = self._read(conn, document, key=key)
            node: Any = self._parsed(found, document, self.options.fmt or "json", key) or {}
            for part in segments:
                if not isinstance(node, Mapping) or part not in node:
                    return MISSING, 0 if found is None else found[0]
                node = node[part]
            return node, 0 if found is None else found[0]
        held = self._held(conn, key).get(key)  # the Consul key that holds it
        if not held:
            return MISSING, 0
        ckey = held[0]
        found = self._read(conn, ckey, key=key)
        if found is None:
            return MISSING, 0
        return kv.decode_text(found[1], source=self.source, key=ckey, noun="Consul key"), found[0]

    # -- one key inside a document -------------------------------------------------------------
    def _write_document(self, key: str, value: object, cas: int | None) -> int:
        """Read-modify-CAS of the document key; see the module docstring."""
        document = self.options.document or ""
        fmt = self.options.fmt or "json"
        _check_document_value(self.source, key, value)
        conn = self._connection()
        for _ in range(DOCUMENT_ATTEMPTS):
            found = self._read(conn, document, key=key)
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
                return self._put(document, payload, expected, key=key)
            except WriteConflictError:
                if cas is not None:
                    raise
        raise WriteConflictError(
            f"{self.source}: document key {document!r} kept changing during "
            f"{DOCUMENT_ATTEMPTS} attempts to write {key!r}; retry later",
            source=self.source,
            key=key,
        )


def _index_of(resp: Response) -> int:
    """A read's ``X-Consul-Index`` (at least 1, as Consul promises)."""
    try:
        return max(1, int(resp.header("X-Consul-Index") or 1))
    except ValueError:
        return 1


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

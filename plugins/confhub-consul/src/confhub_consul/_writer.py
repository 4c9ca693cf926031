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
from collections.abc import Callable, Sequence
from typing import Any

from confhub import (
    MISSING,
    WriteConflictError,
    WriteError,
    WriteOp,
    kv,
)

from ._docwriter import DocumentWriter
from ._http import Connection
from ._kvrequests import MAX_TXN_BODY, KVRequests
from ._options import ConsulOptions

#: Consul's default ``txn_max_ops``: operations in one transaction.
MAX_TXN_OPS = 128
#: One dotted-key segment a write may use: passes every released Consul key validator.
_SEGMENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_,-")


class ConsulWriter:
    """Writes dotted keys of one source; ``connection`` gives the backend's shared one.

    The tree layout's writes and transactions are here; the requests they make are
    :class:`~confhub_consul._kvrequests.KVRequests`, and the document layout is
    :class:`~confhub_consul._docwriter.DocumentWriter`'s."""

    def __init__(self, options: ConsulOptions, connection: Callable[[], Connection]) -> None:
        self.options = options
        self.source = options.display
        self._keys = kv.KeyMap(options.prefix, source=self.source, noun="Consul key")
        self._requests = KVRequests(options, connection, self._keys)
        self._document = DocumentWriter(options, self._requests)

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
            return self._document.write(key, value, cas)
        data = kv.encode_value(value, source=self.source, key=key)
        existing = self._related_keys(self._requests.connection(), key)
        kv.check_write_shape(existing, key, value, source=self.source)
        return self._requests.put(self.options.prefix + "/".join(segments), data, cas, key=key)

    def _related_keys(self, conn: Connection, key: str) -> list[str]:
        """The dotted keys of the Consul keys a write of ``key`` could clash with: a
        ``?keys`` listing of :meth:`~confhub.kv.KeyMap.write_scope`, asked of the leader
        (keys the source cannot read are left out: they are refused when it reads)."""
        return list(self._requests.held(conn, key))

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
            return self._document.commit(ops, expected, force)
        conn = self._requests.connection()
        held: dict[str, list[str]] = {}
        for scope_key in {self._keys.write_scope(op.key): op.key for op in ops}.values():
            held.update(self._requests.held(conn, scope_key))
        kv.check_transaction(held.keys(), ops, source=self.source, force=force)
        body: list[dict[str, Any]] = []
        owner: list[str] = []  # the dotted key of each txn op, for a 409's OpIndex
        for op in ops:
            names = held.get(op.key) or [self.options.prefix + op.key.replace(".", "/")]
            cas = expected[op.key]
            if op.action == "put":
                data = kv.encode_value(op.value, source=self.source, key=op.key)
                self._requests.check_size(data, op.key)
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

    def _send_txn(
        self, conn: Connection, body: list[dict[str, Any]], owner: list[str], ops: Sequence[WriteOp]
    ) -> int:
        first = ops[0].key
        if not body:  # only deletes of keys that are not there
            return self._requests.listing(conn, first)[1]
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
        resp = self._requests.send(conn, "PUT", "/v1/txn", query, payload, key=first)
        self._requests.check_status(resp, first)
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
        return self._requests.listing(conn, first)[1]  # deletes only: the scope's index after them

    def read(self, key: str) -> tuple[Any, int]:
        """``(value, ModifyIndex)`` of dotted ``key``, asked of the leader; ``(MISSING, 0)``
        when absent. In the document layout: the value inside the document and the
        document key's ModifyIndex (what ``write``'s ``expected_revision`` compares)."""
        segments = self._segments(key)
        if self.options.document is not None:
            return self._document.read(key, segments)
        conn = self._requests.connection()
        held = self._requests.held(conn, key).get(key)  # the Consul key that holds it
        if not held:
            return MISSING, 0
        ckey = held[0]
        found = self._requests.read(conn, ckey, key=key)
        if found is None:
            return MISSING, 0
        return kv.decode_text(found[1], source=self.source, key=ckey, noun="Consul key"), found[0]

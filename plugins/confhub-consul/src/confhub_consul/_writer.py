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
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any

from confhub import (
    SourceFormatError,
    SourceUnavailableError,
    WriteConflictError,
    WriteError,
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
        scope = self._keys.write_scope(key)
        query = [("keys", "")] + ([("dc", self.options.dc)] if self.options.dc else [])
        resp = self._send(conn, "GET", kv_path(scope), query, None, key=key)
        if resp.status == 404:
            return []
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
        found = []
        for name in names:
            try:
                dotted = self._keys.to_dotted(name) if isinstance(name, str) else None
            except SourceFormatError:
                continue
            if dotted is not None:
                found.append(dotted)
        return found

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

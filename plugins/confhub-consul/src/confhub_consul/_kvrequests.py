"""The requests a Consul source's writes make: :class:`KVRequests` lists the keys under a
write scope, reads one Consul key with its ModifyIndex, stores one (a ``/v1/txn`` ``set`` or
``cas``; a value too big for a transaction body a plain ``PUT``), sends a transaction, and
turns Consul's answers into the core's errors (403: the ACL; 409: a lost CAS, with the
key's current ModifyIndex; 429 and 5xx: unavailable). Every read is asked of the leader: a
stale server may not have the last write yet. The layouts' write logic is
:mod:`~confhub_consul._writer` (tree) and :mod:`~confhub_consul._docwriter` (document).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from confhub import SourceUnavailableError, WriteConflictError, WriteError, kv

from ._http import TRANSPORT_ERRORS, Aborted, Connection, Response, kv_path
from ._options import ConsulOptions
from ._reader import b64, body_text

__all__ = ["MAX_TXN_BODY", "MAX_VALUE_SIZE", "KVRequests", "index_of"]

#: Consul's default ``limits.kv_max_value_size``.
MAX_VALUE_SIZE = 524_288
#: Consul's default ``limits.txn_max_req_len``: larger writes use a plain PUT instead.
MAX_TXN_BODY = 524_288


class KVRequests:
    """The write path's requests to Consul for one source; ``connection`` gives the
    backend's shared one."""

    def __init__(
        self, options: ConsulOptions, connection: Callable[[], Connection], keys: kv.KeyMap
    ) -> None:
        self.options = options
        self.source = options.display
        self._connection = connection
        self._keys = keys

    def connection(self) -> Connection:
        """The backend's shared connection (made on first use)."""
        return self._connection()

    def held(self, conn: Connection, key: str) -> dict[str, list[str]]:
        """The dotted keys under ``key``'s write scope, each with its Consul keys."""
        names, _index = self.listing(conn, key)
        return self._keys.index(n for n in names if isinstance(n, str))

    def listing(self, conn: Connection, key: str) -> tuple[list[Any], int]:
        """The Consul keys under ``key``'s write scope and the listing's X-Consul-Index."""
        scope = self._keys.write_scope(key)
        query = [("keys", "")] + ([("dc", self.options.dc)] if self.options.dc else [])
        resp = self.send(conn, "GET", kv_path(scope), query, None, key=key)
        index = index_of(resp)
        if resp.status == 404:
            return [], index
        if resp.status != 200:
            self.check_status(resp, key)
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

    def put(self, ckey: str, data: bytes, cas: int | None, *, key: str) -> int:
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
            resp = self.send(conn, "PUT", "/v1/txn", query, body, key=key)
            return self._txn_result(resp, key, ckey, cas)
        # Too big for a transaction body (base64 grows it by 4/3): a plain PUT, then a read
        # for the new ModifyIndex (another writer may have written in between).
        if cas is not None:
            query.append(("cas", str(cas)))
        resp = self.send(conn, "PUT", kv_path(ckey), query, data, key=key)
        self.check_status(resp, key)
        if resp.body.strip() != b"true":
            raise self._conflict(conn, key, ckey, cas)
        found = self.read(conn, ckey, key=key)
        return 0 if found is None else found[0]

    def send(
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

    def check_status(self, resp: Response, key: str) -> None:
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
        self.check_status(resp, key)
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

    def read(self, conn: Connection, ckey: str, *, key: str) -> tuple[int, bytes] | None:
        """``(ModifyIndex, value)`` of Consul key ``ckey``, or None when it is missing.

        Asked of the leader whatever ``consistency`` says: a stale server may not have the
        last write yet and would report an older ModifyIndex.
        """
        query = [("dc", self.options.dc)] if self.options.dc else []
        resp = self.send(conn, "GET", kv_path(ckey), query, None, key=key)
        if resp.status == 404:
            return None
        if resp.status != 200:
            self.check_status(resp, key)
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
            found = self.read(conn, ckey, key=key)
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

    def check_size(self, data: bytes, key: str) -> None:
        if len(data) > MAX_VALUE_SIZE:
            raise WriteError(
                f"{self.source}: the value for {key!r} is {len(data)} bytes; Consul's limit "
                f"is {MAX_VALUE_SIZE} bytes (512 KiB): store less, or split it",
                source=self.source,
                key=key,
            )


def index_of(resp: Response) -> int:
    """A read's ``X-Consul-Index`` (at least 1, as Consul promises)."""
    try:
        return max(1, int(resp.header("X-Consul-Index") or 1))
    except ValueError:
        return 1

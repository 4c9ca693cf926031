"""HTTP endpoints of the test server's KV store: ``/v1/kv/<key>`` (GET with ``?recurse``,
``?keys``, ``?separator``, ``?raw``, blocking; PUT with ``?cas``, ``?flags``, ``?acquire``,
``?release``; DELETE with ``?recurse``, ``?cas``) and ``/v1/txn`` (``shared/consul-api.md``
2.3-2.6, 2.9).

:class:`KVAPI` answers them through the engine's shared request helpers (parameters,
tokens, leader, blocking) and keeps no state: the store is the engine's
:class:`~confhub_consul._teststate.ConsulState`. :func:`decode_txn` decodes a transaction
body as strictly as Consul's Go decoder.
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from confhub_consul._testproto import (
    JSON_HEADERS,
    UINT64_MAX,
    Reply,
    Request,
    go_json,
    text_reply,
)
from confhub_consul._teststate import (
    READ_VERBS,
    AclToken,
    InvalidSessionError,
    KVEntry,
    TxnKVOp,
)

if TYPE_CHECKING:
    from confhub_consul._testserver import Engine

__all__ = ["KVAPI", "KV_ALLOW", "decode_txn"]

Handler = Callable[[Request, str], Reply]
KV_ALLOW = "OPTIONS,GET,PUT,DELETE"


class KVAPI:
    """The KV and transaction endpoints of one test server."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def routes(self) -> list[tuple[str, bool, str, Handler]]:
        """``(prefix, subtree, allowed methods, handler)`` rows for the engine's router."""
        return [
            ("/v1/kv/", True, KV_ALLOW, self._kv),
            ("/v1/txn", False, "OPTIONS,PUT", self._txn),
        ]

    def _kv(self, req: Request, key: str) -> Reply:
        q = req.query
        if req.method == "GET":
            return self._kv_get(req, key)
        exclusive = ("cas", "acquire", "release") if req.method == "PUT" else ("recurse", "cas")
        present = [f for f in exclusive if f in q]
        if len(present) > 1:
            encoded = urllib.parse.urlencode(
                sorted(urllib.parse.parse_qsl(req.raw_query, keep_blank_values=True))
            )
            return text_reply(400, f"Conflicting flags: {encoded}")
        if req.method == "PUT":
            return self._kv_put(req, key)
        return self._kv_delete(req, key)

    def _kv_get(self, req: Request, key: str) -> Reply:
        parsed = self.engine.parse_read(req)
        if isinstance(parsed, Reply):
            return parsed
        mode, min_index, wait = parsed
        q = req.query
        keys_mode, recurse = "keys" in q, "recurse" in q
        if not key and not (keys_mode or recurse):
            return text_reply(400, "Missing key name")
        token = self.engine.preamble(req, mode, key)
        if isinstance(token, Reply):
            return token
        pretty = "pretty" in q
        default = self.engine.default_level()
        if keys_mode or recurse:
            if self.engine.config.enable_key_list_policy and token.key_level(key, default) < 2:
                return text_reply(403, str(self.engine.denied(token, "key:list", key)))
            separator = q.get("separator", q.get("seperator", [""]))[0]

            def evaluate_list() -> tuple[Reply, int, bool]:
                entries = self.engine.state.list_prefix(key)
                index = self.engine.state.prefix_index(key)
                visible = [e for e in entries if self.engine.can_read(token, e.key)]
                headers = self.engine.meta(index, mode)
                if len(visible) < len(entries) and not token.is_anonymous:
                    headers += (("X-Consul-Results-Filtered-By-Acls", "true"),)
                if keys_mode:
                    names = self._cut_keys([e.key for e in visible], key, separator)
                    if not names and key:
                        return Reply(404, headers), index, False
                    body = go_json(names, pretty=pretty)
                else:
                    if not visible:
                        return Reply(404, headers), index, False
                    body = go_json([e.to_json() for e in visible], pretty=pretty)
                return Reply(200, (*headers, *JSON_HEADERS), body), index, True

            return self.engine.block(min_index, wait, evaluate_list, missing_key_rule=False)

        if not self.engine.can_read(token, key):
            return text_reply(403, str(self.engine.denied(token, "key:read", key)))
        raw = "raw" in q

        def evaluate_key() -> tuple[Reply, int, bool]:
            entry = self.engine.state.get(key)
            index = self.engine.state.key_index(key)
            headers = self.engine.meta(index, mode)
            if entry is None:
                return Reply(404, headers), index, False
            if raw:
                raw_headers = (
                    ("Content-Type", "text/plain"),
                    ("X-Content-Type-Options", "nosniff"),
                    ("Content-Security-Policy", "sandbox"),
                )
                return Reply(200, (*headers, *raw_headers), entry.value), index, True
            headers += (("X-Consul-Query-Backend", "blocking-query"),)
            body = go_json([entry.to_json()], pretty=pretty)
            return Reply(200, (*headers, *JSON_HEADERS), body), index, True

        return self.engine.block(min_index, wait, evaluate_key, missing_key_rule=True)

    @staticmethod
    def _cut_keys(keys: list[str], prefix: str, separator: str) -> list[str]:
        if not separator:
            return keys
        out: list[str] = []
        for k in keys:
            pos = k.find(separator, len(prefix))
            cut = k if pos < 0 else k[: pos + len(separator)]
            if not out or out[-1] != cut:
                out.append(cut)
        return out

    @staticmethod
    def _uint(q: dict[str, list[str]], name: str) -> int | Reply | None:
        if name not in q:
            return None
        raw = q[name][0]
        if not raw.isdigit():
            return text_reply(500, f'strconv.ParseUint: parsing "{raw}": invalid syntax')
        if int(raw) > UINT64_MAX:
            return text_reply(500, f'strconv.ParseUint: parsing "{raw}": value out of range')
        return int(raw)

    def _write_preamble(self, req: Request, key: str) -> Reply | AclToken:
        return self.engine.preamble(req, "default", key)

    def _kv_put(self, req: Request, key: str) -> Reply:
        q = req.query
        if not key:
            return text_reply(400, "Missing key name")
        flags = self._uint(q, "flags")
        if isinstance(flags, Reply):
            return flags
        cas = self._uint(q, "cas")
        if isinstance(cas, Reply):
            return cas
        limit = self.engine.config.kv_max_value_size
        if req.content_length > limit:
            return text_reply(
                413,
                f"Request body({req.content_length} bytes) too large, max size: "
                f"{limit} bytes. See https://developer.hashicorp.com/docs/agent/"
                "config/config-files#kv_max_value_size.",
            )
        token = self._write_preamble(req, key)
        if isinstance(token, Reply):
            return token
        if not self.engine.can_write(token, key):
            return text_reply(403, str(self.engine.denied(token, "key:write", key)))
        value, flag_value = req.body, flags or 0
        if "acquire" in q:
            try:
                ok = self.engine.state.acquire(key, value, q["acquire"][0], flags=flag_value)
            except InvalidSessionError as exc:
                return text_reply(500, str(exc))
        elif "release" in q:
            ok = self.engine.state.release(key, value, q["release"][0], flags=flag_value)
        else:
            ok = self.engine.state.set(key, value, flags=flag_value, cas=cas)
        return Reply(200, JSON_HEADERS, b"true" if ok else b"false")

    def _kv_delete(self, req: Request, key: str) -> Reply:
        q = req.query
        recurse = "recurse" in q
        if not key and not recurse:
            return text_reply(400, "Missing key name")
        cas = self._uint(q, "cas")
        if isinstance(cas, Reply):
            return cas
        token = self._write_preamble(req, key)
        if isinstance(token, Reply):
            return token
        allowed = (
            token.can_write_prefix(key, self.engine.default_level())
            if recurse
            else self.engine.can_write(token, key)
        )
        if not allowed:
            return text_reply(403, str(self.engine.denied(token, "key:write", key)))
        ok = self.engine.state.delete(key, cas=cas, recurse=recurse)
        return Reply(200, JSON_HEADERS, b"true" if ok else b"false")

    def _txn(self, req: Request, _rest: str) -> Reply:
        cfg = self.engine.config
        max_len = max(cfg.txn_max_req_len, cfg.kv_max_value_size)
        if req.content_length > max_len:
            return text_reply(
                413,
                f"Request body({req.content_length} bytes) too large, max size: "
                f"{max_len} bytes. See https://developer.hashicorp.com/docs/agent/"
                "config/config-files#txn_max_req_len.",
            )
        try:
            ops = decode_txn(req.body)
        except _TxnDecodeError as exc:
            return text_reply(400, f"Failed to parse body: {exc}")
        except _TxnUnsupportedError as exc:
            return text_reply(500, str(exc))
        if len(ops) > cfg.max_txn_ops:
            return text_reply(
                413, f"Transaction contains too many operations ({len(ops)} > {cfg.max_txn_ops})"
            )
        for op in ops:
            if len(op.value) > cfg.kv_max_value_size:
                return text_reply(
                    413,
                    f'Value for key "{op.key}" is too large ({len(op.value)} > '
                    f"{cfg.kv_max_value_size} bytes)",
                )
        writes = any(op.verb not in READ_VERBS for op in ops)
        mode = "default"
        if not writes:
            parsed = self.engine.parse_read(req)
            if isinstance(parsed, Reply):
                return parsed
            mode = parsed[0]
        token = self.engine.preamble(req, mode)
        if isinstance(token, Reply):
            return token
        default = self.engine.default_level()
        errors: list[tuple[int, str]] = []
        for i, op in enumerate(ops):
            if op.verb in {"get", "get-tree", "get-or-empty"}:
                continue  # filtered on output
            if op.verb in READ_VERBS:
                if not self.engine.can_read(token, op.key):
                    errors.append((i, str(self.engine.denied(token, "key:read", op.key))))
            elif op.verb == "delete-tree":
                if not token.can_write_prefix(op.key, default):
                    errors.append((i, str(self.engine.denied(token, "key:write", op.key))))
            elif not self.engine.can_write(token, op.key):
                errors.append((i, str(self.engine.denied(token, "key:write", op.key))))
            elif op.verb == "lock" and self.engine.state.in_lock_delay(op.key):
                errors.append((i, f'failed to lock key "{op.key}" due to lock delay'))
        results: list[tuple[KVEntry, bool]] = []
        if not errors:
            results, errors = self.engine.state.apply_kv(ops)
        if errors:
            body = {"Results": None, "Errors": [{"OpIndex": i, "What": what} for i, what in errors]}
            return Reply(409, JSON_HEADERS, go_json(body))
        visible = [
            {"KV": entry.to_json(with_value=with_value)}
            for entry, with_value in results
            if self.engine.can_read(token, entry.key)
        ]
        body_out = {"Results": visible or None, "Errors": None}
        headers = JSON_HEADERS if writes else (*self.engine.meta(None, mode), *JSON_HEADERS)
        return Reply(200, headers, go_json(body_out, pretty="pretty" in req.query))


class _TxnDecodeError(Exception):
    """The txn body does not decode (Consul answers 400 "Failed to parse body: ...")."""


class _TxnUnsupportedError(Exception):
    """A txn op type the test server does not implement."""


_KV_FIELDS = {"verb", "key", "value", "flags", "index", "session", "namespace", "partition"}
_OP_FIELDS = {"kv", "node", "service", "check", "session", "intention"}


def decode_txn(body: bytes) -> list[TxnKVOp]:
    """Decode a ``/v1/txn`` body strictly, like Go's ``DisallowUnknownFields`` decoder."""
    try:
        data = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _TxnDecodeError(f"invalid character in JSON input: {exc}") from exc
    if data is None:
        return []
    if not isinstance(data, list):
        raise _TxnDecodeError("json: cannot unmarshal object into Go value of type structs.TxnOps")
    ops: list[TxnKVOp] = []
    for item in data:
        if not isinstance(item, dict):
            raise _TxnDecodeError("json: cannot unmarshal into Go value of type structs.TxnOp")
        kv: Any = None
        for name, value in item.items():
            low = name.lower()
            if low not in _OP_FIELDS:
                raise _TxnDecodeError(f'json: unknown field "{name}"')
            if low == "kv":
                kv = value
            elif value is not None:
                raise _TxnUnsupportedError(
                    f"test server: only KV operations are supported in /v1/txn, got {name}"
                )
        if not isinstance(kv, dict):
            raise _TxnDecodeError("json: cannot unmarshal into Go struct field TxnOp.KV")
        fields: dict[str, Any] = {}
        for name, value in kv.items():
            low = name.lower()
            if low not in _KV_FIELDS:
                raise _TxnDecodeError(f'json: unknown field "{name}"')
            fields[low] = value
        raw_value = fields.get("value") or ""
        if not isinstance(raw_value, str):
            raise _TxnDecodeError(
                "json: cannot unmarshal into Go struct field KVTxnOp.KV.Value of type []uint8"
            )
        try:
            value_bytes = base64.b64decode(raw_value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _TxnDecodeError(
                f"illegal base64 data at input byte {_bad_b64_pos(raw_value)}"
            ) from exc
        numbers: dict[str, int] = {}
        for field in ("flags", "index"):
            num = fields.get(field) or 0
            if not isinstance(num, int) or isinstance(num, bool) or not 0 <= num <= UINT64_MAX:
                raise _TxnDecodeError(
                    f"json: cannot unmarshal {json.dumps(num)} into Go struct "
                    f"field KVTxnOp.KV.{field.title()} of type uint64"
                )
            numbers[field] = num
        ops.append(
            TxnKVOp(
                verb=str(fields.get("verb") or ""),
                key=str(fields.get("key") or ""),
                value=value_bytes,
                flags=numbers["flags"],
                index=numbers["index"],
                session=str(fields.get("session") or ""),
            )
        )
    return ops


def _bad_b64_pos(text: str) -> int:
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
    for i, ch in enumerate(text):
        if ch not in alphabet:
            return i
    return len(text)

"""The client's KV writes: puts, deletes, one-revision batches, compare-and-swap, the
guarded transactions confhub's writes use, compaction. :class:`KVWrites` builds each
request, refuses before sending what etcd would refuse (``--max-request-bytes``,
``--max-txn-ops``: :class:`EtcdLimitError`), and reads the compare results; every call goes
through the ``unary`` callable it is given, which retries a write only when the failure
proves it was never sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from ._errors import EtcdLimitError
from ._kvread import Unary
from ._rpc import stubs
from ._types import CASResult, prefix_range_end, to_bytes

#: etcd's default ``--max-request-bytes`` (1.5 MiB).
MAX_REQUEST_BYTES: Final = 1_572_864
#: etcd's default ``--max-txn-ops``.
MAX_TXN_OPS: Final = 128
# etcd wraps a request in an InternalRaftRequest (header, user name) before comparing its size
# with --max-request-bytes; leave room for that envelope.
_RAFT_ENVELOPE_BYTES: Final = 512


def _unchanged_since(rpc: Any, scope: bytes, revision: int) -> Any:
    """The compare "no key under ``scope`` was written after ``revision``"."""
    return rpc.Compare(
        key=scope,
        range_end=prefix_range_end(scope),
        result=rpc.Compare.LESS,
        target=rpc.Compare.MOD,
        mod_revision=revision + 1,
    )


class KVWrites:
    """The writes of an :class:`~confhub_etcd.EtcdClient`, over its ``unary`` call, within
    the server's limits ``max_request_bytes`` and ``max_txn_ops``."""

    def __init__(
        self,
        unary: Unary,
        *,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_txn_ops: int = MAX_TXN_OPS,
    ) -> None:
        self._unary = unary
        self._max_request_bytes = max_request_bytes
        self._max_txn_ops = max_txn_ops

    def put_if_unchanged_under(
        self,
        key: str | bytes,
        value: str | bytes,
        *,
        scope: str | bytes,
        scope_revision: int,
        expected_mod_revision: int | None = None,
    ) -> CASResult:
        """Write ``key`` only if no key under ``scope`` was written after ``scope_revision``
        (and, with ``expected_mod_revision``, only if ``key``'s mod_revision is that; 0: it
        must not exist), in one transaction.

        A failed compare returns ``CASResult(succeeded=False)`` with the key's current
        mod_revision as ``actual``: when it is the expected one, the scope changed instead
        (read it again). Oversized requests raise :class:`EtcdLimitError` before sending.
        """
        rpc = stubs()
        key_b, scope_b = to_bytes(key), to_bytes(scope)
        compares = [_unchanged_since(rpc, scope_b, scope_revision)]
        if expected_mod_revision is not None:
            compares.append(
                rpc.Compare(
                    key=key_b,
                    result=rpc.Compare.EQUAL,
                    target=rpc.Compare.MOD,
                    mod_revision=expected_mod_revision,
                )
            )
        request = rpc.TxnRequest(
            compare=compares,
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key_b, value=to_bytes(value)))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key_b, keys_only=True))],
        )
        _check_size(request, self._max_request_bytes, "put_if_unchanged_under")
        response = self._unary("kv", "Txn", request, idempotent=False, what="guarded put")
        revision = int(response.header.revision)
        expected = -1 if expected_mod_revision is None else expected_mod_revision
        if response.succeeded:
            return CASResult(True, revision, key_b, expected, revision)
        actual = 0
        for op in response.responses:
            if op.HasField("response_range") and op.response_range.kvs:
                actual = int(op.response_range.kvs[0].mod_revision)
        return CASResult(False, revision, key_b, expected, actual)

    def guarded_txn(
        self,
        *,
        puts: Sequence[tuple[bytes, bytes]],
        deletes: Sequence[bytes],
        scopes: Mapping[bytes, int],
        expected: Mapping[bytes, int],
    ) -> tuple[bool, int, dict[bytes, int]]:
        """Apply ``puts`` and ``deletes`` in ONE transaction, only if no key under each of
        ``scopes`` was written after its revision and every key of ``expected`` is at that
        mod_revision (0: absent). Returns ``(succeeded, revision, actual)``: on a failed
        compare ``actual`` holds the current mod_revision of each ``expected`` key (when
        all match, a scope changed instead: read it again). Limits are checked before
        sending (:class:`EtcdLimitError`)."""
        rpc = stubs()
        compares = [_unchanged_since(rpc, scope, revision) for scope, revision in scopes.items()]
        compares += [
            rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, mod_revision=rev)
            for key, rev in expected.items()
        ]
        ops = [rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v)) for k, v in puts]
        ops += [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k)) for k in deletes]
        _check_ops(max(len(ops), len(compares)), self._max_txn_ops, "transaction")
        request = rpc.TxnRequest(
            compare=compares,
            success=ops,
            failure=[
                rpc.RequestOp(request_range=rpc.RangeRequest(key=k, keys_only=True))
                for k in expected
            ],
        )
        _check_size(request, self._max_request_bytes, "transaction")
        response = self._unary("kv", "Txn", request, idempotent=False, what="transaction")
        revision = int(response.header.revision)
        actual = dict.fromkeys(expected, 0)
        if not response.succeeded:
            for op in response.responses:
                if op.HasField("response_range") and op.response_range.kvs:
                    item = op.response_range.kvs[0]
                    actual[bytes(item.key)] = int(item.mod_revision)
        return bool(response.succeeded), revision, actual

    def put(self, key: str | bytes, value: str | bytes) -> int:
        """Write one key; returns the new revision."""
        request = stubs().PutRequest(key=to_bytes(key), value=to_bytes(value))
        _check_size(request, self._max_request_bytes, "put")
        response = self._unary("kv", "Put", request, idempotent=False, what="put")
        return int(response.header.revision)

    def delete(self, key: str | bytes) -> int:
        """Delete one key (no error if absent); returns the store revision after the call."""
        response = self._unary(
            "kv",
            "DeleteRange",
            stubs().DeleteRangeRequest(key=to_bytes(key)),
            idempotent=False,
            what="delete",
        )
        return int(response.header.revision)

    def delete_prefix(self, prefix: str | bytes) -> int:
        """Delete every key under ``prefix`` in one revision; returns the revision."""
        prefix_b = to_bytes(prefix)
        response = self._unary(
            "kv",
            "DeleteRange",
            stubs().DeleteRangeRequest(key=prefix_b, range_end=prefix_range_end(prefix_b)),
            idempotent=False,
            what="delete",
        )
        return int(response.header.revision)

    def put_many(
        self,
        items: Mapping[str | bytes, str | bytes] | Iterable[tuple[str | bytes, str | bytes]],
        *,
        delete: Iterable[str | bytes] = (),
    ) -> int:
        """Write several keys (and delete others) in one transaction, i.e. one revision."""
        rpc = stubs()
        pairs = items.items() if isinstance(items, Mapping) else items
        ops = [
            rpc.RequestOp(request_put=rpc.PutRequest(key=to_bytes(k), value=to_bytes(v)))
            for k, v in pairs
        ]
        ops += [
            rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=to_bytes(k)))
            for k in delete
        ]
        _check_ops(len(ops), self._max_txn_ops, "put_many")
        request = rpc.TxnRequest(success=ops)
        _check_size(request, self._max_request_bytes, "put_many")
        response = self._unary("kv", "Txn", request, idempotent=False, what="transaction")
        return int(response.header.revision)

    def put_if_revision(
        self, key: str | bytes, value: str | bytes, expected_mod_revision: int
    ) -> CASResult:
        """Write ``key`` only if its mod_revision is ``expected_mod_revision``.

        ``expected_mod_revision=0`` means the key must not exist. Returns a :class:`CASResult`
        (``.check()`` turns a conflict into :class:`EtcdCASConflict`). Oversized requests raise
        :class:`EtcdLimitError` before anything is sent.
        """
        rpc = stubs()
        key_b = to_bytes(key)
        compare = rpc.Compare(
            key=key_b,
            result=rpc.Compare.EQUAL,
            target=rpc.Compare.MOD,
            mod_revision=expected_mod_revision,
        )
        request = rpc.TxnRequest(
            compare=[compare],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key_b, value=to_bytes(value)))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key_b, keys_only=True))],
        )
        _check_size(request, self._max_request_bytes, "put_if_revision")
        response = self._unary("kv", "Txn", request, idempotent=False, what="compare-and-swap")
        revision = int(response.header.revision)
        if response.succeeded:
            return CASResult(True, revision, key_b, expected_mod_revision, revision)
        actual = 0
        for op in response.responses:
            if op.HasField("response_range") and op.response_range.kvs:
                actual = int(op.response_range.kvs[0].mod_revision)
        return CASResult(False, revision, key_b, expected_mod_revision, actual)

    def compact(self, revision: int, *, physical: bool = True) -> None:
        """Compact the history up to ``revision``."""
        self._unary(
            "kv",
            "Compact",
            stubs().CompactionRequest(revision=revision, physical=physical),
            idempotent=True,
            what="compaction",
        )


def _check_size(request: Any, max_request_bytes: int, what: str) -> None:
    size = int(request.ByteSize())
    limit = max_request_bytes - _RAFT_ENVELOPE_BYTES
    if size > limit:
        raise EtcdLimitError(
            f"{what} request is {size} bytes; etcd accepts at most {max_request_bytes} "
            f"(--max-request-bytes, {limit} after its envelope); split the value or raise "
            "the server's limit and max_request_bytes together",
            limit_name="max_request_bytes",
            limit=limit,
            actual=size,
        )


def _check_ops(count: int, max_txn_ops: int, what: str) -> None:
    if count > max_txn_ops:
        raise EtcdLimitError(
            f"{what} needs {count} operations in one transaction; etcd accepts at most "
            f"{max_txn_ops} (--max-txn-ops); split the change",
            limit_name="max_txn_ops",
            limit=max_txn_ops,
            actual=count,
        )

"""The client's KV reads: one key, a whole prefix at ONE revision (paged), the keys under a
prefix, the store's revision, a permission check. :class:`KVReads` builds the requests and
reads the answers; every call goes through the ``unary`` callable it is given (the
client's :meth:`Transport.unary <confhub_etcd._transport.Transport.unary>`: deadline,
auth, failover, retries), and it holds nothing else.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from ._errors import EtcdCompacted, EtcdError, EtcdTooManyKeys
from ._rpc import ResponseTooLarge, stubs, to_key_value
from ._types import KeyValue, PrefixSnapshot, key_text, prefix_range_end, to_bytes

log = logging.getLogger("confhub.etcd")


class Unary(Protocol):
    """One unary call with the client's deadline, auth, failover and retries."""

    def __call__(
        self, stub: str, method: str, request: Any, *, idempotent: bool, what: str
    ) -> Any: ...


class KVReads:
    """The reads of an :class:`~confhub_etcd.EtcdClient`, over its ``unary`` call."""

    def __init__(self, unary: Unary) -> None:
        self._unary = unary

    def get(self, key: str | bytes) -> tuple[KeyValue | None, int]:
        """Read one key: ``(KeyValue or None, store revision of the read)``."""
        response = self._unary(
            "kv", "Range", stubs().RangeRequest(key=to_bytes(key)), idempotent=True, what="get"
        )
        item = to_key_value(response.kvs[0]) if response.kvs else None
        return item, int(response.header.revision)

    def read_prefix(
        self,
        prefix: str | bytes,
        *,
        page_size: int = 500,
        attempts: int = 3,
        max_keys: int | None = None,
        convert: bool = True,
    ) -> PrefixSnapshot:
        """Every key under ``prefix`` at ONE revision, read in pages of ``page_size`` keys.

        The first page fixes the revision R (its header revision); later pages ask for R
        explicitly, so the result is one consistent snapshot even while writers are busy. If R
        is compacted between pages, the read restarts at a new R (up to ``attempts`` times, then
        :class:`EtcdCompacted`). A page larger than the gRPC receive limit is re-read at half
        the page size.

        With ``max_keys``, a prefix holding more keys raises :class:`EtcdTooManyKeys` after
        the FIRST page (etcd's range count says how many there are), so a runaway prefix is
        refused without downloading it.

        ``convert=False`` leaves the items as etcd's protobuf ``KeyValue`` messages (the same
        fields, read-only by convention): for a caller that reads each once, such as a load
        building its layer, it saves making a :class:`KeyValue` per key. Their ``repr``
        shows values: do not log them.
        """
        prefix_b = to_bytes(prefix)
        end = prefix_range_end(prefix_b)
        last_error: EtcdCompacted | None = None
        for _ in range(max(1, attempts)):
            try:
                return self._read_prefix_once(prefix_b, end, page_size, max_keys, convert)
            except EtcdCompacted as exc:
                last_error = exc
                log.info(
                    "etcd compacted during a paged read of %s; restarting the read",
                    key_text(prefix_b),
                )
        if last_error is None:  # attempts < 1 is normalised above; kept for the type checker
            raise EtcdError(f"paged read of {key_text(prefix_b)} made no attempt")
        raise last_error

    def _read_prefix_once(
        self,
        prefix: bytes,
        end: bytes,
        page_size: int,
        max_keys: int | None = None,
        convert: bool = True,
    ) -> PrefixSnapshot:
        rpc = stubs()
        revision = 0
        start = prefix
        items: list[Any] = []
        size = max(1, page_size)
        while True:
            request = rpc.RangeRequest(key=start, range_end=end, limit=size, revision=revision)
            try:
                response = self._unary("kv", "Range", request, idempotent=True, what="range read")
            except ResponseTooLarge:
                if size == 1:
                    raise
                size = max(1, size // 2)
                continue
            except EtcdCompacted as exc:
                exc.requested_revision = revision
                raise
            if revision == 0:
                revision = int(response.header.revision)
            if max_keys is not None:
                count = max(int(response.count), len(items) + len(response.kvs))
                if count > max_keys:
                    raise EtcdTooManyKeys(prefix, count, max_keys)
            items.extend(map(to_key_value, response.kvs) if convert else response.kvs)
            if not response.more or not response.kvs:
                return PrefixSnapshot(revision=revision, items=tuple(items))
            start = bytes(response.kvs[-1].key) + b"\0"

    def keys_under(self, prefix: str | bytes, *, page_size: int = 1000) -> tuple[int, list[bytes]]:
        """``(revision, keys)``: the keys (names only, no values) under ``prefix`` at one
        store revision, read in pages.

        What a write reads to check what it could clash with (``confhub.kv.check_write_shape``),
        then passes to :meth:`put_if_unchanged_under` with the revision.
        """
        prefix_b = to_bytes(prefix)
        end = prefix_range_end(prefix_b)
        rpc = stubs()
        revision = 0
        start = prefix_b or b"\0"
        keys: list[bytes] = []
        while True:
            request = rpc.RangeRequest(
                key=start, range_end=end, limit=page_size, revision=revision, keys_only=True
            )
            response = self._unary("kv", "Range", request, idempotent=True, what="key listing")
            if revision == 0:
                revision = int(response.header.revision)
            keys.extend(bytes(item.key) for item in response.kvs)
            if not response.more or not response.kvs:
                return revision, keys
            start = keys[-1] + b"\0"

    def revision(self) -> int:
        """The current store revision."""
        response = self._unary(
            "kv",
            "Range",
            stubs().RangeRequest(key=b"\0", limit=1, count_only=True),
            idempotent=True,
            what="revision read",
        )
        return int(response.header.revision)

    def check_read(self, prefix: bytes) -> None:
        """Raise :class:`EtcdAuthError` when keys under ``prefix`` may no longer be read.

        One key, keys only: cheap enough to run every progress interval. Other failures
        raise as from any read.
        """
        request = stubs().RangeRequest(
            key=prefix or b"\0", range_end=prefix_range_end(prefix), limit=1, keys_only=True
        )
        self._unary("kv", "Range", request, idempotent=True, what="a permission check")

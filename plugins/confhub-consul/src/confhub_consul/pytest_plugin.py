"""confhub-consul's pytest plugin: a Consul for the tests of an application.

Registered through the ``pytest11`` entry point (``-p confhub_consul.pytest_plugin`` where it
is not installed).

- ``consul_server``: a real ``consul agent -dev`` when ``consul`` is on ``PATH`` (loopback,
  free ports, started once per session, always stopped), else the in-repo
  :class:`~confhub_consul.testing.ConsulTestServer` (one per session). Either way a
  :class:`ConsulServer`: ``spec(prefix)`` is the source spec that reads ``prefix``,
  ``put``/``delete`` write over Consul's HTTP API, ``kind`` says which one runs.
- ``consul_prefix``: a key prefix of its own for each test (``test-<hex>/``).
"""

from __future__ import annotations

import contextlib
import http.client
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator

import pytest
from confhub.testing import free_ports

from .testing import ConsulTestServer

__all__ = ["ConsulServer", "consul_prefix", "consul_server"]

_HTTP_TIMEOUT = 10.0
_AGENT_START = 30.0


class ConsulServer:
    """A Consul HTTP endpoint for tests: the test server or a real agent (``kind``)."""

    def __init__(self, kind: str, host: str, port: int) -> None:
        self.kind = kind
        self.host = host
        self.port = port

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    def spec(self, prefix: str = "", **options: str) -> str:
        """The source spec that reads ``prefix`` (Consul keys have no leading slash):
        ``"app/"`` -> ``consul://127.0.0.1:PORT/app/``; ``options`` go in the query."""
        tail = ("?" + urllib.parse.urlencode(options)) if options else ""
        return f"consul://{self.address}/{prefix.lstrip('/')}{tail}"

    def put(self, key: str, value: str | bytes) -> None:
        """Write one key (``PUT /v1/kv/<key>``)."""
        self._call("PUT", key, value.encode() if isinstance(value, str) else value)

    def delete(self, key: str, *, recurse: bool = False) -> None:
        """Delete one key, or every key under it with ``recurse``."""
        self._call("DELETE", key + ("?recurse" if recurse else ""), b"")

    def _call(self, method: str, key: str, body: bytes) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=_HTTP_TIMEOUT)
        try:
            conn.request(method, f"/v1/kv/{key}", body=body or None)
            response = conn.getresponse()
            text = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"{method} {key} on {self.kind} Consul: {response.status} {text!r}")

    def __repr__(self) -> str:
        return f"<ConsulServer {self.kind} {self.address}>"


@contextlib.contextmanager
def _agent(binary: str) -> Iterator[ConsulServer]:
    """``consul agent -dev`` on loopback with free ports; stopped on exit."""
    http_port, server_port, lan, wan = free_ports(4)
    with tempfile.TemporaryDirectory(prefix="confhub-consul-") as data_dir:
        args = [
            binary, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
            "-http-port", str(http_port), "-dns-port", "-1", "-grpc-port", "-1",
            "-server-port", str(server_port), "-serf-lan-port", str(lan),
            "-serf-wan-port", str(wan), "-data-dir", data_dir,
        ]  # fmt: skip
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        try:
            deadline = time.monotonic() + _AGENT_START
            while not _has_leader(http_port):
                if proc.poll() is not None:
                    raise RuntimeError(f"consul agent -dev exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"consul agent -dev had no leader after {_AGENT_START} s")
                time.sleep(0.2)
            yield ConsulServer("consul", "127.0.0.1", http_port)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _has_leader(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", "/v1/status/leader")
        response = conn.getresponse()
        return response.status == 200 and response.read().strip() not in (b"", b'""')
    except OSError:
        return False
    finally:
        conn.close()


@pytest.fixture(scope="session")
def consul_server() -> Iterator[ConsulServer]:
    """A real ``consul agent -dev`` when ``consul`` is on PATH, else the test server."""
    binary = shutil.which("consul")
    if binary is not None:
        with _agent(binary) as agent:
            yield agent
        return
    with ConsulTestServer() as server:
        yield ConsulServer("test-server", server.host, server.port)


@pytest.fixture
def consul_prefix() -> str:
    """A fresh key prefix for one test: ``test-<12 hex digits>/``."""
    return f"test-{uuid.uuid4().hex[:12]}/"

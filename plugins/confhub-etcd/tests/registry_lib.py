"""Helpers of the registry tests on etcd: the contract's harness, lease inspection, and a
child process that registers, locks or campaigns until it is killed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from confhub_etcd.testing import EtcdServer, rpc_stubs

CHILD = Path(__file__).with_name("registry_child.py")
WAIT = 20.0


class EtcdRegistryHarness:
    """The registry contract's view of the ``etcd`` fixture's server."""

    expires_within = 1.0

    def __init__(self, server: EtcdServer) -> None:
        self.server = server

    def spec(self, prefix: str) -> str:
        return f"etcd://{self.server.endpoint}/{prefix}"

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()

    def expire(self, service: str, instance_id: str) -> None:
        """Revoke the lease of every ``.../service/instance_id`` key, as an expiry would."""
        for lease in leases_of(self.server, f"/{service}/{instance_id}"):
            self.server.admin_call(
                "LeaseStub", "LeaseRevoke", rpc_stubs().LeaseRevokeRequest(ID=lease)
            )


def leases_of(server: EtcdServer, suffix: str, *, contains: bool = False) -> list[int]:
    """The leases of the keys ending with (or containing) ``suffix``: a whole-keyspace scan."""
    rpc = rpc_stubs()
    response = server.admin_call("KVStub", "Range", rpc.RangeRequest(key=b"\0", range_end=b"\0"))
    return [
        int(kv.lease)
        for kv in response.kvs
        if kv.lease
        and (suffix in kv.key.decode() if contains else kv.key.decode().endswith(suffix))
    ]


def lease_ttl(server: EtcdServer, lease: int) -> tuple[int, int]:
    """``(remaining, granted)`` seconds of ``lease``; remaining is -1 once it expired."""
    response = server.admin_call(
        "LeaseStub", "LeaseTimeToLive", rpc_stubs().LeaseTimeToLiveRequest(ID=lease)
    )
    return int(response.TTL), int(response.grantedTTL)


class Child:
    """``registry_child.py`` in a process of its own; ``lines()`` reads its JSON reports."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def report(self) -> dict[str, Any]:
        """The child's next JSON line (it is killed and its stderr shown if none comes)."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.kill()
            stderr = self.process.stderr.read() if self.process.stderr else ""
            raise AssertionError(f"the child said nothing; stderr: {stderr[-2000:]}")
        return dict(json.loads(line))

    def kill(self) -> None:
        """SIGKILL (kill -9) and reap."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(WAIT)

    def close(self) -> None:
        self.kill()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def wait_until(condition: Any, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)

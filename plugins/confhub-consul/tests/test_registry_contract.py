"""The Consul registry against confhub's shipped registry contract suite, on the test server.

The harness gives each test its own test server with short registry floors (said so in
``test_registry_consul.py``): ``DeregisterCriticalServiceAfter`` >= 0.5 s reaped every 0.2 s
and session TTLs from 1 s. Consul registrations are agent-wide (not under the prefix), so a
server per test keeps ``services()`` to the test's own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from confhub.testing import RegistryBackendContract

from confhub_consul.testing import ConsulTestServer, FaultHandle


class ConsulRegistryHarness:
    """The registry contract's view of one test server."""

    #: A dead registrant's check turns critical at its TTL; the agent reaps it after the
    #: (shortened) DeregisterCriticalServiceAfter plus up to one reaper period.
    expires_within = 1.5

    def __init__(self, server: ConsulTestServer) -> None:
        self.server = server
        self._outage: FaultHandle | None = None

    def spec(self, prefix: str) -> str:
        return f"consul://{self.server.address}/{prefix}?deregister_after=0.5"

    def stop(self) -> None:
        """A network partition: connections cut, requests dropped, state kept."""
        self._outage = self.server.partition()

    def start(self) -> None:
        if self._outage is not None:
            self._outage.clear()
            self._outage = None

    def expire(self, service: str, instance_id: str) -> None:
        """The agent forgets the instance (as after a reap or an agent restart)."""
        resp = requests.put(
            f"{self.server.url}/v1/agent/service/deregister/{instance_id}", timeout=10
        )
        assert resp.status_code == 200, resp.text


class TestConsulRegistryContract(RegistryBackendContract):
    """Consul registrations, discovery, outages, locks and elections, as every store."""

    @pytest.fixture
    def registry_store(self) -> Iterator[ConsulRegistryHarness]:
        with ConsulTestServer(dcsa_min=0.5, check_reap_interval=0.2, session_ttl_min=1) as srv:
            yield ConsulRegistryHarness(srv)

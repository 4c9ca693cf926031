"""The Consul backend against confhub's shipped KV contract suite, on the Consul test server."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from confhub.testing import KVBackendContract

from confhub_consul.testing import ConsulTestServer


class ConsulHarness:
    """The contract's view of the ``double`` fixture's test server.

    Consul keys are the suite's keys as they are. A stopped test server cannot start again,
    so an outage is every KV request answered 503 until the fault is cleared; a blocking
    query already waiting returns within the fixture's ``max_query_time`` and meets it.
    """

    def __init__(self, server: ConsulTestServer) -> None:
        self.server = server

    def spec(self, prefix: str, **options: str) -> str:
        query = f"?{urlencode(options)}" if options else ""
        return f"consul://{self.server.address}/{prefix}{query}"

    def put(self, key: str, value: bytes | str) -> None:
        self.server.put(key, value)

    def delete(self, key: str) -> None:
        self.server.delete(key)

    def stop(self) -> None:
        self.server.inject_status(503, times=None, path_prefix="/v1/kv/")

    def start(self) -> None:
        self.server.clear_faults()


class TestConsulContract(KVBackendContract):
    """Consul's tree and document layouts, watch, writes and outages, as every KV backend."""

    @pytest.fixture
    def kv_store(self, double: ConsulTestServer) -> ConsulHarness:
        return ConsulHarness(double)

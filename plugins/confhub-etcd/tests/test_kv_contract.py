"""The etcd backend against confhub's shipped KV contract suite, on a real etcd."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from confhub.testing import KVBackendContract

from confhub_etcd.testing import EtcdServer


class EtcdHarness:
    """The contract's view of the ``etcd`` fixture's server.

    etcd keys are the suite's keys under ``/`` (the spec's URL path is the etcd prefix,
    leading slash included); ``stop()``/``start()`` stop the member and start it again on
    the same ports and data directory.
    """

    def __init__(self, server: EtcdServer) -> None:
        self.server = server

    def spec(self, prefix: str, **options: str) -> str:
        query = f"?{urlencode(options)}" if options else ""
        return f"etcd://{self.server.endpoint}/{prefix}{query}"

    def put(self, key: str, value: bytes | str) -> None:
        self.server.put("/" + key, value)

    def delete(self, key: str) -> None:
        self.server.delete("/" + key)

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


class TestEtcdContract(KVBackendContract):
    """etcd's tree and document layouts, watch, writes and outages, as every KV backend."""

    @pytest.fixture
    def kv_store(self, etcd: EtcdServer) -> EtcdHarness:
        return EtcdHarness(etcd)

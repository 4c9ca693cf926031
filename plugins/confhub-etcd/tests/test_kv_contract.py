"""confhub's KV backend contract (``confhub.testing.KVBackendContract``), run against etcd:
the behaviours the etcd and Consul backends share, checked the same way for both."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlencode

import pytest

from confhub_etcd.testing import EtcdServer

try:
    from confhub.testing import KVBackendContract
except ImportError:  # pragma: no cover - until the core's contract suite is merged
    pytest.skip(
        "confhub.testing.KVBackendContract is not in this confhub yet", allow_module_level=True
    )


class EtcdHarness:
    """The contract's view of one etcd server (keys as the suite names them, no leading
    slash: the spec names the prefix with ``?prefix=``)."""

    def __init__(self, server: EtcdServer) -> None:
        self.server = server

    def spec(self, prefix: str, **options: str) -> str:
        query = urlencode(
            {"prefix": prefix, **options, "retry_initial": "0.05", "retry_max": "0.5"}
        )
        return f"etcd://{self.server.endpoint}?{query}"

    def put(self, key: str, value: bytes | str) -> None:
        self.server.put(key, value)

    def delete(self, key: str) -> None:
        self.server.delete(key)

    def stop(self) -> None:
        self.server.kill()

    def start(self) -> None:
        self.server.start()


@pytest.fixture(scope="module")
def _server() -> Iterator[EtcdServer]:
    with EtcdServer() as server:
        yield server


class TestEtcdKVContract(KVBackendContract):
    @pytest.fixture
    def kv_store(self, _server: EtcdServer) -> EtcdHarness:
        if not _server.members[0].running:  # a failed outage test left it down
            _server.start()
        return EtcdHarness(_server)

"""The etcd registry against confhub's shipped registry contract suite, on a real etcd."""

from __future__ import annotations

import pytest
from confhub.testing import RegistryBackendContract
from registry_lib import EtcdRegistryHarness

from confhub_etcd.testing import EtcdServer


class TestEtcdRegistryContract(RegistryBackendContract):
    """etcd registrations, discovery, outages, locks and elections, as every store."""

    @pytest.fixture
    def registry_store(self, etcd: EtcdServer) -> EtcdRegistryHarness:
        return EtcdRegistryHarness(etcd)

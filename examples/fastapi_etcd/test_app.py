"""Tests of the example service's configuration behaviour, as docs/testing.md shows them.

Run with the plugins of confhub and confhub-etcd (automatic once they are installed):
``pytest -p confhub.pytest_plugin -p confhub_etcd.pytest_plugin``.
"""

from collections.abc import Callable, Iterator
from pathlib import Path

import app as service
import pytest
from confhub_etcd.testing import EtcdServer
from fastapi.testclient import TestClient

from confhub.testing import change_and_wait


@pytest.fixture
def client(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    """The app, started (its lifespan runs) against this test's prefix of the test etcd."""
    monkeypatch.setenv("EXAMPLE_ETCD", etcd_server.endpoint)
    monkeypatch.setenv("EXAMPLE_PREFIX", etcd_prefix)
    monkeypatch.setenv("CONFHUB_CACHE_DIR", str(tmp_path))
    with TestClient(service.app) as client:
        yield client


def test_greet_turns_beta_when_the_flag_flips_in_etcd(
    client: TestClient, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    """Flipping feature/beta in etcd changes what /greet answers, without a restart."""
    assert client.get("/greet").json() == {"text": "hello!", "beta": False}

    change_and_wait(
        service.config.hub,
        lambda: etcd_server.put(f"{etcd_prefix}feature/beta", "true"),
        keys=["feature.beta"],
    )

    assert client.get("/greet").json() == {"text": "hello (beta)", "beta": True}


def test_beta_for_one_test_without_touching_etcd(
    client: TestClient, confhub_override: Callable[..., None]
) -> None:
    """confhub_override sets the flag for this test only; etcd and the hub are untouched."""
    confhub_override(service.config, {"feature.beta": True})
    assert client.get("/greet").json()["beta"] is True
    assert service.config.hub["feature.beta"] is False

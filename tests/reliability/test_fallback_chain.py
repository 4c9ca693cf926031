"""The fallback chain across real backends: etcd, then Consul, then the caches."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confhub_consul.testing import ConsulTestServer
from confhub_etcd.testing import EtcdServer
from history import wait_until

from confhub import Fallback, Hub, StartupError

CONSUL_OPTS = "wait=1&timeout=1&retry_initial=0.05&retry_max=0.3"


def group(etcd_endpoint: str, consul_address: str) -> Fallback:
    return Fallback(
        f"etcd://{etcd_endpoint}/app/?timeout=1",
        f"consul://{consul_address}/app/?{CONSUL_OPTS}",
        name="kv",
    )


def test_etcd_down_falls_back_to_consul_then_to_the_caches(
    etcd: EtcdServer, consul: ConsulTestServer, tmp_path: Path
) -> None:
    """etcd down: Consul serves (fallback) until etcd is back (promoted back to etcd); both
    down: etcd's cache serves, then etcd's live."""
    etcd.put("/app/db/host", "from-etcd")
    consul.put("app/db/host", b"from-consul")
    slot = group(etcd.endpoint, consul.address)
    opts = {
        "autoload": True,
        "cache_dir": tmp_path,
        "connect_timeout": 1.0,
        "retry_initial": 0.05,
        "retry_max": 0.3,
    }
    with Hub([{"db": {"host": "default"}}, slot], **opts) as hub:
        assert hub.get("db.host") == "from-etcd"
        assert hub.health().sources[1].state == "live"

    etcd.kill()
    began = time.monotonic()
    with Hub([{"db": {"host": "default"}}, slot], **opts) as hub:
        # Under the start ceiling, and served by the alternate rather than the cache below:
        # the dead etcd cost its connect timeout, not the start (was: < 3.0 s, a pace).
        assert time.monotonic() - began < hub.start_timeout
        assert hub.get("db.host") == "from-consul"
        health = hub.health().sources[1]
        assert health.state == "fallback"
        assert health.active is not None
        assert health.active.startswith("consul://")
        consul.put("app/db/host", b"consul-updated")  # the alternate is watched
        wait_until(lambda: hub.get("db.host") == "consul-updated", timeout=10)
        # etcd back: the slot is promoted back to it (its full read is one change) and
        # Consul is no longer followed.
        etcd.restart()
        etcd.put("/app/db/host", "etcd-again")
        wait_until(lambda: hub.health().sources[1].state == "live", timeout=15)
        wait_until(lambda: hub.get("db.host") == "etcd-again", timeout=10)
        assert hub.health().sources[1].active.startswith("etcd://")  # type: ignore[union-attr]
        assert not hub.health().degraded
        consul.put("app/db/host", b"consul-ignored")
        etcd.put("/app/db/port", "5432")
        wait_until(lambda: hub.get("db.port", None) == "5432", timeout=10)
        assert hub.get("db.host") == "etcd-again"
    etcd.kill()

    consul.stop()
    with Hub([{"db": {"host": "default"}}, slot], **opts) as hub:
        assert hub.get("db.host") == "etcd-again"  # the primary's cache comes first
        assert hub.health().sources[1].state == "cached"
        etcd.restart()
        etcd.put("/app/db/host", "etcd-back")
        wait_until(lambda: hub.health().sources[1].state == "live", timeout=15)
        wait_until(lambda: hub.get("db.host") == "etcd-back", timeout=10)


def test_all_down_without_cache_names_every_attempt(
    etcd: EtcdServer, consul: ConsulTestServer
) -> None:
    """With every member down and no cache, start fails naming each attempt, within the bound."""
    slot = group(etcd.endpoint, consul.address)
    etcd.kill()
    consul.stop()
    hub = Hub([slot], cache_dir=None, connect_timeout=1.0)
    began = time.monotonic()
    with pytest.raises(StartupError) as info:
        hub.start()
    assert [what.split(":")[0] for what, _ in info.value.attempts] == ["etcd", "consul"]
    assert "kv" in str(info.value)
    # Each member was tried within its connect timeout: none was skipped because the first
    # used up the start ceiling (was: start failed within 4.0 s, a pace).
    assert not [what for what, error in info.value.attempts if "not tried" in str(error)]
    assert time.monotonic() - began < hub.start_timeout

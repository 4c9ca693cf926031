"""Strict binding over a real etcd: an unknown key names its etcd key, at load and live."""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs
import confhub
import pytest
from confhub import ErrorEvent, UnknownKeyError

from confhub_etcd.testing import EtcdServer

BOUND = 10.0  # seconds any single expected event may take (a backstop, never a pace)


@attrs.frozen
class Db:
    host: str
    pool_size: int = 5


@attrs.frozen
class App:
    db: Db


def until(predicate: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not seen within {BOUND} s")
        time.sleep(0.01)


def hub_for(etcd: EtcdServer, spec: str) -> confhub.Hub:
    return confhub.Hub([f"etcd://{etcd.endpoints[0]}/{spec}"], cache_dir=None, connect_timeout=2.0)


def test_a_typo_key_in_etcd_names_the_etcd_key(etcd: EtcdServer) -> None:
    """``/svc/db/pool_sise`` is refused, naming the etcd key and the closest field."""
    etcd.put("/svc/db/host", "h")
    etcd.put("/svc/db/pool_sise", "50")
    with hub_for(etcd, "svc/") as hub, pytest.raises(UnknownKeyError) as info:
        hub.bind(App)
    (found,) = info.value.unknown
    assert (found.key, found.suggestion) == ("db.pool_sise", "pool_size")
    assert found.source.startswith("etcd://")
    assert "/svc/db/pool_sise" in (found.detail or "")
    assert "/svc/db/pool_sise" in str(info.value)


def test_a_misnamed_table_in_etcd_names_one_of_its_keys(etcd: EtcdServer) -> None:
    """``/svc/database/...`` where the class has ``db``: the table is named with a key of it."""
    etcd.put("/svc/database/host", "h")
    with hub_for(etcd, "svc/") as hub, pytest.raises(UnknownKeyError) as info:
        hub.bind(App)
    (found,) = info.value.unknown
    assert (found.key, found.suggestion) == ("database", "db")
    assert "/svc/database/host" in (found.detail or "")


def test_a_typo_written_live_to_etcd_is_rejected_and_last_good_kept(etcd: EtcdServer) -> None:
    """A live put of ``db/pool_sise``: rejected, error event and health name it, the view
    keeps its value; deleting the key recovers."""
    etcd.put("/svc/db/host", "h")
    etcd.put("/svc/db/pool_size", "3")
    errors: list[ErrorEvent] = []
    with hub_for(etcd, "svc/") as hub:
        view = hub.view(App)
        hub.subscribe(on_error=errors.append)
        etcd.put("/svc/db/pool_sise", "30")
        until(lambda: errors, "the error event")
        error = errors[0].error
        assert isinstance(error, UnknownKeyError)
        assert "/svc/db/pool_sise" in (error.unknown[0].detail or "")
        assert view.current == App(Db("h", 3))
        until(lambda: hub.health().sources[0].state == "stale", "the stale state")
        assert "pool_sise" in (hub.health().sources[0].last_error or "")
        etcd.delete("/svc/db/pool_sise")
        etcd.put("/svc/db/pool_size", "30")
        until(lambda: view.current == App(Db("h", 30)), "the fix")
        assert hub.health().sources[0].state == "live"


def test_a_typo_inside_an_etcd_document_names_the_document_key(etcd: EtcdServer) -> None:
    """A whole TOML document in one etcd key: the unknown key names that key."""
    etcd.put("/svc/config.toml", '[db]\nhost = "h"\npool_sise = 1\n')
    with (
        hub_for(etcd, "svc/config.toml?format=toml") as hub,
        pytest.raises(UnknownKeyError) as info,
    ):
        hub.bind(App)
    (found,) = info.value.unknown
    assert found.key == "db.pool_sise"
    assert "/svc/config.toml" in (found.detail or "")

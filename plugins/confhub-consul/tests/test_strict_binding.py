"""Strict binding over the Consul test server: an unknown key names its Consul key."""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs
import confhub
import pytest
from confhub import ErrorEvent, UnknownKeyError

from confhub_consul.testing import ConsulTestServer

BOUND = 10.0  # seconds any single expected event may take (a backstop, never a pace)
FAST = "wait=1&timeout=1&retry_initial=0.05&retry_max=0.3"


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


def hub_for(server: ConsulTestServer) -> confhub.Hub:
    return confhub.Hub(
        [f"consul://{server.host}:{server.port}/svc/?{FAST}"], cache_dir=None, connect_timeout=2.0
    )


def test_a_typo_key_in_consul_names_the_consul_key(double: ConsulTestServer) -> None:
    """``svc/db/pool_sise`` is refused, naming the Consul key and the closest field."""
    double.put("svc/db/host", "h")
    double.put("svc/db/pool_sise", "50")
    with hub_for(double) as hub, pytest.raises(UnknownKeyError) as info:
        hub.bind(App)
    (found,) = info.value.unknown
    assert (found.key, found.suggestion) == ("db.pool_sise", "pool_size")
    assert found.source.startswith("consul://")
    assert "consul key svc/db/pool_sise" in (found.detail or "")
    assert "svc/db/pool_sise" in str(info.value)


def test_a_typo_written_live_to_consul_is_rejected_and_last_good_kept(
    double: ConsulTestServer,
) -> None:
    """A live put of ``svc/db/pool_sise``: rejected, error event and health name it, the
    view keeps its value; deleting the key recovers."""
    double.put("svc/db/host", "h")
    double.put("svc/db/pool_size", "3")
    errors: list[ErrorEvent] = []
    with hub_for(double) as hub:
        view = hub.view(App)
        hub.subscribe(on_error=errors.append)
        double.put("svc/db/pool_sise", "30")
        until(lambda: errors, "the error event")
        error = errors[0].error
        assert isinstance(error, UnknownKeyError)
        assert "consul key svc/db/pool_sise" in (error.unknown[0].detail or "")
        assert view.current == App(Db("h", 3))
        until(lambda: hub.health().sources[0].state == "stale", "the stale state")
        assert "pool_sise" in (hub.health().sources[0].last_error or "")
        double.delete("svc/db/pool_sise")
        double.put("svc/db/pool_size", "30")
        until(lambda: view.current == App(Db("h", 30)), "the fix")
        assert hub.health().sources[0].state == "live"


def test_unknown_keys_from_consul_under_the_warn_policy_bind(double: ConsulTestServer) -> None:
    """``unknown="warn"``: the declared fields bind, the Consul key is only logged."""
    double.put("svc/db/host", "h")
    double.put("svc/db/pool_sise", "50")
    with hub_for(double) as hub:
        assert hub.bind(App, unknown="warn") == App(Db("h"))

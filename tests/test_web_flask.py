"""confhub.integrations.flask, served by werkzeug's threaded server over real HTTP."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from flask import Flask
from web_testlib import werkzeug_server

from confhub import Hub, HubStateError, StartupError, State
from confhub.integrations.flask import Confhub
from confhub.testing import MemoryStore

HANG = 10.0


@attrs.frozen
class Flags:
    greeting: str
    beta: bool = False


def _hub(store: MemoryStore, cache_dir: Path | None = None, **options: Any) -> Hub:
    return Hub(
        [{"greeting": "hello"}, f"memory:{store.name}"],
        plugins=[store],
        autoload=False,
        cache_dir=cache_dir,
        **options,
    )


def _app(ext: Confhub[Flags], hub: Hub | None = None) -> Flask:
    app = Flask(__name__)
    ext.init_app(app, hub)

    @app.get("/greet")
    def greet() -> dict[str, Any]:
        cfg = ext.config
        return {"greeting": cfg.greeting, "beta": cfg.beta}

    return app


def test_init_app_starts_the_hub_and_serves_config_and_probes() -> None:
    """After init_app the hub runs; the app answers from it and /healthz, /readyz say so."""
    store = MemoryStore("app", {"beta": "true"})
    hub = _hub(store)
    ext: Confhub[Flags] = Confhub(hub, Flags)
    app = _app(ext)
    assert hub.state is State.RUNNING
    try:
        with werkzeug_server(app) as url, httpx.Client(base_url=url, timeout=HANG) as client:
            greet = client.get("/greet").json()
            health = client.get("/healthz")
            ready = client.get("/readyz")
    finally:
        ext.close(app)
    assert greet == {"greeting": "hello", "beta": True}
    assert health.status_code == 200
    assert health.json()["sources"][1]["state"] == "live"
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert hub.state is State.CLOSED


def test_a_request_sees_one_generation_and_the_next_request_the_new_one() -> None:
    """A change published during a request does not reach it; the next request sees it."""
    store = MemoryStore("app", {"beta": "false"})
    hub = _hub(store)
    ext: Confhub[Flags] = Confhub(hub, Flags)
    app = _app(ext)

    @app.get("/twice")
    def twice() -> dict[str, Any]:
        first = ext.config
        snap = ext.snapshot
        store.set("beta", "true")  # published when set returns (delivered synchronously)
        return {
            "first": first.beta,
            "again": ext.config.beta,
            "same": ext.config is first,
            "snapshot": snap["beta"],
            "pinned": ext.snapshot is snap,
            "hub": hub["beta"],
        }

    try:
        with werkzeug_server(app) as url, httpx.Client(base_url=url, timeout=HANG) as client:
            during = client.get("/twice").json()
            after = client.get("/greet").json()
    finally:
        ext.close(app)
    assert during == {
        "first": False,
        "again": False,
        "same": True,
        "snapshot": "false",
        "pinned": True,
        "hub": "true",
    }
    assert after["beta"] is True


def test_concurrent_requests_each_see_a_consistent_config_while_it_changes() -> None:
    """Under a threaded server, requests racing a stream of changes each read one
    generation (two reads of a request agree), and the last requests see the last value."""
    store = MemoryStore("app", {"greeting": "0"})
    ext: Confhub[Flags] = Confhub(_hub(store), Flags)
    app = _app(ext)
    both_seen = threading.Barrier(2, timeout=HANG)

    @app.get("/pair")
    def pair() -> dict[str, str]:
        first = ext.config.greeting
        return {"first": first, "second": ext.config.greeting}

    def writer() -> None:
        both_seen.wait()
        for i in range(1, 101):
            store.set("greeting", str(i))

    try:
        with werkzeug_server(app) as url, httpx.Client(base_url=url, timeout=HANG) as client:
            thread = threading.Thread(target=writer)
            thread.start()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                both_seen.wait()
                replies = list(pool.map(lambda _: client.get("/pair").json(), range(200)))
            thread.join(HANG)
            last = client.get("/pair").json()
    finally:
        ext.close(app)
    assert all(r["first"] == r["second"] for r in replies)
    assert last == {"first": "100", "second": "100"}


def test_a_lazy_extension_starts_the_hub_on_the_first_request() -> None:
    """lazy=True: init_app leaves the hub new; the first request starts it."""
    store = MemoryStore("app", {"beta": "true"})
    hub = _hub(store)
    ext: Confhub[Flags] = Confhub(hub, Flags, lazy=True)
    app = _app(ext)
    assert hub.state is State.NEW
    try:
        with werkzeug_server(app) as url:
            reply = httpx.get(f"{url}/greet", timeout=HANG)
            assert hub.state is State.RUNNING
    finally:
        ext.close(app)
    assert reply.json()["beta"] is True


def test_a_lazy_start_that_fails_leaves_the_app_unready() -> None:
    """lazy=True and a required source down with no cache: requests fail (500) and
    /readyz answers 503 with the start error among the reasons."""
    store = MemoryStore("app", {})
    store.fail()
    ext: Confhub[Flags] = Confhub(_hub(store), Flags, lazy=True)
    app = _app(ext)
    with werkzeug_server(app) as url, httpx.Client(base_url=url, timeout=HANG) as client:
        first = client.get("/greet")
        ready = client.get("/readyz")
    assert first.status_code == 500
    assert ready.status_code == 503
    assert any("start failed" in r and "memory:app" in r for r in ready.json()["reasons"])


def test_an_eager_start_that_fails_raises_from_init_app() -> None:
    """A required source down with no cache: init_app raises StartupError (fail fast)."""
    store = MemoryStore("app", {})
    store.fail()
    with pytest.raises(StartupError, match="memory:app"):
        _app(Confhub(_hub(store), Flags))


def test_a_hub_factory_gives_each_app_its_own_hub() -> None:
    """One extension object, two apps (an app factory called twice): two hubs."""
    store = MemoryStore("app", {})
    ext: Confhub[Flags] = Confhub(lambda: _hub(store), Flags)
    first, second = _app(ext), _app(ext)
    try:
        with first.app_context():
            one = ext.hub
        with second.app_context():
            two = ext.hub
        assert one is not two
        assert one.state is two.state is State.RUNNING
    finally:
        ext.close(first)
        ext.close(second)


def test_an_app_without_init_app_says_how_to_fix_it() -> None:
    """Using the extension in an app it was not initialised on names init_app."""
    ext: Confhub[Flags] = Confhub(None, Flags)
    with Flask(__name__).app_context(), pytest.raises(HubStateError, match="init_app"):
        _ = ext.hub


def test_importing_the_flask_integration_imports_flask_only() -> None:
    """confhub.integrations.flask imports Flask, not Starlette or a server."""
    code = (
        "import sys, confhub.integrations.flask\n"
        "print([m for m in ('starlette', 'fastapi', 'uvicorn', 'gunicorn', 'flask') "
        "if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    assert out == "['flask']"

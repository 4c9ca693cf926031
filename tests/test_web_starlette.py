"""confhub.integrations.starlette with FastAPI, served by a real uvicorn over real HTTP.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations,
which name the local ``glue`` (``Depends(glue.config)``).
"""

import asyncio
import concurrent.futures
import contextlib
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import attrs
import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from web_testlib import uvicorn_server

from confhub import Hub, State
from confhub.integrations.starlette import Confhub
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


def _app(glue: Confhub[Flags]) -> FastAPI:
    app = FastAPI(lifespan=glue.lifespan)
    app.add_route("/healthz", glue.health)
    app.add_route("/readyz", glue.ready)

    @app.get("/greet")
    async def greet(cfg: Annotated[Flags, Depends(glue.config)]) -> dict[str, Any]:
        return {"greeting": cfg.greeting, "beta": cfg.beta}

    return app


def test_the_lifespan_starts_the_hub_and_closes_it_at_shutdown() -> None:
    """Served by uvicorn, the app answers from a started hub; shutdown closes the hub."""
    store = MemoryStore("app", {"beta": "true"})
    hub = _hub(store)
    with uvicorn_server(_app(Confhub(hub, Flags))) as url:
        assert hub.state is State.RUNNING
        reply = httpx.get(f"{url}/greet", timeout=HANG)
    assert reply.json() == {"greeting": "hello", "beta": True}
    assert hub.state is State.CLOSED
    assert store.watch_count == 0


def test_the_apps_own_lifespan_runs_inside_the_hubs() -> None:
    """The app's lifespan starts after the hub (it can read config) and ends before the hub
    closes; the state both yield reaches the request."""
    store = MemoryStore("app", {})
    hub = _hub(store)
    seen: list[str] = []

    @contextlib.asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[Mapping[str, Any]]:
        seen.append(f"start {hub.state.value} {hub.get('greeting')}")
        yield {"db": "pool"}
        seen.append(f"stop {hub.state.value}")

    glue = Confhub(hub, Flags, lifespan=own)
    app = FastAPI(lifespan=glue.lifespan)

    @app.get("/state")
    async def state(request: Request) -> dict[str, Any]:
        return {"db": request.state.db, "confhub": request.state.confhub is glue}

    with uvicorn_server(app) as url:
        reply = httpx.get(f"{url}/state", timeout=HANG)
    assert reply.json() == {"db": "pool", "confhub": True}
    assert seen == ["start running hello", "stop running"]
    assert hub.state is State.CLOSED


def test_a_request_sees_one_generation_and_the_next_request_the_new_one() -> None:
    """A change published during a request does not reach it (one config for the whole
    request); the next request gets the new config."""
    store = MemoryStore("app", {"beta": "false"})
    hub = _hub(store)
    glue = Confhub(hub, Flags)
    app = FastAPI(lifespan=glue.lifespan)

    @app.get("/twice")
    def twice(
        request: Request, cfg: Annotated[Flags, Depends(glue.config)]
    ) -> dict[str, Any]:
        generation = hub.generation
        store.set("beta", "true")  # delivered synchronously: published when set returns
        assert hub.generation == generation + 1
        again = glue.current(request)
        return {"first": cfg.beta, "again": again.beta, "same": again is cfg, "hub": hub["beta"]}

    @app.get("/beta")
    async def beta(cfg: Annotated[Flags, Depends(glue.config)]) -> bool:
        return cfg.beta

    with uvicorn_server(app) as url, httpx.Client(base_url=url, timeout=HANG) as client:
        during = client.get("/twice").json()
        after = client.get("/beta").json()
    assert during == {"first": False, "again": False, "same": True, "hub": "true"}
    assert after is True


def test_health_and_readiness_report_a_store_outage_without_going_unready() -> None:
    """The store failing under a running app: /healthz shows the source stale (200) and
    /readyz stays 200 (the last good config serves); the greeting still answers."""
    store = MemoryStore("app", {"beta": "true"})
    with (
        uvicorn_server(_app(Confhub(_hub(store, retry_initial=30.0), Flags))) as url,
        httpx.Client(base_url=url, timeout=HANG) as client,
    ):
        live = client.get("/healthz")
        store.fail()
        health = client.get("/healthz")
        ready = client.get("/readyz")
        greet = client.get("/greet")
    assert live.status_code == 200
    assert live.json()["sources"][1]["state"] == "live"
    assert health.status_code == 200
    assert health.json()["state"] == "running"
    assert health.json()["degraded"] is True
    assert health.json()["sources"][1]["state"] == "stale"
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert greet.json() == {"greeting": "hello", "beta": True}


def test_an_app_started_from_its_cache_during_an_outage_is_ready(tmp_path: Path) -> None:
    """The store down at start but a cached copy on disk: the app starts and is ready."""
    store = MemoryStore("app", {"beta": "true"})
    with _hub(store, tmp_path):
        pass  # fills the cache
    store.fail()
    glue = Confhub(lambda: _hub(store, tmp_path, retry_initial=30.0), Flags)
    with uvicorn_server(_app(glue)) as url, httpx.Client(base_url=url, timeout=HANG) as client:
        ready = client.get("/readyz")
        greet = client.get("/greet")
    assert ready.status_code == 200
    assert ready.json()["sources"][1]["state"] == "cached"
    assert greet.json()["beta"] is True


def test_a_required_source_down_without_a_cache_fails_the_apps_start() -> None:
    """No copy anywhere: the lifespan's start-up fails, uvicorn does not serve, the hub is
    closed."""
    store = MemoryStore("app", {})
    store.fail()
    hub = _hub(store)
    with pytest.raises(RuntimeError, match="did not start"), uvicorn_server(_app(Confhub(hub))):
        pass
    assert hub.state is State.CLOSED


def test_a_hub_factory_gives_each_lifespan_its_own_hub() -> None:
    """With a factory, the app can be served twice (a hub starts once)."""
    store = MemoryStore("app", {})
    made: list[Hub] = []

    def factory() -> Hub:
        made.append(_hub(store))
        return made[-1]

    app = _app(Confhub(factory, Flags))
    for _ in range(2):
        with uvicorn_server(app) as url:
            assert httpx.get(f"{url}/greet", timeout=HANG).status_code == 200
    assert len(made) == 2
    assert all(h.state is State.CLOSED for h in made)


def test_importing_confhub_imports_no_web_framework() -> None:
    """`import confhub` (and confhub.testing) import none of the frameworks; the
    integration modules import only their own."""
    frameworks = ("starlette", "fastapi", "flask", "werkzeug", "uvicorn", "gunicorn")
    code = (
        "import sys, confhub, confhub.testing, confhub.integrations\n"
        f"print([m for m in {frameworks!r} if m in sys.modules])\n"
        "import confhub.integrations.starlette\n"
        f"print([m for m in {frameworks!r} if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    assert out == ["[]", "['starlette']"]


def test_concurrent_requests_each_see_a_consistent_config_while_it_changes() -> None:
    """Requests racing a stream of changes each read one generation (two reads of a request,
    with the loop yielding between them, agree), and the last request sees the last value."""
    store = MemoryStore("app", {"greeting": "0"})
    glue = Confhub(_hub(store), Flags)
    app = FastAPI(lifespan=glue.lifespan)
    started = threading.Event()

    @app.get("/pair")
    async def pair(request: Request) -> dict[str, str]:
        first = glue.current(request).greeting
        started.set()  # the writer starts after a read: some request saw the first value
        await asyncio.sleep(0.001)  # other requests and the writer's changes run meanwhile
        return {"first": first, "second": glue.current(request).greeting}

    def writer() -> None:
        started.wait(HANG)
        for i in range(1, 101):
            store.set("greeting", str(i))

    with uvicorn_server(app) as url, httpx.Client(base_url=url, timeout=HANG) as client:
        thread = threading.Thread(target=writer)
        thread.start()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: client.get("/pair").json(), range(200)))
        thread.join(HANG)
        last = client.get("/pair").json()
    assert all(r["first"] == r["second"] for r in replies)
    assert len({r["first"] for r in replies}) > 1  # the config did change under the requests
    assert last == {"first": "100", "second": "100"}

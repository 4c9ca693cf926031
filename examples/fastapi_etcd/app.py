"""A FastAPI service configured from defaults and etcd, live, with health and readiness.

Run it (with an etcd at 127.0.0.1:2379; see README.md)::

    uvicorn app:app --port 8000

Environment: ``EXAMPLE_ETCD`` (``host:port``, default ``127.0.0.1:2379``) and
``EXAMPLE_PREFIX`` (the key prefix, default ``/example/``). Keys under the prefix override
the defaults below: ``/example/greeting``, ``/example/feature/beta``.

Endpoints: ``/greet`` (uses the typed config), ``/events`` (server-sent events: the current
configuration, then every change), ``/healthz`` and ``/readyz``.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

import attrs
from fastapi import Depends, FastAPI
from fastapi.responses import StreamingResponse

import confhub
from confhub.integrations.starlette import Confhub


@attrs.frozen
class Feature:
    beta: bool = False


@attrs.frozen
class Config:
    greeting: str
    feature: Feature = Feature()


DEFAULTS = {"greeting": "hello", "feature": {"beta": False}}


def make_hub() -> confhub.Hub:
    """A new hub, read from the environment when the app starts (each start gets its own:
    a hub starts once, and tests start the app many times)."""
    etcd = os.environ.get("EXAMPLE_ETCD", "127.0.0.1:2379")
    prefix = os.environ.get("EXAMPLE_PREFIX", "/example/")
    return confhub.Hub([DEFAULTS, f"etcd://{etcd}{prefix}"])


config = Confhub(make_hub, Config)
app = FastAPI(lifespan=config.lifespan)
app.add_route("/healthz", config.health)
app.add_route("/readyz", config.ready)

AppConfig = Annotated[Config, Depends(config.config)]


@app.get("/greet")
async def greet(cfg: AppConfig) -> dict[str, Any]:
    """The greeting, in beta form when the feature flag is on."""
    text = f"{cfg.greeting}!" if not cfg.feature.beta else f"{cfg.greeting} (beta)"
    return {"text": text, "beta": cfg.feature.beta}


def _event(kind: str, generation: int, data: Any) -> str:
    return f"id: {generation}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"


@app.get("/events")
async def events() -> StreamingResponse:
    """Server-sent events: the whole configuration first, then each change (none missed:
    the stream starts right after the snapshot that was sent)."""
    hub = config.hub
    snap = hub.snapshot()

    async def stream() -> AsyncIterator[str]:
        yield _event("state", snap.generation, snap.to_dict())
        async for change in hub.changes(since=snap):
            data = {c.key: None if c.new is confhub.MISSING else c.new for c in change}
            yield _event("change", change.generation, data)

    return StreamingResponse(stream(), media_type="text/event-stream")

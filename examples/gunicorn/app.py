"""A service whose hub starts at import: the usual module-level settings habit.

Served by gunicorn (sync workers: ``app:wsgi_app``; uvicorn workers: ``app:asgi_app``) or by
``uvicorn --workers N app:asgi_app``. The sources come from ``APP_SOURCES`` (comma-separated
specs); ``GET /`` answers with the worker's pid, the pid that started the hub, the value of
``flag`` and the hub's health, so a client can tell the workers apart. ``?hold=SECONDS``
keeps the worker busy that long first, so that concurrent requests reach different workers.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import confhub

hub = confhub.Hub(os.environ.get("APP_SOURCES", "file:config.toml").split(","), cache_dir=None)
hub.start()
STARTED_IN = os.getpid()


def _answer(query: str) -> bytes:
    hold = float(parse_qs(query).get("hold", ["0"])[0])
    if hold > 0:
        time.sleep(min(hold, 5.0))  # blocks this worker, on purpose
    body = {
        "pid": os.getpid(),
        "hub_started_in": STARTED_IN,
        "flag": hub.get("flag", None),
        "generation": hub.generation,
        "state": hub.state.value,
        "health": hub.health().to_dict(),
    }
    return json.dumps(body).encode()


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The WSGI entry point (gunicorn sync workers)."""
    body = _answer(environ.get("QUERY_STRING", ""))
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


async def asgi_app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """The ASGI entry point (uvicorn, gunicorn's uvicorn workers)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                hub.close()  # uvicorn --workers: no gunicorn hook closes it
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = _answer(scope.get("query_string", b"").decode())
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})

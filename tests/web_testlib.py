"""Real HTTP servers on loopback for the web integration tests (uvicorn, werkzeug).

Each server runs on a free 127.0.0.1 port in a thread of the test process and is always
stopped and joined; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from werkzeug.serving import make_server

START = 20.0  # a bound on a server's start: reached only when something is broken


def free_port() -> int:
    """A free loopback port (closed again: the server binds it next)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def uvicorn_server(app: Any) -> Iterator[str]:
    """Serve the ASGI ``app`` (lifespan on) with uvicorn; yield its base URL. Raises
    ``RuntimeError`` when the server did not start (e.g. the lifespan's start-up failed)."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=free_port(), lifespan="on", log_level="critical"
    )
    server = uvicorn.Server(config)
    exits: list[object] = []

    def run() -> None:
        try:
            server.run()
        except SystemExit as exc:  # uvicorn exits when the lifespan's start-up fails
            exits.append(exc.code)

    thread = threading.Thread(target=run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + START
    while not server.started and thread.is_alive():
        if time.monotonic() > deadline:
            server.should_exit = True
            thread.join(START)
            raise RuntimeError(f"uvicorn did not start within {START} s")
        time.sleep(0.01)
    if not server.started:
        thread.join(START)
        raise RuntimeError(f"uvicorn did not start (exit code {exits}: the lifespan failed)")
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(START)
        assert not thread.is_alive(), "uvicorn did not stop"


@contextlib.contextmanager
def werkzeug_server(app: Any) -> Iterator[str]:
    """Serve the WSGI ``app`` with werkzeug's threaded server; yield its base URL."""
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="werkzeug-test", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(START)
        assert not thread.is_alive(), "werkzeug did not stop"

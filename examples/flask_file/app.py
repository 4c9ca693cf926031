"""A Flask app configured from defaults and a TOML file, reloaded live when the file changes.

Run it (see README.md)::

    flask --app app run --port 8000

Environment: ``EXAMPLE_CONFIG`` (the file, default ``config.toml`` beside this module).
Endpoints: ``/greet`` (uses the typed config), ``/healthz`` and ``/readyz``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs
from flask import Flask

import confhub
from confhub.integrations.flask import Confhub


@attrs.frozen
class Config:
    greeting: str = "hello"
    shout: bool = False


CONFIG_FILE = os.environ.get("EXAMPLE_CONFIG", str(Path(__file__).with_name("config.toml")))

# One hub per app: the factory makes a new one for each app create_app() builds.
config: Confhub[Config] = Confhub(
    lambda: confhub.Hub([{"greeting": "hello"}, f"file:{CONFIG_FILE}"]), Config
)


def create_app() -> Flask:
    """The app factory: the extension starts the hub and adds /healthz and /readyz."""
    app = Flask(__name__)
    config.init_app(app)

    @app.get("/greet")
    def greet() -> dict[str, Any]:
        cfg = config.config  # one generation for the whole request
        text = cfg.greeting.upper() if cfg.shout else cfg.greeting
        return {"text": text}

    return app


app = create_app()

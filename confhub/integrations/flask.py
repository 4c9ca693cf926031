"""Flask: an extension (``init_app``) with a per-request config, health and readiness.

::

    from confhub.integrations.flask import Confhub

    confhub_ext = Confhub(confhub.Hub([...]), AppConfig)

    def create_app() -> Flask:
        app = Flask(__name__)
        confhub_ext.init_app(app)          # starts the hub; /healthz and /readyz
        return app

    @app.get("/items")
    def items():
        cfg = confhub_ext.config           # AppConfig, one generation for the whole request

- ``init_app`` starts the hub (unless ``lazy=True``: then the first request starts it, in
  the worker process that serves it, which suits servers that fork after loading the app)
  and registers the health and readiness routes (``health_path``/``ready_path``; ``None``
  leaves one out). The hub is closed by :meth:`Confhub.close` or at interpreter exit.
- :attr:`Confhub.config` and :attr:`Confhub.snapshot` are pinned in ``flask.g`` on first
  use, so one request sees one generation however often it reads them; another thread's
  request pins its own. Hub reads take no lock, so threaded servers (``threaded=True``,
  gunicorn ``gthread``) need nothing more; the lazy start is guarded by a lock.
- The health route answers ``hub.health()`` as JSON (200 while the hub runs, else 503); the
  readiness route answers ``hub.readiness()`` (200 ready, 503 not; rules in ``docs/web.md``).

Importing this module imports Flask; ``import confhub`` does not.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from flask import Flask, Response, current_app, g, jsonify

from .._binding import View
from .._errors import HubStateError
from .._hub import Hub
from .._lifecycle import State
from .._snapshot import Snapshot
from ._common import Overrides

__all__ = ["Confhub"]

T = TypeVar("T")

_EXTENSION = "confhub"


class _AppState:
    """What one app holds: its hub, the view of the config class, the lazy-start lock."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.view: View[Any] | None = None
        self.lock = threading.Lock()
        self.start_error: BaseException | None = None


class Confhub(Generic[T]):
    """The Flask extension for one :class:`confhub.Hub` (or a factory of hubs, one per app).

    ``hub`` is a hub or a callable returning a new one (``init_app`` calls it: each app, as
    an app factory in tests makes, then gets its own). ``config`` is the class
    :attr:`config` binds (at ``prefix``); it is bound when the hub starts, so a configuration
    that does not fit fails the start. ``max_stale`` is passed to ``hub.readiness()``.
    """

    def __init__(
        self,
        hub: Hub | Callable[[], Hub] | None = None,
        config: type[T] | None = None,
        *,
        app: Flask | None = None,
        prefix: str | None = None,
        max_stale: float | None = None,
        health_path: str | None = "/healthz",
        ready_path: str | None = "/readyz",
        lazy: bool = False,
    ) -> None:
        self._hub_or_factory = hub
        self.config_class = config
        self.prefix = prefix
        self.max_stale = max_stale
        self.health_path = health_path
        self.ready_path = ready_path
        self.lazy = lazy
        self._overrides = Overrides()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, hub: Hub | Callable[[], Hub] | None = None) -> None:
        """Attach a hub to ``app`` (``hub`` here, else the one given to the constructor),
        register the probe routes, and start the hub unless ``lazy``."""
        source = hub if hub is not None else self._hub_or_factory
        if source is None:
            raise TypeError("Confhub.init_app: give a hub (Confhub(hub) or init_app(app, hub))")
        state = _AppState(source if isinstance(source, Hub) else source())
        app.extensions[_EXTENSION] = state
        if self.health_path is not None:
            app.add_url_rule(self.health_path, "confhub_health", self._health_view)
        if self.ready_path is not None:
            app.add_url_rule(self.ready_path, "confhub_ready", self._ready_view)
        if self.lazy:
            app.before_request(self._ensure_started)
        else:
            self._start(state)
        atexit.register(state.hub.close)

    # -- the hub of the current app ---------------------------------------------------------
    @staticmethod
    def _state(app: Flask | None = None) -> _AppState:
        target = app if app is not None else current_app
        try:
            state: _AppState = target.extensions[_EXTENSION]
        except KeyError:
            raise HubStateError(
                f"the Flask app {target.name!r} has no confhub hub: call "
                "Confhub.init_app(app) in the app factory"
            ) from None
        return state

    @property
    def hub(self) -> Hub:
        """The hub of the current app (in an app or request context)."""
        return self._state().hub

    def close(self, app: Flask | None = None) -> None:
        """Close the hub of ``app`` (default: the current app). Idempotent."""
        self._state(app).hub.close()

    def _start(self, state: _AppState) -> None:
        hub = state.hub
        hub.start()
        if self.config_class is not None:
            state.view = hub.view(self.config_class, prefix=self.prefix)

    def _ensure_started(self) -> None:
        """before_request with ``lazy``: the first request starts the hub, once."""
        state = self._state()
        if state.hub.state is State.RUNNING and (
            self.config_class is None or state.view is not None
        ):
            return
        with state.lock:
            if state.start_error is not None or state.hub.state is not State.NEW:
                return  # started by another thread, or failed: the probes say so
            try:
                self._start(state)
            except Exception as exc:
                state.start_error = exc
                current_app.logger.exception("confhub: the hub did not start")
                raise

    # -- per-request values -----------------------------------------------------------------
    @property
    def config(self) -> T:
        """The typed config pinned for this request (``flask.g``): one generation for the
        whole request, the current one at its first read."""
        pinned: dict[str, Any] = g.setdefault("_confhub", {})
        try:
            value: T = pinned["config"]
        except KeyError:
            view = self._state().view
            if view is None:
                raise HubStateError(
                    "Confhub.config: no config class was given (Confhub(hub, AppConfig)), or "
                    "the hub has not started"
                ) from None
            if self._overrides:
                value = self._overrides.bind(self.hub, view.cls, view.prefix)
            else:
                value = view.current
            pinned["config"] = value
        return value

    def override(self, values: Mapping[str, Any]) -> contextlib.AbstractContextManager[None]:
        """For tests: inside ``with confhub_ext.override({"feature.beta": True}):`` the
        config handed to requests has these values (dotted keys from the root) on top of
        the hub's current configuration; the hub itself and its other readers are not
        affected. Blocks nest. No seam in the app: the test imports the app's object.
        """
        return self._overrides.push(values)

    @property
    def snapshot(self) -> Snapshot:
        """The hub's :class:`Snapshot` pinned for this request (as :attr:`config`)."""
        pinned: dict[str, Any] = g.setdefault("_confhub", {})
        try:
            snap: Snapshot = pinned["snapshot"]
        except KeyError:
            snap = pinned["snapshot"] = self.hub.snapshot()
        return snap

    # -- probes -----------------------------------------------------------------------------
    def _health_view(self) -> tuple[Response, int]:
        hub = self.hub
        body = {"state": hub.state.value, **hub.health().to_dict()}
        return jsonify(body), 200 if hub.state is State.RUNNING else 503

    def _ready_view(self) -> tuple[Response, int]:
        state = self._state()
        readiness = state.hub.readiness(max_stale=self.max_stale)
        body = readiness.to_dict()
        if state.start_error is not None:
            body["reasons"].append(f"start failed: {state.start_error}")
        return jsonify(body), 200 if readiness.ready else 503

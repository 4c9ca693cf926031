"""Starlette and FastAPI: a lifespan, a per-request config dependency, health and readiness.

::

    from typing import Annotated
    from fastapi import Depends, FastAPI
    from confhub.integrations.starlette import Confhub

    confhub_app = Confhub(confhub.Hub([...]), AppConfig)
    app = FastAPI(lifespan=confhub_app.lifespan)
    app.add_route("/healthz", confhub_app.health)
    app.add_route("/readyz", confhub_app.ready)

    @app.get("/items")
    async def items(cfg: Annotated[AppConfig, Depends(confhub_app.config)]) -> ...:
        ...

- :attr:`Confhub.lifespan` starts the hub on a worker thread (the event loop keeps running),
  then the app's own lifespan if one was given (``Confhub(..., lifespan=own)``), and on
  shutdown closes them in the reverse order. A hub that cannot start (a required source
  down with no cached copy) fails the app's start-up, loudly.
- :meth:`Confhub.config` (a FastAPI dependency; ``Confhub.current(request)`` in plain
  Starlette) hands a request the typed config of one generation, the same object for the
  whole request however many times it is asked for; a change published meanwhile is seen by
  the next request. :meth:`Confhub.snapshot` does the same for the untyped snapshot.
- :meth:`Confhub.health` answers ``hub.health()`` as JSON (200 while the hub runs, else
  503); :meth:`Confhub.ready` answers ``hub.readiness()`` (200 ready, 503 not), whose rules
  (a pod serving from its cache during a store outage is ready) are in ``docs/web.md``.

Importing this module imports Starlette; ``import confhub`` does not.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Generic, TypeVar

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.types import Lifespan

from .._binding import View
from .._errors import HubStateError
from .._hub import Hub
from .._lifecycle import State
from .._snapshot import Snapshot
from ._common import Overrides

__all__ = ["Confhub"]

T = TypeVar("T")

#: Where a request keeps what was pinned for it: ``scope[_PINNED][(id(owner), what)]``.
_PINNED = "confhub.pinned"


class Confhub(Generic[T]):
    """The glue between one :class:`confhub.Hub` and a Starlette or FastAPI app.

    ``hub`` is a hub, or a callable returning a new one (called at each lifespan start: an
    app started twice, as tests do, needs a new hub each time: a hub starts once).
    ``config`` is the attrs class (or any class the hub binds) that :meth:`config` returns,
    bound at ``prefix``; it is bound once at start-up, so a configuration that does not fit
    fails the start, and a later update that does not fit is rejected by the hub (the last
    good one stays). ``lifespan`` is the app's own lifespan, run inside the hub's.
    ``max_stale`` is passed to ``hub.readiness()`` by :meth:`ready`.
    """

    def __init__(
        self,
        hub: Hub | Callable[[], Hub],
        config: type[T] | None = None,
        *,
        prefix: str | None = None,
        lifespan: Lifespan[Any] | None = None,
        max_stale: float | None = None,
    ) -> None:
        self._hub_or_factory = hub
        self._hub: Hub | None = hub if isinstance(hub, Hub) else None
        self.config_class = config
        self.prefix = prefix
        self.max_stale = max_stale
        self._inner = lifespan
        self._view: View[T] | None = None
        self._overrides = Overrides()

    @property
    def hub(self) -> Hub:
        """The hub (with a factory: the one the running lifespan made)."""
        if self._hub is None:
            raise HubStateError(
                "Confhub(hub_factory): no hub yet; the app's lifespan makes one at start-up "
                "(FastAPI(lifespan=confhub_app.lifespan))"
            )
        return self._hub

    # -- lifespan ---------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[Mapping[str, Any]]:
        """The app's lifespan: start the hub (off the loop), run the app's own lifespan
        inside, and close both at shutdown. Its state (``request.state.confhub``) is this
        object, merged with the state the app's own lifespan yields."""
        factory = self._hub_or_factory
        hub = factory if isinstance(factory, Hub) else factory()
        self._hub = hub
        async with hub:
            if self.config_class is not None:
                self._view = hub.view(self.config_class, prefix=self.prefix)
            try:
                if self._inner is None:
                    yield {"confhub": self}
                else:
                    async with self._inner(app) as inner_state:
                        yield {**(inner_state or {}), "confhub": self}
            finally:
                self._view = None

    # -- per-request values -----------------------------------------------------------------
    def current(self, conn: HTTPConnection) -> T:
        """The typed config pinned for this request (or websocket): the first call binds
        it to the current generation, later calls in the same request return that object."""
        view = self._view
        if view is None:
            raise HubStateError(
                "Confhub.config: no config class was given (Confhub(hub, AppConfig)) or the "
                "lifespan has not started the hub (FastAPI(lifespan=confhub_app.lifespan))"
            )
        if self._overrides:
            cls, prefix = view.cls, view.prefix
            value: T = self._pin(
                conn, "config", lambda: self._overrides.bind(self.hub, cls, prefix)
            )
        else:
            value = self._pin(conn, "config", lambda: view.current)
        return value

    def override(self, values: Mapping[str, Any]) -> contextlib.AbstractContextManager[None]:
        """For tests: inside ``with confhub_app.override({"feature.beta": True}):`` the
        config handed to requests has these values (dotted keys from the root) on top of
        the hub's current configuration; the hub itself and its other readers are not
        affected. Blocks nest. No seam in the app: the test imports the app's object.
        """
        return self._overrides.push(values)

    async def config(self, request: Request) -> T:
        """FastAPI dependency: ``cfg: Annotated[AppConfig, Depends(confhub_app.config)]``
        (see :meth:`current`). Async, so FastAPI calls it on the loop, not a thread."""
        return self.current(request)

    def current_snapshot(self, conn: HTTPConnection) -> Snapshot:
        """The hub's :class:`Snapshot` pinned for this request (as :meth:`current`)."""
        snap: Snapshot = self._pin(conn, "snapshot", self.hub.snapshot)
        return snap

    async def snapshot(self, request: Request) -> Snapshot:
        """FastAPI dependency: the snapshot pinned for this request."""
        return self.current_snapshot(request)

    def _pin(self, conn: HTTPConnection, what: str, read: Callable[[], Any]) -> Any:
        pinned = conn.scope.setdefault(_PINNED, {})
        key = (id(self), what)
        try:
            return pinned[key]
        except KeyError:
            value = pinned[key] = read()
            return value

    # -- probes -----------------------------------------------------------------------------
    async def health(self, request: Request) -> JSONResponse:
        """``hub.health()`` as JSON, with the hub's ``state``: 200 while it runs, else 503."""
        hub = self._hub
        if hub is None:
            return JSONResponse({"state": "new", "sources": []}, status_code=503)
        body = {"state": hub.state.value, **hub.health().to_dict()}
        return JSONResponse(body, status_code=200 if hub.state is State.RUNNING else 503)

    async def ready(self, request: Request) -> JSONResponse:
        """``hub.readiness()`` as JSON: 200 when ready, 503 (with ``reasons``) when not."""
        hub = self._hub
        if hub is None:
            body = {"ready": False, "state": "new", "reasons": ["the hub is not created yet"]}
            return JSONResponse(body, status_code=503)
        readiness = hub.readiness(max_stale=self.max_stale)
        return JSONResponse(readiness.to_dict(), status_code=200 if readiness.ready else 503)

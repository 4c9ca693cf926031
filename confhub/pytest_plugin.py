"""confhub's pytest plugin: fixtures for testing an application's configuration behaviour.

Registered through the ``pytest11`` entry point (``-p confhub.pytest_plugin`` where it is not
installed); ``docs/testing.md`` is the guide. Fixtures:

- ``confhub_hub``: a factory, ``confhub_hub(*sources, **hub_options)`` returns a started
  :class:`confhub.Hub` that is closed at the end of the test. Its cache goes to the test's
  temporary directory unless ``cache_dir=`` is given (never the user's cache).
- ``confhub_override``: ``confhub_override(app_glue, {"feature.beta": True})`` overrides
  values in the config a web integration hands to requests (``Confhub.override`` of
  ``confhub.integrations.starlette`` or ``.flask``) until the end of the test.

Functions (``confhub.testing``) to use with them: ``change_and_wait(hub, change, keys=...)``
runs a change and waits until the hub has published it; ``wait_for_value(hub, key, value)``.
The store fixtures live in the packages that own the stores: ``etcd_server``
(``confhub_etcd.pytest_plugin``) and ``consul_server`` (``confhub_consul.pytest_plugin``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest

from ._hub import Hub
from ._spec import SourceLike

__all__ = ["HubFactory", "confhub_hub", "confhub_override"]


class HubFactory(Protocol):
    """The ``confhub_hub`` fixture's type: ``confhub_hub(*sources, **hub_options)``."""

    def __call__(self, *sources: SourceLike, **hub_options: Any) -> Hub: ...


class _Overridable(Protocol):
    def override(self, values: Mapping[str, Any]) -> contextlib.AbstractContextManager[None]: ...


@pytest.fixture
def confhub_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubFactory]:
    """A factory of started hubs, each closed at teardown (last made, first closed)."""
    with contextlib.ExitStack() as stack:

        def make(*sources: SourceLike, **hub_options: Any) -> Hub:
            if not sources:
                raise TypeError("confhub_hub(*sources): give at least one source")
            if "cache_dir" not in hub_options:
                hub_options["cache_dir"] = Path(tmp_path_factory.mktemp("confhub-cache"))
            hub = Hub(list(sources), **hub_options)
            stack.callback(hub.close)  # before start: a failed start is closed too
            return hub.start()

        yield make


@pytest.fixture
def confhub_override() -> Iterator[Callable[[_Overridable, Mapping[str, Any]], None]]:
    """``confhub_override(glue, {"key": value})``: override values in the config a web
    integration (``Confhub`` of ``confhub.integrations.starlette`` or ``.flask``) hands to
    requests, until the end of the test."""
    with contextlib.ExitStack() as stack:

        def override(glue: _Overridable, values: Mapping[str, Any]) -> None:
            stack.enter_context(glue.override(values))

        yield override

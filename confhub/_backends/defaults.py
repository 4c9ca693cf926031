"""The ``defaults`` backend: a mapping or an attrs instance given in code."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .._backend import BackendInfo, hookimpl
from .._errors import SpecError
from .._layer import Layer

if TYPE_CHECKING:
    from .._hub import Hub
    from .._spec import SourceSpec


class DefaultsBackend:
    """Serves a fixed mapping (an attrs instance is unstructured with the hub's converter)."""

    def __init__(self, spec: SourceSpec, hub: Hub) -> None:
        data = spec.data
        if attrs.has(type(data)):
            data = hub.converter.unstructure(data)
        if not isinstance(data, Mapping):
            raise SpecError(
                f"defaults must be a mapping or an attrs instance, not {type(data).__name__}",
                spec="defaults",
            )
        self._data: Mapping[str, Any] = data
        self._name = spec.display

    def load(self) -> Layer:
        return Layer.from_mapping(self._data, source=self._name, revision=None)

    def close(self) -> None:
        pass


@hookimpl
def confhub_backend_schemes() -> list[BackendInfo]:
    return [BackendInfo("defaults", "defaults given in code (a mapping or an attrs instance)")]


@hookimpl
def confhub_make_backend(spec: SourceSpec, hub: Hub) -> DefaultsBackend | None:
    if spec.scheme != "defaults":
        return None
    return DefaultsBackend(spec, hub)

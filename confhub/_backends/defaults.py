"""The ``defaults`` backend: a mapping, or an attrs, dataclass or pydantic instance, given in
code."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .._backend import Backend, BackendInfo, BackendSettings, hookimpl
from .._binding import make_converter
from .._bindtypes import pydantic_model
from .._errors import SpecError
from .._layer import Layer

if TYPE_CHECKING:
    import cattrs

    from .._spec import SourceSpec


class DefaultsBackend(Backend):
    """Serves a fixed mapping (an attrs, dataclass or pydantic instance is unstructured with
    the hub's converter: field aliases become the keys a source would hold)."""

    def __init__(self, spec: SourceSpec, converter: cattrs.Converter) -> None:
        data = spec.data
        cls = type(data)
        if attrs.has(cls) or dataclasses.is_dataclass(cls) or pydantic_model(cls):
            data = converter.unstructure(data)
        if not isinstance(data, Mapping):
            raise SpecError(
                "defaults must be a mapping, or an attrs, dataclass or pydantic instance, "
                f"not {type(data).__name__}",
                spec="defaults",
            )
        self._data: Mapping[str, Any] = data
        self._name = spec.display

    def load(self) -> Layer:
        return Layer.from_mapping(self._data, source=self._name, revision=None)

    def close(self) -> None:
        pass


class Plugin:
    """The ``defaults`` plugin of one hub: it keeps that hub's converter (handed to every
    plugin by ``confhub_register_converters``), so attrs defaults unstructure with the
    hooks the hub's plugins registered."""

    def __init__(self) -> None:
        self._converter: cattrs.Converter | None = None
        self._hub: Any = None  # the hub configured (not imported: layering)

    @hookimpl
    def confhub_register_converters(self, converter: cattrs.Converter) -> None:
        self._converter = converter

    @hookimpl
    def confhub_configure(self, hub: Any) -> None:
        # The hub builds its converter on first need: reading hub.converter builds it and
        # hands it to every plugin (this one too) through confhub_register_converters.
        self._hub = hub

    @hookimpl
    def confhub_unconfigure(self, hub: Any) -> None:
        if self._hub is hub:
            self._hub = None

    @hookimpl
    def confhub_backend_schemes(self) -> list[BackendInfo]:
        return [BackendInfo("defaults", "defaults given in code (a mapping or a class instance)")]

    @hookimpl
    def confhub_make_backend(
        self, spec: SourceSpec, settings: BackendSettings
    ) -> DefaultsBackend | None:
        if spec.scheme != "defaults":
            return None
        if self._converter is None and self._hub is not None:
            self._hub.converter  # noqa: B018 - builds it; confhub_register_converters keeps it
        if self._converter is None:  # a plugin manager no hub configured
            self._converter = make_converter()
        return DefaultsBackend(spec, self._converter)

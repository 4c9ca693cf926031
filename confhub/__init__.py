"""confhub: layered, typed, watched configuration for Python services.

Start with :class:`Hub`; the user guide is in ``docs/guide.md``.
"""

from __future__ import annotations

from ._backend import Backend, BackendInfo, BackendSettings, Notify, Update, hookimpl
from ._binding import View, parse_duration
from ._cli import main
from ._dispatch import Subscription
from ._errors import (
    BackendNotFoundError,
    ConfhubError,
    ConfigKeyError,
    ConfigValidationError,
    HubStateError,
    PluginError,
    SourceError,
    SourceFormatError,
    SourcePermissionError,
    SourceUnavailableError,
    SpecError,
    StartupError,
    WriteConflictError,
    WriteError,
)
from ._explain import Explanation, Origin
from ._health import Health, Sharing, SourceHealth
from ._hub import Hub, State
from ._layer import Layer, LayerDelta
from ._location import UrlParts
from ._merge import MISSING
from ._parsers import parse_document
from ._redact import is_secret_key
from ._snapshot import Change, ErrorEvent, KeyChange, Snapshot
from ._spec import Fallback, SourceSpec

__all__ = [
    "Backend",
    "BackendInfo",
    "BackendNotFoundError",
    "BackendSettings",
    "Change",
    "ConfhubError",
    "ConfigKeyError",
    "ConfigValidationError",
    "ErrorEvent",
    "Explanation",
    "Fallback",
    "Health",
    "Hub",
    "HubStateError",
    "KeyChange",
    "Layer",
    "LayerDelta",
    "MISSING",
    "Notify",
    "Origin",
    "PluginError",
    "Sharing",
    "Snapshot",
    "SourceError",
    "SourceFormatError",
    "SourceHealth",
    "SourcePermissionError",
    "SourceSpec",
    "SourceUnavailableError",
    "SpecError",
    "StartupError",
    "State",
    "Subscription",
    "Update",
    "UrlParts",
    "View",
    "WriteConflictError",
    "WriteError",
    "hookimpl",
    "is_secret_key",
    "main",
    "parse_document",
    "parse_duration",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("confhub._"):
        try:
            _obj.__module__ = "confhub"
        except (AttributeError, TypeError):  # pragma: no cover - builtins and aliases
            pass
del _name, _obj

"""confhub: layered, typed, watched configuration for Python services.

Start with :class:`Hub`; the user guide is in ``docs/guide.md``.
"""

from __future__ import annotations

from . import sources
from ._backend import Backend, BackendInfo, BackendSettings, Notify, Update, WriteOp, hookimpl
from ._binding import View, parse_duration
from ._cli import main
from ._discovery import Discovery, DiscoveryChange, DiscoveryHealth
from ._dispatch import Subscription
from ._errors import (
    BackendNotFoundError,
    ConfhubError,
    ConfigFileError,
    ConfigKeyError,
    ConfigValidationError,
    HubStateError,
    LeaseLostError,
    LockLostError,
    LockTimeoutError,
    NoInstanceError,
    PluginError,
    RegistryError,
    RegistryInputError,
    SourceError,
    SourceFormatError,
    SourcePermissionError,
    SourceUnavailableError,
    SpecError,
    StartupError,
    UnknownKey,
    UnknownKeyError,
    WriteConflictError,
    WriteError,
)
from ._explain import Explanation, Origin
from ._health import Health, Sharing, SlotState, SourceHealth
from ._hub import Hub
from ._layer import Layer, LayerDelta
from ._lifecycle import State
from ._location import UrlParts
from ._locks import Election, Lock
from ._merge import MISSING
from ._parsers import parse_document
from ._probes import Readiness
from ._redact import is_secret_key
from ._registration import Registration, RegistrationState, close_on_signal
from ._registry import Registry
from ._registry_types import CheckSpec, Instance, LockBackend, RegistryBackend, ServiceListing
from ._snapshot import Change, ErrorEvent, KeyChange, Snapshot
from ._spec import Fallback, SourceSpec
from ._writes import Transaction, Updated

__all__ = [
    "Backend",
    "BackendInfo",
    "BackendNotFoundError",
    "BackendSettings",
    "Change",
    "CheckSpec",
    "ConfhubError",
    "ConfigFileError",
    "ConfigKeyError",
    "ConfigValidationError",
    "Discovery",
    "DiscoveryChange",
    "DiscoveryHealth",
    "Election",
    "ErrorEvent",
    "Explanation",
    "Fallback",
    "Health",
    "Hub",
    "HubStateError",
    "Instance",
    "KeyChange",
    "Layer",
    "LayerDelta",
    "LeaseLostError",
    "Lock",
    "LockBackend",
    "LockLostError",
    "LockTimeoutError",
    "MISSING",
    "NoInstanceError",
    "Notify",
    "Origin",
    "PluginError",
    "Readiness",
    "Registration",
    "RegistrationState",
    "Registry",
    "RegistryBackend",
    "RegistryError",
    "RegistryInputError",
    "ServiceListing",
    "Sharing",
    "SlotState",
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
    "Transaction",
    "UnknownKey",
    "UnknownKeyError",
    "Update",
    "Updated",
    "UrlParts",
    "View",
    "WriteConflictError",
    "WriteError",
    "WriteOp",
    "close_on_signal",
    "hookimpl",
    "is_secret_key",
    "main",
    "parse_document",
    "parse_duration",
    "sources",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("confhub._"):
        try:
            _obj.__module__ = "confhub"
        except (AttributeError, TypeError):  # pragma: no cover - builtins and aliases
            pass
del _name, _obj

"""The public surface: pinned, sorted, and reported under the confhub module."""

from __future__ import annotations

import inspect
from typing import Any

import confhub
from confhub import hookspecs


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted and every name in it exists."""
    assert confhub.__all__ == sorted(confhub.__all__)
    for name in confhub.__all__:
        assert hasattr(confhub, name), name


def test_public_classes_report_the_confhub_module() -> None:
    """Public classes say confhub, not a private module."""
    for name in confhub.__all__:
        obj = getattr(confhub, name)
        if isinstance(obj, type):
            assert obj.__module__ == "confhub", name


def test_public_surface_is_pinned() -> None:
    """Changing the public API is deliberate: update this list and the changelog."""
    assert set(confhub.__all__) == {
        "MISSING",
        "Backend",
        "BackendInfo",
        "BackendNotFoundError",
        "BackendSettings",
        "Change",
        "CheckSpec",
        "Discovery",
        "DiscoveryChange",
        "DiscoveryHealth",
        "Election",
        "Lock",
        "Registration",
        "RegistrationState",
        "Registry",
        "RegistryInputError",
        "close_on_signal",
        "Instance",
        "LeaseLostError",
        "LockBackend",
        "LockLostError",
        "LockTimeoutError",
        "NoInstanceError",
        "RegistryBackend",
        "RegistryError",
        "ServiceListing",
        "ConfhubError",
        "ConfigFileError",
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
        "Notify",
        "Origin",
        "PluginError",
        "Readiness",
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
        "hookimpl",
        "is_secret_key",
        "main",
        "parse_document",
        "parse_duration",
        "sources",
    }


def test_every_error_derives_from_confhub_error() -> None:
    """One exception tree."""
    for name in confhub.__all__:
        obj = getattr(confhub, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, confhub.ConfhubError), name
    assert issubclass(confhub.ConfigKeyError, KeyError)
    assert issubclass(confhub.HubStateError, RuntimeError)


def _hookspecs() -> dict[str, Any]:
    """The functions ``confhub.hookspecs`` marks as hook specifications (pluggy's marker)."""
    return {
        name: value
        for name, value in vars(hookspecs).items()
        if callable(value) and hasattr(value, "confhub_spec")
    }


def test_hookspecs_have_prefix_and_docstrings() -> None:
    """Every hookspec is named confhub_* and documents itself."""
    specs = _hookspecs()
    assert len(specs) >= 10
    for name, spec in specs.items():
        assert name.startswith("confhub_"), name
        assert spec.__doc__, name
        assert len(spec.__doc__) > 40, name


def test_hookspecs_are_pinned() -> None:
    """The whole hook contract: names, arguments and calling options. Changing it is
    deliberate: update this list and the changelog (a new argument is not seen by existing
    implementations; removing one breaks those that declare it)."""
    found = {
        name: (
            tuple(inspect.signature(spec).parameters),
            spec.confhub_spec["firstresult"],
            spec.confhub_spec["historic"],
        )
        for name, spec in _hookspecs().items()
    }
    assert found == {
        "confhub_configure": (("hub",), False, True),
        "confhub_unconfigure": (("hub",), False, False),
        "confhub_backend_schemes": ((), False, False),
        "confhub_make_backend": (("spec", "settings", "hub"), True, False),
        "confhub_load_layer": (("spec", "backend"), True, False),
        "confhub_load_cached": (("spec", "backend"), True, False),
        "confhub_layer_accepted": (("spec", "layer", "backend"), False, False),
        "confhub_source_failed": (("spec", "error", "fallback"), False, False),
        "confhub_make_registry": (("spec", "settings"), True, False),
        "confhub_register_converters": (("converter",), False, True),
        "confhub_validate_snapshot": (("snapshot", "previous"), False, False),
        "confhub_snapshot_published": (("change", "subscriber_seconds"), False, False),
        "confhub_demo": (("out", "workdir"), False, False),
    }


def test_kv_kit_surface_is_pinned() -> None:
    """confhub.kv is public for backend authors: its names change only deliberately."""
    from confhub import kv

    assert kv.__all__ == sorted(kv.__all__, key=lambda n: (not n.isupper(), n))
    assert set(kv.__all__) == {
        "CORE_OPTIONS",
        "DEFAULT_MAX_KEYS",
        "Backoff",
        "KeyMap",
        "ReportOnce",
        "check_options",
        "check_transaction",
        "check_write_shape",
        "commit_into_document",
        "decode_text",
        "encode_value",
        "leaf_parent_clash",
        "recovered",
        "too_many_keys",
        "write_into_document",
    }
    for name in kv.__all__:
        assert hasattr(kv, name), name


def test_make_backend_hookspec_offers_spec_settings_and_the_deprecated_hub() -> None:
    """confhub_make_backend passes spec and settings, and still hub for old plugins."""
    params = list(inspect.signature(hookspecs.confhub_make_backend).parameters)
    assert params == ["spec", "settings", "hub"]
    assert "deprecated" in (hookspecs.confhub_make_backend.__doc__ or "")


def test_sources_builders_surface_is_pinned() -> None:
    """confhub.sources builds specs in code: its names change only deliberately."""
    assert confhub.sources.__all__ == ["argv", "dotenv", "secrets"]
    for name in confhub.sources.__all__:
        assert isinstance(
            getattr(confhub.sources, name)(*(["x"] if name != "argv" else [])), confhub.SourceSpec
        ), name


def test_gunicorn_hooks_surface_is_pinned() -> None:
    """confhub.integrations.gunicorn: the hooks a gunicorn.conf.py names, and its timeout."""
    import confhub.integrations.gunicorn as hooks

    assert hooks.__all__ == ["RESUME_TIMEOUT", "post_fork", "worker_exit"]

"""The ``env`` backend: ``env:APP_`` maps ``APP_DB__PORT=5433`` to ``db.port = "5433"``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .._backend import Backend, BackendInfo, BackendSettings, hookimpl
from .._errors import SourceFormatError
from .._layer import Layer

if TYPE_CHECKING:
    from .._spec import SourceSpec


def env_key(name: str, prefix: str) -> str | None:
    """Map an env var name to a dotted key: strip ``prefix``, lower-case, ``__`` nests."""
    if not name.startswith(prefix) or len(name) == len(prefix):
        return None
    rest = name[len(prefix) :]
    key = ".".join(rest.lower().split("__"))
    # A dot in the name (``APP_A.``, ``APP_.A``) makes an empty segment as ``____`` does.
    if any(not p for p in key.split(".")):
        return None
    return key


def _has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (bytes that were not UTF-8)."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _printable(name: str) -> str:
    """``name`` with the bytes that were not UTF-8 shown as ``\\xNN``."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no byte escaped to
        return name.encode("utf-8", "backslashreplace").decode("ascii")


class EnvBackend(Backend):
    """Reads the environment once at load; values stay strings (binding converts them)."""

    def __init__(self, spec: SourceSpec, environ: Mapping[str, str] | None = None) -> None:
        self.prefix = spec.location
        self._environ = environ
        self._name = spec.display

    def load(self) -> Layer:
        environ = os.environ if self._environ is None else self._environ
        values: dict[str, str] = {}
        details: dict[str, str] = {}
        for name, value in environ.items():
            key = env_key(name, self.prefix)
            if key is None:
                continue
            if key in values:
                raise SourceFormatError(
                    f"{self._name}: {details[key]} and ${name} both map to {key!r}; unset one",
                    source=self._name,
                    key=key,
                )
            if _has_surrogate(name) or _has_surrogate(value):
                # os.environ keeps bytes that are not UTF-8 as lone surrogates
                # (surrogateescape); such text cannot be published, cached or encoded.
                raise SourceFormatError(
                    f"{self._name}: ${_printable(name)} "
                    "is not valid UTF-8 (in its name or value); fix or unset it",
                    source=self._name,
                    key=key,
                )
            values[key] = value
            details[key] = f"${name}"
        return Layer.from_flat(values, source=self._name, details=details)

    def close(self) -> None:
        pass


@hookimpl
def confhub_backend_schemes() -> list[BackendInfo]:
    return [BackendInfo("env", "environment variables: env:PREFIX_ (PREFIX_A__B -> a.b)")]


@hookimpl
def confhub_make_backend(spec: SourceSpec, settings: BackendSettings) -> EnvBackend | None:
    if spec.scheme != "env":
        return None
    return EnvBackend(spec)

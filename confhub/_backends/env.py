"""The ``env`` backend: ``env:APP_`` maps ``APP_DB__PORT=5433`` to ``db.port = "5433"``.

``?exclude=APP_ETCD_URL,APP_CACHE_*`` keeps variables out: names or :mod:`fnmatch` globs,
matched case-sensitively against the whole variable name. It is for the variables that wire
the app (where its store is, its cache directory) and share the configuration's prefix.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._backend import Backend, BackendInfo, BackendSettings, hookimpl
from .._errors import SourceFormatError, SpecError
from .._layer import Layer
from ..kv import check_options

_log = logging.getLogger("confhub.env")

#: The options the env backend reads (besides the core's).
ENV_OPTIONS = frozenset({"exclude"})

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


def _exclude_patterns(spec: SourceSpec) -> tuple[str, ...]:
    """The ``exclude`` option as a tuple of patterns: a comma-separated string (the query
    string form) or a sequence of strings (given in code). A pattern that no variable with
    the prefix can match is a :class:`SpecError`: it is a mistake, and ignoring it would
    let the very variable it was meant to hide into the configuration."""
    raw: Any = spec.option("exclude")
    if raw is None:
        return ()
    if isinstance(raw, str):
        patterns = [p.strip() for p in raw.split(",")]
    elif isinstance(raw, (list, tuple, set, frozenset)) and all(isinstance(p, str) for p in raw):
        patterns = [p.strip() for p in raw]
    else:
        raise SpecError(
            f"{spec.display}: exclude={raw!r} is not a list of variable names; "
            "write exclude=NAME,GLOB* (or a list of strings in code)",
            spec=spec.display,
        )
    prefix = spec.location
    for pattern in patterns:
        if not pattern:
            raise SpecError(
                f"{spec.display}: exclude={raw!r} holds an empty name; "
                "write exclude=NAME,GLOB* with no empty items",
                spec=spec.display,
            )
        literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
        if not (literal.startswith(prefix) or prefix.startswith(literal)):
            raise SpecError(
                f"{spec.display}: exclude pattern {pattern!r} can never match (the variables "
                f"this source reads start with {prefix}); write the whole variable name, "
                f"e.g. {prefix}{pattern}",
                spec=spec.display,
            )
    return tuple(patterns)


class EnvBackend(Backend):
    """Reads the environment once at load; values stay strings (binding converts them).

    Variables matching an ``exclude`` pattern are skipped before anything else looks at
    them: they are not keys, and cannot collide or fail the UTF-8 check.
    """

    #: The environment holds every program's variables: a key no bound class declares is
    #: not a typo here, so strict binding passes over keys only this source holds.
    strict_keys = False

    def __init__(self, spec: SourceSpec, environ: Mapping[str, str] | None = None) -> None:
        self.prefix = spec.location
        self._environ = environ
        self._name = spec.display
        self._exclude = _exclude_patterns(spec)

    def load(self) -> Layer:
        environ = os.environ if self._environ is None else self._environ
        values: dict[str, str] = {}
        details: dict[str, str] = {}
        for name, value in environ.items():
            key = env_key(name, self.prefix)
            if key is None:
                continue
            if self._exclude and any(fnmatch.fnmatchcase(name, p) for p in self._exclude):
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
    check_options(spec, ENV_OPTIONS, logger=_log)
    return EnvBackend(spec)

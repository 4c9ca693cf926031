"""One source definition for the app and the CLI: ``confhub.toml`` or ``[tool.confhub]``.

:func:`read_config` is the one reader of that file: ``Hub.from_config()`` builds an app's
hub from it and the ``confhub`` command reads its sources from it, so both read the same
sources with the same cache directory and timeouts. Which file:

1. ``path`` (``Hub.from_config(path)``, ``confhub -c FILE``);
2. else ``$CONFHUB_CONFIG``;
3. else ``confhub.toml`` in the current directory, then ``[tool.confhub]`` in
   ``./pyproject.toml`` (a pyproject without that table is skipped).

The keys (all optional but ``sources``)::

    sources = ["config.toml", "env:APP_", "etcd://127.0.0.1:2379/app/"]
    cache_dir = "/var/cache/myapp/confhub"     # default: $CONFHUB_CACHE_DIR, else ~/.cache/confhub
    connect_timeout = 2.0
    start_timeout = 10.0
    retry_initial = 0.5
    retry_max = 30.0

Relative paths (in ``sources`` and ``cache_dir``) are resolved against the current
directory, as in a ``Hub([...])`` written in code. Every way the file cannot be used is a
:class:`ConfigFileError` naming the file, the key and the fix; an unknown key is a warning
(a newer confhub may read it).
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import stat
import tomllib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from ._errors import ConfigFileError

log = logging.getLogger("confhub")

#: The environment variable naming the config file (used when no path is given).
CONFIG_ENV = "CONFHUB_CONFIG"
#: A config file larger than this is refused (it names a few sources, not data).
MAX_CONFIG_BYTES = 1 << 20
_TIMEOUTS = ("connect_timeout", "start_timeout", "retry_initial", "retry_max")
_CONFIG_KEYS = ("cache_dir", "sources", *_TIMEOUTS)
_SOURCES_EXAMPLE = 'sources = ["config.toml", "env:APP_"]'


def _read_only(options: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(options))


@attrs.frozen
class HubConfig:
    """What a config file says: the file read (``None`` when none was found), the sources,
    the hub's keyword arguments, and warnings (unknown keys) for the caller to show."""

    path: str | None
    sources: tuple[str, ...] = ()
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=_read_only)
    warnings: tuple[str, ...] = ()

    def hub_arguments(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments of ``Hub(...)``: the file's, then ``overrides`` (which
        may also replace ``sources``)."""
        return {"sources": list(self.sources), **self.options, **overrides}


def _kind(value: Any) -> str:
    """``value`` and its TOML type, for messages: ``5 (an integer)``."""
    kinds = [
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
    ]
    kind = next((name for t, name in kinds if isinstance(value, t)), type(value).__name__)
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"{shown} ({kind})"


def _error(message: str, path: str, key: str | None = None) -> ConfigFileError:
    return ConfigFileError(message, path=path, key=key)


def _read_toml(candidate: str) -> dict[str, Any]:
    """The TOML table in ``candidate``; every way it cannot be read is a
    :class:`ConfigFileError` naming the file and the fix."""
    try:
        info = os.stat(candidate)
    except OSError as exc:
        raise _error(
            f"cannot read config file {candidate}: {exc.strerror or exc}; "
            "fix the path or pass the sources with -s SPEC",
            candidate,
        ) from None
    if stat.S_ISDIR(info.st_mode):
        raise _error(
            f"config file {candidate} is a directory; name the file in it, "
            f"e.g. -c {os.path.join(candidate, 'confhub.toml')}",
            candidate,
        )
    if not stat.S_ISREG(info.st_mode):
        raise _error(
            f"config file {candidate} is not a regular file; name a confhub.toml or "
            "pyproject.toml file",
            candidate,
        )
    try:
        with open(candidate, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise _error(
            f"cannot read config file {candidate}: {exc.strerror or exc}; "
            "fix its permissions or pass the sources with -s SPEC",
            candidate,
        ) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise _error(
            f"config file {candidate} is larger than {MAX_CONFIG_BYTES} bytes; "
            "it should only name the sources (sources = [...])",
            candidate,
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise _error(
            f"{candidate}: not valid UTF-8 at byte {exc.start} (line {line}); "
            "save the file as UTF-8",
            candidate,
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _error(f"{candidate}: invalid TOML: {exc}; fix the file", candidate) from None


def _table(candidate: str, named: bool) -> tuple[dict[str, Any], str] | None:
    """The confhub table of ``candidate`` and how to name it in messages; ``None`` for a
    pyproject.toml without ``[tool.confhub]`` that was not named explicitly."""
    data = _read_toml(candidate)
    if os.path.basename(candidate) != "pyproject.toml":
        return data, candidate
    where = f"{candidate} [tool.confhub]"
    tool = data.get("tool", {})
    if not isinstance(tool, dict):
        raise _error(f"{candidate}: 'tool' must be a table, not {_kind(tool)}", candidate, "tool")
    if "confhub" not in tool:
        if named:
            raise _error(
                f"{candidate} has no [tool.confhub] table; add one with {_SOURCES_EXAMPLE}",
                candidate,
            )
        return None
    table = tool["confhub"]
    if not isinstance(table, dict):
        raise _error(
            f"{candidate}: [tool.confhub] must be a table, not {_kind(table)}; write "
            f"[tool.confhub] then {_SOURCES_EXAMPLE}",
            candidate,
            "tool.confhub",
        )
    return table, where


def _check(data: dict[str, Any], where: str, candidate: str) -> HubConfig:
    """Every value checked here, once, before a hub sees it: a wrong type names the file,
    the key, what it holds and the form it should take."""
    warnings = []
    for key in sorted(set(data) - set(_CONFIG_KEYS)):
        close = difflib.get_close_matches(key, _CONFIG_KEYS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(_CONFIG_KEYS)
        warnings.append(f"{where}: ignoring unknown key {key!r}; {hint}")
    sources = data.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) and s for s in sources):
        bad = (
            sources
            if not isinstance(sources, list)
            else next(s for s in sources if not (isinstance(s, str) and s))
        )
        raise _error(
            f"{where}: 'sources' must be a list of spec strings, like {_SOURCES_EXAMPLE}; "
            f"it holds {_kind(bad)}",
            candidate,
            "sources",
        )
    options: dict[str, Any] = {}
    cache_dir = data.get("cache_dir")
    if cache_dir is not None:
        if not (isinstance(cache_dir, str) and cache_dir):
            raise _error(
                f"{where}: 'cache_dir' must be a directory path string, like "
                f'cache_dir = "/var/cache/myapp/confhub"; it holds {_kind(cache_dir)}',
                candidate,
                "cache_dir",
            )
        options["cache_dir"] = cache_dir
    for key in _TIMEOUTS:
        value = data.get(key)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise _error(
                f"{where}: {key!r} must be a number of seconds above 0, like {key} = 2.0; "
                f"it holds {_kind(value)}",
                candidate,
                key,
            )
        options[key] = float(value)
    return HubConfig(candidate, tuple(sources), options, tuple(warnings))


def read_config(path: str | os.PathLike[str] | None = None) -> HubConfig:
    """Read the config file (see the module docstring for which one). With no file found,
    the result has ``path=None`` and no sources; a named file that cannot be used (missing,
    a directory, not TOML, a key of the wrong type) is a :class:`ConfigFileError`."""
    named = os.fspath(path) if path is not None else os.environ.get(CONFIG_ENV) or None
    if named == "":
        named = None
    candidates = [named] if named else ["confhub.toml", "pyproject.toml"]
    for candidate in candidates:
        if not named and not os.path.lexists(candidate):
            continue
        found = _table(candidate, named=bool(named))
        if found is None:
            continue
        data, where = found
        return _check(data, where, candidate)
    return HubConfig(None)


def hub_arguments(path: str | os.PathLike[str] | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The ``Hub(...)`` arguments of ``Hub.from_config(path, **overrides)``: the config
    file's, then ``overrides``. Unknown keys are logged as warnings; no file found (and no
    ``sources`` in ``overrides``) is a :class:`ConfigFileError` saying where it looked."""
    config = read_config(path)
    if config.path is None and "sources" not in overrides:
        raise ConfigFileError(
            f"no confhub.toml, and no [tool.confhub] in pyproject.toml, in {os.getcwd()}; "
            f"write confhub.toml with {_SOURCES_EXAMPLE}, set ${CONFIG_ENV}, or pass the path",
            path="confhub.toml",
        )
    for warning in config.warnings:
        log.warning("%s", warning)
    return config.hub_arguments(overrides)

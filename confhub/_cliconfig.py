"""The CLI's configuration file: ``confhub.toml``, or ``[tool.confhub]`` in ``pyproject.toml``.

Every way a file cannot be used (missing, a directory, not UTF-8, not TOML, a key of the wrong
type) is a :class:`UsageError` naming the file, the key and the fix: the CLI exits 2 for it,
never 1, which means "key missing".
"""

from __future__ import annotations

import difflib
import os
import stat
import sys
import tomllib
from typing import Any


class UsageError(Exception):
    """A bad argument or configuration file: the CLI prints it as one line and exits 2."""


_CONFIG_KEYS = ("cache_dir", "sources")
#: A config file larger than this is refused (it names a few sources, not data).
_MAX_CONFIG_BYTES = 1 << 20
_SOURCES_EXAMPLE = 'sources = ["config.toml", "env:APP_"]'


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


def _read_config_file(candidate: str) -> dict[str, Any]:
    """The TOML table in ``candidate``; every way it cannot be read is a :class:`UsageError`
    naming the file and the fix (the CLI must not exit 1, which means "key missing")."""
    try:
        info = os.stat(candidate)
    except OSError as exc:
        raise UsageError(
            f"cannot read config file {candidate}: {exc.strerror or exc}; "
            "fix the path or pass the sources with -s SPEC"
        ) from None
    if stat.S_ISDIR(info.st_mode):
        raise UsageError(
            f"config file {candidate} is a directory; name the file in it, "
            f"e.g. -c {os.path.join(candidate, 'confhub.toml')}"
        )
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(
            f"config file {candidate} is not a regular file; name a confhub.toml or "
            "pyproject.toml file"
        )
    try:
        with open(candidate, "rb") as fh:
            raw = fh.read(_MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise UsageError(
            f"cannot read config file {candidate}: {exc.strerror or exc}; "
            "fix its permissions or pass the sources with -s SPEC"
        ) from None
    if len(raw) > _MAX_CONFIG_BYTES:
        raise UsageError(
            f"config file {candidate} is larger than {_MAX_CONFIG_BYTES} bytes; "
            "it should only name the sources (sources = [...])"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UsageError(
            f"{candidate}: not valid UTF-8 at byte {exc.start} (line {line}); "
            "save the file as UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{candidate}: invalid TOML: {exc}; fix the file") from None


def config_sources(path: str | None) -> tuple[list[str], str | None]:
    """Read ``sources`` and ``cache_dir`` from confhub.toml or pyproject's [tool.confhub].

    Every value is checked here, once, before a hub sees it: a wrong type is a usage error
    naming the file, the key, what it holds and the form it should take. An unknown key is a
    warning (a newer confhub may read it), as unknown spec options are.
    """
    candidates = [path] if path else ["confhub.toml", "pyproject.toml"]
    for candidate in candidates:
        if not path and not os.path.lexists(candidate):
            continue
        data = _read_config_file(candidate)
        where = candidate
        if os.path.basename(candidate) == "pyproject.toml":
            where = f"{candidate} [tool.confhub]"
            tool = data.get("tool", {})
            if not isinstance(tool, dict):
                raise UsageError(f"{candidate}: 'tool' must be a table, not {_kind(tool)}")
            if "confhub" not in tool:
                if path:
                    raise UsageError(
                        f"{candidate} has no [tool.confhub] table; add one with {_SOURCES_EXAMPLE}"
                    )
                continue
            data = tool["confhub"]
            if not isinstance(data, dict):
                raise UsageError(
                    f"{candidate}: [tool.confhub] must be a table, not {_kind(data)}; write "
                    f"[tool.confhub] then {_SOURCES_EXAMPLE}"
                )
        for key in sorted(set(data) - set(_CONFIG_KEYS)):
            close = difflib.get_close_matches(key, _CONFIG_KEYS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(_CONFIG_KEYS)
            sys.stderr.write(f"confhub: warning: {where}: ignoring unknown key {key!r}; {hint}\n")
        sources = data.get("sources", [])
        if not isinstance(sources, list) or not all(isinstance(s, str) and s for s in sources):
            bad = (
                sources
                if not isinstance(sources, list)
                else next(s for s in sources if not (isinstance(s, str) and s))
            )
            raise UsageError(
                f"{where}: 'sources' must be a list of spec strings, like {_SOURCES_EXAMPLE}; "
                f"it holds {_kind(bad)}"
            )
        cache_dir = data.get("cache_dir")
        if cache_dir is not None and not (isinstance(cache_dir, str) and cache_dir):
            raise UsageError(
                f"{where}: 'cache_dir' must be a directory path string, like "
                f'cache_dir = "/var/cache/myapp/confhub"; it holds {_kind(cache_dir)}'
            )
        return sources, cache_dir
    return [], None

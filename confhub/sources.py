"""Source specs built in code, for what a spec string cannot carry (an explicit argument
list) or to spell options as keyword arguments.

Each function returns a :class:`confhub.SourceSpec` to put in a hub's source list::

    hub = confhub.Hub([
        "config.toml",
        confhub.sources.dotenv(".env", prefix="APP_"),
        confhub.sources.secrets("/run/secrets"),
        confhub.sources.argv(["--db.port=6000"]),      # or argv() for sys.argv
    ])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._errors import SpecError
from ._spec import SourceSpec

__all__ = ["argv", "dotenv", "secrets"]


def argv(
    args: Sequence[str] | None = None, *, prefix: str = "", name: str | None = None
) -> SourceSpec:
    """Command-line options as a source (``--db.port=5`` -> ``db.port``): ``args``, or
    ``sys.argv[1:]`` read at load when ``None``. ``prefix`` keeps only ``--PREFIX...``
    options and strips it. See the guide, "Command-line arguments"."""
    if args is not None and (
        isinstance(args, (str, bytes)) or not all(isinstance(a, str) for a in args)
    ):
        raise SpecError(
            f"confhub.sources.argv() takes a list of strings, not {args!r}; "
            "write argv(['--db.port=5'])",
            spec="argv:" + prefix,
        )
    return SourceSpec(
        scheme="argv", location=prefix, name=name, data=None if args is None else tuple(args)
    )


def dotenv(path: str, *, prefix: str = "", **options: Any) -> SourceSpec:
    """A ``.env`` file (``dotenv:PATH?prefix=...``); ``options`` are the spec's options
    (``optional=True``, ``interpolate=False`` ...)."""
    return SourceSpec(scheme="dotenv", location=str(path), options={"prefix": prefix, **options})


def secrets(directory: str, *, prefix: str = "", **options: Any) -> SourceSpec:
    """A directory of one file per secret (``secrets:DIR``); ``options`` are the spec's
    options (``optional=True``, ``max_bytes=...`` ...)."""
    return SourceSpec(
        scheme="secrets", location=str(directory), options={"prefix": prefix, **options}
    )

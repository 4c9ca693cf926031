"""The ``argv`` backend: ``--db.port=5`` on the command line is ``db.port = "5"``.

Spec: ``argv:`` (every ``--`` option of ``sys.argv[1:]``) or ``argv:PREFIX`` (only options
starting with ``--PREFIX``, which is stripped: ``argv:set.`` reads ``--set.db.port=5``). To
read an explicit list instead of ``sys.argv``, use ``confhub.sources.argv([...])``.

The mapping, for each argument in order:

- ``--NAME=VALUE`` and ``--NAME VALUE``: the key is NAME, lower-cased, with ``-`` read as
  ``_`` and ``.`` or ``__`` nesting: ``--db.port=5``, ``--db__port 5`` -> ``db.port``;
  ``--pool-size 3`` -> ``pool_size``. The next argument is the value unless it starts with
  ``--``.
- ``--NAME`` with no value (the last argument, or followed by another ``--`` option):
  ``"true"``; ``--no-NAME`` with no value: NAME is ``"false"``.
- Values are strings, as the environment's are: binding converts them (``"5"`` to an
  ``int`` field, ``"true"`` to a ``bool``).
- The same key twice: the last one wins. Arguments not starting with ``--`` (positionals,
  ``-v``) are skipped, and so is everything after a bare ``--``.

Read at every load from the list given or ``sys.argv``; not watched (a process's arguments
do not change). ``explain`` shows the argument: ``argv[2] --db.port``.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._backend import Backend, BackendInfo, BackendSettings, hookimpl
from .._errors import SourceFormatError, SpecError
from .._layer import Layer
from ..kv import check_options

if TYPE_CHECKING:
    from .._spec import SourceSpec

_log = logging.getLogger("confhub.argv")
_SEGMENT = re.compile(r"[a-z0-9_]+")


def argv_key(name: str) -> str | None:
    """The dotted key of option ``NAME`` (without its ``--``), or None when it is not one
    (an empty segment, characters other than letters, digits, ``_`` and ``-``)."""
    key = ".".join(name.lower().replace("-", "_").replace("__", ".").split("."))
    if not all(segment and _SEGMENT.fullmatch(segment) for segment in key.split(".")):
        return None
    return key


def parse_argv(
    args: Sequence[str], prefix: str = "", *, source: str
) -> tuple[dict[str, str], dict[str, str]]:
    """``(values, details)`` of the ``--`` options in ``args`` (see the module docstring).
    An option under ``prefix`` whose name is not a key is a :class:`SourceFormatError`."""
    values: dict[str, str] = {}
    details: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        index = i
        i += 1
        if arg == "--":
            break
        if not arg.startswith("--" + prefix) or arg == "--" + prefix:
            continue
        name, eq, value = arg[2 + len(prefix) :].partition("=")
        if not eq:
            if i < len(args) and not args[i].startswith("--"):
                value = args[i]
                i += 1
            elif name.startswith("no-") and len(name) > 3:
                name, value = name[3:], "false"
            else:
                value = "true"
        key = argv_key(name)
        if key is None:
            raise SourceFormatError(
                f"{source}: argv[{index}] {arg.partition('=')[0]!r} is not a configuration "
                "key; write --section.key=value with letters, digits, '_' and '-'",
                source=source,
            )
        values[key] = value
        details[key] = f"argv[{index}] --{prefix}{name}"
    return values, details


class ArgvBackend(Backend):
    """Command-line options as configuration; read at load, never watched."""

    def __init__(self, spec: SourceSpec) -> None:
        self.prefix = spec.location
        self.name = spec.display
        data: Any = spec.data
        if data is not None and (
            isinstance(data, (str, bytes)) or not all(isinstance(a, str) for a in data)
        ):
            raise SpecError(
                f"{self.name}: the arguments must be a list of strings, not {data!r}",
                spec=self.name,
            )
        self._args: tuple[str, ...] | None = None if data is None else tuple(data)

    def load(self) -> Layer:
        args = sys.argv[1:] if self._args is None else self._args
        values, details = parse_argv(args, self.prefix, source=self.name)
        return Layer.from_flat(values, source=self.name, details=details)

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<ArgvBackend prefix={self.prefix!r}>"


@hookimpl
def confhub_backend_schemes() -> list[BackendInfo]:
    return [BackendInfo("argv", "command-line options: argv:PREFIX (--db.port=5 -> db.port)")]


@hookimpl
def confhub_make_backend(spec: SourceSpec, settings: BackendSettings) -> ArgvBackend | None:
    if spec.scheme != "argv":
        return None
    check_options(spec, frozenset(), logger=_log)
    return ArgvBackend(spec)

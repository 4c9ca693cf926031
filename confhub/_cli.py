"""The ``confhub`` command line: get, dump, explain, watch, set, backends, health, demo.

JSON output (``--json``) is the stable contract for scripts. Exit codes:
0 ok, 1 key missing, 2 usage error (bad arguments, a bad config file), 3 a required source
unavailable with no fallback, 4 broken content or a failed validation/write, 5 an internal
error (a bug). Exit 1 means only "the key is missing": ``confhub get k || fallback`` relies
on it, so no other failure may exit 1 (Python's own exit code for an uncaught exception).
"""

from __future__ import annotations

import argparse
import difflib
import io
import json
import logging
import math
import os
import stat
import sys
import threading
import tomllib
import traceback
from collections.abc import Sequence
from typing import Any, TextIO

from ._errors import (
    ConfhubError,
    ConfigKeyError,
    SourceError,
    SourcePermissionError,
    SourceUnavailableError,
    SpecError,
    StartupError,
    WriteError,
    without_source,
)
from ._health import SourceHealth
from ._hub import Hub
from ._merge import MISSING
from ._redact import REDACTED, is_secret_key, redact_value
from ._snapshot import Change, ErrorEvent
from ._spec import SourceSpec

EXIT_OK, EXIT_MISSING, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_FAILED = 0, 1, 2, 3, 4
#: A bug (an exception that is not a ConfhubError): never 1, which scripts read as "key missing".
EXIT_INTERNAL = 5


class _UsageError(Exception):
    pass


def _count(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give N >= 0") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative; give N >= 0 (0: never stop)")
    return value


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds >= 0 (0: never stop)")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="confhub",
        description="Read, explain and watch layered configuration.",
        epilog="Sources come from -s (repeatable, lowest precedence first), or from "
        "confhub.toml / [tool.confhub] in pyproject.toml (sources = [...]).",
    )
    parser.add_argument(
        "-s",
        "--source",
        action="append",
        default=[],
        metavar="SPEC",
        help="a source spec, e.g. file:config.toml, env:APP_, etcd://h:2379/app/",
    )
    parser.add_argument(
        "-c", "--config", metavar="FILE", help="a confhub.toml or pyproject.toml naming the sources"
    )
    parser.add_argument("--cache-dir", metavar="DIR", help="where remote sources are cached")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("get", help="print the effective value of KEY")
    p.add_argument("key")
    p.add_argument("--json", action="store_true", help="print the value as JSON")

    p = sub.add_parser("dump", help="print the merged configuration")
    p.add_argument("--format", choices=("json", "toml", "yaml"), default="json")
    p.add_argument("--reveal", action="store_true", help="show values of secret-looking keys")

    p = sub.add_parser("explain", help="where values come from")
    p.add_argument("key", nargs="?")
    p.add_argument("--json", action="store_true")
    p.add_argument("--reveal", action="store_true", help="show values of secret-looking keys")

    p = sub.add_parser("watch", help="print one line per effective change")
    p.add_argument("--prefix", default="")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--count", type=_count, default=0, help="stop after N changes (0: never)")
    p.add_argument("--timeout", type=_seconds, default=0.0, help="stop after SECONDS (0: never)")

    p = sub.add_parser("set", help="write KEY=VALUE to a writable source (compare-and-swap)")
    p.add_argument("spec")
    p.add_argument("key")
    p.add_argument("value")
    p.add_argument(
        "--if-revision",
        type=int,
        default=None,
        metavar="N",
        help="write only if the key's revision is N (0: only if absent)",
    )

    p = sub.add_parser("backends", help="list installed backend plugins")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("health", help="per-source state")
    p.add_argument("--json", action="store_true")

    sub.add_parser("demo", help="a guided run: layers, a live change, explain, failures")
    return parser


#: The keys a confhub.toml (or ``[tool.confhub]``) may hold.
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
    """The TOML table in ``candidate``; every way it cannot be read is a :class:`_UsageError`
    naming the file and the fix (the CLI must not exit 1, which means "key missing")."""
    try:
        info = os.stat(candidate)
    except OSError as exc:
        raise _UsageError(
            f"cannot read config file {candidate}: {exc.strerror or exc}; "
            "fix the path or pass the sources with -s SPEC"
        ) from None
    if stat.S_ISDIR(info.st_mode):
        raise _UsageError(
            f"config file {candidate} is a directory; name the file in it, "
            f"e.g. -c {os.path.join(candidate, 'confhub.toml')}"
        )
    if not stat.S_ISREG(info.st_mode):
        raise _UsageError(
            f"config file {candidate} is not a regular file; name a confhub.toml or "
            "pyproject.toml file"
        )
    try:
        with open(candidate, "rb") as fh:
            raw = fh.read(_MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise _UsageError(
            f"cannot read config file {candidate}: {exc.strerror or exc}; "
            "fix its permissions or pass the sources with -s SPEC"
        ) from None
    if len(raw) > _MAX_CONFIG_BYTES:
        raise _UsageError(
            f"config file {candidate} is larger than {_MAX_CONFIG_BYTES} bytes; "
            "it should only name the sources (sources = [...])"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise _UsageError(
            f"{candidate}: not valid UTF-8 at byte {exc.start} (line {line}); "
            "save the file as UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _UsageError(f"{candidate}: invalid TOML: {exc}; fix the file") from None


def _config_sources(path: str | None) -> tuple[list[str], str | None]:
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
                raise _UsageError(f"{candidate}: 'tool' must be a table, not {_kind(tool)}")
            if "confhub" not in tool:
                if path:
                    raise _UsageError(
                        f"{candidate} has no [tool.confhub] table; add one with {_SOURCES_EXAMPLE}"
                    )
                continue
            data = tool["confhub"]
            if not isinstance(data, dict):
                raise _UsageError(
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
            raise _UsageError(
                f"{where}: 'sources' must be a list of spec strings, like {_SOURCES_EXAMPLE}; "
                f"it holds {_kind(bad)}"
            )
        cache_dir = data.get("cache_dir")
        if cache_dir is not None and not (isinstance(cache_dir, str) and cache_dir):
            raise _UsageError(
                f"{where}: 'cache_dir' must be a directory path string, like "
                f'cache_dir = "/var/cache/myapp/confhub"; it holds {_kind(cache_dir)}'
            )
        return sources, cache_dir
    return [], None


def _make_hub(args: argparse.Namespace) -> Hub:
    sources, cache_dir = list(args.source), args.cache_dir
    if cache_dir == "":
        raise _UsageError(
            "--cache-dir was given an empty path (an unset variable?); name a directory, "
            "or leave the option out to use $CONFHUB_CACHE_DIR or the default"
        )
    if not sources:
        sources, conf_cache = _config_sources(args.config)
        cache_dir = cache_dir or conf_cache
    if not sources:
        raise _UsageError(
            "no sources: pass -s SPEC (repeatable) or write confhub.toml with sources = [...]"
        )
    kwargs: dict[str, Any] = {}
    if cache_dir:
        kwargs["cache_dir"] = cache_dir
    return Hub(sources, **kwargs)


def _jsonable(value: Any) -> Any:
    if value is MISSING:
        return None
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "items"):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _redact_tree(tree: dict[str, Any]) -> dict[str, Any]:
    redacted: dict[str, Any] = redact_value("", tree)
    return redacted


def _nulls(value: Any, path: str = "") -> list[str]:
    """The paths (``a.b``, ``a.list[2]``) of the nulls in ``value``: TOML cannot write them."""
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [
            n for k, v in sorted(value.items()) for n in _nulls(v, f"{path}.{k}" if path else k)
        ]
    if isinstance(value, (list, tuple)):
        return [n for i, v in enumerate(value) for n in _nulls(v, f"{path}[{i}]")]
    return []


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in items) + "}"
    return json.dumps(str(value), ensure_ascii=False)


def _toml_key(key: str) -> str:
    if key and all(c.isalnum() or c in "-_" for c in key):
        return key
    return json.dumps(key, ensure_ascii=False)


def to_toml(tree: dict[str, Any], out: TextIO, _path: tuple[str, ...] = ()) -> None:
    """Write a nested dict as TOML (scalars first, then one table per sub-mapping), keys
    sorted like the JSON and YAML dumps."""
    scalars = {k: v for k, v in sorted(tree.items()) if not isinstance(v, dict)}
    tables = {k: v for k, v in sorted(tree.items()) if isinstance(v, dict)}
    if _path and scalars:
        out.write(f"\n[{'.'.join(_toml_key(p) for p in _path)}]\n")
    for k, v in scalars.items():
        out.write(f"{_toml_key(k)} = {_toml_value(v)}\n")
    for k, v in tables.items():
        to_toml(v, out, (*_path, k))


def _cmd_get(hub: Hub, args: argparse.Namespace, out: TextIO) -> int:
    value = hub.get(args.key)
    if args.json or hasattr(value, "items"):
        out.write(json.dumps(_jsonable(value), ensure_ascii=False, sort_keys=True) + "\n")
    else:
        out.write(f"{value}\n")
    return EXIT_OK


def _cmd_dump(hub: Hub, args: argparse.Namespace, out: TextIO) -> int:
    tree = hub.snapshot().to_dict()
    if not args.reveal:
        tree = _redact_tree(tree)
    if args.format == "json":
        out.write(json.dumps(_jsonable(tree), indent=2, ensure_ascii=False, sort_keys=True) + "\n")
    elif args.format == "toml":
        nulls = _nulls(tree)
        if nulls:
            shown = ", ".join(repr(n) for n in nulls[:5]) + (" ..." if len(nulls) > 5 else "")
            raise _UsageError(
                f"--format toml cannot write null (TOML has no null), held by {shown}; "
                "use --format json or --format yaml, or remove the nulls from the source"
            )
        buffer = io.StringIO()
        to_toml(tree, buffer)
        out.write(buffer.getvalue())
    else:
        try:
            import yaml
        except ImportError:
            raise _UsageError("--format yaml needs PyYAML: pip install 'confhub[yaml]'") from None
        out.write(yaml.safe_dump(_jsonable(tree), sort_keys=True, allow_unicode=True))
    return EXIT_OK


def _cmd_explain(hub: Hub, args: argparse.Namespace, out: TextIO) -> int:
    items = (
        [hub.explain(args.key, reveal=args.reveal)]
        if args.key
        else hub.explain_all(reveal=args.reveal)
    )
    if args.json:
        payload: Any = items[0].to_dict() if args.key else [e.to_dict() for e in items]
        out.write(json.dumps(payload, ensure_ascii=False, sort_keys=True) + "\n")
        return EXIT_OK
    for e in items:
        flags = f" [{e.state}]" if e.stale else ""
        rev = f" revision {e.revision}" if e.revision is not None else ""
        out.write(f"{e.key} = {e.value!r}\n    from {e.source}{rev}{flags}\n")
        if e.detail:
            out.write(f"    at {e.detail}\n")
        for o in e.overridden:
            out.write(
                f"    overrides {o.value!r} from {o.source}"
                + (f" ({o.detail})" if o.detail else "")
                + "\n"
            )
    return EXIT_OK


def _change_lines(change: Change, as_json: bool) -> list[str]:
    lines = []
    for c in change.changes:
        if as_json:
            lines.append(
                json.dumps(
                    {
                        "generation": change.generation,
                        "key": c.key,
                        "old": _jsonable(c.old if c.old is MISSING else redact_value(c.key, c.old)),
                        "new": _jsonable(c.new if c.new is MISSING else redact_value(c.key, c.new)),
                        "source": change.source,
                    },
                    ensure_ascii=False,
                    sort_keys=True,
                )
            )
        else:
            old = (
                "<absent>"
                if c.old is MISSING
                else (REDACTED if is_secret_key(c.key) else repr(redact_value(c.key, c.old)))
            )
            new = (
                "<absent>"
                if c.new is MISSING
                else (REDACTED if is_secret_key(c.key) else repr(redact_value(c.key, c.new)))
            )
            lines.append(f"[{change.generation}] {c.key}: {old} -> {new}  ({change.source})")
    return lines


class _HubStateLines(logging.Filter):
    """Drops the hub's own source-state lines (``X: ...; serving the last good
    configuration``, ``X is live again``) while ``watch`` prints them from the hub's events.

    A filter on the ``confhub`` logger sees only records logged on it, not its children's
    (plugins log on ``confhub.etcd`` ...): those, and the hub's exceptions (a failing plugin
    or subscriber, logged with a traceback), still reach stderr.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is not None


class _WatchPrinter:
    """Prints ``watch``'s stderr lines from the hub's events: per source, one line when it
    becomes unavailable or an update is rejected, and one when it is back.

    The hub reports an outage once (however its retries' messages vary) and sends a
    :class:`confhub.SourceHealth` on every state change; this turns them into lines, so
    one outage is exactly two lines, and nothing is said twice by the log.
    """

    def __init__(self, err: TextIO) -> None:
        self._err = err
        self._failing: set[str] = set()

    def _line(self, text: str) -> None:
        self._err.write(f"confhub: {text}\n")
        self._err.flush()

    def on_error(self, event: ErrorEvent) -> None:
        message = without_source(event.source, event.error)
        if isinstance(event.error, (SourceUnavailableError, SourcePermissionError)):
            self._line(
                f"{event.source} is unavailable: {message}; serving the last good configuration"
            )
        else:
            self._line(
                f"{event.source}: update rejected, keeping the last good configuration: {message}"
            )
        self._failing.add(event.source)

    def on_state(self, health: SourceHealth) -> None:
        well = health.state in ("live", "fallback") or (
            health.state == "absent" and not health.failed
        )
        if not well or health.source not in self._failing:
            return
        self._failing.discard(health.source)
        if health.state == "fallback":
            self._line(f"{health.source} is back: serving the alternate {health.active}")
        else:
            self._line(f"{health.source} is back: {health.state}")


def _cmd_watch(hub: Hub, args: argparse.Namespace, out: TextIO) -> int:
    done = threading.Event()
    seen = 0

    def on_change(change: Change) -> None:
        nonlocal seen
        for line in _change_lines(change, args.json):
            out.write(line + "\n")
        out.flush()
        seen += 1
        if args.count and seen >= args.count:
            done.set()

    printer = _WatchPrinter(sys.stderr)
    quiet = _HubStateLines()
    logger = logging.getLogger("confhub")
    logger.addFilter(quiet)
    try:
        hub.subscribe(
            on_change, prefix=args.prefix, on_error=printer.on_error, on_state=printer.on_state
        )
        if not args.json:
            sys.stderr.write(f"watching {', '.join(hub.sources)} (Ctrl-C to stop)\n")
        try:
            done.wait(args.timeout or None)
        except KeyboardInterrupt:
            pass
    finally:
        logger.removeFilter(quiet)
    return EXIT_OK


def _cmd_set(args: argparse.Namespace, out: TextIO) -> int:
    spec = SourceSpec.parse(args.spec)
    hub = Hub([spec])
    backend = hub.make_backend(spec)
    write = getattr(backend, "write", None)
    try:
        if write is None:
            raise WriteError(
                f"{spec.display} is read-only (its backend has no write); "
                "write to an etcd or Consul source",
                source=spec.display,
                key=args.key,
            )
        revision = write(args.key, args.value, args.if_revision)
    finally:
        backend.close()
    out.write(f"{args.key} written to {spec.display} at revision {revision}\n")
    return EXIT_OK


def _cmd_backends(args: argparse.Namespace, out: TextIO) -> int:
    hub = Hub([])
    rows = hub.backends()
    if args.json:
        out.write(json.dumps(rows, sort_keys=True) + "\n")
        return EXIT_OK
    for r in rows:
        flags = ",".join(
            f for f in ("watch" if r["watchable"] else "", "write" if r["writable"] else "") if f
        )
        out.write(
            f"{r['scheme']:<10} {r['distribution']} {r['version']}".rstrip()
            + (f"  [{flags}]" if flags else "")
            + f"  {r['description']}\n"
        )
    return EXIT_OK


def _cmd_health(hub: Hub, args: argparse.Namespace, out: TextIO) -> int:
    health = hub.health()
    if args.json:
        out.write(json.dumps(health.to_dict(), sort_keys=True) + "\n")
        return EXIT_OK
    out.write(("DEGRADED" if health.degraded else "OK") + f" (generation {health.generation})\n")
    for s in health.sources:
        age = s.age
        extra = f" revision={s.revision}" if s.revision is not None else ""
        extra += f" age={age:.1f}s" if age is not None else ""
        extra += f" failed: {s.last_error}" if s.failed else ""
        out.write(f"  {s.state:<8} {s.source}{extra}\n")
    return EXIT_OK


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the CLI; returns the exit code."""
    out = out or sys.stdout
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        if args.command == "demo":
            from ._demo import run_demo

            return run_demo(out)
        if args.command == "backends":
            return _cmd_backends(args, out)
        if args.command == "set":
            return _cmd_set(args, out)
        hub = _make_hub(args)
        with hub:
            command = {
                "get": _cmd_get,
                "dump": _cmd_dump,
                "explain": _cmd_explain,
                "watch": _cmd_watch,
                "health": _cmd_health,
            }[args.command]
            return command(hub, args, out)
    except _UsageError as exc:
        sys.stderr.write(f"confhub: {exc}\n")
        return EXIT_USAGE
    except ConfigKeyError as exc:
        sys.stderr.write(f"confhub: {exc}\n")
        return EXIT_MISSING
    except SpecError as exc:
        sys.stderr.write(f"confhub: {exc}\n")
        return EXIT_USAGE
    except StartupError as exc:
        sys.stderr.write(f"confhub: {exc}\n")
        return EXIT_UNAVAILABLE
    except (SourceError, WriteError, ConfhubError) as exc:
        sys.stderr.write(f"confhub: {exc}\n")
        return EXIT_FAILED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - a bug must not exit 1 ("key missing")
        traceback.print_exc(file=sys.stderr)
        sys.stderr.write(
            f"confhub: internal error: {type(exc).__name__}: {exc}; this is a bug in confhub "
            "or a plugin: please report it with the traceback above\n"
        )
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

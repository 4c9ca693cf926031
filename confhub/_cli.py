"""The ``confhub`` command line: get, dump, explain, watch, set, delete, backends, health, demo.

JSON output (``--json``) is the stable contract for scripts. Exit codes:
0 ok, 1 key missing, 2 usage error (bad arguments, a bad config file), 3 a required source
unavailable with no fallback, 4 broken content or a failed validation/write, 5 an internal
error (a bug). Exit 1 means only "the key is missing": ``confhub get k || fallback`` relies
on it, so no other failure may exit 1 (Python's own exit code for an uncaught exception).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import sys
import threading
import traceback
from collections.abc import Collection, Sequence
from typing import Any, TextIO

import attrs

from ._cliconfig import UsageError
from ._cliformat import jsonable, null_paths, redact_tree, to_toml
from ._cliregistry import COMMANDS as REGISTRY_COMMANDS
from ._cliregistry import add_registry_commands, run_registry_command
from ._cliwrite import WRITE_COMMANDS, add_write_commands, run_write_command
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
from ._fromconfig import read_config
from ._health import Health, SourceHealth
from ._hub import Hub
from ._layer import secret_keys
from ._merge import MISSING
from ._redact import REDACTED, is_secret_key, redact_value
from ._snapshot import Change, ErrorEvent

EXIT_OK, EXIT_MISSING, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_FAILED = 0, 1, 2, 3, 4
#: A bug (an exception that is not a ConfhubError): never 1, which scripts read as "key missing".
EXIT_INTERNAL = 5


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

    add_write_commands(sub)

    p = sub.add_parser("backends", help="list installed backend plugins")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("health", help="per-source state")
    p.add_argument("--json", action="store_true")

    sub.add_parser("demo", help="a guided run: layers, a live change, explain, failures")
    add_registry_commands(sub)  # services, register, lock (confhub._cliregistry)
    return parser


def _make_hub(args: argparse.Namespace) -> Hub:
    """The hub of a command: ``-s`` sources, else the config file's (the one reader
    ``Hub.from_config()`` uses, so the CLI sees what the app sees), with ``--cache-dir``
    winning over the file's ``cache_dir``. With no cache directory anywhere, the hub's
    default applies (one default: ``$CONFHUB_CACHE_DIR``, else the user cache directory)."""
    if args.cache_dir == "":
        raise UsageError(
            "--cache-dir was given an empty path (an unset variable?); name a directory, "
            "or leave the option out to use $CONFHUB_CACHE_DIR or the default"
        )
    kwargs: dict[str, Any] = {"sources": list(args.source)}
    if not args.source:
        config = read_config(args.config)
        for warning in config.warnings:
            sys.stderr.write(f"confhub: warning: {warning}\n")
        kwargs = config.hub_arguments({})
    if not kwargs["sources"]:
        raise UsageError(
            "no sources: pass -s SPEC (repeatable) or write confhub.toml with sources = [...]"
        )
    if args.cache_dir:
        kwargs["cache_dir"] = args.cache_dir
    return Hub(**kwargs)


def _cmd_get(hub: Hub, args: argparse.Namespace, out: TextIO) -> int:
    value = hub.get(args.key)
    if args.json or hasattr(value, "items"):
        out.write(json.dumps(jsonable(value), ensure_ascii=False, sort_keys=True) + "\n")
    else:
        out.write(f"{value}\n")
    return EXIT_OK


def _cmd_dump(hub: Hub, args: argparse.Namespace, out: TextIO) -> int:
    snap = hub.snapshot()
    tree = snap.to_dict()
    if not args.reveal:
        tree = redact_tree(tree, secret_keys(snap.layers))
    if args.format == "json":
        out.write(json.dumps(jsonable(tree), indent=2, ensure_ascii=False, sort_keys=True) + "\n")
    elif args.format == "toml":
        nulls = null_paths(tree)
        if nulls:
            shown = ", ".join(repr(n) for n in nulls[:5]) + (" ..." if len(nulls) > 5 else "")
            raise UsageError(
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
            raise UsageError("--format yaml needs PyYAML: pip install 'confhub[yaml]'") from None
        out.write(yaml.safe_dump(jsonable(tree), sort_keys=True, allow_unicode=True))
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


def _change_lines(
    change: Change, as_json: bool, secret: Collection[str] = frozenset()
) -> list[str]:
    lines = []
    for c in change.changes:
        if as_json:
            lines.append(
                json.dumps(
                    {
                        "generation": change.generation,
                        "key": c.key,
                        "old": jsonable(
                            c.old if c.old is MISSING else redact_value(c.key, c.old, secret)
                        ),
                        "new": jsonable(
                            c.new if c.new is MISSING else redact_value(c.key, c.new, secret)
                        ),
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
                else (REDACTED if _secret(c.key, secret) else repr(redact_value(c.key, c.old)))
            )
            new = (
                "<absent>"
                if c.new is MISSING
                else (REDACTED if _secret(c.key, secret) else repr(redact_value(c.key, c.new)))
            )
            lines.append(f"[{change.generation}] {c.key}: {old} -> {new}  ({change.source})")
    return lines


def _secret(key: str, secret: Collection[str]) -> bool:
    return is_secret_key(key) or key in secret


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
    secret = secret_keys(hub.snapshot().layers)

    def on_change(change: Change) -> None:
        nonlocal seen
        # A secret source's keys, as of now (a key removed from one stays secret too).
        nonlocal secret
        secret = secret | secret_keys(hub.snapshot().layers)
        for line in _change_lines(change, args.json, secret):
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


def _degraded_reason(health: Health) -> str | None:
    """Why ``health`` is degraded, in one line: each source that is not plainly live."""
    parts = [
        f"{h.source} is {h.state.value}"
        + (" (failed)" if h.failed and h.state != "pending" else "")
        for h in health.sources
        if h.state not in ("live", "absent") or h.failed
    ]
    return "; ".join(parts) or None


def _with_start_failure(health: Health, error: StartupError | SourceError) -> Health:
    """``health`` with the source that stopped the start marked failed (its slot never got
    as far as recording the error: the start gave up first)."""
    last = error.attempts[-1][1] if isinstance(error, StartupError) and error.attempts else error
    sources = tuple(
        attrs.evolve(h, last_error=str(last))
        if h.source == error.source and h.last_error is None
        else h
        for h in health.sources
    )
    return Health(sources, health.generation)


def _cmd_health(hub: Hub, args: argparse.Namespace, out: TextIO) -> int:
    """Start ``hub`` and report; a hub that cannot start is reported too (``DEGRADED``,
    ``started: false`` and the reason), with the exit code of its error (3 or 4)."""
    code, reason, failure = EXIT_OK, None, None
    try:
        hub.start()
    except (StartupError, SourceError) as exc:
        code = EXIT_UNAVAILABLE if isinstance(exc, StartupError) else EXIT_FAILED
        reason, failure = str(exc), exc
    try:
        health = hub.health()
        if failure is not None:
            health = _with_start_failure(health, failure)
        started = reason is None
        reason = reason or _degraded_reason(health)
        degraded = health.degraded or not started
        if args.json:
            payload = health.to_dict()
            payload.update(degraded=degraded, started=started, reason=reason)
            out.write(json.dumps(payload, sort_keys=True) + "\n")
            return code
        head = "DEGRADED" if degraded else "OK"
        head += f" (generation {health.generation})" if started else " (not started)"
        out.write(head + (f": {reason}" if reason else "") + "\n")
        for s in health.sources:
            age = s.age
            extra = f" revision={s.revision}" if s.revision is not None else ""
            extra += f" age={age:.1f}s" if age is not None else ""
            extra += f" failed: {s.last_error}" if s.failed else ""
            out.write(f"  {s.state:<8} {s.source}{extra}\n")
        return code
    finally:
        hub.close()


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
        if args.command in WRITE_COMMANDS:
            return run_write_command(args, out)
        if args.command in REGISTRY_COMMANDS:
            return run_registry_command(args, out)
        hub = _make_hub(args)
        if args.command == "health":
            return _cmd_health(hub, args, out)
        with hub:
            command = {
                "get": _cmd_get,
                "dump": _cmd_dump,
                "explain": _cmd_explain,
                "watch": _cmd_watch,
            }[args.command]
            return command(hub, args, out)
    except UsageError as exc:
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

"""The registry's commands: ``confhub services``, ``confhub register``, ``confhub lock``.

- ``services SPEC [SERVICE]`` lists the services, or one service's instances (``--json``);
- ``register SPEC SERVICE --address A --port P`` holds a TTL-bound presence until the process
  gets SIGTERM or SIGINT (then deregisters at once and exits 0), printing each state change;
- ``lock SPEC NAME -- COMMAND ...`` runs COMMAND while holding the lock (its fencing token in
  ``$CONFHUB_LOCK_TOKEN``) and exits with its code; a lock lost meanwhile terminates COMMAND.

Exit codes are the CLI's: 2 bad arguments, 3 the registry unreachable, 4 a lock not acquired
in time or lost.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any, TextIO

from ._errors import (
    LockLostError,
    LockTimeoutError,
    RegistryInputError,
    SourceUnavailableError,
    SpecError,
)
from ._registration import RegistrationState
from ._registry import DEFAULT_TTL, Registry

# The CLI's exit codes (confhub._cli documents them; this module sits below it).
_OK, _USAGE, _UNAVAILABLE, _FAILED = 0, 2, 3, 4

COMMANDS = frozenset({"services", "register", "lock"})


def add_registry_commands(sub: Any) -> None:
    """Add the registry's subcommands to the CLI's subparsers."""
    p = sub.add_parser("services", help="list a registry's services, or one service's instances")
    p.add_argument("spec", help="etcd://host:2379/prefix/, consul://host:8500/ or memory:")
    p.add_argument("service", nargs="?")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("register", help="hold a TTL-bound registration until SIGTERM/SIGINT")
    p.add_argument("spec")
    p.add_argument("service")
    p.add_argument("--address", required=True, help="what clients connect to")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ttl", type=float, default=DEFAULT_TTL, help="seconds (default 10)")
    p.add_argument("--id", dest="instance_id", default=None, help="instance id (generated)")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")

    p = sub.add_parser("lock", help="run COMMAND while holding lock NAME; exits with its code")
    p.add_argument("spec")
    p.add_argument("name")
    p.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="COMMAND", help="-- COMMAND [ARGS...]"
    )
    p.add_argument("--ttl", type=float, default=DEFAULT_TTL)
    p.add_argument("--timeout", type=float, default=None, help="give up after SECONDS (exit 4)")
    p.add_argument("--identity", default=None, help="who holds it (default host:pid)")


def run_registry_command(args: argparse.Namespace, out: TextIO) -> int:
    """Run one of :data:`COMMANDS`; returns the exit code."""
    try:
        with Registry(args.spec) as registry:
            if args.command == "services":
                return _services(registry, args, out)
            if args.command == "register":
                return _register(registry, args, out)
            return _lock(registry, args, out)
    except (RegistryInputError, SpecError) as exc:
        sys.stderr.write(f"confhub: {exc}\n")
        return _USAGE
    except SourceUnavailableError as exc:
        sys.stderr.write(f"confhub: {exc}\n")
        return _UNAVAILABLE
    except (LockTimeoutError, LockLostError) as exc:
        sys.stderr.write(f"confhub: {exc}\n")
        return _FAILED


def _services(registry: Registry, args: argparse.Namespace, out: TextIO) -> int:
    if args.service is None:
        names = registry.services()
        if args.json:
            out.write(json.dumps({"services": list(names)}) + "\n")
        else:
            out.write("".join(f"{name}\n" for name in names))
        return _OK
    listing = registry.instances(args.service)
    rows: list[dict[str, Any]] = [
        {
            "id": i.instance_id,
            "address": i.address,
            "port": i.port,
            "status": i.status,
            "meta": dict(i.meta),
        }
        for i in sorted(listing.instances, key=lambda i: i.instance_id)
    ]
    if args.json:
        document = {
            "service": args.service,
            "index": listing.index,
            "instances": rows,
            "skipped": [{"key": e.key, "error": str(e)} for e in listing.skipped],
        }
        out.write(json.dumps(document, sort_keys=True) + "\n")
        return _OK
    for row in rows:
        meta = " ".join(f"{k}={v}" for k, v in sorted(row["meta"].items()))
        out.write(f"{row['id']}  {row['address']}:{row['port']}  {row['status']}  {meta}".rstrip())
        out.write("\n")
    for error in listing.skipped:
        sys.stderr.write(f"confhub: skipped: {error}\n")
    return _OK


def _meta(pairs: list[str]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise RegistryInputError(f"--meta {pair!r} is not KEY=VALUE; write e.g. --meta zone=a")
        meta[key] = value
    return meta


def _register(registry: Registry, args: argparse.Namespace, out: TextIO) -> int:
    done = threading.Event()
    lock = threading.Lock()

    def report(state: RegistrationState) -> None:
        with lock:
            out.write(json.dumps({"state": state.value}) + "\n")
            out.flush()

    registration = registry.register(
        args.service,
        address=args.address,
        port=args.port,
        ttl=args.ttl,
        instance_id=args.instance_id,
        meta=_meta(args.meta),
        on_state=report,
    )
    previous = {
        signum: signal.signal(signum, lambda *_: done.set())
        for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        with lock:
            out.write(
                json.dumps({"instance_id": registration.instance_id, "state": "registered"})
                + "\n"
            )
            out.flush()
        while not done.wait(1.0):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    registration.close()
    return _OK


def _lock(registry: Registry, args: argparse.Namespace, out: TextIO) -> int:
    command = list(args.argv)
    if "--" in command:  # options given after NAME land here too: take what follows "--"
        options, command = command[: command.index("--")], command[command.index("--") + 1 :]
        if options:
            raise RegistryInputError(
                f"confhub lock: put the options before SPEC ({' '.join(options)}): "
                "confhub lock --ttl 5 SPEC NAME -- COMMAND"
            )
    if not command:
        raise RegistryInputError(
            "confhub lock needs a command: confhub lock SPEC NAME -- COMMAND [ARGS...]"
        )
    child: list[subprocess.Popen[bytes]] = []

    def lost(error: LockLostError) -> None:
        sys.stderr.write(f"confhub: {error}; terminating the command\n")
        for process in child:
            process.terminate()

    lock = registry.lock(args.name, ttl=args.ttl, identity=args.identity, on_lost=lost)
    token = lock.acquire(args.timeout)
    try:
        env = dict(os.environ, CONFHUB_LOCK_TOKEN=str(token), CONFHUB_LOCK_NAME=args.name)
        process = subprocess.Popen(command, env=env)  # noqa: S603 - the user's own command
        child.append(process)
        code = process.wait()
        if not lock.held:
            return _FAILED
        return code
    finally:
        lock.release()

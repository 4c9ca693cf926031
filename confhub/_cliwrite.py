"""The CLI's writes: ``confhub set`` and ``confhub delete``.

``set SPEC KEY VALUE`` (one key, as before) or ``set SPEC KEY=VALUE ...`` (one write per key,
or ONE transaction with ``--atomic``); ``delete SPEC KEY ...``. Both talk to the source's
backend directly, not through a started hub: the fix for a store whose content a hub refuses
(``confhub delete SPEC db``) must work while every hub refuses it.

Before writing, the current content is read (when it can be) to

- refuse, unless ``--force``, a value over a table or a key under a value, listing every key
  it would shadow (:func:`confhub.kv.check_transaction`; the backend checks again at write
  time, against the store's keys);
- show the change with ``--dry-run`` (and write nothing);
- bind the resulting content to ``--check module:Class`` (``--check-prefix`` for a
  sub-table), refusing the write when it does not fit.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, TextIO

from ._backend import Backend, WriteOp, can_commit, can_delete, can_write
from ._cliconfig import UsageError
from ._errors import (
    ConfhubError,
    ConfigKeyError,
    SourceFormatError,
    WriteConflictError,
    WriteError,
)
from ._hub import Hub
from ._layer import Layer
from ._merge import MISSING
from ._redact import REDACTED, is_secret_key
from ._spec import SourceSpec
from .kv import check_transaction

#: The subcommands this module runs.
WRITE_COMMANDS = frozenset({"set", "delete"})

EXIT_OK, EXIT_MISSING, EXIT_FAILED = 0, 1, 4

#: How many shadowed keys a refusal lists before it counts the rest.
_LISTED = 20


def add_write_commands(sub: Any) -> None:
    """Register ``set`` and ``delete`` on the CLI's subparsers."""
    p = sub.add_parser(
        "set",
        help="write KEY VALUE, or KEY=VALUE ... (--atomic: one transaction) to a source",
        description="Write to a writable source (etcd, Consul). 'set SPEC KEY VALUE' writes "
        "one key; 'set SPEC K1=V1 K2=V2 ...' writes each, or all in one transaction with "
        "--atomic. A value over a table, or a key under a value, is refused unless --force.",
    )
    p.add_argument("spec")
    p.add_argument("items", nargs="+", metavar="KEY=VALUE", help="KEY VALUE, or KEY=VALUE ...")
    p.add_argument("--atomic", action="store_true", help="write every KEY=VALUE in ONE transaction")
    _common(p)

    p = sub.add_parser(
        "delete",
        help="delete KEY ... from a source (--atomic: one transaction)",
        description="Delete keys from a writable source (etcd, Consul).",
    )
    p.add_argument("spec")
    p.add_argument("keys", nargs="+", metavar="KEY")
    p.add_argument("--atomic", action="store_true", help="delete every KEY in ONE transaction")
    p.add_argument("--missing-ok", action="store_true", help="a KEY that is not there is no error")
    _common(p)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--if-revision",
        type=int,
        default=None,
        metavar="N",
        help="only if the key's revision is N (0: only if absent); one key only",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write even a value over a table or a key under a value (readers then refuse "
        "the source until it is fixed)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="show the resulting change; write nothing"
    )
    p.add_argument(
        "--check",
        metavar="MODULE:CLASS",
        help="bind the resulting content to this class first; refuse the write if it fails",
    )
    p.add_argument(
        "--check-prefix", metavar="PREFIX", default=None, help="bind --check at this sub-table"
    )


def run_write_command(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``set`` or ``delete``; returns the exit code (errors propagate to ``main``)."""
    ops = _ops(args)
    if args.if_revision is not None:
        if len(ops) != 1:
            raise UsageError("--if-revision applies to one key; use it with one KEY")
        ops = [WriteOp(ops[0].action, ops[0].key, ops[0].value, args.if_revision)]
    spec = SourceSpec.parse(args.spec)
    backend = Hub([spec]).make_backend(spec)
    try:
        _require(backend, spec.display, ops, args)
        # The whole source is read only when needed: to show or check the result, or to
        # tell a missing key from a deleted one. A plain set relies on the backend's own
        # check (it reads just the keys the write can clash with), and reads the source
        # only to list what a refused write would shadow.
        layer, unreadable = None, ""
        if args.dry_run or args.check or args.command == "delete":
            layer, unreadable = _current(backend)
            if layer is None and args.check:
                raise WriteError(
                    f"{spec.display}: --check needs the current content, which cannot be "
                    f"read ({unreadable}); fix it first (confhub delete) or leave --check out",
                    source=spec.display,
                    key=ops[0].key,
                )
        if layer is not None:
            _missing(layer, ops, spec.display, args)
            if not _accepted(layer, ops, spec.display, args):
                return EXIT_FAILED
            if args.check:
                _check_class(layer, ops, spec.display, args.check, args.check_prefix)
        if args.dry_run:
            _show(layer, unreadable, ops, spec.display, out)
            return EXIT_OK
        try:
            return _write(backend, spec.display, ops, args, out)
        except WriteConflictError:
            raise
        except WriteError as refused:
            if layer is None:
                try:
                    layer = _current(backend)[0]
                except ConfhubError:
                    raise refused from None
            if layer is None or _accepted(layer, ops, spec.display, args):
                raise
            return EXIT_FAILED
    finally:
        backend.close()


def _ops(args: argparse.Namespace) -> list[WriteOp]:
    if args.command == "delete":
        ops = [WriteOp.delete(k) for k in args.keys]
    else:
        items = list(args.items)
        if len(items) == 2 and "=" not in items[0]:
            ops = [WriteOp.put(items[0], items[1])]  # the KEY VALUE form
        else:
            ops = []
            for item in items:
                key, sep, value = item.partition("=")
                if not sep or not key:
                    raise UsageError(
                        f"{item!r} is not KEY=VALUE; give 'set SPEC KEY VALUE' for one key, "
                        "or 'set SPEC K1=V1 K2=V2 ...'"
                    )
                ops.append(WriteOp.put(key, value))
    keys = [op.key for op in ops]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise UsageError(f"{', '.join(twice)} given twice; give each key once")
    return ops


def _require(backend: Backend, source: str, ops: list[WriteOp], args: argparse.Namespace) -> None:
    """Refuse, before any I/O, what this backend cannot do."""
    key = ops[0].key
    needs_commit = args.force or (args.atomic and len(ops) > 1)
    if needs_commit and not can_commit(backend):
        why = "--force" if args.force else "--atomic"
        raise WriteError(
            f"{source}: {why} needs a store that commits transactions, and "
            f"{type(backend).__name__} has no commit; write to an etcd or Consul source",
            source=source,
            key=key,
        )
    if args.command == "delete" and not (can_delete(backend) or can_commit(backend)):
        raise WriteError(
            f"{source} cannot delete keys (its backend has no delete); delete in the store "
            "itself, or use an etcd or Consul source",
            source=source,
            key=key,
        )
    if args.command == "set" and not can_write(backend):
        raise WriteError(
            f"{source} is read-only (its backend has no write); write to an etcd or Consul source",
            source=source,
            key=key,
        )


def _current(backend: Backend) -> tuple[Layer | None, str]:
    """What the source holds now, or ``None`` and why it cannot be read as a layer (its
    content is broken: the backend's own check still guards the write)."""
    try:
        return backend.load(), ""
    except SourceFormatError as exc:
        return None, str(exc)


def _missing(layer: Layer, ops: list[WriteOp], source: str, args: argparse.Namespace) -> None:
    """A delete of a key the source does not hold: exit 1 (unless ``--missing-ok``)."""
    if args.command != "delete" or args.missing_ok:
        return
    for op in ops:
        if op.key not in layer.values and op.key not in layer.inner:
            raise ConfigKeyError(
                op.key,
                f"{op.key!r} is not in {source}; nothing to delete (--missing-ok to "
                "ignore keys that are not there)",
            )


def _accepted(layer: Layer, ops: list[WriteOp], source: str, args: argparse.Namespace) -> bool:
    """Whether the shape check passes; if not, print the refusal with every key the write
    would shadow (or the keys of a table a delete names) and the way out."""
    try:
        check_transaction(layer.values, ops, source=source, force=args.force)
    except WriteError as exc:
        lines = [f"confhub: {exc}"]
        shadowed = _shadowed(layer, ops)
        if shadowed:
            lines.append(f"  it would shadow {len(shadowed)} key(s): {_listed(shadowed)}")
            lines.append(
                "  --force writes it anyway (hubs then refuse the source until it is fixed)"
                + ("" if args.dry_run else "; --dry-run shows the change")
            )
        for op in ops:
            below = op.key + "."
            table = sorted(k for k in layer.values if k.startswith(below))
            if op.action == "delete" and op.key not in layer.values and table:
                lines.append(
                    f"  to delete the table: confhub delete {source} "
                    f"{' '.join(table[:_LISTED])}{' ...' if len(table) > _LISTED else ''} --atomic"
                )
        sys.stderr.write("\n".join(lines) + "\n")
        return False
    return True


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
    return ", ".join(keys[:_LISTED]) + more


def _shadowed(layer: Layer, ops: list[WriteOp]) -> list[str]:
    """Every key a put of the transaction would hide (a table under it, a value above)."""
    deleted = {op.key for op in ops if op.action == "delete"}
    keys = [k for k in layer.values if k not in deleted]
    found: set[str] = set()
    for op in ops:
        if op.action != "put":
            continue
        found.update(k for k in keys if k.startswith(op.key + "."))
        found.update(k for k in keys if op.key.startswith(k + "."))
    return sorted(found)


def _after(layer: Layer, ops: list[WriteOp]) -> dict[str, Any]:
    values = dict(layer.values)
    for op in ops:
        if op.action == "delete":
            values.pop(op.key, None)
        else:
            values[op.key] = op.value
    return values


def _check_class(
    layer: Layer, ops: list[WriteOp], source: str, target: str, prefix: str | None
) -> None:
    """Bind the content the write would leave to ``module:Class``; raises on a misfit."""
    module_name, _, name = target.partition(":")
    if not module_name or not name:
        raise UsageError(f"--check {target!r}: give MODULE:CLASS, such as myapp.settings:Settings")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(
            f"--check {target!r}: cannot import it ({exc}); is the module on PYTHONPATH?"
        ) from None
    result = Layer.from_flat(_after(layer, ops), source=source)
    with Hub([result.nested()], cache_dir=None, autoload=False) as hub:
        hub.bind(cls, prefix=prefix)


def _shown(key: str, value: Any) -> str:
    if value is MISSING:
        return "<absent>"
    return REDACTED if is_secret_key(key) else repr(value)


def _show(
    layer: Layer | None, unreadable: str, ops: list[WriteOp], source: str, out: TextIO
) -> None:
    """The ``--dry-run`` report: one line per key, old -> new."""
    if layer is None:
        out.write(f"{source}: the current content cannot be read ({unreadable})\n")
    for op in ops:
        old = MISSING if layer is None else layer.values.get(op.key, MISSING)
        new = MISSING if op.action == "delete" else op.value
        tag = "" if op.expected_revision is None else f"  (if revision {op.expected_revision})"
        old_text = "?" if layer is None else _shown(op.key, old)
        out.write(f"{op.key}: {old_text} -> {_shown(op.key, new)}{tag}\n")
    out.write(f"dry run: nothing was written to {source}\n")


def _write(
    backend: Backend, source: str, ops: list[WriteOp], args: argparse.Namespace, out: TextIO
) -> int:
    b: Any = backend
    if args.atomic or (args.force and len(ops) > 1):
        revision = b.commit(tuple(ops), args.force)
        out.write(
            f"{len(ops)} key(s) written to {source} in one transaction at revision {revision}\n"
        )
        return EXIT_OK
    for op in ops:
        if args.force:
            revision = b.commit((op,), True)
        elif op.action == "delete":
            if can_delete(backend):
                revision = b.delete(op.key, op.expected_revision)
            else:
                revision = b.commit((op,), False)
        else:
            revision = b.write(op.key, op.value, op.expected_revision)
        verb = "deleted from" if op.action == "delete" else "written to"
        out.write(f"{op.key} {verb} {source} at revision {revision}\n")
    return EXIT_OK

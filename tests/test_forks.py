"""The gunicorn hooks and the process registry, without forking (the real forks and
servers are in ``tests/processes``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import confhub


def test_integrations_import_no_framework() -> None:
    """``import confhub.integrations.gunicorn`` (in a fresh interpreter) imports neither
    gunicorn nor uvicorn, and ``import confhub`` imports no integration."""
    code = (
        "import sys, confhub; a = sorted(m for m in sys.modules if 'integrations' in m); "
        "import confhub.integrations.gunicorn; "
        "b = sorted(m for m in sys.modules if m.split('.')[0] in ('gunicorn', 'uvicorn')); "
        "print(a, b)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"


def test_hooks_do_nothing_without_hubs() -> None:
    """With no hub running, post_fork has nothing to wait for and worker_exit closes none."""
    from confhub.integrations.gunicorn import post_fork, worker_exit

    class Log:
        def info(self, *a: object) -> None:
            raise AssertionError("nothing to log")

        warning = info

    class Server:
        log = Log()

    class Worker:
        pid = 1

    assert post_fork(Server(), Worker()) is True
    assert worker_exit(Server(), Worker()) == 0


def test_worker_exit_closes_the_running_hubs(tmp_path: Path) -> None:
    """worker_exit closes every hub running in the process, and says how many."""
    from confhub.integrations.gunicorn import worker_exit

    cfg = tmp_path / "c.toml"
    cfg.write_text("a = 1\n")
    lines: list[str] = []

    class Log:
        def info(self, message: str, *args: object) -> None:
            lines.append(message % args)

        warning = info

    class Server:
        log = Log()

    class Worker:
        pid = 42

    hub = confhub.Hub([{"x": 1}, f"file:{cfg}"], cache_dir=None).start()
    closed_before = confhub.Hub([{"x": 1}], cache_dir=None).start()
    closed_before.close()
    assert worker_exit(Server(), Worker()) == 1
    assert hub.state is confhub.State.CLOSED
    assert lines == ["confhub: worker 42 closed 1 hub(s)"]

"""The worker-server recipes, as real servers: every worker follows a change.

``examples/gunicorn`` (a hub started at import, the confhub gunicorn hooks) under gunicorn
sync and uvicorn workers, with and without ``--preload``, and under ``uvicorn --workers``.
Each test starts the server on a free loopback port, checks over HTTP that every worker
(told apart by pid) serves the file's value with its source live, changes the file (or an
etcd key), and asks until every worker serves the new value.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from confhub_etcd.testing import EtcdServer
from servers import Answer, Server, gunicorn, uvicorn

from confhub.testing import free_ports

WORKERS = 2


def serves(flag: str) -> Callable[[Answer], bool]:
    def check(answer: Answer) -> bool:
        sources = answer["health"]["sources"]
        return answer["flag"] == flag and all(s["state"] == "live" for s in sources)

    return check


def run_recipe(
    argv: list[str],
    port: int,
    sources: str,
    tmp_path: Path,
    change: Callable[[], object],
    preload: bool,
) -> None:
    """Start the server; every worker serves "one" (inherited or not, as ``preload`` says);
    ``change()``; every worker serves "two"."""
    with Server(argv, {"APP_SOURCES": sources}, port, tmp_path / "server.log") as server:
        before = server.workers_until(WORKERS, serves("one"))
        inherited = {pid: a["hub_started_in"] != pid for pid, a in before.items()}
        assert all(inherited.values()) if preload else not any(inherited.values()), inherited
        change()
        after = server.workers_until(WORKERS, serves("two"))
        assert len(after) == WORKERS


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
@pytest.mark.parametrize("worker_class", ["sync", "uvicorn.workers.UvicornWorker"])
def test_gunicorn_workers_follow_a_file(tmp_path: Path, worker_class: str, preload: bool) -> None:
    """gunicorn (sync or uvicorn workers, with or without --preload): every worker sees it."""
    cfg = tmp_path / "app.toml"
    cfg.write_text('flag = "one"\n')
    [port] = free_ports()
    argv = gunicorn(port, workers=WORKERS, preload=preload, worker_class=worker_class)
    change = lambda: cfg.write_text('flag = "two"\n')  # noqa: E731
    run_recipe(argv, port, f"file:{cfg}", tmp_path, change, preload)


def test_uvicorn_workers_follow_a_file(tmp_path: Path) -> None:
    """uvicorn --workers N (spawned workers, each with its own hub): every worker sees it."""
    cfg = tmp_path / "app.toml"
    cfg.write_text('flag = "one"\n')
    [port] = free_ports()
    change = lambda: cfg.write_text('flag = "two"\n')  # noqa: E731
    run_recipe(uvicorn(port, workers=WORKERS), port, f"file:{cfg}", tmp_path, change, False)


def test_gunicorn_preload_workers_follow_etcd(tmp_path: Path, etcd: EtcdServer) -> None:
    """gunicorn --preload with an etcd source: each worker re-reads and watches etcd itself."""
    etcd.put("/app/flag", "one")
    [port] = free_ports()
    argv = gunicorn(port, workers=WORKERS, preload=True)
    spec = f"etcd://{etcd.endpoint}/app/"
    run_recipe(argv, port, spec, tmp_path, lambda: etcd.put("/app/flag", "two"), True)


def test_gunicorn_workers_close_their_hubs_on_exit(tmp_path: Path) -> None:
    """worker_exit closes each worker's hubs: the log says so for every worker."""
    cfg = tmp_path / "app.toml"
    cfg.write_text('flag = "one"\n')
    [port] = free_ports()
    argv = gunicorn(port, workers=WORKERS, preload=True)
    with Server(argv, {"APP_SOURCES": f"file:{cfg}"}, port, tmp_path / "server.log") as server:
        pids = set(server.workers_until(WORKERS, serves("one")))
        server.stop()
        log = server.log()
    for pid in pids:
        assert f"confhub: worker {pid} resumed 1 inherited hub(s)" in log
        assert f"confhub: worker {pid} closed 1 hub(s)" in log

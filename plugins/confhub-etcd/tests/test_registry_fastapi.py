"""The FastAPI example of docs/registry.md, run as a real uvicorn server against etcd."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from confhub import BackendSettings, Registry
from confhub.testing import free_ports
from registry_lib import WAIT, wait_until

from confhub_etcd.testing import EtcdServer

DOC = Path(__file__).resolve().parents[3] / "docs" / "registry.md"


def example_source() -> str:
    """The ``# orders_app.py`` code block of the registry guide."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    (source,) = [b for b in blocks if b.startswith("# orders_app.py")]
    return source


@pytest.fixture
def registry(etcd: EtcdServer) -> Iterator[Registry]:
    spec = f"etcd://{etcd.endpoint}/services/"
    with Registry(spec, settings=BackendSettings(connect_timeout=1.0)) as reg:
        yield reg


def test_fastapi_example_registers_on_startup_and_deregisters_on_shutdown(
    etcd: EtcdServer, registry: Registry, tmp_path: Path
) -> None:
    """The app is listed while it serves, finds its peers, and is gone once SIGTERM ends it."""
    (tmp_path / "orders_app.py").write_text(example_source(), encoding="utf-8")
    [port] = free_ports()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(tmp_path), *(p for p in sys.path if p)]),
        CONFHUB_REGISTRY=f"etcd://{etcd.endpoint}/services/",
        PORT=str(port),
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "orders_app:app", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: len(registry.instances("orders").instances) == 1, "the registration")
        (instance,) = registry.instances("orders").instances
        assert (instance.port, dict(instance.meta)) == (port, {"version": "1.4.2"})
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _get(f"{base}/health") is not None, "the server to answer")
        health = _get(f"{base}/health")
        assert health is not None
        assert health.json() == {"registration": "registered", "payments_stale": False}
        missing = _get(f"{base}/checkout")
        assert missing is not None
        assert missing.status_code == 503
        assert "'payments'" in missing.json()["detail"]
        registry.register("payments", address="10.1.1.1", port=7000)
        wait_until(
            lambda: (r := _get(f"{base}/checkout")) is not None and r.status_code == 200,
            "the payments instance to be discovered",
        )
        checkout = _get(f"{base}/checkout")
        assert checkout is not None
        assert checkout.json() == {"payments": "10.1.1.1:7000"}
        server.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert server.wait(WAIT) in (0, -signal.SIGTERM)
        assert registry.instances("orders").instances == ()  # deregistered, not expired
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(WAIT)
        if server.stderr is not None:
            server.stderr.close()


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2.0)
    except httpx.HTTPError:
        return None

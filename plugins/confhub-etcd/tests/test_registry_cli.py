"""``confhub services``, ``confhub register`` and ``confhub lock`` as real processes on etcd."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from confhub import BackendSettings, Registry
from registry_lib import WAIT

from confhub_etcd.testing import EtcdServer


def confhub(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "confhub", *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=_env(),
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


@pytest.fixture
def spec(etcd: EtcdServer) -> str:
    return f"etcd://{etcd.endpoint}/services/"


@pytest.fixture
def registry(spec: str) -> Iterator[Registry]:
    with Registry(spec, settings=BackendSettings(connect_timeout=1.0)) as reg:
        yield reg


def test_services_lists_services_and_instances_as_json(spec: str, registry: Registry) -> None:
    """``services --json`` prints the services, then one service's instances with meta."""
    registry.register("api", address="10.0.0.1", port=80, meta={"zone": "a"}, instance_id="a1")
    registry.register("web", address="10.0.0.2", port=81)
    names = confhub("services", spec, "--json")
    assert names.returncode == 0, names.stderr
    assert json.loads(names.stdout) == {"services": ["api", "web"]}
    api = confhub("services", spec, "api", "--json")
    document = json.loads(api.stdout)
    assert document["instances"] == [
        {"id": "a1", "address": "10.0.0.1", "port": 80, "status": "passing", "meta": {"zone": "a"}}
    ]
    text = confhub("services", spec, "api")
    assert text.stdout == "a1  10.0.0.1:80  passing  zone=a\n"


def test_register_holds_until_sigterm_then_deregisters(spec: str, registry: Registry) -> None:
    """``register`` keeps the instance listed until SIGTERM, then removes it and exits 0."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "confhub",
            "register",
            spec,
            "api",
            "--address",
            "h",
            "--port",
            "9",
            "--ttl",
            "30",
            "--id",
            "cli-1",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        assert first == {"instance_id": "cli-1", "state": "registered"}
        assert [i.instance_id for i in registry.instances("api").instances] == ["cli-1"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT) == 0
        assert registry.instances("api").instances == ()  # removed, not left to its 30 s TTL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(WAIT)
        if process.stdout is not None:
            process.stdout.close()


def test_lock_runs_the_command_with_the_token_and_its_exit_code(spec: str) -> None:
    """``lock`` runs the command holding the lock (token in the environment), exits with its
    code, and releases the lock."""
    result = confhub(
        "lock",
        spec,
        "job",
        "--",
        sys.executable,
        "-c",
        "import os, sys; print(os.environ['CONFHUB_LOCK_TOKEN']); sys.exit(7)",
    )
    assert result.returncode == 7, result.stderr
    assert int(result.stdout) > 0
    again = confhub("lock", "--timeout", "5", spec, "job", "--", sys.executable, "-c", "")
    assert again.returncode == 0, again.stderr


def test_lock_held_elsewhere_times_out_with_exit_4(spec: str, registry: Registry) -> None:
    """``lock --timeout`` on a held lock exits 4 without running the command."""
    with registry.lock("job", identity="holder"):
        result = confhub(
            "lock", "--timeout", "0.5", spec, "job", "--", sys.executable, "-c", "print('ran')"
        )
    assert result.returncode == 4
    assert "ran" not in result.stdout
    assert "'job'" in result.stderr


def test_bad_input_exits_2_naming_the_fix(spec: str) -> None:
    """A service name with '/' or a TTL under a second exits 2 with the fix."""
    bad_name = confhub("register", spec, "a/b", "--address", "h", "--port", "1")
    assert bad_name.returncode == 2
    assert "'/'" in bad_name.stderr
    short = confhub("register", spec, "api", "--address", "h", "--port", "1", "--ttl", "0.5")
    assert short.returncode == 2
    assert "ttl=0.5" in short.stderr

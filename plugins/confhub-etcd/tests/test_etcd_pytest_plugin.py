"""confhub_etcd.pytest_plugin as users run it: pytest in a subprocess with ``-p``."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

from confhub_etcd.testing import EtcdServer

pytest_plugins = ["pytester"]


def _plugin_args(*modules: str) -> list[str]:
    """``-p MODULE`` for each plugin not installed through a ``pytest11`` entry point (an
    installed one loads by itself, and loading it twice would be an error)."""
    installed = {ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    args = [arg for m in modules if m not in installed for arg in ("-p", m)]
    return [*args, "-p", "no:cacheprovider"]


PLUGINS = _plugin_args("confhub.pytest_plugin", "confhub_etcd.pytest_plugin")


def test_etcd_server_serves_a_hub_through_its_spec_and_survives_a_kill(
    pytester: pytest.Pytester,
) -> None:
    """Inside the user's tests: a hub reads etcd_server.spec(prefix), sees a flag flip,
    serves the last good value while etcd is killed, and the next test finds etcd running
    again (same server: the session's)."""
    pytester.makepyfile(
        """
        from confhub.testing import change_and_wait, wait_for_value
        from confhub_etcd.testing import EtcdServer

        servers = []

        def test_flag_flip(etcd_server, etcd_prefix, confhub_hub):
            assert isinstance(etcd_server, EtcdServer)
            servers.append(etcd_server)
            etcd_server.put(etcd_prefix + "feature/beta", "false")
            hub = confhub_hub(etcd_server.spec(etcd_prefix), connect_timeout=1.0)
            assert hub["feature.beta"] == "false"
            change = change_and_wait(
                hub, lambda: etcd_server.put(etcd_prefix + "feature/beta", "true"),
                keys=["feature.beta"],
            )
            assert change.get("feature.beta").new == "true"

        def test_kill_leaves_the_last_good_value(etcd_server, etcd_prefix, confhub_hub):
            servers.append(etcd_server)
            etcd_server.put(etcd_prefix + "a", "1")
            hub = confhub_hub(etcd_server.spec(etcd_prefix), connect_timeout=1.0)
            etcd_server.kill()
            assert hub["a"] == "1"

        def test_the_next_test_gets_it_running(etcd_server, etcd_prefix, confhub_hub):
            servers.append(etcd_server)
            assert servers[0] is servers[1] is servers[2]
            etcd_server.put(etcd_prefix + "a", "2")
            hub = confhub_hub(etcd_server.spec(etcd_prefix), connect_timeout=1.0)
            wait_for_value(hub, "a", "2")

        def test_prefixes_differ(etcd_prefix):
            assert etcd_prefix.startswith("/test-") and etcd_prefix.endswith("/")
        """
    )
    result = pytester.runpytest_subprocess(*PLUGINS)
    result.assert_outcomes(passed=4)


def test_spec_names_every_member_and_the_prefix() -> None:
    """EtcdCluster.spec(): a slash prefix in the path, another in ?prefix=, options after."""
    with EtcdServer() as server:
        assert server.spec("/app/") == f"etcd://{server.endpoint}/app/"
        assert server.spec("app/", timeout="1") == (
            f"etcd://{server.endpoint}?prefix=app%2F&timeout=1"
        )


def test_loading_the_plugin_does_not_import_grpc() -> None:
    """Once installed, the plugin loads in every pytest run: it imports gRPC (through
    confhub_etcd.testing) only when an etcd fixture is used."""
    code = (
        "import sys, confhub_etcd.pytest_plugin\n"
        "print('grpc' in sys.modules, 'confhub_etcd.testing' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    assert out == "False False"

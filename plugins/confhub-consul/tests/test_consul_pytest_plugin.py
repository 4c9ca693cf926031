"""confhub_consul.pytest_plugin as users run it: pytest in a subprocess with ``-p``."""

from __future__ import annotations

import importlib.metadata
import shutil

import pytest

pytest_plugins = ["pytester"]


def _plugin_args(*modules: str) -> list[str]:
    """``-p MODULE`` for each plugin not installed through a ``pytest11`` entry point (an
    installed one loads by itself, and loading it twice would be an error)."""
    installed = {ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    args = [arg for m in modules if m not in installed for arg in ("-p", m)]
    return [*args, "-p", "no:cacheprovider"]


PLUGINS = _plugin_args("confhub.pytest_plugin", "confhub_consul.pytest_plugin")


def test_consul_server_serves_a_hub_through_its_spec(pytester: pytest.Pytester) -> None:
    """Inside the user's tests: a hub reads consul_server.spec(prefix) and sees a change;
    the kind is the real agent when consul is on PATH, else the test server."""
    kind = "consul" if shutil.which("consul") else "test-server"
    pytester.makepyfile(
        f"""
        from confhub.testing import change_and_wait

        def test_flag_flip(consul_server, consul_prefix, confhub_hub):
            assert consul_server.kind == {kind!r}
            consul_server.put(consul_prefix + "feature/beta", "false")
            hub = confhub_hub(consul_server.spec(consul_prefix), connect_timeout=1.0)
            assert hub["feature.beta"] == "false"
            change = change_and_wait(
                hub, lambda: consul_server.put(consul_prefix + "feature/beta", "true"),
                keys=["feature.beta"],
            )
            assert change.get("feature.beta").new == "true"
            consul_server.delete(consul_prefix, recurse=True)

        def test_spec(consul_server):
            assert consul_server.spec("app/") == f"consul://{{consul_server.address}}/app/"
        """
    )
    result = pytester.runpytest_subprocess(*PLUGINS)
    result.assert_outcomes(passed=2)

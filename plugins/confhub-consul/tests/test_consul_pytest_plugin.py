"""confhub_consul.pytest_plugin as users run it: pytest in a subprocess with ``-p``."""

from __future__ import annotations

import shutil

import pytest

pytest_plugins = ["pytester"]

PLUGINS = [
    "-p", "confhub.pytest_plugin", "-p", "confhub_consul.pytest_plugin", "-p", "no:cacheprovider",
]  # fmt: skip


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

"""confhub.pytest_plugin as users run it: pytest in a subprocess, `-p confhub.pytest_plugin`."""

from __future__ import annotations

import importlib.metadata

import pytest

pytest_plugins = ["pytester"]


def _plugin_args(*modules: str) -> list[str]:
    """``-p MODULE`` for each plugin not installed through a ``pytest11`` entry point (an
    installed one loads by itself, and loading it twice would be an error)."""
    installed = {ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    args = [arg for m in modules if m not in installed for arg in ("-p", m)]
    return [*args, "-p", "no:cacheprovider"]


PLUGIN = _plugin_args("confhub.pytest_plugin")


def test_confhub_hub_gives_started_hubs_and_closes_them_at_teardown(
    pytester: pytest.Pytester,
) -> None:
    """The factory's hubs run inside the test and are closed after it (seen by the next)."""
    pytester.makepyfile(
        """
        from confhub import State
        from confhub.testing import MemoryStore

        made = []

        def test_uses_a_hub(confhub_hub):
            store = MemoryStore("app", {"a": "1"})
            hub = confhub_hub({"a": "0", "b": "2"}, "memory:app", plugins=[store])
            made.append(hub)
            assert hub.state is State.RUNNING
            assert (hub["a"], hub["b"]) == ("1", "2")
            assert hub.cache_dir is not None and "confhub-cache" in str(hub.cache_dir)

        def test_the_hub_was_closed():
            assert made[0].state is State.CLOSED
        """
    )
    result = pytester.runpytest_subprocess(*PLUGIN)
    result.assert_outcomes(passed=2)


def test_change_and_wait_returns_the_published_change(pytester: pytest.Pytester) -> None:
    """change_and_wait runs the change and returns once the hub published it; a key the
    change does not reach times out with a message naming it and the sources."""
    pytester.makepyfile(
        """
        import pytest
        from confhub.testing import MemoryStore, change_and_wait, wait_for_value

        def test_a_change_is_published(confhub_hub):
            store = MemoryStore("app", {"flag": "off"})
            hub = confhub_hub("memory:app", plugins=[store])
            change = change_and_wait(hub, lambda: store.set("flag", "on"), keys=["flag"])
            assert change.get("flag").new == "on"
            assert hub["flag"] == "on"
            wait_for_value(hub, "flag", "on")

        def test_a_masked_key_times_out_with_an_explanation(confhub_hub):
            store = MemoryStore("app", {"flag": "off"})
            hub = confhub_hub("memory:app", {"flag": "pinned"}, plugins=[store])
            with pytest.raises(TimeoutError) as info:
                change_and_wait(hub, lambda: store.set("flag", "on"), timeout=0.5)
            assert "memory:app: live" in str(info.value)
            assert "masked" in str(info.value)
            with pytest.raises(TimeoutError, match="flag did not become 'on'"):
                wait_for_value(hub, "flag", "on", timeout=0.2)
        """
    )
    result = pytester.runpytest_subprocess(*PLUGIN)
    result.assert_outcomes(passed=2)


def test_a_rejected_change_raises_the_hubs_error_at_once(pytester: pytest.Pytester) -> None:
    """When the hub rejects the update (it does not fit the bound class), change_and_wait
    raises that error rather than waiting out its timeout."""
    pytester.makepyfile(
        """
        import attrs, pytest
        from confhub import ConfigValidationError
        from confhub.testing import MemoryStore, change_and_wait

        @attrs.frozen
        class Config:
            port: int

        def test_rejected(confhub_hub):
            store = MemoryStore("app", {"port": "1"})
            hub = confhub_hub("memory:app", plugins=[store])
            hub.view(Config)
            with pytest.raises(ConfigValidationError, match="port"):
                change_and_wait(hub, lambda: store.set("port", "x"), timeout=60)
        """
    )
    result = pytester.runpytest_subprocess(*PLUGIN)
    result.assert_outcomes(passed=1)


def test_confhub_override_changes_the_config_requests_get_for_one_test(
    pytester: pytest.Pytester,
) -> None:
    """confhub_override on a Flask extension: the override holds for its test only, and
    the hub itself is untouched."""
    pytester.makepyfile(
        """
        import attrs
        from flask import Flask
        from confhub import Hub
        from confhub.integrations.flask import Confhub

        @attrs.frozen
        class Feature:
            beta: bool = False
            name: str = "x"

        @attrs.frozen
        class Config:
            feature: Feature

        ext = Confhub(Hub([{"feature": {"beta": False, "name": "shop"}}], cache_dir=None), Config)
        app = Flask(__name__)
        ext.init_app(app)

        @app.get("/")
        def index():
            return {"beta": ext.config.feature.beta, "name": ext.config.feature.name}

        def test_overridden(confhub_override):
            confhub_override(ext, {"feature.beta": True})
            assert app.test_client().get("/").json == {"beta": True, "name": "shop"}
            with app.app_context():
                assert ext.hub["feature.beta"] is False

        def test_not_overridden_in_the_next_test():
            assert app.test_client().get("/").json == {"beta": False, "name": "shop"}
        """
    )
    result = pytester.runpytest_subprocess(*PLUGIN)
    result.assert_outcomes(passed=2)

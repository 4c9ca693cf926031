"""The worked KV backend example (examples/kv_backend) passes the shipped KV contract suite."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from urllib.parse import urlencode

import pytest

import confhub
from confhub.testing import KVBackendContract

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "kv_backend" / "confhub_kvdemo.py"


def _load_example() -> ModuleType:
    """Import the example from its file: it is not installed (no entry point either)."""
    spec = importlib.util.spec_from_file_location("confhub_kvdemo", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


kvdemo = _load_example()


class DemoHarness:
    """The contract's view of a kvdemo server: specs, puts and deletes, and outages."""

    def __init__(self, server: kvdemo.DemoServer) -> None:  # type: ignore[name-defined]
        self.server = server
        self.plugins = (kvdemo.KVDemoPlugin(server),)

    def spec(self, prefix: str, **options: str) -> str:
        query = f"?{urlencode(options)}" if options else ""
        return f"kvdemo://{self.server.name}/{prefix}{query}"

    def put(self, key: str, value: bytes | str) -> None:
        self.server.put(key, value)

    def delete(self, key: str) -> None:
        self.server.delete(key)

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


class TestKVDemoBackend(KVBackendContract):
    """The example backend, against the whole contract (it declares every capability)."""

    @pytest.fixture
    def kv_store(self) -> DemoHarness:
        return DemoHarness(kvdemo.DemoServer("contract"))


def test_the_example_uses_the_documented_kit() -> None:
    """The example declares its volatile options and its scheme as docs/plugins.md shows."""
    plugin = kvdemo.KVDemoPlugin()
    (info,) = plugin.confhub_backend_schemes()
    assert info.scheme == "kvdemo"
    assert info.volatile_options == {"wait", "retry_initial", "retry_max"}
    assert (info.writable, info.watchable) == (True, True)


def test_an_unknown_server_name_is_a_spec_error_naming_the_known_ones() -> None:
    """A spec naming a server the plugin was not given fails start-up with SpecError."""
    plugin = kvdemo.KVDemoPlugin(kvdemo.DemoServer("main"))
    hub = confhub.Hub(["kvdemo://other/app/"], plugins=[plugin], cache_dir=None)
    with pytest.raises(confhub.SpecError, match="no kvdemo server named 'other'; known: main"):
        hub.start()

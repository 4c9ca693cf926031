"""The worked KV backend example (examples/kv_backend) passes the shipped KV contract suite."""

from __future__ import annotations

import importlib.util
import re
import subprocess
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


def _excerpts() -> list[tuple[str, str]]:
    """The docs/plugins.md code blocks that quote a file: ``(path, block)`` for each block
    whose first line is ``# PATH``."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "plugins.md").read_text(encoding="utf-8")
    found = []
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL):
        first, _, body = block.partition("\n")
        if first.startswith("# ") and (root / first[2:]).is_file():
            found.append((first[2:], body))
    return found


def test_docs_quote_the_example_as_it_is() -> None:
    """Every excerpt of the example in docs/plugins.md is in the file, verbatim and in order
    (``...`` lines separate the parts of one excerpt)."""
    root = Path(__file__).resolve().parents[1]
    excerpts = _excerpts()
    assert {path for path, _ in excerpts} == {
        "examples/kv_backend/confhub_kvdemo.py",
        "tests/test_kv_example.py",
    }
    for path, body in excerpts:
        source = (root / path).read_text(encoding="utf-8")
        at = 0
        for part in re.split(r"^\.\.\.\n", body, flags=re.MULTILINE):
            found = source.find(part, at)
            assert found >= 0, f"docs/plugins.md quotes {path} wrongly:\n{part}"
            at = found + len(part)


def test_confhub_testing_imports_without_pytest() -> None:
    """The contract suite ships in confhub.testing, which must still import without pytest."""
    code = (
        "import sys; sys.modules['pytest'] = None; import confhub.testing as t; "
        "print(t.KVBackendContract.__name__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "KVBackendContract"

"""The plugin's modules import one way: each only from modules listed before it."""

from __future__ import annotations

import ast
from pathlib import Path

import confhub_etcd

#: Lowest first: the client layer (confhub-independent), then the confhub glue, the
#: harness, and the plugin entry point.
ORDER = [
    "_errors",
    "_types",
    "_rpc",
    "_transport",
    "_kvread",
    "_kvwrite",
    "_watchstream",
    "_watcher",
    "_client",
    "_config",
    "_layers",
    "_documents",
    "_transactions",
    "_writes",
    "_backend",
    "_lease",
    "_lock",
    "_registry",
    "_testhooks",
    "_testtls",
    "_testmember",
    "testing",
    "pytest_plugin",
    "_demo",
    "_plugin",
]
#: The client layer: everything up to ``_client`` (it imports nothing from confhub).
CLIENT_LAYER = set(ORDER[: ORDER.index("_client") + 1])
PACKAGE = Path(confhub_etcd.__file__).parent


def _imports(module: str) -> set[str]:
    """Sibling modules and top-level packages ``module`` imports, type-only and lazy
    imports included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                found.add((node.module or "").split(".")[0])
            elif node.module:
                found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found


def test_every_module_is_in_the_order() -> None:
    """A new module must be placed in ORDER (so this test sees it)."""
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(ORDER)


def test_imports_go_one_way() -> None:
    """No module imports a sibling listed after it (no cycles, type-only ones included)."""
    for index, module in enumerate(ORDER):
        later = set(ORDER[index + 1 :]) & _imports(module)
        assert not later, f"{module} imports {sorted(later)}, which come after it"


def test_the_client_layer_does_not_import_confhub() -> None:
    """The client layer stays confhub-independent, as httpcore sits under httpx."""
    for module in CLIENT_LAYER:
        assert "confhub" not in _imports(module), module


#: The core's size bounds (tests/test_layering.py), held by the plugin too.
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 400
#: Over the bounds, and why. Empty: keep it so.
SIZE_ALLOWED: dict[str, str] = {}


def _sizes() -> dict[str, tuple[int, int]]:
    found: dict[str, tuple[int, int]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        found[path.stem] = (len(text.splitlines()), MAX_MODULE_LINES)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                found[f"{path.stem}.{node.name}"] = (lines, MAX_CLASS_LINES)
    return found


def test_no_module_or_class_outgrows_the_bounds() -> None:
    """Modules within 600 lines, classes within 400 (issue 9): cut along a seam."""
    over = [
        f"{name}: {lines} > {bound}"
        for name, (lines, bound) in _sizes().items()
        if lines > bound and name not in SIZE_ALLOWED
    ]
    assert not over, "cut these along a seam:\n" + "\n".join(over)

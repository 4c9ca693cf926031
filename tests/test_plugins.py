"""The plugin system: builtins, entry points, blocking, misspelt hooks."""

from __future__ import annotations

import importlib.metadata
import io
import json
import subprocess
import sys
from pathlib import Path

import attrs
import cattrs
import pytest

import confhub
from confhub import Hub, PluginError, main


def _example_installed() -> None:
    try:
        importlib.metadata.distribution("confhub-example-plugin")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(
            "the throwaway plugin distribution tests/plugin_dist is not installed; "
            "run the tests through 'python3 dev.py test', which installs it"
        )


def test_third_party_plugin_is_discovered_through_entry_points() -> None:
    """An installed distribution's backend is usable from a Hub with no registration."""
    _example_installed()
    with Hub([{"greeting": "hi"}, "example:greeting=hello,name=confhub"]) as hub:
        assert hub.get("greeting") == "hello"
        assert hub.explain("name").detail == "pair name=confhub"


def test_third_party_plugin_is_listed_by_the_cli_with_its_distribution() -> None:
    """`confhub backends --json` lists the plugin's scheme with its distribution and version."""
    _example_installed()
    out = io.StringIO()
    assert main(["backends", "--json"], out=out) == 0
    rows = {r["scheme"]: r for r in json.loads(out.getvalue())}
    assert rows["example"]["distribution"] == "confhub-example-plugin"
    assert rows["example"]["version"] == "0.0.1"
    assert rows["file"]["distribution"] == "confhub (builtin)"


def test_cli_backends_in_a_subprocess_sees_the_plugin() -> None:
    """The installed console script finds entry-point plugins too."""
    _example_installed()
    proc = subprocess.run(
        [sys.executable, "-m", "confhub", "backends"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "confhub-example-plugin" in proc.stdout


def test_autoload_can_be_disabled_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """CONFHUB_DISABLE_PLUGIN_AUTOLOAD=1 skips entry points; builtins stay."""
    monkeypatch.setenv("CONFHUB_DISABLE_PLUGIN_AUTOLOAD", "1")
    hub = Hub(["example:a=1"])
    with pytest.raises(confhub.BackendNotFoundError) as info:
        hub.start()
    assert "example" not in info.value.installed
    assert "file" in info.value.installed


def test_block_removes_a_builtin_backend() -> None:
    """Hub(block=['env']) unregisters the env backend."""
    hub = Hub(["env:APP_"], block=["env"], autoload=False)
    with pytest.raises(confhub.BackendNotFoundError):
        hub.start()


def test_block_removes_an_entry_point_plugin() -> None:
    """Blocking an entry-point name keeps that plugin out."""
    _example_installed()
    hub = Hub(["example:a=1"], block=["example"])
    with pytest.raises(confhub.BackendNotFoundError):
        hub.start()


def test_misspelt_hook_implementation_is_an_error() -> None:
    """A hookimpl whose name matches no hookspec fails loudly at construction."""

    class Typo:
        @confhub.hookimpl
        def confhub_make_backed(self, spec: object) -> None:  # sic
            return None

    with pytest.raises(PluginError, match="confhub_make_backed"):
        Hub([], plugins=[Typo()], autoload=False)


def test_explicit_plugin_object_provides_a_backend() -> None:
    """Hub(plugins=[...]) registers a plugin object."""

    class Static:
        @confhub.hookimpl
        def confhub_make_backend(self, spec: confhub.SourceSpec) -> object:
            if spec.scheme != "static":
                return None

            class B:
                def load(self) -> confhub.Layer:
                    return confhub.Layer.from_mapping({"x": {"y": 1}}, source=spec.display)

                def close(self) -> None:
                    pass

            return B()

    with Hub(["static:"], plugins=[Static()], autoload=False) as hub:
        assert hub.get("x.y") == 1


def test_a_plugin_declaring_the_deprecated_hub_still_works_and_is_warned() -> None:
    """An implementation written before ``settings`` (``(spec, hub)``) still gets the hub,
    and its registration warns once, naming the signature to declare instead."""
    seen: list[object] = []

    class Old:
        @confhub.hookimpl
        def confhub_make_backend(self, spec: confhub.SourceSpec, hub: Hub) -> object:
            if spec.scheme != "old":
                return None
            seen.append(hub)
            from confhub.testing import MemoryBackend, MemoryStore

            return MemoryBackend(MemoryStore("old", {"x": "1"}))

    with pytest.warns(DeprecationWarning, match=r"declare confhub_make_backend\(spec, settings\)"):
        hub = Hub(["old:"], plugins=[Old()], autoload=False)
    with hub:
        assert hub.get("x") == "1"
    assert seen == [hub]


def test_each_plugin_instance_is_inspected_for_itself() -> None:
    """What registration finds is remembered per process only for confhub's own plugins:
    two instances of one third-party class, one holding a hook implementation in a slot
    and one not, each get exactly their own hooks, in either order."""

    class Dynamic:
        __slots__ = ("confhub_make_backend",)

    @confhub.hookimpl
    def confhub_make_backend(spec: confhub.SourceSpec) -> object:
        if spec.scheme != "dyn":
            return None

        class B:
            def load(self) -> confhub.Layer:
                return confhub.Layer.from_mapping({"d": 1}, source=spec.display)

            def close(self) -> None:
                pass

        return B()

    with_hook, without = Dynamic(), Dynamic()
    with_hook.confhub_make_backend = confhub_make_backend  # type: ignore[attr-defined]
    for first, second in ((with_hook, without), (without, with_hook)):
        hubs = {id(p): Hub(["dyn:"], plugins=[p], autoload=False) for p in (first, second)}
        with hubs[id(with_hook)] as hub:
            assert hub.get("d") == 1
        with pytest.raises(confhub.BackendNotFoundError), hubs[id(without)]:
            pass


def test_load_layer_wrapper_can_post_process() -> None:
    """A wrapper around confhub_load_layer sees and can replace the core's result."""

    class Upper:
        @confhub.hookimpl(wrapper=True)
        def confhub_load_layer(self, spec: confhub.SourceSpec, backend: object):  # type: ignore[no-untyped-def]
            layer = yield
            return confhub.Layer.from_flat(
                {k: str(v).upper() for k, v in layer.values.items()}, source=spec.display
            )

    with Hub([{"a": "x"}], plugins=[Upper()], autoload=False) as hub:
        assert hub.get("a") == "X"


class Port(int):
    """A custom type only a plugin's structure hook knows."""


@attrs.frozen
class WithPort:
    port: Port


def test_register_converters_hook_adds_types() -> None:
    """confhub_register_converters lets a plugin teach the converter a type."""

    class Ports:
        @confhub.hookimpl
        def confhub_register_converters(self, converter: object) -> None:
            converter.register_structure_hook(Port, lambda v, _: Port(int(v)))  # type: ignore[attr-defined]

    with Hub([{"port": "80"}], plugins=[Ports()], autoload=False) as hub:
        assert isinstance(hub.bind(WithPort).port, Port)


def test_the_converter_is_built_on_first_need_with_every_plugins_hooks(tmp_path: Path) -> None:
    """The hub builds its converter on first need: confhub_register_converters is called on
    every plugin (one registered after Hub() too) before the first bind, once per hub; an
    error a plugin raises there surfaces from that first need and every later one."""
    calls: list[str] = []

    class Ports:
        @confhub.hookimpl
        def confhub_register_converters(self, converter: cattrs.Converter) -> None:
            calls.append("ports")
            converter.register_structure_hook(Port, lambda v, _: Port(int(v)))

    class Late:
        @confhub.hookimpl
        def confhub_register_converters(self, converter: cattrs.Converter) -> None:
            calls.append("late")

    path = tmp_path / "app.json"
    path.write_text('{"port": "80"}')
    with Hub([f"file:{path}"], plugins=[Ports()], autoload=False) as hub:
        hub.pm.register(Late())
        assert calls == []  # a hub of a file that nothing binds builds no converter
        assert isinstance(hub.bind(WithPort).port, Port)
        assert sorted(calls) == ["late", "ports"]
        assert hub.converter is hub.converter
        hub.bind(WithPort)
        assert sorted(calls) == ["late", "ports"]

    class Broken:
        @confhub.hookimpl
        def confhub_register_converters(self, converter: cattrs.Converter) -> None:
            raise RuntimeError("Broken cannot register its types")

    with Hub([f"file:{path}"], plugins=[Broken()], autoload=False) as hub:
        assert hub.get("port") == "80"  # reads need no converter
        for _ in range(2):
            with pytest.raises(RuntimeError, match="Broken cannot register"):
                hub.bind(WithPort)
    # A defaults source needs the converter at start: the error comes from start().
    broken = Hub([{"port": "80"}], plugins=[Broken()], autoload=False)
    with pytest.raises(RuntimeError, match="Broken cannot register"):
        broken.start()
    assert broken.state is confhub.State.CLOSED


# -- what a backend receives ------------------------------------------------------------------


def test_backend_settings_carry_the_hubs_timeouts_and_retry_policy(tmp_path: object) -> None:
    """The hub's connect_timeout, start_timeout and retry policy reach the backend."""
    from confhub.testing import MemoryStore

    store = MemoryStore("app", {"a": "1"})
    with Hub(
        ["memory:app"],
        plugins=[store],
        autoload=False,
        cache_dir=tmp_path,
        connect_timeout=0.7,
        start_timeout=3.0,
        retry_initial=0.1,
        retry_max=4.0,
    ):
        pass
    assert store.settings == confhub.BackendSettings(
        connect_timeout=0.7,
        start_timeout=3.0,
        retry_initial=0.1,
        retry_max=4.0,
        cache_enabled=True,
    )


def test_backend_settings_say_the_cache_is_off_without_a_cache_dir() -> None:
    """cache_dir=None tells the backend that no disk cache will keep its layers."""
    from confhub.testing import MemoryStore

    store = MemoryStore("app", {"a": "1"})
    with Hub(["memory:app"], plugins=[store], autoload=False, cache_dir=None):
        pass
    assert store.settings is not None
    assert not store.settings.cache_enabled


def test_backend_settings_say_the_cache_is_off_when_the_cache_plugin_is_blocked(
    tmp_path: object,
) -> None:
    """Blocking the cache plugin turns caching off, and the backend is told so."""
    from confhub.testing import MemoryStore

    store = MemoryStore("app", {"a": "1"})
    with Hub(["memory:app"], plugins=[store], autoload=False, cache_dir=tmp_path, block=["cache"]):
        pass
    assert store.settings is not None
    assert not store.settings.cache_enabled


def test_backend_settings_defaults_are_the_hubs_defaults() -> None:
    """A backend built by hand (in a plugin's tests) gets what a default hub would pass."""
    import inspect

    hub_defaults = inspect.signature(Hub).parameters
    settings = confhub.BackendSettings()
    for name in ("connect_timeout", "start_timeout", "retry_initial", "retry_max"):
        assert getattr(settings, name) == hub_defaults[name].default, name
    assert settings.cache_enabled


def test_backend_settings_are_frozen() -> None:
    """Settings are a value: a backend cannot change what other backends see."""
    settings = confhub.BackendSettings()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.connect_timeout = 9.0  # type: ignore[misc]


def test_a_plugin_declaring_only_spec_and_settings_gets_them() -> None:
    """An implementation may declare (spec, settings), the recommended signature."""
    seen: list[confhub.BackendSettings] = []

    class Modern:
        @confhub.hookimpl
        def confhub_make_backend(
            self, spec: confhub.SourceSpec, settings: confhub.BackendSettings
        ) -> object:
            if spec.scheme != "modern":
                return None
            seen.append(settings)
            from confhub.testing import MemoryBackend, MemoryStore

            return MemoryBackend(MemoryStore("modern", {"x": "1"}), settings)

    with Hub(["modern:"], plugins=[Modern()], autoload=False, connect_timeout=1.5) as hub:
        assert hub.get("x") == "1"
    assert [s.connect_timeout for s in seen] == [1.5]


def test_a_backend_leaving_out_the_optional_attributes_gets_the_protocols_defaults() -> None:
    """What the core reads from a backend that has only ``load`` and ``close`` is the
    default declared on ``confhub.Backend``: one default, in one place."""
    from confhub import _backend

    class Bare:
        def load(self) -> confhub.Layer:
            return confhub.Layer.from_flat({}, source="bare:")

        def close(self) -> None:
            pass

    bare = Bare()
    assert _backend.is_cacheable(bare) is confhub.Backend.cacheable is False
    assert _backend.is_strict(bare) is confhub.Backend.strict_keys is True
    assert _backend.writes_cache(bare) is confhub.Backend.cache_writes is True
    assert _backend.cache_principal_of(bare) is confhub.Backend.cache_principal is None
    assert _backend.sharing_of(bare) is confhub.Backend.sharing is None
    assert _backend.resume_watch(bare, bare.load()) is False

    class Declared(confhub.Backend):
        strict_keys = False
        cacheable = True

        def load(self) -> confhub.Layer:
            return confhub.Layer.from_flat({}, source="declared:")

        def close(self) -> None:
            pass

    assert (_backend.is_strict(Declared()), _backend.is_cacheable(Declared())) == (False, True)


def test_every_backend_attribute_the_core_reads_is_declared_on_the_protocol() -> None:
    """The core reads a backend's optional attributes only through ``confhub._backend``'s
    readers, each defaulting to the ``Backend`` protocol's own default: no other module
    spells a default of its own with ``getattr(backend, "...", default)``."""
    import ast
    from pathlib import Path

    root = Path(confhub.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"getattr", "hasattr"}
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
            ):
                continue
            target = ast.unparse(node.args[0])
            if "backend" in target or target in {"inner", "b", "member"}:
                found.append((path.name, target, node.args[1].value))
    readers = {name for file, _, name in found if file == "_backend.py"}
    elsewhere = [f for f in found if f[0] != "_backend.py"]
    assert not elsewhere, f"read a backend attribute through confhub._backend instead: {elsewhere}"
    members = set(dir(confhub.Backend))
    optional_methods = {"watch", "write", "delete", "commit", "read"}  # can_watch() and so on
    assert readers - optional_methods <= members, readers - optional_methods - members


@attrs.frozen
class _Port:
    number: int


@attrs.frozen
class _Defaults:
    port: _Port


def test_attrs_defaults_unstructure_with_the_hubs_converter() -> None:
    """An attrs instance of defaults uses the unstructure hooks plugins registered."""

    class Hooks:
        @confhub.hookimpl
        def confhub_register_converters(self, converter: cattrs.Converter) -> None:
            converter.register_unstructure_hook(_Port, lambda p: f"port-{p.number}")

    with Hub([_Defaults(_Port(5432))], plugins=[Hooks()], autoload=False) as hub:
        assert hub.get("port") == "port-5432"

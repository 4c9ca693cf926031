"""The plugin manager each hub owns: builtins, entry points, explicit plugins."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from ._backend import BackendInfo, hookimpl
from ._cache import CachePlugin
from ._errors import BackendNotFoundError, PluginError

if TYPE_CHECKING:
    from ._backend import Backend, BackendSettings
    from ._layer import Layer
    from ._spec import SourceSpec

#: The entry-point group third-party plugins register under.
ENTRY_POINT_GROUP = "confhub"
#: Set to a true value to skip entry-point discovery (builtins and explicit plugins stay).
DISABLE_AUTOLOAD_ENV = "CONFHUB_DISABLE_PLUGIN_AUTOLOAD"

BUILTIN_PLUGINS = (
    ("core", "confhub._plugins"),
    ("defaults", "confhub._backends.defaults"),
    ("env", "confhub._backends.env"),
    ("file", "confhub._backends.file"),
    ("dotenv", "confhub._backends.dotenv"),
    ("secrets", "confhub._backends.secrets"),
    ("argv", "confhub._backends.argv"),
    ("memregistry", "confhub._memregistry"),  # the memory: registry store
)

_BUILTIN_NAMES = frozenset(name for name, _ in BUILTIN_PLUGINS) | {"cache"}


@hookimpl(trylast=True)
def confhub_load_layer(spec: SourceSpec, backend: Backend) -> Layer | None:
    """The core's layer loading: ask the backend."""
    return backend.load()


def _builtin_plugin(module_name: str) -> Any:
    """The plugin object of a builtin module: a new instance of its ``Plugin`` class when it
    keeps per-hub state there (each hub owns its plugins), else the module itself."""
    module = importlib.import_module(module_name)
    factory = getattr(module, "Plugin", None)
    return module if factory is None else factory()


def autoload_enabled(explicit: bool | None) -> bool:
    """Whether to load entry points: ``explicit`` if given, else the environment switch."""
    if explicit is not None:
        return explicit
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() in ("", "0", "false", "no")


def make_plugin_manager(
    plugins: Iterable[Any] = (), block: Sequence[str] = (), autoload: bool | None = None
) -> pluggy.PluginManager:
    """Build a plugin manager: builtins, then entry points, then ``plugins``.

    ``block`` names plugins (builtin or entry-point names) not to register. Hook
    implementations that match no hookspec raise :class:`PluginError`.
    """
    pm = pluggy.PluginManager("confhub")
    pm.add_hookspecs(hookspecs)
    for name in block:
        pm.set_blocked(name)
    for name, module in BUILTIN_PLUGINS:
        if not pm.is_blocked(name):
            pm.register(_builtin_plugin(module), name=name)
    if not pm.is_blocked("cache"):
        pm.register(CachePlugin(), name="cache")
    if autoload_enabled(autoload):
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:
            raise PluginError(
                f"loading the confhub plugins from entry points failed: {exc!r}; "
                f"uninstall the broken plugin, block it, or set {DISABLE_AUTOLOAD_ENV}=1"
            ) from exc
    for plugin in plugins:
        plugin_name: str | None = getattr(plugin, "confhub_plugin_name", None) or getattr(
            plugin, "__name__", None
        )
        if plugin_name and pm.is_blocked(plugin_name):
            continue
        try:
            pm.register(plugin, name=plugin_name)
        except ValueError as exc:
            raise PluginError(f"cannot register plugin {plugin!r}: {exc}") from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"{exc}; check the spelling against confhub.hookspecs (names start with 'confhub_')"
        ) from exc
    return pm


def make_backend(
    pm: pluggy.PluginManager, spec: SourceSpec, settings: BackendSettings, *, hub: Any
) -> Backend:
    """Create the backend object for ``spec`` through ``pm``'s plugins (no I/O), or raise
    :class:`BackendNotFoundError` listing the installed schemes. ``hub`` is passed only for
    plugins written before ``settings`` (deprecated)."""
    backend = pm.hook.confhub_make_backend(spec=spec, settings=settings, hub=hub)
    if backend is None:
        installed = sorted(
            {info.scheme for infos in pm.hook.confhub_backend_schemes() for info in infos}
        )
        raise BackendNotFoundError(
            f"no installed backend handles {spec.scheme!r} (source {spec.display}); "
            f"installed schemes: {', '.join(installed)}; install the plugin that provides "
            f"it (for example 'pip install confhub-{spec.scheme}') or fix the spec",
            spec=spec.display,
            scheme=spec.scheme,
            installed=installed,
        )
    return backend  # type: ignore[no-any-return]


def describe_plugins(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """List plugins with their schemes, distribution and version (``confhub backends``)."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    version = importlib.metadata.version("confhub")
    rows: list[dict[str, Any]] = []
    for impl in pm.hook.confhub_backend_schemes.get_hookimpls():
        infos: list[BackendInfo] = list(impl.function() or [])  # type: ignore[call-overload]
        dist = dists.get(id(impl.plugin))
        if dist is not None:
            distribution, dist_version = dist.project_name, dist.version
        elif impl.plugin_name in _BUILTIN_NAMES:
            distribution, dist_version = "confhub (builtin)", version
        else:
            distribution, dist_version = "(registered in code)", ""
        for info in infos:
            rows.append(
                {
                    "scheme": info.scheme,
                    "plugin": impl.plugin_name,
                    "distribution": distribution,
                    "version": dist_version,
                    "writable": info.writable,
                    "watchable": info.watchable,
                    "description": info.description,
                }
            )
    rows.sort(key=lambda r: r["scheme"])
    return rows

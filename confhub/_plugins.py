"""The plugin manager each hub owns: builtins, entry points, explicit plugins."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import types
from collections.abc import Callable, Iterable, Sequence
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


class _PluginManager(pluggy.PluginManager):
    """pluggy's manager, remembering what it found in confhub's own plugins.

    Registering a plugin looks at every name it has (``inspect.getattr_static`` on each,
    so that no property runs): ~0.2 ms per builtin module, most of a ``Hub()``'s cost,
    and always the same answer for the same module. The answers for the builtin plugin
    *modules*, for the instances of the builtin plugin *classes* (whose hook
    implementations are methods of the class; a name the instance holds itself is looked
    up again) and for the hookspecs module are kept per process; any other plugin is
    inspected every time, as pluggy does.
    """

    _parsing: tuple[Any, dict[str, Any], Any] | None = None

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        outer = self._parsing
        owner = _builtin_owner(plugin)
        if owner is not None:
            own = () if isinstance(plugin, types.ModuleType) else getattr(plugin, "__dict__", ())
            self._parsing = (plugin, _PARSED.setdefault(owner, {}), frozenset(own))
        try:
            return super().register(plugin, name)
        finally:
            self._parsing = outer

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        parsing = self._parsing
        if parsing is None or parsing[0] is not plugin or name in parsing[2]:
            return super().parse_hookimpl_opts(plugin, name)
        return _remembered(
            parsing[1], name, lambda: super(_PluginManager, self).parse_hookimpl_opts(plugin, name)
        )

    def parse_hookspec_opts(self, module_or_class: Any, name: str) -> Any:
        if module_or_class is not hookspecs:
            return super().parse_hookspec_opts(module_or_class, name)
        return _remembered(
            _PARSED.setdefault(hookspecs, {}),
            name,
            lambda: super(_PluginManager, self).parse_hookspec_opts(module_or_class, name),
        )


#: (module or class) -> attribute name -> its parsed hook options (None: not a hook).
_PARSED: dict[Any, dict[str, Any]] = {}
_UNSEEN: Any = object()


def _remembered(known: dict[str, Any], name: str, parse: Callable[[], Any]) -> Any:
    """``known[name]``, parsed once; a copy, since pluggy normalizes the options it gets in
    place (None: not a hook)."""
    opts = known.get(name, _UNSEEN)
    if opts is _UNSEEN:
        opts = known[name] = parse()
    return None if opts is None else dict(opts)


def _builtin_owner(plugin: Any) -> Any:
    """What the parsed options of ``plugin`` are kept under: the module of a builtin
    plugin module, the class of a builtin plugin class's instance; else None."""
    if isinstance(plugin, types.ModuleType):
        return plugin if plugin.__name__ in _BUILTIN_MODULES else None
    kind = type(plugin)
    if kind is CachePlugin or (kind.__name__ == "Plugin" and kind.__module__ in _BUILTIN_MODULES):
        return kind
    return None


_BUILTIN_MODULES = frozenset(module for _, module in BUILTIN_PLUGINS)


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
    pm = _PluginManager("confhub")
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

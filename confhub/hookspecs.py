"""The whole plugin contract of confhub, in one module.

A plugin is a module or object with functions marked ``@confhub.hookimpl`` whose names
match the specs below (a misspelt name is an error when the Hub is created). Plugins are found
through the entry-point group ``confhub``; the builtin backends (``defaults``, ``env``,
``file``) register through these same hooks. Every hook is called with keyword arguments,
so an implementation may accept any subset of a spec's arguments.

Hooks are called once per source, layer or snapshot, never per key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import cattrs

    from ._backend import Backend, BackendInfo, BackendSettings
    from ._hub import Hub
    from ._layer import Layer
    from ._registry_types import RegistryBackend
    from ._snapshot import Change, Snapshot
    from ._spec import SourceSpec

hookspec = pluggy.HookspecMarker("confhub")

# -- lifecycle ---------------------------------------------------------------------------


@hookspec(historic=True)
def confhub_configure(hub: Hub) -> None:
    """A hub is starting; plugins may keep a reference to it.

    Historic: a plugin registered later is called at registration.
    """


@hookspec
def confhub_unconfigure(hub: Hub) -> None:
    """The hub is closing; release what ``confhub_configure`` acquired. Called in every plugin."""


# -- backends ----------------------------------------------------------------------------


@hookspec
def confhub_backend_schemes() -> list[BackendInfo]:  # type: ignore[empty-body]
    """Return the schemes this plugin provides (for ``confhub backends`` and error messages).

    Called in every plugin; results are concatenated.
    """


@hookspec(
    firstresult=True,
    warn_on_impl_args={
        "hub": DeprecationWarning(
            "confhub_make_backend(hub) is deprecated: declare confhub_make_backend(spec, "
            "settings) and read the hub's timeouts, retry and cache policy from settings "
            "(a confhub.BackendSettings)"
        )
    },
)
def confhub_make_backend(spec: SourceSpec, settings: BackendSettings, hub: Hub) -> Backend | None:
    """Return a backend object for ``spec``, or ``None`` when ``spec.scheme`` is not yours.

    Stops at first non-None result. ``settings`` carries the hub's timeouts, retry and cache
    policy (:class:`confhub.BackendSettings`); a spec's own options win over them. ``hub``
    is deprecated and kept only for plugins written before ``settings`` (an implementation
    that declares it gets a ``DeprecationWarning`` when registered): declare
    ``confhub_make_backend(spec, settings)``. Raise :class:`confhub.SpecError` for a spec of
    your scheme that is malformed (name the option and the fix). Do no I/O here: connect in
    ``load``.
    """


@hookspec(firstresult=True)
def confhub_load_layer(spec: SourceSpec, backend: Backend) -> Layer | None:
    """Load the layer of one source.

    Stops at first non-None result. The core's implementation (``trylast``) calls
    ``backend.load()``; wrap it (``wrapper=True``) to add caching, metrics or decryption.
    Raise :class:`confhub.SourceUnavailableError` for a transient failure (fallbacks apply),
    :class:`confhub.SourceFormatError` for broken content (never falls back).
    """


@hookspec(firstresult=True)
def confhub_load_cached(spec: SourceSpec, backend: Backend) -> Layer | None:
    """Return the last good layer of ``spec`` kept locally, or ``None``.

    Stops at first non-None result. The hub calls it only after every live member of the
    source's precedence slot failed (live, then alternates, then caches). The builtin
    ``cache`` plugin implements it from its on-disk cache.
    """


@hookspec
def confhub_layer_accepted(spec: SourceSpec, layer: Layer, backend: Backend) -> None:
    """A live layer of ``spec`` passed validation and is now part of the published view.

    Called on the hub's ``confhub-persist`` thread, never on the notifier thread, so a slow
    implementation (the cache writes its file here, with fsyncs) never delays subscribers.
    Coalesced per source: when updates arrive faster than the calls finish, only the latest
    accepted layer of a source is passed (the earlier ones are skipped); the calls still
    pending when the hub closes are made before ``close()`` returns. Called in every plugin;
    a raising implementation is logged and ignored.
    """


@hookspec
def confhub_source_failed(spec: SourceSpec, error: BaseException, fallback: str | None) -> None:
    """Loading or watching ``spec`` failed with ``error``; ``fallback`` names what serves
    instead (``"cache"``, an alternate source, ``"last good"``) or is ``None``.

    Called in every plugin, once per state change (not once per retry).
    """


# -- service registry --------------------------------------------------------------------


@hookspec(firstresult=True)
def confhub_make_registry(spec: SourceSpec, settings: BackendSettings) -> RegistryBackend | None:
    """Return a registry store for ``spec`` (a :class:`confhub.RegistryBackend`), or ``None``
    when ``spec.scheme`` is not yours.

    Stops at first non-None result. Used by :class:`confhub.Registry` for service
    registration, discovery, locks and elections. ``settings`` carries the timeouts and the
    retry policy; every call of the returned object is bounded by
    ``settings.connect_timeout`` unless it takes a timeout, and an unreachable store raises
    :class:`confhub.SourceUnavailableError`. Raise :class:`confhub.SpecError` for a malformed
    spec of your scheme. Do no I/O here: connect on the first call.
    """


# -- typed binding -----------------------------------------------------------------------


@hookspec(historic=True)
def confhub_register_converters(converter: cattrs.Converter) -> None:
    """Register structure hooks on the hub's cattrs converter (custom types, coercions).

    Historic: a plugin registered later is called at registration.
    """


# -- snapshots ---------------------------------------------------------------------------


@hookspec
def confhub_validate_snapshot(snapshot: Snapshot, previous: Snapshot | None) -> None:
    """Raise to veto a new snapshot before it is published; the last good one stays.

    Raise :class:`confhub.ConfigValidationError` (or any exception) with a message naming
    the key and the fix. Called in every plugin.
    """


@hookspec
def confhub_snapshot_published(change: Change, subscriber_seconds: float) -> None:
    """A new snapshot was published and its subscribers were called.

    ``subscriber_seconds`` is the time the hub's subscribers took for ``change``, all of them
    (a metric of slow callbacks). Called in every plugin, on the hub's notifier thread, after
    the subscribers.
    """


# -- command line --------------------------------------------------------------------------


@hookspec
def confhub_demo(out: Any, workdir: str) -> bool | None:
    """Extend ``confhub demo`` with a backend's part (write to ``out``; return True if run).

    Called in every plugin after the core's steps; ``workdir`` is a scratch directory.
    """

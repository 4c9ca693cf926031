"""confhub plugin entry point for the Consul backend (entry point ``consul``, group ``confhub``).

``confhub_make_backend`` and ``confhub_make_registry`` only parse the spec: no I/O happens
until the hub calls ``load`` or the registry its first method.
"""

from __future__ import annotations

from confhub import BackendInfo, BackendSettings, SourceSpec, hookimpl

from ._backend import ConsulBackend
from ._options import VOLATILE_OPTIONS
from ._registry import ConsulRegistry


@hookimpl
def confhub_backend_schemes() -> list[BackendInfo]:
    """The ``consul`` scheme: Consul KV, watched with blocking queries, writable with CAS."""
    return [
        BackendInfo(
            "consul",
            "Consul KV: a key prefix as a tree, or one key holding a JSON/YAML/TOML document",
            writable=True,
            watchable=True,
            volatile_options=VOLATILE_OPTIONS,
        )
    ]


@hookimpl
def confhub_make_backend(spec: SourceSpec, settings: BackendSettings) -> ConsulBackend | None:
    """A :class:`ConsulBackend` for ``consul://`` specs (parses options, no I/O)."""
    if spec.scheme != "consul":
        return None
    return ConsulBackend(spec, settings)


@hookimpl
def confhub_make_registry(spec: SourceSpec, settings: BackendSettings) -> ConsulRegistry | None:
    """A :class:`ConsulRegistry` for ``consul://`` specs (parses options, no I/O)."""
    if spec.scheme != "consul":
        return None
    return ConsulRegistry(spec, settings)

"""confhub plugin entry point for the Consul backend (entry point ``consul``, group ``confhub``).

``confhub_make_backend`` only parses the spec: no I/O happens until the hub calls ``load``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from confhub import BackendInfo, hookimpl

from ._backend import ConsulBackend

if TYPE_CHECKING:
    from confhub import Hub, SourceSpec


@hookimpl
def confhub_backend_schemes() -> list[BackendInfo]:
    """The ``consul`` scheme: Consul KV, watched with blocking queries, writable with CAS."""
    return [
        BackendInfo(
            "consul",
            "Consul KV: a key prefix as a tree, or one key holding a JSON/YAML/TOML document",
            writable=True,
            watchable=True,
        )
    ]


@hookimpl
def confhub_make_backend(spec: SourceSpec, hub: Hub) -> ConsulBackend | None:
    """A :class:`ConsulBackend` for ``consul://`` specs (parses options, no I/O)."""
    if spec.scheme != "consul":
        return None
    return ConsulBackend(
        spec,
        connect_timeout=float(getattr(hub, "connect_timeout", 2.0)),
        retry_initial=float(getattr(hub, "retry_initial", 0.5)),
        retry_max=float(getattr(hub, "retry_max", 30.0)),
    )

"""confhub plugin entry point for the etcd backend (entry point ``etcd`` in group ``confhub``).

Implements ``confhub_backend_schemes``, ``confhub_make_backend`` (scheme ``etcd``, no I/O),
``confhub_make_registry`` (the service registry on etcd, no I/O) and ``confhub_demo``. The
backend itself is :class:`confhub_etcd._backend.EtcdBackend`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from confhub import BackendInfo, hookimpl

if TYPE_CHECKING:
    from confhub import BackendSettings, SourceSpec

    from ._backend import EtcdBackend
    from ._registry import EtcdRegistry

__all__ = [
    "confhub_backend_schemes",
    "confhub_demo",
    "confhub_make_backend",
    "confhub_make_registry",
]


@hookimpl
def confhub_backend_schemes() -> list[BackendInfo]:
    """The ``etcd`` scheme: watchable and writable."""
    return [
        BackendInfo(
            "etcd",
            "etcd v3 key prefix or document key (etcd://host:2379/prefix/)",
            writable=True,
            watchable=True,
            # _config.VOLATILE_OPTIONS, spelled out: importing _config would load the kit
            # and the client's value types at plugin discovery.
            volatile_options=frozenset(
                {
                    "page_size",
                    "progress_interval",
                    "max_receive_bytes",
                    "timeout",
                    "retry_initial",
                    "retry_max",
                }
            ),
        )
    ]


@hookimpl
def confhub_make_backend(spec: SourceSpec, settings: BackendSettings) -> EtcdBackend | None:
    """An :class:`EtcdBackend` for ``etcd:`` specs; ``None`` for other schemes. No I/O.

    ``?timeout=`` defaults to ``settings.connect_timeout`` (the hub's)."""
    if spec.scheme != "etcd":
        return None
    from ._backend import make_backend  # noqa: PLC0415 - keep plugin discovery free of gRPC

    return make_backend(spec, settings)


@hookimpl
def confhub_make_registry(spec: SourceSpec, settings: BackendSettings) -> EtcdRegistry | None:
    """An :class:`EtcdRegistry` for ``etcd:`` specs; ``None`` for other schemes. No I/O."""
    if spec.scheme != "etcd":
        return None
    from ._registry import make_registry  # noqa: PLC0415 - keep plugin discovery free of gRPC

    return make_registry(spec, settings)


@hookimpl
def confhub_demo(out: Any, workdir: str) -> bool:
    """``confhub demo``'s etcd part; False (with a hint) when no etcd binary is found."""
    from ._demo import run  # noqa: PLC0415 - the demo pulls in the test harness

    return run(out, workdir)

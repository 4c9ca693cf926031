"""confhub's etcd v3 backend.

The confhub-facing plugin lives in ``confhub_etcd._plugin`` (entry point group ``confhub``,
name ``etcd``). The confhub-independent etcd client layer (paged reads at one revision, a
resilient prefix watcher, compare-and-swap writes; see ``docs/client-notes.md`` for its
modules) is public through the names below: :class:`EtcdClient`, the value types its
constructor takes (:class:`Credentials`, :class:`TLSConfig`) and its exception tree
(:class:`EtcdError` and subclasses). ``confhub_etcd.testing`` is a harness that runs real etcd
members for tests, with hooks on the client.

Nothing heavy is imported here: importing the package does not load gRPC; the names below are
imported from ``confhub_etcd._client`` on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._client import (
        Credentials,
        EtcdAuthError,
        EtcdCASConflict,
        EtcdClient,
        EtcdClosedError,
        EtcdCompacted,
        EtcdError,
        EtcdForkError,
        EtcdLimitError,
        EtcdTLSError,
        EtcdTooManyKeys,
        EtcdUnavailable,
        TLSConfig,
    )

__all__ = [
    "Credentials",
    "EtcdAuthError",
    "EtcdCASConflict",
    "EtcdClient",
    "EtcdClosedError",
    "EtcdCompacted",
    "EtcdError",
    "EtcdForkError",
    "EtcdLimitError",
    "EtcdTLSError",
    "EtcdTooManyKeys",
    "EtcdUnavailable",
    "TLSConfig",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        value = getattr(importlib.import_module("._client", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

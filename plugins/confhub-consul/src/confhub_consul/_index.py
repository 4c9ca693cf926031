"""Consul's blocking-query index rules, shared by every loop that blocks on an index.

From Consul's client contract (``features/blocking``, ``shared/consul-api.md`` 2.7): parse
``X-Consul-Index`` as an integer (a missing or unreadable header is an unusable answer);
never send an index below 1 (``index=0`` does not block, so a loop on it would spin); and
when a returned index is *lower* than the one asked for (snapshot restore, tombstone GC,
another cluster), reset: that answer is a full read of the current state and its index is
the new base. The KV watch (:mod:`~confhub_consul._watch`) and the registry's waits
(:mod:`~confhub_consul._registry`, :mod:`~confhub_consul._lock`) all follow these.
"""

from __future__ import annotations

from confhub import SourceUnavailableError

from ._http import Response


def response_index(resp: Response, source: str) -> int:
    """The ``X-Consul-Index`` of ``resp``, floored at 1; SourceUnavailableError without one."""
    raw = resp.header("X-Consul-Index")
    try:
        index = int(raw or "")
    except ValueError as exc:
        raise SourceUnavailableError(
            f"{source}: Consul sent no usable X-Consul-Index ({raw!r}); retrying", source=source
        ) from exc
    return max(index, 1)


def query_index(index: int) -> int:
    """The index to block on after an answer at ``index``: never below 1."""
    return max(index, 1)


def went_back(asked: int, returned: int) -> bool:
    """Whether an answer's index went backwards: reset, its state is the new base."""
    return returned < asked

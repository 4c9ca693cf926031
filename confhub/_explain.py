"""Explain: where a key's value comes from, read off a snapshot and the slots' health.

A pure function of its inputs (a :class:`Snapshot` and one :class:`SourceHealth` per slot):
it does no I/O and takes no lock, so ``Hub.explain`` is as cheap as a read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from ._errors import ConfigKeyError
from ._health import SourceHealth
from ._layer import Layer, to_json
from ._redact import REDACTED, redact_value
from ._snapshot import Snapshot


@attrs.frozen
class Origin:
    """Where one layer's value of a key comes from."""

    source: str
    value: Any
    detail: str | None
    revision: Any
    effective: bool


@attrs.frozen
class Explanation:
    """Why a key has its value: the winning source and every layer that also sets it.

    Values of keys that look secret (``password``, ``token``, ``api_key`` ...) are replaced
    by ``"<redacted>"`` unless ``reveal=True`` was asked for.
    """

    key: str
    value: Any
    source: str
    detail: str | None
    revision: Any
    stale: bool
    state: str
    overridden: tuple[Origin, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``confhub explain --json`` contract)."""
        return {
            "key": self.key,
            "value": to_json(self.value),
            "source": self.source,
            "detail": self.detail,
            "revision": self.revision,
            "stale": self.stale,
            "state": self.state,
            "overridden": [
                {"source": o.source, "value": to_json(o.value), "detail": o.detail}
                for o in self.overridden
            ],
        }


def explain(
    snapshot: Snapshot, sources: Sequence[SourceHealth], key: str, *, reveal: bool = False
) -> Explanation:
    """Explain ``key`` in ``snapshot``; ``sources`` is the health of each slot, lowest first.

    Raises :class:`ConfigKeyError` when no source provides a leaf at ``key``.
    """
    index = snapshot.origin_index(key)
    if index is None:
        snapshot[key]  # raises ConfigKeyError with hints, or returns a table
        raise ConfigKeyError(
            key,
            f"{key!r} is a table, not a value; explain one of its keys, such as "
            f"{next(k for k in snapshot.flat() if k.startswith(key + '.'))!r}",
        )

    def shown(value: Any, layer: Layer) -> Any:
        if reveal:
            return value
        # A secret layer's values are secret whatever the key (a secrets directory).
        return REDACTED if layer.secret else redact_value(key, value)

    layers = snapshot.layers
    overridden = []
    for i in range(len(layers) - 1, -1, -1):
        layer = layers[i]
        if i == index or layer is None or key not in layer.values:
            continue
        overridden.append(
            Origin(
                sources[i].source,
                shown(layer.values[key], layer),
                layer.detail(key),
                layer.revision,
                False,
            )
        )
    layer = layers[index]
    assert layer is not None
    health = sources[index]
    return Explanation(
        key=key,
        value=shown(snapshot.flat()[key], layer),
        source=health.active if health.active is not None else health.source,
        detail=layer.detail(key),
        revision=layer.revision,
        stale=health.state.stale,
        state=health.state.value,
        overridden=tuple(overridden),
    )

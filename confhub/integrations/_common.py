"""What the web integrations share: the typed config with a test's overrides applied."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from .._hub import Hub

T = TypeVar("T")


class Overrides:
    """The values a test overrides, as a stack (``with`` blocks nest; the inner wins)."""

    def __init__(self) -> None:
        self._stack: list[Mapping[str, Any]] = []

    def __bool__(self) -> bool:
        return bool(self._stack)

    @contextlib.contextmanager
    def push(self, values: Mapping[str, Any]) -> Iterator[None]:
        """Apply ``values`` (dotted keys, relative to the root, not to a prefix) for the
        block."""
        entry = dict(values)
        self._stack.append(entry)
        try:
            yield
        finally:
            self._stack.remove(entry)

    def bind(self, hub: Hub, cls: type[T], prefix: str | None) -> T:
        """``cls`` bound from the hub's current snapshot with the overrides on top."""
        data = hub.snapshot().to_dict()
        for values in self._stack:
            for key, value in values.items():
                node = data
                *parents, leaf = key.split(".")
                for part in parents:
                    child = node.get(part)
                    copy = dict(child) if isinstance(child, Mapping) else {}
                    node[part] = copy
                    node = copy
                node[leaf] = value
        if prefix:
            for part in prefix.split("."):
                data = data.get(part, {})
        bound: T = hub.converter.structure(data, cls)
        return bound

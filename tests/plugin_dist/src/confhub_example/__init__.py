"""An example third-party backend: ``example:KEY=VALUE,KEY=VALUE`` serves those pairs.

It is the complete plugin the "writing a backend plugin" guide walks through.
"""

from __future__ import annotations

import confhub


class ExampleBackend:
    """Serves the ``KEY=VALUE`` pairs written in the spec."""

    def __init__(self, spec: confhub.SourceSpec) -> None:
        self.spec = spec

    def load(self) -> confhub.Layer:
        pairs = dict(p.split("=", 1) for p in self.spec.location.split(",") if "=" in p)
        return confhub.Layer.from_flat(
            pairs,
            source=self.spec.display,
            revision=1,
            details={k: f"pair {k}={v}" for k, v in pairs.items()},
        )

    def close(self) -> None:
        pass


@confhub.hookimpl
def confhub_backend_schemes() -> list[confhub.BackendInfo]:
    return [confhub.BackendInfo("example", "KEY=VALUE pairs in the spec (an example plugin)")]


@confhub.hookimpl
def confhub_make_backend(
    spec: confhub.SourceSpec, settings: confhub.BackendSettings
) -> ExampleBackend | None:
    if spec.scheme != "example":
        return None
    return ExampleBackend(spec)

"""A typed usage example, checked by ``mypy --strict`` in CI (it is not a test module)."""

from __future__ import annotations

import attrs

import confhub


@attrs.frozen
class Db:
    host: str
    port: int


@attrs.frozen
class AppConfig:
    db: Db
    debug: bool = False


def on_change(change: confhub.Change) -> None:
    for item in change.changes:
        print(item.key, item.old, item.new)


def main() -> int:
    hub = confhub.Hub([{"db": {"host": "localhost", "port": 5432}}, "env:APP_"])
    with hub:
        port: object = hub.get("db.port", default=5432)
        cfg: AppConfig = hub.bind(AppConfig)
        view: confhub.View[AppConfig] = hub.view(AppConfig)
        lenient: AppConfig = hub.bind(AppConfig, prefix=None, unknown="warn")
        current: AppConfig = view.current
        sub: confhub.Subscription = hub.subscribe(on_change, prefix="db")
        explanation: confhub.Explanation = hub.explain("db.port")
        health: confhub.Health = hub.health()
        sub.cancel()
        print(port, cfg, lenient, current.db.port, explanation.source, health.degraded)
    return 0

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
    spec: confhub.SourceSpec = confhub.sources.argv(["--db.port=5"], prefix="")
    from_file: confhub.Hub = confhub.Hub.from_config(None, sources=[spec], cache_dir=None)
    print(from_file.sources)
    return 0


def writes(hub: confhub.Hub) -> None:
    txn: confhub.Transaction = hub.transaction(source="etcd://127.0.0.1:2379/app/")
    revision: object = txn.put("db.host", "db2", expected_revision=12).delete("db.x").commit()
    with hub.transaction() as block:
        block.put("a", "1")
    updated: confhub.Updated = hub.update("counter", lambda v: str(int(v) + 1), retries=3)
    op: confhub.WriteOp = confhub.WriteOp.put("a", "1")
    print(revision, hub.delete("db.x"), updated.attempts, op.key, txn.ops)

"""Log records carry ``source``, ``state``, ``revision`` and ``generation`` as ``extra``
fields (for JSON log handlers), and never a value or a secret."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from confhub import Hub
from confhub.testing import MemoryStore

FIELDS = ("source", "state", "revision", "generation")


def _confhub_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "confhub"]


def test_a_rejected_update_and_the_recovery_log_structured_fields(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="confhub")
    config = tmp_path / "app.toml"
    config.write_text('password = "hunter2-secret"\nport = 1\n', encoding="utf-8")
    source = f"file:{config}"
    with Hub([source], autoload=False) as hub:
        config.write_text('password = "hunter2-secret"\nport = [\n', encoding="utf-8")
        for _ in range(400):
            if hub.health().sources[0].state == "stale":
                break
            time.sleep(0.05)
        config.write_text('password = "hunter2-secret"\nport = 2\n', encoding="utf-8")
        for _ in range(400):
            if hub.health().sources[0].state == "live" and hub.get("port") == 2:
                break
            time.sleep(0.05)
    records = _confhub_records(caplog)
    rejected = [r for r in records if "update rejected" in r.getMessage()]
    back = [r for r in records if "again" in r.getMessage()]
    assert rejected, [r.getMessage() for r in records]
    assert back, [r.getMessage() for r in records]
    for record in (rejected[0], back[0]):
        fields = {name: getattr(record, name) for name in FIELDS}
        assert fields["source"] == source
        json.dumps(fields)  # what a JSON handler does with them
        assert "hunter2" not in json.dumps(fields)
    assert rejected[0].state == "stale"
    assert back[0].state == "live"


def test_serving_the_cache_logs_the_state_and_the_revision(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore("app", {"db": {"port": 1}})
    options = {"autoload": False, "cache_dir": tmp_path}
    with Hub(["memory:app"], plugins=[store], **options):
        pass
    store.fail()
    caplog.set_level(logging.WARNING, logger="confhub")
    with Hub(["memory:app"], plugins=[store], **options) as hub:
        assert hub.health().sources[0].state == "cached"
    [record] = [r for r in _confhub_records(caplog) if "cached copy" in r.getMessage()]
    assert (record.source, record.state, record.revision) == ("memory:app", "cached", "1")

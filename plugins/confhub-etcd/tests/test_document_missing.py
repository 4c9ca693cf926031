"""A missing document key behaves like a missing file: required sources
fail with the fix, optional ones are empty; while watching, a deleted document key makes a
required source stale and an optional one empty, and writing it again recovers."""

from __future__ import annotations

import pytest
from backend_lib import FAST_OPTS, Events, make_hub, spec
from confhub import SourceUnavailableError, StartupError

from confhub_etcd.testing import EtcdServer

_FIX = "create it, fix the path, or add ?optional=true"


def test_required_missing_document_key_fails_start_naming_the_key_and_the_fix(
    etcd: EtcdServer,
) -> None:
    """Start-up fails with a SourceUnavailableError that names the key and the fix."""
    source = spec(etcd.endpoint, "/app/none.json", f"format=json&{FAST_OPTS}")
    with pytest.raises(StartupError) as info, make_hub([source]):
        pass
    errors = [error for _, error in info.value.attempts]
    assert any(isinstance(e, SourceUnavailableError) for e in errors), errors
    assert "/app/none.json" in str(info.value)
    assert _FIX in str(info.value)


def test_optional_missing_document_key_is_empty_until_written(etcd: EtcdServer) -> None:
    """?optional=true gives an empty, absent source; writing the key brings its values."""
    source = spec(etcd.endpoint, "/app/c.json", f"format=json&optional=true&{FAST_OPTS}")
    with make_hub([source]) as hub:
        events = Events(hub)
        assert hub.snapshot().to_dict() == {}
        assert hub.health().sources[0].state == "absent"
        etcd.put("/app/c.json", '{"db": {"port": 1}}')
        events.wait_value("db.port", 1)
        events.wait_state("live")


def test_deleted_required_document_key_is_stale_and_recovers(etcd: EtcdServer) -> None:
    """Deleting the key of a required document source reports SourceUnavailableError once,
    keeps the last good values (stale), and writing it again makes the source live."""
    etcd.put("/app/c.json", '{"db": {"port": 1}}')
    with make_hub([spec(etcd.endpoint, "/app/c.json", f"format=json&{FAST_OPTS}")]) as hub:
        events = Events(hub)
        etcd.delete("/app/c.json")
        events.wait_state("stale")
        # The state changes before the error event reaches the notifier thread.
        events.wait_for(lambda: bool(events.errors), what="the error event")
        assert hub.get("db.port") == 1
        errors = [e.error for e in events.errors]
        assert len(errors) == 1 and isinstance(errors[0], SourceUnavailableError), errors
        assert "/app/c.json" in str(errors[0]) and _FIX in str(errors[0])
        etcd.put("/app/c.json", '{"db": {"port": 2}}')
        events.wait_value("db.port", 2)
        events.wait_state("live")


def test_deleted_optional_document_key_empties_the_source_and_recovers(
    etcd: EtcdServer,
) -> None:
    """Deleting the key of an optional document source removes its values (absent), and
    writing it again brings them back."""
    etcd.put("/app/c.json", '{"db": {"port": 1}}')
    source = spec(etcd.endpoint, "/app/c.json", f"format=json&optional=true&{FAST_OPTS}")
    with make_hub([source]) as hub:
        events = Events(hub)
        etcd.delete("/app/c.json")
        events.wait_for(lambda: "db.port" not in hub, what="db.port gone")
        events.wait_state("absent")
        assert not events.errors
        etcd.put("/app/c.json", '{"db": {"port": 3}}')
        events.wait_value("db.port", 3)
        events.wait_state("live")

"""``env:PREFIX?exclude=...``: keeping the variables that wire the app out of its configuration."""

from __future__ import annotations

import logging

import pytest

import confhub
from confhub import Hub, SourceSpec


@pytest.fixture
def wiring_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVC_DB__PORT", "5433")
    monkeypatch.setenv("SVC_ETCD_URL", "etcd://127.0.0.1:2379/svc/")
    monkeypatch.setenv("SVC_CACHE_DIR", "/var/cache/svc")
    monkeypatch.setenv("SVC_CACHE_SECRETS", "false")


def test_without_exclude_wiring_variables_become_keys(wiring_env: None) -> None:
    """The default is unchanged: every variable with the prefix is a key."""
    with Hub(["env:SVC_"], cache_dir=None) as hub:
        assert hub.get("etcd_url") == "etcd://127.0.0.1:2379/svc/"


def test_exclude_names_and_globs_in_the_query_string(wiring_env: None) -> None:
    """``exclude=`` takes comma-separated names and globs matched against the whole name."""
    with Hub(["env:SVC_?exclude=SVC_ETCD_URL,SVC_CACHE_*"], cache_dir=None) as hub:
        assert hub.snapshot().to_dict() == {"db": {"port": "5433"}}


def test_exclude_as_a_keyword_list(wiring_env: None) -> None:
    """Given in code, ``exclude`` may be a list of names and globs."""
    spec = SourceSpec.parse("env:SVC_", exclude=["SVC_ETCD_URL", "SVC_CACHE_?IR"])
    with Hub([spec], cache_dir=None) as hub:
        assert "etcd_url" not in hub
        assert "cache_dir" not in hub
        assert hub.get("cache_secrets") == "false"


def test_excluded_variables_are_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """An excluded variable cannot make the source fail (a collision, bytes that are not UTF-8)."""
    monkeypatch.setenv("SVC_A", "1")
    monkeypatch.setenv("SVC_A__B", "2")  # a leaf/parent clash with SVC_A, unless excluded
    with Hub(["env:SVC_?exclude=SVC_A__*"], cache_dir=None) as hub:
        assert hub.snapshot().to_dict() == {"a": "1"}


def test_a_pattern_that_cannot_match_is_a_spec_error(wiring_env: None) -> None:
    """A pattern without the prefix (``ETCD_URL`` for ``env:SVC_``) names the fix."""
    with (
        pytest.raises(confhub.SpecError, match=r"'ETCD_URL'.*SVC_ETCD_URL"),
        Hub(["env:SVC_?exclude=ETCD_URL"], cache_dir=None),
    ):
        pass


def test_a_misspelt_option_is_a_warning(wiring_env: None, caplog: pytest.LogCaptureFixture) -> None:
    """``?exlude=`` is not silently ignored: a warning names the closest option."""
    with (
        caplog.at_level(logging.WARNING, logger="confhub"),
        Hub(["env:SVC_?exlude=SVC_ETCD_URL"], cache_dir=None) as hub,
    ):
        assert "etcd_url" in hub
    assert any(
        "'exlude'" in r.getMessage() and "'exclude'" in r.getMessage() for r in caplog.records
    )

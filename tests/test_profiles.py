"""Profiles: ``{profile}`` in a file-shaped source's path, from ``$CONFHUB_PROFILE``."""

from __future__ import annotations

from pathlib import Path

import pytest

import confhub


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "config.toml").write_text('[db]\nhost = "localhost"\nport = 5432\n')
    (tmp_path / "config.prod.toml").write_text('[db]\nhost = "db.prod"\n')
    (tmp_path / "config.dev.toml").write_text('[db]\nhost = "db.dev"\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


SOURCES = ["config.toml", "config.{profile}.toml?optional=true"]


def test_profile_picks_the_overlay_and_explain_names_the_file(
    files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONFHUB_PROFILE=prod reads config.prod.toml over config.toml; explain shows its path."""
    monkeypatch.setenv("CONFHUB_PROFILE", "prod")
    with confhub.Hub(SOURCES, cache_dir=None) as hub:
        assert (hub.get("db.host"), hub.get("db.port")) == ("db.prod", 5432)
        assert hub.explain("db.host").detail == f"{files / 'config.prod.toml'}:2"


def test_no_profile_reads_nothing_for_an_optional_overlay(
    files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CONFHUB_PROFILE unset an optional {profile} source contributes nothing."""
    monkeypatch.delenv("CONFHUB_PROFILE", raising=False)
    with confhub.Hub(SOURCES, cache_dir=None) as hub:
        assert hub.get("db.host") == "localhost"
        assert hub.health().sources[1].state in ("live", "absent")


def test_no_profile_for_a_required_source_is_an_error_naming_the_variable(
    files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A required {profile} source without a profile says which variable to set."""
    monkeypatch.delenv("CONFHUB_PROFILE", raising=False)
    with pytest.raises(confhub.SpecError, match=r"\$CONFHUB_PROFILE is not set"):
        confhub.Hub(["config.{profile}.toml"], cache_dir=None).start()


def test_profile_env_names_another_variable(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """?profile_env=APP_ENV reads the profile from $APP_ENV."""
    monkeypatch.setenv("APP_ENV", "dev")
    monkeypatch.setenv("CONFHUB_PROFILE", "prod")
    with confhub.Hub(["config.{profile}.toml?profile_env=APP_ENV"], cache_dir=None) as hub:
        assert hub.get("db.host") == "db.dev"


@pytest.mark.parametrize("profile", ["../etc", "a/b", "..", "prod dev"])
def test_a_profile_that_is_not_a_name_is_refused(
    files: Path, monkeypatch: pytest.MonkeyPatch, profile: str
) -> None:
    """A profile can pick a file beside the others, never a path elsewhere."""
    monkeypatch.setenv("CONFHUB_PROFILE", profile)
    with pytest.raises(confhub.SpecError, match="is not a profile name"):
        confhub.Hub(SOURCES, cache_dir=None).start()


def test_profile_applies_to_dotenv_and_secrets(
    files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """{profile} works the same in dotenv: and secrets: paths."""
    (files / ".env.prod").write_text("APP_LEVEL=warn\n")
    (files / "secrets-prod").mkdir()
    (files / "secrets-prod" / "token").write_text("t\n")
    monkeypatch.setenv("CONFHUB_PROFILE", "prod")
    sources = ["dotenv:.env.{profile}?prefix=APP_", "secrets:secrets-{profile}"]
    with confhub.Hub(sources, cache_dir=None) as hub:
        assert (hub.get("level"), hub.get("token")) == ("warn", "t")

"""Hub.from_config() and the CLI read one confhub.toml: the same sources, cache directory and
timeouts; ``confhub health`` reports a source served from cache, or a hub that cannot start."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from confhub_etcd.testing import EtcdServer

import confhub


def confhub_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "confhub", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "config.toml").write_text('[db]\nhost = "h"\nport = 5432\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONFHUB_CONFIG", raising=False)
    return tmp_path


def test_from_config_reads_confhub_toml(project: Path) -> None:
    """Sources, cache_dir and timeouts come from ./confhub.toml."""
    (project / "confhub.toml").write_text(
        'sources = ["config.toml", "env:APP_"]\ncache_dir = "cache"\nconnect_timeout = 0.5\n'
    )
    hub = confhub.Hub.from_config()
    assert (hub.sources, hub.cache_dir, hub.connect_timeout) == (
        ("file:config.toml", "env:APP_"),
        "cache",
        0.5,
    )
    with hub:
        assert hub.get("db.port") == 5432


def test_from_config_reads_pyproject_and_the_environment_variable(project: Path) -> None:
    """[tool.confhub] in pyproject.toml; $CONFHUB_CONFIG names another file and wins."""
    (project / "pyproject.toml").write_text('[tool.confhub]\nsources = ["config.toml"]\n')
    assert confhub.Hub.from_config().sources == ("file:config.toml",)
    other = project / "elsewhere.toml"
    other.write_text('sources = ["env:OTHER_"]\n')
    os.environ["CONFHUB_CONFIG"] = str(other)
    assert confhub.Hub.from_config().sources == ("env:OTHER_",)
    assert confhub.Hub.from_config(project / "pyproject.toml").sources == ("file:config.toml",)


def test_overrides_win_over_the_file(project: Path) -> None:
    """Keyword arguments replace the file's values, sources included."""
    (project / "confhub.toml").write_text('sources = ["config.toml"]\ncache_dir = "cache"\n')
    hub = confhub.Hub.from_config(cache_dir=None, sources=["env:APP_"])
    assert (hub.sources, hub.cache_dir) == (("env:APP_",), None)


def test_no_config_file_is_an_error_saying_where_it_looked(project: Path) -> None:
    """Without a file, ConfigFileError names the directory and the ways to fix it."""
    with pytest.raises(confhub.ConfigFileError, match=r"no confhub.toml.*CONFHUB_CONFIG"):
        confhub.Hub.from_config()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('sources = "config.toml"\n', "sources"),
        ("sources = []\ncache_dir = 5\n", "cache_dir"),
        ("sources = []\nconnect_timeout = -1\n", "connect_timeout"),
        ("sources = []\nstart_timeout = true\n", "start_timeout"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_key(project: Path, text: str, key: str) -> None:
    """ConfigFileError carries the file and the key, and its message the fix."""
    (project / "confhub.toml").write_text(text)
    with pytest.raises(confhub.ConfigFileError, match=key) as info:
        confhub.Hub.from_config()
    assert (info.value.path, info.value.key) == ("confhub.toml", key)
    assert isinstance(info.value, confhub.SpecError)


def test_unknown_key_is_a_warning(project: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An unknown key is logged with the closest known one, and the hub is built."""
    (project / "confhub.toml").write_text('sources = ["config.toml"]\ncache_dirs = "x"\n')
    with caplog.at_level(logging.WARNING, logger="confhub"):
        confhub.Hub.from_config()
    assert "ignoring unknown key 'cache_dirs'; did you mean 'cache_dir'?" in caplog.text


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    with EtcdServer() as server:
        yield server


def test_cli_health_reports_the_cache_the_app_wrote(project: Path, etcd: EtcdServer) -> None:
    """App and CLI share confhub.toml: with etcd down the CLI serves the app's cache, DEGRADED."""
    etcd.put("/app/db/port", "6543")
    spec = f"etcd://{etcd.endpoints[0]}/app/"
    (project / "confhub.toml").write_text(
        f'sources = ["config.toml", "{spec}"]\ncache_dir = "app-cache"\nconnect_timeout = 1.0\n'
    )
    with confhub.Hub.from_config() as hub:  # the app: writes its cache where the file says
        assert hub.get("db.port") == "6543"
    etcd.stop()
    proc = confhub_cli("health", cwd=project)
    assert proc.returncode == 0, proc.stderr
    first, *lines = proc.stdout.splitlines()
    assert first.startswith("DEGRADED (generation 1): ")
    assert f"{spec} is cached (failed)" in first
    assert any(line.split()[:2] == ["cached", spec] for line in lines), lines
    report = json.loads(confhub_cli("health", "--json", cwd=project).stdout)
    assert (report["degraded"], report["started"]) == (True, True)
    assert [s["state"] for s in report["sources"]] == ["live", "cached"]
    assert report["reason"] == f"{spec} is cached (failed)"
    got = confhub_cli("get", "db.port", cwd=project)
    assert (got.returncode, got.stdout) == (0, "6543\n")


def test_cli_health_reports_a_hub_that_cannot_start(project: Path, etcd: EtcdServer) -> None:
    """No cache and etcd down: health still prints DEGRADED with the reason, and exits 3."""
    spec = f"etcd://{etcd.endpoints[0]}/app/"
    etcd.stop()
    (project / "confhub.toml").write_text(
        f'sources = ["config.toml", "{spec}"]\ncache_dir = "empty-cache"\nconnect_timeout = 0.5\n'
    )
    proc = confhub_cli("health", cwd=project)
    assert proc.returncode == 3, proc.stderr
    first, *lines = proc.stdout.splitlines()
    assert first.startswith("DEGRADED (not started): ")
    assert spec in first
    assert len(lines) == 2
    report = json.loads(confhub_cli("health", "--json", cwd=project).stdout)
    assert (report["degraded"], report["started"]) == (True, False)
    assert spec in report["reason"]
    assert [s["source"] for s in report["sources"]] == ["file:config.toml", spec]
    assert report["sources"][1]["failed"] is True


def test_cli_health_reports_broken_content_with_exit_4(project: Path) -> None:
    """A file that does not parse: the report says why, exit 4 (broken content)."""
    (project / "config.toml").write_text("[db\n")
    proc = confhub_cli("-s", "config.toml", "health", cwd=project)
    assert proc.returncode == 4, proc.stderr
    assert proc.stdout.startswith("DEGRADED (not started): file:config.toml")


def test_cli_uses_the_hubs_default_cache_directory(project: Path, etcd: EtcdServer) -> None:
    """Without cache_dir anywhere, app and CLI share the one default ($CONFHUB_CACHE_DIR)."""
    etcd.put("/app/a", "1")
    spec = f"etcd://{etcd.endpoints[0]}/app/"
    (project / "confhub.toml").write_text(f'sources = ["{spec}"]\nconnect_timeout = 1.0\n')
    with confhub.Hub.from_config() as hub:
        assert hub.get("a") == "1"
    etcd.stop()
    proc = confhub_cli("health", "--json", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["sources"][0]["state"] == "cached"

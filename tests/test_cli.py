"""The command line: outputs, JSON contracts and exit codes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from confhub import main


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "c.toml"
    path.write_text('[db]\nhost = "h"\nport = 5432\npassword = "hunter2"\n')
    monkeypatch.setenv("APP_DB__PORT", "6432")
    return path


def test_get_prints_the_effective_value(config: Path) -> None:
    """get prints the value of the highest layer."""
    assert run("-s", str(config), "-s", "env:APP_", "get", "db.port") == (0, "6432\n")
    code, out = run("-s", str(config), "get", "db", "--json")
    assert code == 0
    assert json.loads(out) == {"host": "h", "port": 5432, "password": "hunter2"}


def test_get_missing_key_exits_1(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing key exits 1 with the key named on stderr."""
    assert run("-s", str(config), "get", "db.nope")[0] == 1
    assert "'db.nope'" in capsys.readouterr().err


def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No sources or a bad command exits 2."""
    monkeypatch.chdir(tmp_path)
    assert run("get", "x")[0] == 2
    assert "no sources" in capsys.readouterr().err
    assert run("frobnicate")[0] == 2


def test_required_source_unavailable_exits_3(tmp_path: Path) -> None:
    """A required source that cannot be loaded exits 3."""
    assert run("-s", str(tmp_path / "missing.toml"), "get", "a")[0] == 3


def test_broken_content_exits_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that does not parse exits 4 naming the file and line."""
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,\n "a": 2}')
    assert run("-s", str(bad), "dump")[0] == 4
    err = capsys.readouterr().err
    assert "duplicate key" in err
    assert str(bad) in err


def test_dump_redacts_secrets_unless_revealed(config: Path) -> None:
    """dump hides secret-looking values by default."""
    code, out = run("-s", str(config), "dump")
    assert code == 0
    assert json.loads(out)["db"]["password"] == "<redacted>"
    assert json.loads(run("-s", str(config), "dump", "--reveal")[1])["db"]["password"] == "hunter2"


def test_dump_toml_round_trips(config: Path) -> None:
    """dump --format toml produces TOML that parses to the same data."""
    import tomllib

    code, out = run("-s", str(config), "dump", "--format", "toml", "--reveal")
    assert code == 0
    assert tomllib.loads(out) == {"db": {"host": "h", "port": 5432, "password": "hunter2"}}


def test_explain_json_contract(config: Path) -> None:
    """explain --json gives value, source, detail, revision, stale and what it overrides."""
    code, out = run("-s", str(config), "-s", "env:APP_", "explain", "db.port", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["value"] == "6432"
    assert data["source"] == "env:APP_"
    assert data["detail"] == "$APP_DB__PORT"
    assert data["stale"] is False
    assert data["overridden"][0]["detail"] == f"{config}:3"


def test_explain_all_redacts(config: Path) -> None:
    """explain with no key lists every key, secrets redacted."""
    code, out = run("-s", str(config), "explain")
    assert code == 0
    assert "db.password = '<redacted>'" in out
    assert "hunter2" not in out


def test_health_json(config: Path) -> None:
    """health --json reports each source's state."""
    code, out = run("-s", str(config), "health", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["degraded"] is False
    assert data["sources"][0]["state"] == "live"


def test_sources_from_confhub_toml(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sources can come from confhub.toml in the working directory."""
    (tmp_path / "confhub.toml").write_text(f"sources = [{json.dumps(str(config))}]\n")
    monkeypatch.chdir(tmp_path)
    assert run("get", "db.host") == (0, "h\n")


def test_sources_from_pyproject(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[tool.confhub] in pyproject.toml works too."""
    (tmp_path / "pyproject.toml").write_text(
        f"[tool.confhub]\nsources = [{json.dumps(str(config))}]\n"
    )
    monkeypatch.chdir(tmp_path)
    assert run("get", "db.host") == (0, "h\n")


def test_set_on_read_only_source_exits_4(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """set against a file explains that it is read-only."""
    assert run("set", str(config), "db.port", "1")[0] == 4
    assert "read-only" in capsys.readouterr().err


def _has_inotify(pid: int) -> bool:
    """Whether process ``pid`` holds an inotify descriptor (its file watch has started)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                return True
        except OSError:
            continue
    return False


def test_watch_prints_json_lines(config: Path) -> None:
    """watch --json prints one JSON object per effective change.

    No sleeps sized for an idle machine (a loaded one took over 16 s to start the CLI, so
    its first change was not the 5432 -> first write one): the writes start once the CLI
    watches the file (it holds an inotify descriptor; it loaded the file before), and are
    repeated until it prints, each a new port; the timeouts are hang guards only.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "confhub", "-s", f"file:{config}?settle=0.01", "watch", "--json",
         "--count", "1", "--timeout", "300"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    written = [5432]
    try:
        deadline = time.monotonic() + 240  # a hang guard
        while proc.poll() is None and not _has_inotify(proc.pid):
            assert time.monotonic() < deadline, "the CLI never started watching"
            time.sleep(0.05)
        while proc.poll() is None and time.monotonic() < deadline:
            written.append(written[-1] + 1 if len(written) > 1 else 7001)
            config.write_text(f'[db]\nhost = "h"\nport = {written[-1]}\npassword = "hunter2"\n')
            time.sleep(0.3)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    line = json.loads(out.splitlines()[0])
    assert line["key"] == "db.port"
    # The change from the value it loaded: 5432, or a write that landed between its watch
    # starting and its subscription (a window of microseconds), never one it did not see.
    assert line["old"] in written[:-1], (line, written)
    assert line["new"] in written[written.index(line["old"]) + 1 :], (line, written)
    assert line["source"] == f"file:{config}"
    assert set(line) == {"generation", "key", "old", "new", "source"}


def test_demo_runs() -> None:
    """The demo completes and shows a live change and a rejected bad save."""
    code, out = run("demo")
    assert code == 0
    assert "db2.internal" in out
    assert "rejected" in out
    assert "pod-b leads with token" in out

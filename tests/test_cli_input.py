"""The command line on bad input: exit 2 and one ``confhub:`` line naming the fault and the fix.

Exit 1 means "the key is missing", so ``confhub get k || fallback`` must never see it for
anything else. These tests run the real program (``python -m confhub``) in a subprocess, so an
uncaught exception (which Python reports as exit 1) fails them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest


def confhub(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "confhub", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_usage_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 2, no traceback, and exactly one ``confhub:`` line holding ``words``."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("confhub: ")]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "c.toml").write_text("a = 1\n")
    return tmp_path


def test_config_option_naming_a_directory_exits_2(project: Path) -> None:
    """``-c DIR`` is a usage error that names the directory and asks for the file in it."""
    (project / "conf").mkdir()
    line = assert_usage_error(confhub("-c", "conf", "get", "a", cwd=project), "conf", "directory")
    assert "confhub.toml" in line


def test_cache_dir_of_the_wrong_type_in_confhub_toml_exits_2(project: Path) -> None:
    """``cache_dir = 5`` in confhub.toml names the file, the key and the expected form."""
    (project / "confhub.toml").write_text('sources = ["c.toml"]\ncache_dir = 5\n')
    line = assert_usage_error(confhub("get", "a", cwd=project), "confhub.toml", "cache_dir")
    assert "string" in line


def test_sources_of_the_wrong_type_in_pyproject_exits_2(project: Path) -> None:
    """A ``[tool.confhub]`` that is not a table, or sources that are not strings, exit 2."""
    (project / "pyproject.toml").write_text("[tool]\nconfhub = 5\n")
    assert_usage_error(confhub("get", "a", cwd=project), "pyproject.toml", "[tool.confhub]")
    (project / "pyproject.toml").write_text("[tool.confhub]\nsources = [1]\n")
    assert_usage_error(confhub("get", "a", cwd=project), "pyproject.toml", "sources")


def test_config_file_that_is_not_utf8_exits_2(project: Path) -> None:
    """A confhub.toml holding bytes that are not UTF-8 names the file and the byte offset."""
    (project / "confhub.toml").write_bytes(b'sources = ["c.toml"]\n# caf\xe9\n')
    assert_usage_error(confhub("get", "a", cwd=project), "confhub.toml", "UTF-8", "byte 26")


def test_empty_cache_dir_option_exits_2(project: Path) -> None:
    """``--cache-dir ''`` (an unset shell variable) is refused, not taken as the default."""
    assert_usage_error(
        confhub("--cache-dir", "", "-s", "c.toml", "get", "a", cwd=project), "--cache-dir"
    )


@pytest.mark.parametrize(
    "option",
    [("--count", "-1", "--timeout", "5"), ("--timeout", "-1"), ("--timeout", "nan")],
)
def test_watch_refuses_negative_bounds(project: Path, option: tuple[str, ...]) -> None:
    """``watch --count``/``--timeout`` take numbers >= 0; anything else is a usage error."""
    proc = confhub("-s", "c.toml", "watch", *option, cwd=project)
    assert proc.returncode == 2, proc.stderr
    assert option[0] in proc.stderr


def test_unknown_key_in_confhub_toml_warns_and_runs(project: Path) -> None:
    """A misspelt key in confhub.toml is a warning naming the closest known key."""
    (project / "confhub.toml").write_text('sources = ["c.toml"]\ncache_dirs = "x"\n')
    proc = confhub("get", "a", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "1\n"
    assert "cache_dirs" in proc.stderr
    assert "'cache_dir'" in proc.stderr


def test_dump_toml_refuses_null(project: Path) -> None:
    """TOML has no null: dump --format toml exits 2 naming the keys, and writes nothing."""
    (project / "n.json").write_text('{"a": null, "b": {"c": [1, null]}, "e": 1}')
    proc = confhub("-s", "n.json", "dump", "--format", "toml", cwd=project)
    line = assert_usage_error(proc, "null", "'a'", "'b.c[1]'", "--format json")
    assert proc.stdout == ""
    assert "None" not in line


def test_dump_toml_without_null_still_round_trips(project: Path) -> None:
    """A configuration with no null dumps as TOML that parses back to the same data."""
    data = {"a": 1, "b": {"c": [1, 2], "d": "x"}}
    (project / "n.json").write_text(json.dumps(data))
    proc = confhub("-s", "n.json", "dump", "--format", "toml", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert tomllib.loads(proc.stdout) == data


def test_a_crashing_plugin_is_an_internal_error_not_exit_1(project: Path, tmp_path: Path) -> None:
    """An exception that is not a confhub error (a bug in a plugin) exits 5, never 1, with
    the traceback and one ``confhub: internal error`` line."""
    site = tmp_path / "site"
    (site / "crash_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "crash_plugin-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: crash-plugin\nVersion: 1.0\n"
    )
    (site / "crash_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[confhub]\ncrash = crash_plugin\n"
    )
    (site / "crash_plugin.py").write_text(
        "import confhub\n\n"
        "@confhub.hookimpl\n"
        "def confhub_backend_schemes():\n"
        "    return [confhub.BackendInfo('crash', 'raises a bug')]\n\n"
        "@confhub.hookimpl\n"
        "def confhub_make_backend(spec):\n"
        "    if spec.scheme == 'crash':\n"
        "        raise ZeroDivisionError('a bug in the plugin')\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-m", "confhub", "-s", "crash:x", "get", "a"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert proc.returncode == 5, proc.stderr
    assert "Traceback" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("confhub: internal error: ZeroDivisionError: a bug in the plugin")

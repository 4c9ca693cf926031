"""The ``secrets:`` source against real directories: one file per key, the Kubernetes
``..data`` swap seen as one change, bounds, and every value redacted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from core_testlib import wait_for

import confhub

SETTLE = 0.05


def _hub(directory: Path, **options: object) -> confhub.Hub:
    spec = confhub.sources.secrets(str(directory), settle=SETTLE, **options)
    return confhub.Hub([spec], cache_dir=None)


def _k8s_version(root: Path, name: str, files: dict[str, str]) -> str:
    version = root / f"..{name}"
    version.mkdir()
    for key, value in files.items():
        (version / key).write_text(value)
    return version.name


def _k8s_volume(root: Path, files: dict[str, str]) -> str:
    """A Secret volume as kubelet lays it out: keys -> ..data/key -> ..<version>/key."""
    version = _k8s_version(root, "2026_01_01_00_00_00.000000001", files)
    os.symlink(version, root / "..data")
    for key in files:
        os.symlink(f"..data/{key}", root / key)
    return version


def _k8s_swap(root: Path, old: str, name: str, files: dict[str, str]) -> str:
    """kubelet's atomic update: a new version, ..data_tmp renamed over ..data, old removed."""
    version = _k8s_version(root, name, files)
    os.symlink(version, root / "..data_tmp")
    os.rename(root / "..data_tmp", root / "..data")
    for child in (root / old).iterdir():
        child.unlink()
    (root / old).rmdir()
    return version


def test_one_file_per_key_trailing_newline_dropped(tmp_path: Path) -> None:
    """File names map like env names; one trailing newline is dropped; dot files skipped."""
    (tmp_path / "db__password").write_text("hunter2\n")
    (tmp_path / "API_TOKEN").write_text("t0k\r\n")
    (tmp_path / "two_lines").write_text("a\nb\n\n")
    (tmp_path / ".hidden").write_text("x")
    (tmp_path / "subdir").mkdir()
    with _hub(tmp_path) as hub:
        assert hub.snapshot().to_dict() == {
            "db": {"password": "hunter2"},
            "api_token": "t0k",
            "two_lines": "a\nb\n",
        }
        assert hub.explain("db.password", reveal=True).detail == str(tmp_path / "db__password")


def test_prefix_selects_and_strips(tmp_path: Path) -> None:
    """?prefix= keeps only the files starting with it, and strips it."""
    (tmp_path / "APP_DB__PASSWORD").write_text("p")
    (tmp_path / "other").write_text("o")
    with confhub.Hub([f"secrets:{tmp_path}?prefix=APP_"], cache_dir=None) as hub:
        assert hub.snapshot().to_dict() == {"db": {"password": "p"}}


def test_every_value_is_redacted_whatever_its_name(tmp_path: Path) -> None:
    """explain shows <redacted> for a secrets value even under a harmless-looking key."""
    (tmp_path / "db__host").write_text("secret-host")
    with confhub.Hub(
        [{"db": {"host": "default"}}, confhub.sources.secrets(str(tmp_path))], cache_dir=None
    ) as hub:
        explained = hub.explain("db.host")
        assert explained.value == "<redacted>"
        assert "secret-host" not in json.dumps(explained.to_dict())
        assert hub.explain("db.host", reveal=True).value == "secret-host"
        assert hub.get("db.host") == "secret-host"


def test_cli_dump_and_explain_redact_the_values(tmp_path: Path) -> None:
    """confhub dump and explain (real processes) never print a secrets value."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "db__host").write_text("secret-host\n")
    for command in (["dump"], ["explain"], ["explain", "db.host", "--json"]):
        proc = subprocess.run(
            [sys.executable, "-m", "confhub", "-s", f"secrets:{secrets}", *command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "secret-host" not in proc.stdout + proc.stderr
        assert "<redacted>" in proc.stdout


def test_never_written_to_the_cache(tmp_path: Path) -> None:
    """A secrets directory is local: nothing of it reaches the cache directory."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "token").write_text("s3cr3t")
    cache = tmp_path / "cache"
    with confhub.Hub([f"secrets:{secrets}"], cache_dir=str(cache)) as hub:
        assert hub.get("token") == "s3cr3t"
    leaked = [p for p in cache.rglob("*") if p.is_file() and b"s3cr3t" in p.read_bytes()]
    assert leaked == []


def test_kubernetes_swap_is_one_change(tmp_path: Path) -> None:
    """Swapping ..data changes every key at once: one Change per swap, never a mix."""
    version = _k8s_volume(tmp_path, {"username": "u1", "password": "p1"})
    with _hub(tmp_path) as hub:
        changes: list[confhub.Change] = []
        hub.subscribe(changes.append)
        for n in range(2, 5):
            version = _k8s_swap(
                tmp_path,
                version,
                f"2026_01_01_00_00_0{n}.000000001",
                {"username": f"u{n}", "password": f"p{n}"},
            )
            wait_for(lambda n=n: hub.get("password") == f"p{n}", what=f"swap {n}")
            wait_for(lambda n=n: len(changes) == n - 1, what=f"change {n}")
        assert [sorted(k.key for k in c.changes) for c in changes] == [["password", "username"]] * 3
        assert [c.changes[0].new for c in changes] == ["p2", "p3", "p4"]
        assert hub.health().sources[0].state == "live"


def test_edit_add_and_remove_a_file(tmp_path: Path) -> None:
    """Editing, adding and removing files (Docker-style, no ..data) are published."""
    (tmp_path / "a").write_text("1")
    with _hub(tmp_path) as hub:
        (tmp_path / "a").write_text("2")
        wait_for(lambda: hub.get("a") == "2", what="edit")
        tmp = tmp_path / ".b.tmp"
        tmp.write_text("new")
        os.replace(tmp, tmp_path / "b")
        wait_for(lambda: hub.get("b", None) == "new", what="add")
        (tmp_path / "a").unlink()
        wait_for(lambda: hub.get("a", None) is None, what="remove")


def test_a_file_over_max_bytes_is_refused_naming_it(tmp_path: Path) -> None:
    """A secret bigger than max_bytes is a SourceFormatError naming the file, never read."""
    (tmp_path / "big").write_bytes(b"x" * 101)
    with pytest.raises(
        confhub.SourceFormatError, match=r"big is 101 bytes, more than max_bytes=100"
    ):
        _hub(tmp_path, max_bytes=100).start()


def test_too_many_files_is_refused(tmp_path: Path) -> None:
    """More files than max_files is an error saying how to raise the bound."""
    for i in range(3):
        (tmp_path / f"k{i}").write_text("v")
    with pytest.raises(confhub.SourceFormatError, match="more than max_files=2"):
        _hub(tmp_path, max_files=2).start()


def test_binary_secret_is_an_error_without_its_content(tmp_path: Path) -> None:
    """A file that is not UTF-8 is refused by name; the message holds none of its bytes."""
    (tmp_path / "cert").write_bytes(b"\xff\xfeSECRETBYTES")
    with pytest.raises(confhub.SourceFormatError) as info:
        _hub(tmp_path).start()
    assert "cert is not UTF-8" in str(info.value)
    assert "SECRETBYTES" not in str(info.value)


def test_missing_directory_fails_unless_optional(tmp_path: Path) -> None:
    """A missing directory is a StartupError naming it; optional=true reads nothing."""
    with pytest.raises(confhub.StartupError, match="does not exist"):
        _hub(tmp_path / "nope").start()
    with _hub(tmp_path / "nope", optional=True) as hub:
        assert hub.snapshot().to_dict() == {}


def test_optional_directory_created_later_is_read(tmp_path: Path) -> None:
    """An optional secrets directory that appears after start is watched and read."""
    directory = tmp_path / "secrets"
    with _hub(directory, optional=True) as hub:
        assert hub.snapshot().to_dict() == {}
        staging = tmp_path / ".staging"
        staging.mkdir()
        (staging / "token").write_text("t1")
        os.rename(staging, directory)
        wait_for(lambda: hub.get("token", None) == "t1", what="the directory's first key")
        (directory / "token").write_text("t2")
        wait_for(lambda: hub.get("token", None) == "t2", what="an edit inside it")
        assert hub.health().sources[0].state == "live"


def test_cli_watch_redacts_changed_values(tmp_path: Path) -> None:
    """confhub watch --json prints a secrets change with both values redacted."""
    (tmp_path / "db__host").write_text("old-host")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "confhub",
            "-s",
            f"secrets:{tmp_path}?settle=0.02",
            "watch",
            "--json",
            "--count",
            "1",
            "--timeout",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        # The hub is watching once it has loaded; rewrite until the one change arrives.
        for attempt in range(200):
            (tmp_path / "db__host").write_text(f"new-host-{attempt}")
            try:
                out, err = proc.communicate(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            pytest.fail("no change line from confhub watch")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    line = json.loads(out.splitlines()[0])
    assert (line["key"], line["old"], line["new"]) == ("db.host", "<redacted>", "<redacted>")
    assert "host" not in (out + err).replace("db.host", "")


class _SecretStore:
    """A remote (cacheable) secret store plugin: ``vault:`` layers marked secret."""

    confhub_plugin_name = "test-vault"

    def __init__(self) -> None:
        self.up = True

    @confhub.hookimpl
    def confhub_backend_schemes(self) -> list[confhub.BackendInfo]:
        return [confhub.BackendInfo("vault", "a test secret store")]

    @confhub.hookimpl
    def confhub_make_backend(self, spec: confhub.SourceSpec, settings: object) -> object:
        if spec.scheme != "vault":
            return None
        store = self

        class Backend:
            cacheable = True

            def load(self) -> confhub.Layer:
                if not store.up:
                    raise confhub.SourceUnavailableError("vault: down", source=spec.display)
                return confhub.Layer.from_flat(
                    {"db.host": "vault-host"}, source=spec.display, revision=1, secret=True
                )

            def close(self) -> None:
                pass

        return Backend()


@pytest.mark.parametrize("cache_secrets", [True, False])
def test_a_cached_secret_layer_follows_cache_secrets(tmp_path: Path, cache_secrets: bool) -> None:
    """A secret store's layer is cached only with cache_secrets, and served redacted."""
    store = _SecretStore()
    cache = tmp_path / "cache"
    spec = f"vault:app?cache_secrets={str(cache_secrets).lower()}&optional=true"
    with confhub.Hub([spec], plugins=[store], cache_dir=str(cache)) as hub:
        assert hub.get("db.host") == "vault-host"
    on_disk = b"".join(p.read_bytes() for p in cache.rglob("*") if p.is_file())
    assert (b"vault-host" in on_disk) is cache_secrets
    store.up = False
    with confhub.Hub([spec], plugins=[store], cache_dir=str(cache)) as hub:
        if cache_secrets:
            assert hub.health().sources[0].state == "cached"
            assert hub.get("db.host") == "vault-host"
            assert hub.explain("db.host").value == "<redacted>"
        else:
            assert hub.get("db.host", None) is None

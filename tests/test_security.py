"""Security: credentials never shown, private cache files, planted caches refused, safe YAML.

Credentials are planted in specs (URL userinfo, ``token=``/``password=`` options); every
output a user or operator can see is then searched for them: log records at DEBUG (the
message and any traceback), stdout/stderr, exception messages and reprs, health, explain,
the CLI, cache file names and contents.
"""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import threading
import traceback
import tracemalloc
from pathlib import Path
from typing import Any

import attrs
import pytest
from core_testlib import wait_for

from confhub import (
    BackendInfo,
    ConfigValidationError,
    ErrorEvent,
    Hub,
    Layer,
    SourceFormatError,
    SourcePermissionError,
    SourceSpec,
    SourceUnavailableError,
    StartupError,
    hookimpl,
    is_secret_key,
    main,
)
from confhub._cache import MAX_FILE_BYTES
from confhub.testing import MemoryStore

SECRETS = ("S3CRET-TOKEN", "S3CRET-PASS")

REMOTE_SPECS = [
    "etcd://root:S3CRET-PASS@127.0.0.1:1/app/?timeout=0.5",
    "etcd://127.0.0.1:1/app/?user=root&password=S3CRET-PASS&timeout=0.5",
    "consul://127.0.0.1:1/app/?token=S3CRET-TOKEN&timeout=0.5",
    "consul://u:S3CRET-PASS@127.0.0.1:1/app/?timeout=0.5",
]


def _assert_clean(*texts: Any) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in str(text), f"{secret} leaked in: {str(text)[:300]}"


def _log_text(caplog: pytest.LogCaptureFixture) -> str:
    lines = []
    for record in caplog.records:
        lines.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            lines.extend(traceback.format_exception(record.exc_info[1]))
    return "\n".join(lines)


def _exception_text(exc: BaseException) -> str:
    parts = [str(exc), repr(exc), *traceback.format_exception(exc)]
    for name, value in vars(exc).items():
        parts.append(f"{name}={value!r}")
    return "\n".join(parts)


def _tree_text(root: Path) -> str:
    parts = []
    for path in sorted(root.rglob("*")):
        parts.append(str(path))
        if path.is_file():
            parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture every logger (confhub and its plugins included) at DEBUG."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="confhub")
    return caplog


@pytest.mark.parametrize("spec", REMOTE_SPECS)
def test_start_failure_never_shows_credentials(
    spec: str, tmp_path: Path, debug_logs: pytest.LogCaptureFixture, capsys: Any
) -> None:
    """A remote that cannot be reached: error, repr, logs and cache dir hold no credential."""
    hub = Hub([spec], cache_dir=tmp_path / "cache", connect_timeout=0.5, start_timeout=3)
    _assert_clean(repr(hub), hub.sources, repr(hub.health()), repr(SourceSpec.parse(spec)))
    with pytest.raises(Exception) as info:
        hub.start()
    _assert_clean(_exception_text(info.value))
    _assert_clean(repr(hub), hub.health().to_dict())
    out, err = capsys.readouterr()
    _assert_clean(out, err, _log_text(debug_logs))
    if (tmp_path / "cache").exists():
        _assert_clean(_tree_text(tmp_path / "cache"))


@pytest.mark.parametrize("spec", REMOTE_SPECS[:3])
def test_optional_unreachable_source_health_and_cli_never_show_credentials(
    spec: str, tmp_path: Path, debug_logs: pytest.LogCaptureFixture, capsys: Any
) -> None:
    """health, explain, dump and get through the CLI, with an unreachable optional remote."""
    path = tmp_path / "app.toml"
    path.write_text('[db]\nhost = "h"\npassword = "S3CRET-PASS"\n')
    outputs = []
    for command in (
        ["health"],
        ["health", "--json"],
        ["explain"],
        ["explain", "--json"],
        ["explain", "db.password"],
        ["dump"],
        ["dump", "--format", "toml"],
        ["get", "db.host"],
    ):
        out = io.StringIO()
        argv = ["--cache-dir", str(tmp_path / "cache"), "-s", str(path)]
        code = main([*argv, "-s", f"{spec}&optional=true", *command], out=out)
        assert code == 0, (command, capsys.readouterr().err)
        outputs.append(out.getvalue())
    out, err = capsys.readouterr()
    _assert_clean(*outputs, out, err, _log_text(debug_logs))
    assert "DEGRADED" in outputs[0] or "absent" in outputs[0]


def test_running_hub_with_token_option_never_shows_it(
    tmp_path: Path, debug_logs: pytest.LogCaptureFixture, capsys: Any
) -> None:
    """memory:app?token=...: explain, health, errors, state changes and the cache stay clean."""
    store = MemoryStore("app", {"db": {"host": "h", "port": "1"}})
    spec = "memory:app?token=S3CRET-TOKEN"
    cache_dir = tmp_path / "cache"
    with Hub([spec], plugins=[store], autoload=False, cache_dir=cache_dir) as hub:
        events: list[Any] = []
        hub.subscribe(events.append, on_error=events.append, on_state=events.append)
        store.set("db.port", "2")
        store.fail()
        wait_for(lambda: any(isinstance(e, ErrorEvent) for e in events))
        store.recover()
        store.set("db.host", {"bad": "leaf"})  # db.host.bad: not a clash, a new key
        _assert_clean(
            repr(hub),
            hub.health().to_dict(),
            [e.to_dict() for e in hub.explain_all()],
            [repr(e) for e in events],
            [str(getattr(e, "error", "")) for e in events],
        )
        wait_for(lambda: list(cache_dir.glob("memory-*.json")))
    # Start again from the cache alone: the cached state and its messages stay clean too.
    store.fail()
    with Hub([spec], plugins=[store], autoload=False, cache_dir=cache_dir) as hub:
        assert hub.health().sources[0].state == "cached"
        _assert_clean(repr(hub), hub.health().to_dict(), hub.explain("db.port").to_dict())
    out, err = capsys.readouterr()
    _assert_clean(out, err, _log_text(debug_logs), _tree_text(cache_dir))


def test_secret_values_are_redacted_in_explain_and_dump(tmp_path: Path) -> None:
    """Values of secret-looking keys are shown only with --reveal."""
    path = tmp_path / "app.json"
    path.write_text(json.dumps({"db": {"password": "S3CRET-PASS"}, "api_token": "S3CRET-TOKEN"}))
    for command in (["dump"], ["explain"], ["explain", "--json"], ["explain", "db.password"]):
        out = io.StringIO()
        assert main(["-s", str(path), *command], out=out) == 0
        _assert_clean(out.getvalue())
    out = io.StringIO()
    assert main(["-s", str(path), "dump", "--reveal"], out=out) == 0
    assert "S3CRET-PASS" in out.getvalue()


# -- cache files ---------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o077, 0o022])
def test_cache_is_0600_in_a_0700_directory_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """Directory 0700 and files 0600 under umask 000, 077 and 022; no temp file left."""
    previous = os.umask(umask)
    try:
        store = MemoryStore("app", {"a": "1"})
        cache_dir = tmp_path / "deep" / "cache"
        with Hub(["memory:app"], plugins=[store], autoload=False, cache_dir=cache_dir):
            store.set("a", "2")  # a rewrite, not only the first write
        files = list(cache_dir.iterdir())
    finally:
        os.umask(previous)
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    assert len(files) == 1, files
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert json.loads(files[0].read_text())["data"] == {"a": "2"}


def _cached_store(tmp_path: Path) -> tuple[MemoryStore, Path]:
    store = MemoryStore("app", {"a": "cached"})
    with Hub(["memory:app"], plugins=[store], autoload=False, cache_dir=tmp_path):
        pass
    (path,) = tmp_path.glob("memory-*.json")
    store.fail()
    return store, path


def _refused(store: MemoryStore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="confhub.cache"), pytest.raises(StartupError):
        Hub(
            ["memory:app"], plugins=[store], autoload=False, cache_dir=tmp_path, start_timeout=1
        ).start()
    assert any("ignoring the cache file" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666, 0o660])
def test_group_or_world_writable_cache_file_is_refused(
    tmp_path: Path, mode: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache file others may write is never used, and is moved aside."""
    store, path = _cached_store(tmp_path)
    os.chmod(path, mode)
    _refused(store, tmp_path, caplog)
    assert not path.exists()
    assert list(tmp_path.glob("*.corrupt-*"))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_cache_file_owned_by_another_user_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache file planted by another uid (65534) is never used, even with mode 0600."""
    store, path = _cached_store(tmp_path)
    os.chown(path, 65534, 65534)
    _refused(store, tmp_path, caplog)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_cache_directory_owned_by_another_user_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache directory that belongs to another uid is not trusted."""
    store, _ = _cached_store(tmp_path)
    os.chown(tmp_path, 65534, 65534)
    try:
        _refused(store, tmp_path, caplog)
    finally:
        os.chown(tmp_path, 0, 0)


def test_group_writable_cache_directory_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache directory others may write (so plant files in) is not trusted."""
    store, _ = _cached_store(tmp_path)
    os.chmod(tmp_path, 0o770)
    _refused(store, tmp_path, caplog)


def test_refused_cache_is_not_overwritten_into_trust(tmp_path: Path) -> None:
    """After a refusal, a live store writes a fresh private file; the planted one stays aside."""
    store, path = _cached_store(tmp_path)
    os.chmod(path, 0o666)
    store.recover()
    with Hub(["memory:app"], plugins=[store], autoload=False, cache_dir=tmp_path) as hub:
        assert hub.get("a") == "cached"  # the live value
        store.set("a", "fresh")
        wait_for(lambda: path.exists() and "fresh" in path.read_text())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- YAML ----------------------------------------------------------------------------------

UNSAFE_YAML = [
    "a: !!python/object/apply:os.system ['touch {marker}']",
    "a: !!python/object/new:os.system ['touch {marker}']",
    "a: !!python/object/apply:subprocess.check_call [['touch', '{marker}']]",
    "!!python/object/apply:os.system ['touch {marker}']",
    "a: !!python/name:os.system",
    "a: !!python/module:os",
    "a: !<tag:yaml.org,2002:python/object/apply:os.system> ['touch {marker}']",
]


@pytest.mark.parametrize("template", UNSAFE_YAML)
def test_yaml_python_tags_are_refused_and_nothing_runs(tmp_path: Path, template: str) -> None:
    """Python tags are format errors at start; no command is executed."""
    marker = tmp_path / "pwned"
    path = tmp_path / "app.yaml"
    path.write_text(template.format(marker=marker))
    with pytest.raises(SourceFormatError):
        Hub([f"file:{path}"], autoload=False, cache_dir=None).start()
    assert not marker.exists()


def test_yaml_python_tag_in_a_watched_file_is_rejected_and_nothing_runs(tmp_path: Path) -> None:
    """A running hub rejects a save with a Python tag, keeps last good, runs nothing."""
    marker = tmp_path / "pwned"
    path = tmp_path / "app.yaml"
    path.write_text("a: 1\n")
    with Hub([f"file:{path}?settle=0.01"], autoload=False, cache_dir=None) as hub:
        errors: list[ErrorEvent] = []
        hub.subscribe(on_error=errors.append)
        path.write_text(f"a: !!python/object/apply:os.system ['touch {marker}']\n")
        wait_for(lambda: errors)
        assert isinstance(errors[0].error, SourceFormatError)
        assert hub.get("a") == 1
    assert not marker.exists()


# -- issue 14: secrets inside lists, whole-path names, DSNs -----------------------------------

NESTED_TOML = """
secret_key = "S3CRET-TOKEN"
api_keys = ["S3CRET-TOKEN"]
passwords = { admin = "S3CRET-PASS" }
dsn = "postgres://app:S3CRET-PASS@db.internal:5432/app"
bypass = "shown-bypass"
compass = "shown-compass"

[[users]]
name = "alice"
password = "S3CRET-PASS"

[[items]]
token = "S3CRET-TOKEN"
"""


def test_secrets_in_lists_and_whole_paths_are_redacted_in_dump_and_explain(
    tmp_path: Path,
) -> None:
    """dump (json, toml) and explain redact list items, plurals, SECRET_KEY and a DSN's
    password; bypass and compass stay visible."""
    path = tmp_path / "app.toml"
    path.write_text(NESTED_TOML)
    outputs = []
    for command in (
        ["dump"],
        ["dump", "--format", "toml"],
        ["explain"],
        ["explain", "--json"],
        ["explain", "users"],
        ["explain", "dsn"],
    ):
        out = io.StringIO()
        assert main(["-s", str(path), *command], out=out) == 0, command
        outputs.append(out.getvalue())
    _assert_clean(*outputs)
    dumped = json.loads(outputs[0])
    assert dumped["users"] == [{"name": "alice", "password": "<redacted>"}]
    assert dumped["dsn"] == "postgres://app:<redacted>@db.internal:5432/app"
    assert dumped["bypass"] == "shown-bypass"
    assert dumped["compass"] == "shown-compass"


def test_watch_json_redacts_secrets_inside_lists(tmp_path: Path) -> None:
    """watch --json shows a changed list of tables with its secret items redacted."""
    path = tmp_path / "app.toml"
    path.write_text('[[users]]\nname = "a"\npassword = "S3CRET-PASS"\n')
    out = io.StringIO()
    result: list[int] = []
    args = ["-s", f"file:{path}?settle=0.01", "watch", "--json", "--count", "1", "--timeout", "20"]
    thread = threading.Thread(target=lambda: result.append(main(args, out=out)))
    thread.start()
    n = 0
    while thread.is_alive():
        n += 1
        path.write_text(f'[[users]]\nname = "a{n}"\npassword = "S3CRET-PASS"\n')
        thread.join(0.3)
    assert result == [0]
    _assert_clean(out.getvalue())
    line = json.loads(out.getvalue().splitlines()[0])
    assert line["key"] == "users"
    assert line["new"][0]["password"] == "<redacted>"


@attrs.frozen
class _Item:
    token: int


@attrs.frozen
class _WithItems:
    items: list[_Item]


def test_binding_error_inside_a_list_never_quotes_a_secret(tmp_path: Path) -> None:
    """A bad value at $.items[0].token is reported by path, its value left out."""
    path = tmp_path / "app.toml"
    path.write_text('[[items]]\ntoken = "S3CRET-TOKEN"\n')
    with Hub([str(path)], cache_dir=None) as hub, pytest.raises(ConfigValidationError) as info:
        hub.bind(_WithItems)
    _assert_clean(_exception_text(info.value), info.value.errors)
    assert "$.items[0].token" in str(info.value)


def test_cache_secrets_false_leaves_out_nested_secrets(tmp_path: Path) -> None:
    """?cache_secrets=false keeps secret items of lists and tables, SECRET_KEY and DSNs out
    of the cache file, and keeps the rest."""
    store = MemoryStore(
        "app",
        {
            "users": [{"name": "alice", "password": "S3CRET-PASS"}],
            "secret_key": "S3CRET-TOKEN",
            "dsn": "postgres://app:S3CRET-PASS@h/db",
            "compass": "north",
        },
    )
    cache_dir = tmp_path / "cache"
    with Hub(
        ["memory:app?cache_secrets=false"], plugins=[store], autoload=False, cache_dir=cache_dir
    ):
        pass
    (path,) = cache_dir.glob("memory-*.json")
    _assert_clean(path.read_text())
    data = json.loads(path.read_text())["data"]
    assert data == {"users": [{"name": "alice"}], "compass": "north"}


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("secret_key", True),
        ("SECRET_KEY", True),
        ("passwords", True),
        ("tokens", True),
        ("api_keys", True),
        ("apiKey", True),
        ("users[0].password", True),
        ("passwords.admin", True),
        ("redis.auth", True),
        ("bypass", False),
        ("compass", False),
        ("db.host", False),
        ("auth.enabled", False),
    ],
)
def test_secret_key_names(key: str, secret: bool) -> None:
    """The whole path is checked, split on '.', '_', '-' and camelCase, plurals included."""
    assert is_secret_key(key) is secret


# -- issue 14: a cache directory confhub refuses is never read --------------------------------


def _cache_name(tmp_path: Path, spec: str) -> str:
    """The predictable cache file name of ``spec`` (learnt from a first, normal run)."""
    store = MemoryStore("app", {"a": "1"})
    learn = tmp_path / "learn"
    with Hub([spec], plugins=[store], autoload=False, cache_dir=learn):
        pass
    (path,) = learn.glob("memory-*.json")
    return path.name


def _release(fifo: Path) -> None:
    """Let a reader stuck on ``fifo`` (before the fix) see end-of-file."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_fifo_planted_in_a_refused_cache_directory_is_never_opened(tmp_path: Path) -> None:
    """A FIFO at the cache file's name in a group-writable directory: the write is refused
    before any I/O in it, close() joins the cache thread, and the FIFO is left as it was."""
    name = _cache_name(tmp_path, "memory:app")
    cache_dir = tmp_path / "shared"
    cache_dir.mkdir(mode=0o770)
    os.chmod(cache_dir, 0o770)
    fifo = cache_dir / name
    os.mkfifo(fifo, 0o600)
    store = MemoryStore("app", {"a": "1"})
    try:
        with Hub(["memory:app"], plugins=[store], autoload=False, cache_dir=cache_dir) as hub:
            store.set("a", "2")
            wait_for(lambda: hub.get("a") == "2")
        assert not [t for t in threading.enumerate() if t.name == "confhub-persist"]
        assert stat.S_ISFIFO(fifo.lstat().st_mode)
        assert sorted(p.name for p in cache_dir.iterdir()) == [name]
    finally:
        _release(fifo)


def test_symlink_at_the_cache_file_name_is_never_followed(tmp_path: Path) -> None:
    """A symlink (to a FIFO elsewhere) at the cache file's name in a private directory is
    not followed: the write replaces it with a regular 0600 file."""
    name = _cache_name(tmp_path, "memory:app")
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir(mode=0o700)
    target = tmp_path / "elsewhere.fifo"
    os.mkfifo(target, 0o600)
    (cache_dir / name).symlink_to(target)
    store = MemoryStore("app", {"a": "1"})
    try:
        with Hub(["memory:app"], plugins=[store], autoload=False, cache_dir=cache_dir):
            pass
        assert not [t for t in threading.enumerate() if t.name == "confhub-persist"]
        st = (cache_dir / name).lstat()
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_ISFIFO(target.lstat().st_mode)
    finally:
        _release(target)


@pytest.mark.parametrize("mode", [0o770, 0o700], ids=["refused-directory", "private-directory"])
def test_symlink_to_a_huge_file_at_the_cache_file_name_is_never_read(
    tmp_path: Path, mode: int
) -> None:
    """A symlink at the cache file's name to a 256 MiB (sparse) file: the cache writer never
    reads it, in a directory it refuses (no I/O there at all) or in a private one (not
    followed). Python's allocations while the hub runs stay far below the file's size
    (before the fix the writer read it whole: ~321 MiB more)."""
    name = _cache_name(tmp_path, "memory:app")
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir(mode=mode)
    os.chmod(cache_dir, mode)
    huge = tmp_path / "huge.json"
    size = 256 * 1024 * 1024
    with open(huge, "wb") as fh:
        fh.truncate(size)
    (cache_dir / name).symlink_to(huge)
    store = MemoryStore("app", {"a": "1"})
    tracemalloc.start()
    try:
        with Hub(["memory:app"], plugins=[store], autoload=False, cache_dir=cache_dir) as hub:
            store.set("a", "2")
            wait_for(lambda: hub.get("a") == "2")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < size // 8, f"{peak:,} bytes allocated while the hub ran"
    assert huge.stat().st_size == size
    if mode == 0o770:  # refused: left as it was
        assert (cache_dir / name).is_symlink()
    else:  # replaced by the hub's own private regular file
        st = (cache_dir / name).lstat()
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600


# -- issue 14: the principal is part of the cache identity ------------------------------------


class _AsStore:
    """``as:NAME?user=WHO``: a store that, like an ACL'd KV store, serves only to ``secret``
    readers; its backend declares the reader as ``cache_principal``."""

    def __init__(self) -> None:
        self.down = False
        self.data = {"db": {"password": "S3CRET-PASS"}}

    @hookimpl
    def confhub_backend_schemes(self) -> list[BackendInfo]:
        return [BackendInfo("as", "test store with readers")]

    @hookimpl
    def confhub_make_backend(self, spec: SourceSpec) -> Any:
        if spec.scheme != "as":
            return None
        store = self

        class Backend:
            cacheable = True
            cache_principal = spec.options.get("user")

            def load(self) -> Layer:
                if store.down:
                    raise SourceUnavailableError("down", source=spec.display)
                if self.cache_principal != "trusted":
                    raise SourcePermissionError("denied", source=spec.display)
                return Layer.from_mapping(store.data, source=spec.display, revision=1)

            def close(self) -> None:
                pass

        return Backend()


def test_cache_of_one_principal_is_never_served_to_another(tmp_path: Path) -> None:
    """A reader refused live gets no cached copy written for another reader; the reader
    that wrote it still starts from it, and no file name or content holds the principal."""
    store = _AsStore()
    cache_dir = tmp_path / "cache"
    with Hub(["as:app?user=trusted"], plugins=[store], autoload=False, cache_dir=cache_dir):
        pass
    store.down = True
    with pytest.raises(StartupError):
        Hub(
            ["as:app?user=intruder"],
            plugins=[store],
            autoload=False,
            cache_dir=cache_dir,
            start_timeout=1,
        ).start()
    with Hub(["as:app?user=trusted"], plugins=[store], autoload=False, cache_dir=cache_dir) as hub:
        assert hub.get("db.password") == "S3CRET-PASS"
        assert hub.health().sources[0].state == "cached"
    names = [p.name for p in cache_dir.iterdir()]
    assert not [n for n in names if "trusted" in n]
    assert "trusted" not in _tree_text(cache_dir).replace(str(cache_dir), "")
    salt = cache_dir / ".confhub-salt"
    assert stat.S_IMODE(salt.lstat().st_mode) == 0o600


def test_cache_file_over_the_size_bound_is_refused_unread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A (sparse) cache file larger than MAX_FILE_BYTES is refused by its size, never read."""
    store, path = _cached_store(tmp_path)
    with open(path, "r+b") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)
    _refused(store, tmp_path, caplog)
    assert any("a cache file may hold" in r.getMessage() for r in caplog.records)

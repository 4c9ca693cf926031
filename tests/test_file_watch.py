"""The file backend against real files and real watchdog observers (no simulated events).

Every positive expectation is polled for with a deadline (:func:`wait_for`); every "nothing
happens" expectation waits a bounded quiet period (:data:`QUIET`) that is many debounce
windows long. Timing is never asserted: the benchmarks measure latency.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from core_testlib import wait_for

import confhub
from confhub._backends.file import FileBackend
from confhub._spec import SourceSpec
from confhub.testing import backend_of

SETTLE = 0.05
#: How long a "nothing happens" assertion waits: many settle windows, still short.
QUIET = 0.5
DEADLINE = 5.0


class Recorder:
    """Collects the changes and error events a subscription receives."""

    def __init__(self) -> None:
        self.changes: list[confhub.Change] = []
        self.errors: list[confhub.ErrorEvent] = []

    def on_change(self, change: confhub.Change) -> None:
        self.changes.append(change)

    def on_error(self, event: confhub.ErrorEvent) -> None:
        self.errors.append(event)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def open_hub(recorder: Recorder) -> Iterator[Callable[..., confhub.Hub]]:
    """Start a hub over one file source, subscribed to ``recorder``; closed at teardown."""
    hubs: list[confhub.Hub] = []

    def start(path: Path, **options: Any) -> confhub.Hub:
        options.setdefault("settle", SETTLE)
        query = "&".join(f"{k}={v}" for k, v in options.items())
        hub = confhub.Hub([f"file:{path}?{query}"], autoload=False)
        hub.start()
        hubs.append(hub)
        hub.subscribe(recorder.on_change, on_error=recorder.on_error)
        return hub

    yield start
    for hub in hubs:
        hub.close()


def write_in_place(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def replace_save(path: Path, text: str) -> None:
    """Save like vim's default, JetBrains' safe write or most tools: temp file + rename."""
    tmp = path.with_name(path.name + ".tmp-save")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def state(hub: confhub.Hub) -> str:
    return hub.health().sources[0].state


def test_in_place_write_is_published(tmp_path: Path, open_hub: Any, recorder: Recorder) -> None:
    """Rewriting the file in place publishes the new value."""
    path = tmp_path / "app.toml"
    path.write_text("port = 1\n")
    hub = open_hub(path)
    write_in_place(path, "port = 2\n")
    wait_for(lambda: hub.get("port") == 2)
    wait_for(lambda: recorder.changes)  # delivered on the notifier thread, after the swap
    assert [c.key for ch in recorder.changes for c in ch.changes] == ["port"]
    assert recorder.errors == []


def test_rename_save_is_published_every_time(
    tmp_path: Path, open_hub: Any, recorder: Recorder
) -> None:
    """An editor's temp-file-and-rename save is seen, and watching survives repeated saves."""
    path = tmp_path / "app.toml"
    path.write_text("port = 0\n")
    hub = open_hub(path)
    for value in range(1, 4):
        replace_save(path, f"port = {value}\n")
        wait_for(lambda v=value: hub.get("port") == v)
    assert recorder.errors == []


def test_jetbrains_safe_write_is_published(
    tmp_path: Path, open_hub: Any, recorder: Recorder
) -> None:
    """JetBrains' ___jb_tmp___/___jb_old___ save sequence publishes the new content."""
    path = tmp_path / "app.toml"
    path.write_text("port = 1\n")
    hub = open_hub(path)
    tmp = tmp_path / "app.toml___jb_tmp___"
    old = tmp_path / "app.toml___jb_old___"
    tmp.write_text("port = 2\n")
    os.rename(path, old)
    os.rename(tmp, path)
    old.unlink()
    wait_for(lambda: hub.get("port") == 2)
    assert recorder.errors == []


def test_vim_backup_rename_is_published_without_error(
    tmp_path: Path, open_hub: Any, recorder: Recorder
) -> None:
    """Vim's backup swap (rename to file~, write anew, delete file~) is one clean update."""
    path = tmp_path / "app.toml"
    path.write_text("port = 1\n")
    hub = open_hub(path)
    backup = tmp_path / "app.toml~"
    os.rename(path, backup)
    write_in_place(path, "port = 2\n")
    backup.unlink()
    wait_for(lambda: hub.get("port") == 2)
    time.sleep(QUIET)
    assert recorder.errors == []
    assert state(hub) == "live"


def _configmap_version(root: Path, stamp: str, text: str) -> str:
    name = f"..{stamp}"
    (root / name).mkdir()
    (root / name / "config.toml").write_text(text)
    return name


def _configmap_swap(root: Path, old: str, stamp: str, text: str) -> str:
    """Do what kubelet's atomic writer does on a ConfigMap update."""
    new = _configmap_version(root, stamp, text)
    os.symlink(new, root / "..data_tmp")
    os.rename(root / "..data_tmp", root / "..data")
    shutil.rmtree(root / old)
    return new


def test_kubernetes_configmap_swap_is_published(
    tmp_path: Path, open_hub: Any, recorder: Recorder
) -> None:
    """Re-pointing the ..data symlink of a ConfigMap volume publishes, swap after swap."""
    version = _configmap_version(tmp_path, "2026_01_01_00_00_00.000000001", "port = 1\n")
    os.symlink(version, tmp_path / "..data")
    os.symlink("..data/config.toml", tmp_path / "config.toml")
    hub = open_hub(tmp_path / "config.toml")
    assert hub.get("port") == 1
    for n in range(2, 5):
        version = _configmap_swap(
            tmp_path, version, f"2026_01_01_00_00_0{n}.000000001", f"port = {n}\n"
        )
        wait_for(lambda n=n: hub.get("port") == n)
    assert recorder.errors == []
    assert state(hub) == "live"
    # Only the volume and the current version are watched: removed versions were unwatched.
    backend = backend_of(hub, hub.sources[0])
    assert isinstance(backend, FileBackend)
    assert backend.watched_directories == {str(tmp_path), str(tmp_path / version)}


def test_touch_and_identical_rewrites_publish_nothing(
    tmp_path: Path, open_hub: Any, recorder: Recorder
) -> None:
    """Touching the file or rewriting identical content calls no one and keeps the generation."""
    path = tmp_path / "app.toml"
    path.write_text("port = 1\n")
    hub = open_hub(path)
    generation = hub.generation
    os.utime(path)
    write_in_place(path, "port = 1\n")
    replace_save(path, "port = 1\n")
    time.sleep(QUIET)
    assert recorder.changes == []
    assert recorder.errors == []
    assert hub.generation == generation


def _write_in_two_halves(path: Path, first: str, second: str, pause: float) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, first.encode())
        time.sleep(pause)
        os.write(fd, second.encode())
    finally:
        os.close(fd)


def test_half_written_file_that_parses_is_not_published(
    tmp_path: Path, open_hub: Any, recorder: Recorder
) -> None:
    """A save paused shorter than settle publishes only its complete version, once."""
    path = tmp_path / "app.toml"
    path.write_text("a = 0\nb = 0\n")
    hub = open_hub(path, settle=0.4)
    _write_in_two_halves(path, "a = 1\n", "b = 1\n", pause=0.05)
    wait_for(lambda: hub.get("b") == 1)
    time.sleep(QUIET)
    assert [sorted(c.key for c in ch.changes) for ch in recorder.changes] == [["a", "b"]]
    assert recorder.errors == []


def test_half_written_file_that_is_broken_reports_no_error(
    tmp_path: Path, open_hub: Any, recorder: Recorder
) -> None:
    """A save cut mid-string and paused shorter than settle yields no error, only the result."""
    path = tmp_path / "app.toml"
    path.write_text('name = "old"\n')
    hub = open_hub(path, settle=0.4)
    _write_in_two_halves(path, 'name = "ne', 'w"\n', pause=0.05)
    wait_for(lambda: hub.get("name") == "new")
    time.sleep(QUIET)
    assert len(recorder.changes) == 1
    assert recorder.errors == []


GOOD_AND_BROKEN = {
    "toml": ("port = 1\n", "port = \n", "port = 2\n"),
    "json": ('{"port": 1}', '{"port": 1,,}', '{"port": 2}'),
    "yaml": ("port: 1\n", "port: [1\n", "port: 2\n"),
}


@pytest.mark.parametrize("fmt", sorted(GOOD_AND_BROKEN))
def test_broken_file_keeps_last_good_until_fixed(
    tmp_path: Path, open_hub: Any, recorder: Recorder, fmt: str
) -> None:
    """A broken save is reported with its line, the last good stays, and the fix applies."""
    good, broken, fixed = GOOD_AND_BROKEN[fmt]
    path = tmp_path / f"app.{fmt}"
    path.write_text(good)
    hub = open_hub(path)
    write_in_place(path, broken)
    wait_for(lambda: recorder.errors)
    error = recorder.errors[0].error
    assert isinstance(error, confhub.SourceFormatError)
    assert str(path) in str(error)
    assert error.line is not None
    assert f"line {error.line}" in str(error)
    health = hub.health().sources[0]
    assert health.state == "stale"
    assert health.last_error == str(error)
    assert hub.get("port") == 1
    time.sleep(QUIET)
    assert len(recorder.errors) == 1, "the same broken content is reported once"
    write_in_place(path, fixed)
    wait_for(lambda: hub.get("port") == 2)
    assert state(hub) == "live"
    assert hub.health().sources[0].last_error is None


@attrs.frozen
class Db:
    port: int


def test_value_that_does_not_bind_is_rejected_until_fixed(
    tmp_path: Path, open_hub: Any, recorder: Recorder
) -> None:
    """An update that does not fit a live view is rejected, reported, and the fix applies."""
    path = tmp_path / "app.toml"
    path.write_text("[db]\nport = 1\n")
    hub = open_hub(path)
    view = hub.view(Db, prefix="db")
    write_in_place(path, '[db]\nport = "not a port"\n')
    wait_for(lambda: recorder.errors)
    assert isinstance(recorder.errors[0].error, confhub.ConfigValidationError)
    assert view.current == Db(1)
    assert hub.get("db.port") == 1
    assert state(hub) == "stale"
    write_in_place(path, "[db]\nport = 2\n")
    wait_for(lambda: view.current == Db(2))
    assert hub.get("db.port") == 2
    assert state(hub) == "live"


def test_required_file_deleted_keeps_last_good_then_recreated(
    tmp_path: Path, open_hub: Any, recorder: Recorder
) -> None:
    """Deleting a required file reports an error and keeps the last good; recreating applies."""
    path = tmp_path / "app.toml"
    path.write_text("port = 1\n")
    hub = open_hub(path)
    path.unlink()
    wait_for(lambda: recorder.errors)
    assert isinstance(recorder.errors[0].error, confhub.SourceUnavailableError)
    assert state(hub) == "stale"
    assert hub.get("port") == 1
    path.write_text("port = 2\n")
    wait_for(lambda: hub.get("port") == 2)
    assert state(hub) == "live"


@pytest.mark.parametrize("mode", ["auto", "poll"])
@pytest.mark.parametrize("pause", [0.0, 0.3])
def test_directory_deleted_and_recreated_is_watched_again(
    tmp_path: Path, open_hub: Any, recorder: Recorder, pause: float, mode: str
) -> None:
    """The file's whole directory deleted and recreated (at once, or after a while): the
    last good stays while it is gone, and the recreated file applies and is watched again."""
    directory = tmp_path / "conf"
    directory.mkdir()
    path = directory / "app.toml"
    path.write_text("port = 1\n")
    hub = open_hub(path, poll_interval="0.05", watch=mode)
    shutil.rmtree(directory)
    time.sleep(pause)
    directory.mkdir()
    path.write_text("port = 2\n")
    wait_for(lambda: hub.get("port") == 2)
    replace_save(path, "port = 3\n")  # and the new directory is watched
    wait_for(lambda: hub.get("port") == 3)
    wait_for(lambda: state(hub) == "live")


def test_optional_file_deleted_drops_keys_then_recreated(
    tmp_path: Path, open_hub: Any, recorder: Recorder
) -> None:
    """Deleting an optional file removes its keys; recreating it brings them back."""
    path = tmp_path / "app.toml"
    path.write_text("port = 1\n")
    hub = open_hub(path, optional="true")
    path.unlink()
    wait_for(lambda: hub.get("port", None) is None)
    path.write_text("port = 2\n")
    wait_for(lambda: hub.get("port", None) == 2)
    assert recorder.errors == []


def test_polling_mode_publishes_changes(tmp_path: Path, open_hub: Any, recorder: Recorder) -> None:
    """With watch=poll the file is watched by polling and changes still arrive."""
    path = tmp_path / "app.toml"
    path.write_text("port = 1\n")
    hub = open_hub(path, watch="poll", poll_interval=0.05)
    assert backend_of(hub, hub.sources[0]).observer_kind == "PollingObserver"  # type: ignore[attr-defined]
    replace_save(path, "port = 2\n")
    wait_for(lambda: hub.get("port") == 2)


_NO_INOTIFY_SCRIPT = textwrap.dedent(
    r"""
    import ctypes, errno, json, logging, os, sys, threading, time

    # A private user namespace whose inotify instance limit is 0: inotify_init() fails with
    # EMFILE here, exactly as when fs.inotify.max_user_instances is exhausted, while the
    # rest of the machine keeps its limits. unshare() needs a single-threaded process.
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()  # before unshare: inside, they read as "nobody"
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
        print(json.dumps({"skip": "unshare(CLONE_NEWUSER): " + os.strerror(ctypes.get_errno())}))
        sys.exit(0)
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")
    with open("/proc/sys/user/max_inotify_instances", "w") as f:
        f.write("0")
    fd = libc.inotify_init()
    assert fd == -1 and ctypes.get_errno() == errno.EMFILE, (fd, ctypes.get_errno())

    import confhub
    import confhub.testing

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logging.getLogger("confhub").addHandler(Keep(logging.WARNING))
    path = sys.argv[1]
    before = set(threading.enumerate())
    hub = confhub.Hub([f"file:{path}?settle=0.02&poll_interval=0.05"], autoload=False)
    with hub:
        kind = confhub.testing.backend_of(hub, hub.sources[0]).observer_kind
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write("port = 2\n")
        os.replace(tmp, path)
        deadline = time.monotonic() + 5
        while hub.get("port") != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        port = hub.get("port")
    time.sleep(0.1)
    leaked = [t.name for t in threading.enumerate() if t not in before]
    print(json.dumps({
        "kind": kind, "port": port, "leaked": leaked,
        "warnings": [r.getMessage() for r in records],
    }))
    """
)


def test_inotify_unavailable_falls_back_to_polling_with_one_warning(tmp_path: Path) -> None:
    """When inotify_init fails (EMFILE), the file is polled, one warning says so, changes arrive.

    The failure is real: a child process enters its own user namespace, sets that
    namespace's ``max_inotify_instances`` to 0 and then starts a hub, so watchdog's
    ``inotify_init()`` returns EMFILE there without touching the machine-wide limit that
    other processes share.
    """
    path = tmp_path / "app.toml"
    path.write_text("port = 1\n")
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", _NO_INOTIFY_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    assert result["kind"] == "PollingObserver"
    assert result["port"] == 2
    assert result["leaked"] == []
    assert len(result["warnings"]) == 1, result["warnings"]
    assert "inotify instance limit" in result["warnings"][0]
    assert "polling" in result["warnings"][0]


def _backend(path: Path, **options: Any) -> FileBackend:
    options.setdefault("settle", SETTLE)
    return FileBackend(SourceSpec.parse(f"file:{path}", **options))


def test_close_joins_threads_and_stops_events(tmp_path: Path) -> None:
    """close() joins every thread it started, and no update is delivered afterwards."""
    path = tmp_path / "app.toml"
    path.write_text("port = 1\n")
    before = set(threading.enumerate())
    backend = _backend(path)
    updates: list[Any] = []
    backend.load()
    backend.watch(updates.append)
    write_in_place(path, "port = 2\n")
    wait_for(lambda: updates)
    assert len(set(threading.enumerate()) - before) >= 2  # observer + settle thread at least
    backend.close()
    assert [t.name for t in set(threading.enumerate()) - before] == []
    updates.clear()
    write_in_place(path, "port = 3\n")
    time.sleep(QUIET)
    assert updates == []
    backend.close()  # idempotent


def test_change_between_load_and_watch_is_not_lost(tmp_path: Path) -> None:
    """A change made after load() but before watch() is published once watching starts."""
    path = tmp_path / "app.toml"
    path.write_text("port = 1\n")
    backend = _backend(path)
    updates: list[Any] = []
    backend.load()
    write_in_place(path, "port = 2\n")
    try:
        backend.watch(updates.append)
        wait_for(lambda: updates)
    finally:
        backend.close()
    assert updates[-1].values["port"] == 2


def _settle_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("confhub-file-settle")]


def _settled_file(path: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Write ``path`` and make it count as settled: a stamp is trusted once the file's
    ctime is RACY_SECONDS old (3 s by default; lowered here rather than slept)."""
    from confhub._backends import _watch

    path.write_text(text)
    monkeypatch.setattr(_watch, "RACY_SECONDS", 0.05)
    time.sleep(0.1)


def test_an_unchanged_file_starts_no_settle_thread_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settle thread starts with the first event: none for a file that did not change
    between load() and watch(); one once it changes; close() joins it."""
    path = tmp_path / "app.toml"
    _settled_file(path, "port = 1\n", monkeypatch)
    backend = _backend(path)
    updates: list[Any] = []
    backend.load()
    try:
        backend.watch(updates.append)
        assert backend.observer_kind is not None  # watching, with no settle thread yet
        assert _settle_threads() == []
        write_in_place(path, "port = 2\n")
        wait_for(lambda: updates)
        assert _settle_threads() == ["confhub-file-settle[app.toml]"]
    finally:
        backend.close()
    assert _settle_threads() == []
    assert updates[-1].values["port"] == 2


def test_a_same_size_change_between_load_and_watch_of_a_settled_file_is_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A settled file (its stamp trusted) rewritten in place, same size, after load() and
    before watch(): its stamp changed, so the first check runs and publishes it."""
    path = tmp_path / "app.toml"
    _settled_file(path, "port = 1\n", monkeypatch)
    backend = _backend(path)
    updates: list[Any] = []
    backend.load()
    write_in_place(path, "port = 2\n")
    try:
        backend.watch(updates.append)
        wait_for(lambda: updates)
    finally:
        backend.close()
    assert updates[-1].values["port"] == 2


def test_a_recent_file_is_checked_once_watching_starts(tmp_path: Path) -> None:
    """A file changed within RACY_SECONDS of load() is checked when watching starts, even
    with its stamp unchanged (a write in the same timestamp tick may leave it so)."""
    path = tmp_path / "app.toml"
    path.write_text("port = 1\n")  # just written: racy
    backend = _backend(path)
    backend.load()
    try:
        backend.watch(lambda update: None)
        assert _settle_threads() == ["confhub-file-settle[app.toml]"]
    finally:
        backend.close()
    assert _settle_threads() == []


def test_rapid_saves_coalesce_and_the_last_wins(
    tmp_path: Path, open_hub: Any, recorder: Recorder
) -> None:
    """Fifty back-to-back saves produce a few updates at most, and the last content wins."""
    path = tmp_path / "app.toml"
    path.write_text("n = 0\n")
    hub = open_hub(path, settle=0.2)
    began = time.monotonic()
    for n in range(1, 51):
        if n % 2:
            replace_save(path, f"n = {n}\n")
        else:
            write_in_place(path, f"n = {n}\n")
    saving = time.monotonic() - began
    wait_for(lambda: hub.get("n") == 50)
    time.sleep(QUIET)
    assert hub.get("n") == 50
    # Each read needs a quiet settle window (0.2 s): at most one per 0.2 s the saves
    # actually took, plus the last (was: <= 10, which assumed the saves took < 2 s).
    assert 1 <= len(recorder.changes) <= max(10, saving / 0.2 + 2), (recorder.changes, saving)
    seen = [c.changes[-1].new for c in recorder.changes]
    assert seen == sorted(seen), seen  # never an older save after a newer one
    assert recorder.changes[-1].changes[-1].new == 50
    assert recorder.errors == []

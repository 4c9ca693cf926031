"""File reads are bounded (issue 14, item 10): a FIFO never blocks, a device or a runaway
file is refused before it is loaded, a watched file replaced by a FIFO makes the source
stale instead of blocking the settle thread, and a file on a hung mount fails start() at
start_timeout instead of blocking it.

Real FIFOs (``os.mkfifo``), a real symlink to ``/dev/zero`` and a real FUSE mount whose
daemon never answers (as root, where the kernel allows it); a thread join with a generous
limit is the only backstop against a hang, never a timing assertion.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from core_testlib import wait_for

import confhub

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")

#: A hang backstop, not a timing bound: a bounded read takes milliseconds.
JOIN = 30.0


def _release(fifo: Path) -> None:
    """Open and close the FIFO's writing end, so a reader blocked on it (unfixed code) ends."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # nobody is reading it
        return
    os.close(fd)


def _start_in_thread(hub: confhub.Hub) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def run() -> None:
        try:
            hub.start()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "conf.json"
    os.mkfifo(path)
    yield path
    _release(path)


def test_required_fifo_fails_start_naming_it(fifo: Path) -> None:
    """A required file source that is a FIFO fails start() with a StartupError naming its type."""
    hub = confhub.Hub([f"file:{fifo}"], autoload=False)
    thread, outcome = _start_in_thread(hub)
    thread.join(JOIN)
    try:
        assert not thread.is_alive(), "start() blocked opening the FIFO"
        error = outcome[0]
        assert isinstance(error, confhub.StartupError)
        assert str(fifo) in str(error)
        assert "FIFO" in str(error)
    finally:
        _release(fifo)
        hub.close()


def test_optional_fifo_is_absent_and_failed(fifo: Path) -> None:
    """An optional file source that is a FIFO starts absent, with the error in its health."""
    hub = confhub.Hub([f"file:{fifo}?optional=true&watch=false"], autoload=False)
    thread, outcome = _start_in_thread(hub)
    thread.join(JOIN)
    try:
        assert not thread.is_alive(), "start() blocked opening the FIFO"
        assert outcome == [None]
        health = hub.health().sources[0]
        assert health.state == "absent"
        assert health.failed
        assert health.last_error is not None
        assert "FIFO" in health.last_error
    finally:
        _release(fifo)
        hub.close()


def test_symlink_to_dev_zero_is_refused(tmp_path: Path) -> None:
    """A file source that is a symlink to /dev/zero is refused naming the device, not read."""
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    link = tmp_path / "conf.json"
    link.symlink_to("/dev/zero")
    hub = confhub.Hub([f"file:{link}?watch=false"], autoload=False)
    with pytest.raises(confhub.StartupError, match="character device") as info:
        hub.start()
    assert str(link) in str(info.value)
    hub.close()


def test_file_over_max_bytes_is_refused(tmp_path: Path) -> None:
    """A regular file bigger than ?max_bytes= is a SourceFormatError naming its size."""
    path = tmp_path / "conf.json"
    path.write_text('{"a": "' + "x" * 200 + '"}', encoding="utf-8")
    hub = confhub.Hub([f"file:{path}?watch=false&max_bytes=100"], autoload=False)
    with pytest.raises(confhub.SourceFormatError, match="max_bytes=100") as info:
        hub.start()
    assert f"{path.stat().st_size:,} bytes" in str(info.value)
    hub.close()


def test_watched_file_replaced_by_fifo_goes_stale(tmp_path: Path) -> None:
    """A watched file replaced by a FIFO makes the source stale, naming the FIFO, last good kept."""
    path = tmp_path / "conf.json"
    path.write_text('{"a": 1}', encoding="utf-8")
    errors: list[confhub.ErrorEvent] = []
    hub = confhub.Hub([f"file:{path}?settle=0.05"], autoload=False)
    hub.start()
    hub.subscribe(lambda change: None, on_error=errors.append)
    fifo = tmp_path / "conf.json.new"
    os.mkfifo(fifo)
    os.replace(fifo, path)
    closer = threading.Thread(target=hub.close, daemon=True)
    try:
        wait_for(
            lambda: hub.health().sources[0].state == "stale", timeout=JOIN, what="source stale"
        )
        # The state changes before the error event reaches the notifier thread.
        wait_for(lambda: bool(errors), timeout=JOIN, what="the error event")
        assert any("FIFO" in str(event.error) for event in errors)
        assert hub.get("a") == 1
    finally:
        _release(path)
        closer.start()
        closer.join(JOIN)


# -- a file on a hung mount ---------------------------------------------------------------------


@contextlib.contextmanager
def _hung_mount(directory: Path) -> Iterator[None]:
    """Mount a FUSE filesystem on ``directory`` whose daemon never answers (a hung network
    mount: every lookup under it blocks in the kernel). Leaving aborts the connection (the
    blocked calls fail) and detaches the mount. Skips where mounting is not allowed."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as exc:
        pytest.skip(f"cannot open /dev/fuse: {exc}")
    options = f"fd={fd},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()}"
    if libc.mount(b"confhub-hung", bytes(directory), b"fuse", 0, options.encode()) != 0:
        os.close(fd)
        pytest.skip(f"cannot mount FUSE here: {os.strerror(ctypes.get_errno())}")
    try:
        yield
    finally:
        os.close(fd)  # aborts the connection: whatever waits on it fails now
        libc.umount2(bytes(directory), 2)  # MNT_DETACH


def test_a_file_on_a_hung_mount_fails_start_at_start_timeout(tmp_path: Path) -> None:
    """start() with a required file on a mount that never answers raises StartupError
    naming the file and the start_timeout ceiling, after start_timeout and well before the
    mount answers (here: never, until the test aborts it); it blocked forever before."""
    mount = tmp_path / "nfs"
    mount.mkdir()
    start_timeout = 1.0
    with _hung_mount(mount):
        hub = confhub.Hub([f"file:{mount}/app.toml"], cache_dir=None, start_timeout=start_timeout)
        thread, outcome = _start_in_thread(hub)
        thread.join(JOIN)
        assert not thread.is_alive(), "start() blocked on the hung mount"
    hub.close()
    (error,) = outcome
    assert isinstance(error, confhub.StartupError), error
    assert f"file:{mount}/app.toml" in str(error)
    assert "start_timeout" in str(error)
    assert "hung network mount" in str(error)

"""The wake-up line of a host-shared group (the third of its files, beside the lock and the
state file of :mod:`confhub._fleetstate`): a UNIX stream socket the leader listens on.

It carries no data, only one byte per new state ("read the file again"), sent without
blocking: a follower that does not read fills its socket buffer and misses pokes, never
slows the leader, and reads the latest state when it runs again. When the leader dies, the
kernel closes its end and every follower wakes at once to try the lock. :class:`Beacon` is
the leader's end, :class:`Line` a follower's; both refuse a peer of another uid.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
from pathlib import Path
from typing import Any

from ._fleetstate import GroupFileError

#: The longest socket path ``bind``/``connect`` take (108 on Linux, with the NUL).
_SUN_PATH_MAX = 100


def _bind_or_connect(sock: socket.socket, path: Path, connect: bool) -> None:
    """``sock.connect``/``bind`` to ``path``; a path too long for a socket address goes
    through ``/proc/self/fd`` and a descriptor of its directory (Linux)."""
    text = str(path)
    if len(text.encode()) <= _SUN_PATH_MAX:
        (sock.connect if connect else sock.bind)(text)
        return
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        short = f"/proc/self/fd/{dir_fd}/{path.name}"
        (sock.connect if connect else sock.bind)(short)
    finally:
        os.close(dir_fd)


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end (Linux ``SO_PEERCRED``; ``None`` elsewhere)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


class Beacon(threading.Thread):
    """The leader's end of the wake-up line: accepts followers, pokes them, never blocks.

    Each follower gets the leader's session on connecting, then one byte per :meth:`poke`;
    a follower whose buffer is full is skipped (it reads the latest state when it runs).
    """

    def __init__(self, path: Path, session: str, display: str) -> None:
        super().__init__(name=f"confhub-beacon[{display}]", daemon=True)
        self.path = path
        self.session = session
        try:
            os.unlink(path)  # a dead leader's socket: we hold the lock, so it is stale
        except FileNotFoundError:
            pass
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            _bind_or_connect(self._listener, path, connect=False)
            os.chmod(path, 0o600)
            self._listener.listen(1024)
            self._listener.setblocking(False)
        except BaseException:
            self._listener.close()
            raise
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def poke(self) -> None:
        """Wake every follower (one byte each, without blocking)."""
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.send(b".")
            except BlockingIOError:
                pass  # a slow follower: it reads the latest state when it wakes
            except OSError:
                self._drop(conn)

    @property
    def followers(self) -> int:
        """How many followers are connected."""
        with self._lock:
            return len(self._conns)

    def _drop(self, conn: socket.socket) -> None:
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)
        conn.close()

    def run(self) -> None:
        while not self._halt.is_set():
            with self._lock:
                watched: list[Any] = [self._listener, self._wake_r, *self._conns]
            try:
                readable, _, _ = select.select(watched, [], [], 1.0)
            except (OSError, ValueError):
                continue  # a connection closed meanwhile
            for item in readable:
                if item is self._listener:
                    self._accept()
                elif item is self._wake_r:
                    return
                else:
                    self._on_readable(item)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            uid = peer_uid(conn)
            if uid is not None and uid != os.getuid():
                conn.close()  # the directory keeps others out; this is the second fence
                continue
            conn.setblocking(False)
            try:
                conn.send(f"{self.session}\n".encode())
            except OSError:
                conn.close()
                continue
            with self._lock:
                self._conns.append(conn)

    def _on_readable(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)  # the follower is gone

    def forget(self) -> None:
        """In a forked child: close this process's copies of the sockets (the parent's stay
        open: its followers see no end of stream while it lives), without unlinking."""
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._listener.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self) -> None:
        """Stop accepting, close every connection (followers wake and elect), join."""
        self._halt.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self.is_alive() and threading.current_thread() is not self:
            self.join(5.0)
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        try:
            if (
                os.stat(self.path, follow_symlinks=False).st_ino
                == os.fstat(self._listener.fileno()).st_ino
            ):
                os.unlink(self.path)
        except OSError:
            pass
        self._listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


class Line:
    """A follower's end of the wake-up line to the leader (one connection)."""

    def __init__(self, path: Path) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(1.0)
            _bind_or_connect(sock, path, connect=True)
            uid = peer_uid(sock)
            if uid is not None and uid != os.getuid():
                raise GroupFileError(
                    f"{path} is served by uid {uid}, not by this user; refusing to follow it"
                )
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._hello = b""
        self.session: str | None = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> bool:
        """Read what the leader sent; False when the leader is gone (end of stream)."""
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            if self.session is None:
                self._hello += data
                if b"\n" in self._hello:
                    self.session = self._hello.split(b"\n", 1)[0].decode("ascii", "replace")

    def close(self) -> None:
        self.sock.close()


def wait_readable(fds: list[Any], timeout: float) -> list[Any]:
    """``select`` for reading, bounded by ``timeout``."""
    readable, _, _ = select.select(fds, [], [], timeout)
    return readable

"""The files of a host-shared group: the lock that elects its leader, the state file that
carries the leader's layer to the followers, and the socket that wakes them
(:mod:`confhub._fleetwake`).

A group is the processes of one host that share one remote source (one cache identity:
:meth:`confhub._cache.Cache.identity`) in one cache directory. Its files sit in that
directory, next to the cache file, named by the same fingerprint::

    etcd-<fingerprint>.fleet.lock    the election: whoever holds an exclusive flock() leads
    etcd-<fingerprint>.fleet.state   the state: the leader's last layer (or its error)
    etcd-<fingerprint>.fleet.sock    the wake-up line: the leader pokes followers on a change

Why these three:

- **The lock** is an ``fcntl.flock`` on an open file: the kernel drops it when the holder's
  last descriptor closes, ``kill -9`` included; no PID file or timestamp is ever trusted.
  ``flock`` (not ``lockf``) because its locks belong to the open file, so two hubs of one
  process also exclude each other, and closing an unrelated descriptor of the file does not
  drop it.
- **The state file** holds the leader's latest state (its layer, or the error it met) behind
  a sequence lock and a checksum (:class:`StateWriter`): a reader never takes half of a
  write, a file a leader died writing, truncated, or written by hand is refused. It is
  what a late follower reads at once, and what a slow one reads when it wakes: always the
  latest, never a queue.
- **The socket** (a UNIX stream socket the leader listens on) carries no data, only one
  byte per new state ("read the file again"), sent without blocking: a follower that does
  not read (stopped, swapped out) fills its socket buffer and misses pokes, never slows
  the leader, and reads the latest state when it runs again. Its other use is the end of
  the stream: when the leader dies, the kernel closes its end and every follower wakes at
  once to try the lock, with nothing polled.

Permissions: the directory must be ours and not writable by others (created 0700), each
file ours, a regular file (``O_NOFOLLOW``) and not writable by group or others (created
0600). Anything else is refused with a warning naming the file and the fix, and never read.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
import struct
import time
from pathlib import Path
from typing import Any

import attrs

from ._layer import Layer, freeze, to_json

#: The state file's format; a follower refuses (and says so) any other.
FORMAT = 1
#: The largest state file read.
MAX_STATE_BYTES = 512 * 1024 * 1024
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class GroupFileError(Exception):
    """A group file or directory that must not be used (the message says why and what to do)."""


class FormatMismatch(GroupFileError):
    """The state file is another confhub version's format."""


def check_owned(path: Path | str, st: os.stat_result) -> None:
    """Raise :class:`GroupFileError` unless ``st`` is ours and not writable by others."""
    if st.st_uid != os.getuid():
        raise GroupFileError(
            f"{path} is owned by uid {st.st_uid}, not by this user (uid {os.getuid()}); "
            "a group's files must be the user's own: use a cache_dir of this user"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise GroupFileError(
            f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
            f"chmod go-w {path}, or use another cache_dir"
        )


def ensure_dir(directory: Path) -> None:
    """Create ``directory`` 0700 if missing; refuse one that is not ours and private."""
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
    st = directory.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise GroupFileError(f"{directory} is not a directory")
    check_owned(directory, st)


@attrs.frozen
class GroupState:
    """One state the leader wrote: ``seq`` orders them (it only grows, across leaders too);
    ``layer`` is the store's content as the leader last read it (``None`` before its first
    read), ``error`` what the leader's last attempt met (``kind``, ``message``), ``None``
    when it reads the store well."""

    seq: int
    pid: int
    session: str
    layer: Layer | None
    error: tuple[str, str] | None
    version: str = ""


@attrs.frozen
class GroupPaths:
    """The three files of one group (see the module docstring)."""

    directory: Path
    stem: str

    @property
    def lock(self) -> Path:
        return self.directory / f"{self.stem}.fleet.lock"

    @property
    def state(self) -> Path:
        return self.directory / f"{self.stem}.fleet.state"

    @property
    def socket(self) -> Path:
        return self.directory / f"{self.stem}.fleet.sock"


# -- the lock ---------------------------------------------------------------------------------


class Election:
    """The group's lock file, opened once; :meth:`try_lead` takes the lock without waiting."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise GroupFileError(f"{path} is not a regular file")
            check_owned(path, st)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd
        self.leading = False

    def try_lead(self) -> bool:
        """Take the lock if nobody holds it (True: this process leads from now on)."""
        if self._fd is None:
            return False
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self.leading = True
        return True

    def close(self) -> None:
        """Release the lock (closing the file does) and forget it. Idempotent."""
        fd, self._fd = self._fd, None
        self.leading = False
        if fd is not None:
            os.close(fd)


# -- the state file ---------------------------------------------------------------------------


#: The state file's header: magic, format, (reserved), write counter, payload length, and
#: the payload's SHA-256. The payload (JSON) follows at :data:`_PAYLOAD`.
_HEADER = struct.Struct("<8sIIQQ32s")
_MAGIC = b"confhub\x00"
_PAYLOAD = 64
#: How long a reader waits out a write in progress before it leaves the state for later.
_BUSY_RETRIES = 20
_BUSY_SLEEP = 0.0005


class StateWriter:
    """The leader's end of the state file: one descriptor, writes in place.

    Why in place and not a temp file and ``os.replace``: on ext4 a rename over an existing
    file (and a truncate before a rewrite) flushes the new file's data first (the
    ``auto_da_alloc`` heuristic), ~1 ms per write on the machine the benchmarks ran on,
    on every change the group sees. A write in place is a sequence lock instead: the write
    counter in the header is made odd, the payload written, then the header with the
    length, the payload's checksum and the counter made even. A reader takes a state only
    when the counter was even and equal before and after its read and the checksum
    matches: a leader that dies mid-write leaves an odd counter, and nobody ever reads
    half a state.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = self._open()
        self._counter = self._current_counter()

    def _open(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise GroupFileError(f"{self.path} is not a regular file")
            check_owned(self.path, st)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _current_counter(self) -> int:
        raw = os.pread(self._fd, _HEADER.size, 0)
        if len(raw) < _HEADER.size:
            return 0
        magic, _fmt, _res, counter, _length, _sha = _HEADER.unpack(raw)
        return int(counter) if magic == _MAGIC else 0

    def _reopen_if_replaced(self) -> None:
        """Someone replaced the file under us: start a new one of ours in its place."""
        try:
            same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return
        os.close(self._fd)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._fd = self._open()

    def write(self, payload: bytes) -> None:
        """Write ``payload`` as the state (see the class docstring)."""
        self._reopen_if_replaced()
        counter = (self._counter + 1) | 1  # odd: a write in progress
        digest = hashlib.sha256(payload).digest()
        os.pwrite(self._fd, _HEADER.pack(_MAGIC, FORMAT, 0, counter, 0, b"\0" * 32), 0)
        os.pwrite(self._fd, payload, _PAYLOAD)
        self._counter = counter + 1  # even: complete
        header = _HEADER.pack(_MAGIC, FORMAT, 0, self._counter, len(payload), digest)
        os.pwrite(self._fd, header, 0)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def encode_state(
    *,
    seq: int,
    session: str,
    source: str,
    version: str,
    layer: Layer | None,
    error: tuple[str, str] | None,
    pid: int | None = None,
) -> bytes:
    """The JSON payload of one state (what :meth:`StateWriter.write` takes)."""
    body: dict[str, Any] = {
        "confhub": version,
        "source": source,
        "seq": seq,
        "pid": os.getpid() if pid is None else pid,
        "session": session,
        "error": None if error is None else list(error),
        "layer": None,
    }
    if layer is not None:
        body["layer"] = {
            "revision": to_json(layer.revision),
            "fetched_at": layer.fetched_at,
            "data": {k: to_json(v) for k, v in layer.values.items()},
            "details": {k: str(v) for k, v in layer.details.items()},
        }
    return json.dumps(body, separators=(",", ":")).encode()


def state_image(payload: bytes, *, counter: int = 2, fmt: int = FORMAT) -> bytes:
    """A whole state file holding ``payload`` (for tools and tests that plant one)."""
    digest = hashlib.sha256(payload).digest()
    return _HEADER.pack(_MAGIC, fmt, 0, counter, len(payload), digest) + payload


def stat_key(path: Path) -> tuple[int, int, int] | None:
    """What changes when the state file is rewritten or replaced (inode, mtime, size)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class Busy(Exception):
    """A write was in progress for longer than a reader waits (or its writer died in it)."""


def read_state(path: Path, source: str) -> GroupState | None:
    """The state in ``path``; ``None`` when there is none yet. :class:`GroupFileError` for a
    file that must not be used (another user's, writable by others, not a regular file,
    truncated, altered, another format): nothing of it is used. :class:`Busy` while a write
    is under way (or its writer died in it)."""
    try:
        fd = os.open(path, _OPEN_READ)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EMLINK):
            raise GroupFileError(f"{path} is not a regular file (a symlink?)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise GroupFileError(f"{path} is not a regular file")
        check_owned(path, st)  # before a byte of it is read
        payload = _read_consistent(fd, path)
    finally:
        os.close(fd)
    if payload is None:
        return None
    try:
        body = json.loads(payload)
        return _state_of(body, source)
    except (KeyError, TypeError, ValueError) as exc:
        raise GroupFileError(f"{path} is malformed ({exc!r})") from None


def _read_consistent(fd: int, path: Path) -> bytes | None:
    """The payload of one complete write (the sequence lock of :class:`StateWriter`)."""
    for _ in range(_BUSY_RETRIES):
        first = os.pread(fd, _HEADER.size, 0)
        if not first:
            return None  # created, never written
        if len(first) < _HEADER.size:
            raise GroupFileError(f"{path} is not a complete state file (truncated or altered)")
        magic, fmt, _res, counter, length, digest = _HEADER.unpack(first)
        if magic != _MAGIC:
            raise GroupFileError(f"{path} is not a confhub group state file")
        if fmt != FORMAT:
            raise FormatMismatch(
                f"{path} is in group state format {fmt}; this confhub reads format {FORMAT}: "
                "run one confhub version per group (or give each version its own cache_dir)"
            )
        if counter % 2 == 0:
            if length > MAX_STATE_BYTES:
                raise GroupFileError(f"{path} claims {length} bytes, more than a state may hold")
            payload = os.pread(fd, length, _PAYLOAD)
            if os.pread(fd, _HEADER.size, 0) == first:
                if len(payload) != length or hashlib.sha256(payload).digest() != digest:
                    raise GroupFileError(f"{path} fails its checksum (truncated or altered)")
                return payload
        time.sleep(_BUSY_SLEEP)
    raise Busy(f"{path}: a write has been under way for a while")


def _state_of(body: dict[str, Any], source: str) -> GroupState:
    layer = None
    raw = body["layer"]
    if raw is not None:
        data = raw["data"]
        if not isinstance(data, dict):
            raise TypeError("data is not a table")
        layer = Layer.from_flat(
            {k: freeze(v) for k, v in data.items()},
            source=source,
            revision=raw["revision"],
            details={str(k): str(v) for k, v in raw["details"].items()},
            fetched_at=float(raw["fetched_at"]),
        )
    error = body["error"]
    return GroupState(
        seq=int(body["seq"]),
        pid=int(body["pid"]),
        session=str(body["session"]),
        layer=layer,
        error=None if error is None else (str(error[0]), str(error[1])),
        version=str(body.get("confhub", "")),
    )

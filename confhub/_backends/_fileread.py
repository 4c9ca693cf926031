"""What a file-shaped source reads (``file:``, ``dotenv:``, ``secrets:``): the path with
its ``{profile}`` filled in, a bounded read of a regular file, the content's revision, and
the ``max_bytes`` option. :mod:`confhub._backends._watch` watches what these read.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from typing import TYPE_CHECKING

from .._errors import SourceFormatError, SourcePermissionError, SourceUnavailableError, SpecError
from .._fileio import read_at_most

if TYPE_CHECKING:
    from .._spec import SourceSpec

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
#: The revision (and content hash) of a source that is missing.
ABSENT = "absent"

#: The variable that names the active profile (``?profile_env=`` names another).
PROFILE_ENV = "CONFHUB_PROFILE"
_PROFILE = "{profile}"
_PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def profile_path(spec: SourceSpec, location: str) -> tuple[str | None, str | None]:
    """``location`` with ``{profile}`` replaced by the active profile, and the profile.

    The profile is the value of ``$CONFHUB_PROFILE`` (or of the variable the
    ``profile_env`` option names), read once, when the backend is made. A path without the
    placeholder is returned as is, with ``None``. When the variable is unset or empty, the
    path is ``None`` if the source is ``?optional=true`` (it contributes nothing), else a
    :class:`SpecError`. A profile must be a plain name (letters, digits, ``_ . -``, not
    ``..``): it picks a file beside the others, never a path elsewhere.
    """
    if _PROFILE not in location:
        return location, None
    variable = str(spec.option("profile_env", PROFILE_ENV))
    profile = os.environ.get(variable, "").strip()
    if not profile:
        if spec.optional:
            return None, None
        raise SpecError(
            f"{spec.display}: the path holds {{profile}} but ${variable} is not set; set it "
            f"(e.g. {variable}=prod) or add ?optional=true to read nothing without a profile",
            spec=spec.display,
        )
    if not _PROFILE_NAME.fullmatch(profile) or ".." in profile:
        raise SpecError(
            f"{spec.display}: ${variable}={profile!r} is not a profile name; use letters, "
            "digits, '_', '.' and '-' (no '/', no '..'), e.g. prod or staging-eu",
            spec=spec.display,
        )
    return location.replace(_PROFILE, profile), profile


def read_regular(path: str, max_bytes: int, *, source: str) -> bytes | None:
    """The bytes of the regular file at ``path``, or ``None`` when it does not exist.

    Opened with ``O_NONBLOCK`` so that a FIFO never blocks the open; only a regular file
    is read (symlinks are followed: only the final target's type counts), and at most
    ``max_bytes + 1`` bytes, so ``/dev/zero`` or a runaway file is refused, not loaded.
    Errors name ``source`` and ``path``: :class:`SourcePermissionError`,
    :class:`SourceUnavailableError` (not a regular file, an I/O error),
    :class:`SourceFormatError` (a directory, too big).
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise SourcePermissionError(
            f"{source}: cannot read {path}: {exc.strerror or exc}; fix its permissions",
            source=source,
        ) from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket (or a device with no driver)
            raise _not_regular(source, path, "a socket or an unconnected device") from None
        raise SourceUnavailableError(
            f"{source}: cannot read {path}: {exc.strerror or exc}", source=source
        ) from None
    try:
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise SourceFormatError(
                    f"{source}: {path} is a directory, not a file", source=source
                )
            if not stat.S_ISREG(st.st_mode):
                raise _not_regular(source, path, _file_type(st.st_mode))
            if st.st_size > max_bytes:
                raise _too_big(source, path, f"{st.st_size:,} bytes", max_bytes)
            data = read_at_most(fd, max_bytes)
        except OSError as exc:
            raise SourceUnavailableError(
                f"{source}: cannot read {path}: {exc.strerror or exc}", source=source
            ) from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew while being read
        raise _too_big(source, path, f"more than {max_bytes:,} bytes", max_bytes)
    return data


def _not_regular(source: str, path: str, kind: str) -> SourceUnavailableError:
    return SourceUnavailableError(
        f"{source}: {path} is {kind}, not a regular file; confhub reads only "
        "regular files (a symlink to one is fine): point the source at the file itself",
        source=source,
    )


def _too_big(source: str, path: str, size: str, max_bytes: int) -> SourceFormatError:
    return SourceFormatError(
        f"{source}: {path} is {size}, more than max_bytes={max_bytes:,}; "
        "refusing it: raise ?max_bytes= on the source if a file that big is intended",
        source=source,
    )


def _file_type(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def digest(content: bytes) -> str:
    """The revision of file content: a short SHA-256."""
    return hashlib.sha256(content).hexdigest()[:16]


def max_bytes_option(spec: SourceSpec, default: int) -> int:
    """The ``max_bytes`` option: a whole number >= 0, else :class:`SpecError`."""
    value = spec.option("max_bytes")
    if value is None:
        return default
    try:
        limit = int(str(value))
    except ValueError:
        limit = -1
    if limit < 0:
        raise SpecError(
            f"{spec.display}: max_bytes={value!r} is not a byte count; give a whole number >= 0",
            spec=spec.display,
        )
    return limit

"""Bounded reads of files confhub did not write itself (config files, cache files)."""

from __future__ import annotations

import os

__all__ = ["read_at_most"]


def read_at_most(fd: int, limit: int) -> bytes:
    """Read ``fd`` to its end, or to ``limit + 1`` bytes, whichever comes first.

    The caller refuses a result longer than ``limit``: a file that grew past it while it was
    read, or one with no end (a device), is never read whole into memory.
    """
    chunks: list[bytes] = []
    left = limit + 1
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)

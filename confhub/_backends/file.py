"""The ``file`` backend: TOML, JSON or YAML, watched through watchdog on the parent directory.

Spec: ``file:PATH`` (or a bare path) with these query options:

- ``format=toml|json|yaml``: the format, when the suffix does not tell it.
- ``optional=true``: a missing file contributes no keys instead of failing; when a watched
  optional file is deleted its keys go away, and come back when it is recreated.
- ``watch=auto|poll|false``: ``auto`` (the default) uses the platform's native observer
  (inotify on Linux) and falls back to polling with one warning when it cannot start;
  ``poll`` always polls (network filesystems, CIFS); ``false`` reads the file once.
- ``settle=SECONDS`` (default 0.02): the debounce window; the file is read once no event
  arrived for this long.
- ``max_settle=SECONDS`` (default ``max(1.0, 10 * settle)``): the longest a stream of events
  can postpone a read, so a writer that never pauses cannot starve readers.
- ``poll_interval=SECONDS`` (default 0.5): how often the polling observer scans.
- ``max_bytes=N`` (default 64 MiB): a bigger file is refused (``SourceFormatError``) and
  never loaded into memory.

Only a regular file is read (a symlink to one is followed): a FIFO, a device such as
``/dev/zero`` or a socket is a ``SourceUnavailableError`` naming the path and its type, and
the open never blocks (``O_NONBLOCK``).

Watching (in :mod:`confhub._backends._watch`, shared with ``dotenv:`` and ``secrets:``)
watches the parent directory, follows symlinks and Kubernetes ``..data`` swaps, debounces,
and compares content hashes; see that module's docstring.

``{profile}`` in the path is replaced by the active profile (``$CONFHUB_PROFILE``, or the
variable named by ``?profile_env=``): see :func:`confhub._backends._fileread.profile_path`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .._backend import BackendInfo, BackendSettings, hookimpl
from .._errors import SpecError
from .._layer import Layer
from .._parsers import format_for_path, locate_key, parse_unwalked
from ._watch import WatchedBackend

if TYPE_CHECKING:
    from .._spec import SourceSpec

#: The largest file read (``?max_bytes=`` changes it). A document near the parsers'
#: MAX_NODES bound (1,000,000 values) takes ~16-32 MiB of text; 64 MiB leaves room for
#: comments and long strings while a runaway file or a device is refused, not loaded.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class FileBackend(WatchedBackend):
    """One configuration file; see the module docstring for how it is watched."""

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(
            spec,
            spec.location,
            kind="file",
            example="file:config.toml",
            max_bytes=DEFAULT_MAX_BYTES,
        )
        try:
            self.format = format_for_path(self.path, spec.option("format"), source=self.name)
        except SpecError as exc:
            name = os.path.basename(self.path)
            if name == ".env" or name.startswith(".env.") or name.endswith(".env"):
                raise SpecError(
                    f"{self.name}: a .env file is not a document; read it with "
                    f"dotenv:{spec.location}?prefix=APP_ (names map like env:)",
                    spec=self.name,
                ) from None
            raise exc from None

    def parse_content(self, content: bytes, revision: str) -> Layer:
        # JSON's bounds are checked by the layer's flatten walk (one walk, not two).
        data, bounds = parse_unwalked(content, self.format, source=self.name, path=self.path)
        path = self.path
        decoded: list[str] = []  # the text, decoded on the first explain() that asks

        def locate(key: str) -> str | None:
            if not decoded:
                decoded.append(content.decode("utf-8-sig", errors="replace"))
            line = locate_key(decoded[0], key)
            return f"{path}:{line}" if line else path

        return Layer.from_mapping(
            data, source=self.name, revision=revision, locate=locate, bounds=bounds
        )

    def __repr__(self) -> str:
        return f"<FileBackend {self.path} format={self.format}>"


@hookimpl
def confhub_backend_schemes() -> list[BackendInfo]:
    return [
        BackendInfo("file", "a TOML, JSON or YAML file (file:PATH, or a bare path)", watchable=True)
    ]


@hookimpl
def confhub_make_backend(spec: SourceSpec, settings: BackendSettings) -> FileBackend | None:
    if spec.scheme != "file":
        return None
    return FileBackend(spec)

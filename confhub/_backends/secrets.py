"""The ``secrets`` backend: a directory of one file per key (Docker and Kubernetes secrets).

Spec: ``secrets:DIR`` (``secrets:/run/secrets``) with the ``file:`` options (``optional``,
``watch``, ``settle``, ``max_settle``, ``poll_interval``, ``{profile}`` in the path) and:

- ``prefix=APP_``: only files whose names start with it are read, and it is stripped.
- ``max_bytes=N`` (default 64 KiB): the largest secret file; a bigger one is refused
  (``SourceFormatError`` naming the file), never read whole. ``max_files=N`` (default
  1000): the most files read (Kubernetes caps a Secret at 1 MiB in all).

Each regular file directly in the directory is one key: its name maps as an ``env:``
variable's does (lower-cased, ``__`` nests: ``db__password`` -> ``db.password``), its
content, UTF-8, is the value, with one trailing newline (``\\n`` or ``\\r\\n``) dropped.
Names starting with ``.`` are skipped (Kubernetes' ``..data`` and ``..<timestamp>``
entries), and so are subdirectories; a symlink to a regular file is followed (Kubernetes
mounts every key as ``name -> ..data/name``).

Watching is ``file:``'s (:mod:`confhub._backends._watch`) on the directory and its parent
(so a directory created later, for an optional source, is seen):
Kubernetes updates a mounted Secret by writing a new ``..<timestamp>`` directory and
renaming a ``..data_tmp`` symlink over ``..data``; the whole directory is read once the
events settled and compared by content hash, so a swap is one change, however many keys
it touches.

Every value is a secret whatever its name: the layers are marked ``secret``, so
``explain``, ``confhub dump``/``explain``/``watch`` show ``<redacted>`` for them, and
errors never quote a value. The source is local, so it is never written to the cache
(``cache_secrets`` has nothing to keep out).
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING

from .._backend import BackendInfo, BackendSettings, hookimpl
from .._errors import SourceFormatError, SourceUnavailableError, SpecError
from .._layer import Layer
from ..kv import check_options
from ._watch import WatchedBackend, read_regular
from .env import env_key

if TYPE_CHECKING:
    from .._spec import SourceSpec

_log = logging.getLogger("confhub.secrets")
#: The options the secrets backend reads (besides the core's).
SECRETS_OPTIONS = frozenset(
    {"prefix", "max_bytes", "max_files", "settle", "max_settle", "profile_env"}
)

#: The largest secret file read (``?max_bytes=``): keys, certificates and tokens fit.
DEFAULT_MAX_BYTES = 64 * 1024
#: The most files read from the directory (``?max_files=``).
DEFAULT_MAX_FILES = 1000


class SecretsBackend(WatchedBackend):
    """A directory of secret files; see the module docstring."""

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(
            spec,
            spec.location,
            kind="secrets",
            example="secrets:/run/secrets",
            max_bytes=DEFAULT_MAX_BYTES,
        )
        self.prefix = str(spec.option("prefix", ""))
        raw = spec.option("max_files", DEFAULT_MAX_FILES)
        try:
            self.max_files = int(str(raw))
        except ValueError:
            self.max_files = 0
        if self.max_files < 1:
            raise SpecError(
                f"{self.name}: max_files={raw!r} is not a whole number above 0; "
                "write e.g. ?max_files=5000",
                spec=self.name,
            )

    def real_dir(self) -> str:
        # The directory itself is watched (its files are the keys, ``..data`` swaps happen
        # in it) besides its parent, which sees it created, deleted or renamed.
        return os.path.realpath(self.path)

    def is_relevant(self, path: str) -> bool:
        if path == self.path or os.path.basename(path) == os.path.basename(self.path):
            return True
        return os.path.dirname(path) in (self.path, os.path.realpath(self.path))

    def stamp(self) -> tuple[int, ...] | None:
        # A directory's own stat does not change when a file in it is rewritten in place.
        return None

    def read_content(self) -> bytes | None:
        """The directory's keys as canonical JSON bytes (the content hash compares them),
        or None when the directory does not exist."""
        try:
            with os.scandir(self.path) as entries:
                names = sorted(e.name for e in entries if not e.name.startswith("."))
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise SourceFormatError(
                f"{self.name}: {self.path} is not a directory; name the directory that "
                "holds one file per secret (secrets:/run/secrets)",
                source=self.name,
            ) from None
        except OSError as exc:
            raise SourceUnavailableError(
                f"{self.name}: cannot list {self.path}: {exc.strerror or exc}", source=self.name
            ) from None
        values: dict[str, str] = {}
        for name in names:
            if env_key(name, self.prefix) is None:
                continue
            if len(values) >= self.max_files:
                raise SourceFormatError(
                    f"{self.name}: {self.path} holds more than max_files={self.max_files} "
                    "secrets; raise ?max_files= if that many are intended",
                    source=self.name,
                )
            path = os.path.join(self.path, name)
            if os.path.isdir(path):
                continue
            try:
                content = read_regular(path, self.max_bytes, source=self.name)
            except SourceFormatError as exc:
                if os.path.isdir(path):  # it became a directory meanwhile
                    continue
                raise exc from None
            if content is None:
                continue  # removed while the directory was read: the next event re-reads
            try:
                text = content.decode("utf-8")
            except UnicodeDecodeError:
                raise SourceFormatError(
                    f"{self.name}: {path} is not UTF-8 text; store the secret as text "
                    "(base64-encode binary secrets)",
                    source=self.name,
                ) from None
            values[name] = text.removesuffix("\n").removesuffix("\r")
        return json.dumps(values, sort_keys=True).encode()

    def parse_content(self, content: bytes, revision: str) -> Layer:
        files: dict[str, str] = json.loads(content)
        values: dict[str, str] = {}
        details: dict[str, str] = {}
        names: dict[str, str] = {}
        for name, value in files.items():
            key = env_key(name, self.prefix)
            if key is None:
                continue
            if key in values:
                raise SourceFormatError(
                    f"{self.name}: the files {names[key]} and {name} both map to {key!r}; "
                    "remove one",
                    source=self.name,
                    key=key,
                )
            values[key] = value
            names[key] = name
            details[key] = os.path.join(self.path, name)
        return Layer.from_flat(
            values, source=self.name, revision=revision, details=details, secret=True
        )

    def __repr__(self) -> str:
        return f"<SecretsBackend {self.path} prefix={self.prefix!r}>"


@hookimpl
def confhub_backend_schemes() -> list[BackendInfo]:
    return [
        BackendInfo(
            "secrets",
            "a directory of one file per secret: secrets:/run/secrets (values redacted)",
            watchable=True,
        )
    ]


@hookimpl
def confhub_make_backend(spec: SourceSpec, settings: BackendSettings) -> SecretsBackend | None:
    if spec.scheme != "secrets":
        return None
    check_options(spec, SECRETS_OPTIONS, logger=_log)
    return SecretsBackend(spec)

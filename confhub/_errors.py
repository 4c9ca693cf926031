"""The exception tree of confhub.

Every exception confhub raises on purpose derives from :class:`ConfhubError`::

    ConfhubError
    ├── SourceError                    (.source: the source's display name)
    │   ├── SourceUnavailableError     transient: the store cannot be reached; fallbacks apply
    │   ├── SourceFormatError          the content is broken; never silently falls back
    │   └── SourcePermissionError      the store refused us (HTTP 403, ACL, auth)
    ├── ConfigValidationError(ValueError)   path-qualified binding errors, ``.errors``
    │   └── UnknownKeyError            a bound table holds keys its class does not declare
    ├── ConfigKeyError(KeyError)       ``hub.get`` of a key no source provides
    ├── SpecError(ValueError)          a source spec that cannot be parsed
    │   ├── BackendNotFoundError       no installed plugin handles a scheme
    │   └── ConfigFileError            confhub.toml / [tool.confhub] cannot be used
    ├── WriteError                     a write a backend refused
    │   └── WriteConflictError         compare-and-swap lost
    ├── StartupError                   a required source had no live data, alternate or cache
    ├── PluginError                    a plugin could not be loaded, or implements no hookspec
    ├── RegistryError                  service registry, discovery, locks (``.service``/``.name``)
    │   ├── RegistryInputError(ValueError)  a bad service name, TTL, port, address
    │   ├── LeaseLostError             the store forgot our lease, registration or session
    │   ├── LockLostError              a held lock's lease or session is gone (or went stale)
    │   ├── LockTimeoutError           ``acquire(timeout=)`` ran out
    │   └── NoInstanceError            ``pick()`` found no passing instance
    └── HubStateError(RuntimeError)    the hub was used in the wrong state (closed, not started)

Exceptions carry their context as attributes so that callers never parse messages, and
messages name the thing at fault and the way out.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs


class ConfhubError(Exception):
    """Base of every error confhub raises on purpose."""


class SourceError(ConfhubError):
    """A source could not provide its layer.

    ``source`` is the source's display name (credentials never appear in it) and ``key`` the
    key at fault when one is known.
    """

    def __init__(self, message: str, *, source: str, key: str | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.key = key


class SourceUnavailableError(SourceError):
    """The source cannot be reached right now (transient): fallbacks and retries apply.

    ``retry_at_start=False`` says that trying again during this start cannot help (a TLS
    handshake that failed on a certificate): the start goes on to the alternates and the
    caches, then fails or is absent at once instead of retrying until ``start_timeout``.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str,
        key: str | None = None,
        retry_at_start: bool = True,
    ) -> None:
        super().__init__(message, source=source, key=key)
        self.retry_at_start = retry_at_start


class SourceFormatError(SourceError):
    """The source was reached but its content is broken (a parse error, a leaf/parent clash).

    The last good layer is kept; confhub never silently falls back to older data for this.
    ``line`` is the 1-based line in a file, when known.
    """

    def __init__(
        self, message: str, *, source: str, key: str | None = None, line: int | None = None
    ) -> None:
        super().__init__(message, source=source, key=key)
        self.line = line


class SourcePermissionError(SourceError):
    """The store refused access (403, ACL denied, bad credentials): not the same as 'deleted'."""


class ConfigValidationError(ConfhubError, ValueError):
    """The merged configuration does not fit the bound class, or a validator vetoed it.

    ``errors`` lists one line per bad path, such as ``expected int @ $.db.port``.
    """

    def __init__(self, message: str, *, errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.errors = tuple(errors)


@attrs.frozen
class UnknownKey:
    """A key under a bound table that its class does not declare (see :class:`UnknownKeyError`).

    - ``key``: the dotted key in the configuration (``db.pool_sise``; for a key inside a
      list item, the list's key); ``name``: the key as written (``pool_sise``);
    - ``path``: where binding found it (``$.db.pool_sise``, relative to the bound prefix);
    - ``source``: the display name of the highest source holding it, ``detail`` that
      source's provenance of it (``config.toml:4``, an etcd key, a Consul key) and
      ``also`` the other sources that hold it;
    - ``suggestion``: the declared key it most resembles (``pool_size``), or ``None``.
    """

    key: str
    name: str
    path: str
    source: str
    detail: str | None = None
    suggestion: str | None = None
    also: tuple[str, ...] = ()


class UnknownKeyError(ConfigValidationError):
    """Binding refused keys the bound class does not declare (the ``"forbid"`` policy).

    ``unknown`` holds one :class:`UnknownKey` per key; ``errors`` has their lines (and any
    other binding error found in the same pass). Bind with ``unknown="warn"`` or
    ``unknown="ignore"`` to accept them.
    """

    def __init__(
        self, message: str, *, errors: Sequence[str] = (), unknown: Sequence[UnknownKey] = ()
    ) -> None:
        super().__init__(message, errors=errors)
        self.unknown = tuple(unknown)


class ConfigKeyError(ConfhubError, KeyError):
    """No source provides ``key``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message; show it as written.
        return str(self.args[0])


class SpecError(ConfhubError, ValueError):
    """A source spec could not be parsed; ``spec`` is the offending text, credentials removed."""

    def __init__(self, message: str, *, spec: str) -> None:
        super().__init__(message)
        self.spec = spec


class ConfigFileError(SpecError):
    """``confhub.toml`` (or ``[tool.confhub]``, or the file named by ``$CONFHUB_CONFIG``)
    cannot be used: ``path`` is the file, ``key`` the key at fault when there is one."""

    def __init__(self, message: str, *, path: str, key: str | None = None) -> None:
        super().__init__(message, spec=path)
        self.path = path
        self.key = key


class BackendNotFoundError(SpecError):
    """No installed plugin provides the spec's scheme; ``installed`` lists those that exist."""

    def __init__(self, message: str, *, spec: str, scheme: str, installed: Sequence[str]) -> None:
        super().__init__(message, spec=spec)
        self.scheme = scheme
        self.installed = tuple(installed)


class WriteError(ConfhubError):
    """A backend refused a write (read-only backend, limit exceeded, invalid key)."""

    def __init__(self, message: str, *, source: str, key: str | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.key = key


class WriteConflictError(WriteError):
    """A compare-and-swap write lost: the key's revision was not the expected one."""

    def __init__(
        self,
        message: str,
        *,
        source: str,
        key: str | None = None,
        expected: object = None,
        actual: object = None,
    ) -> None:
        super().__init__(message, source=source, key=key)
        self.expected = expected
        self.actual = actual


class StartupError(ConfhubError):
    """A required source could not be loaded from anywhere.

    ``attempts`` holds ``(what, error)`` pairs for every place that was tried (in its last
    round), in order; ``rounds`` says how many rounds were tried before the start ceiling.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str,
        attempts: Sequence[tuple[str, BaseException]] = (),
        rounds: int = 1,
    ) -> None:
        super().__init__(message)
        self.source = source
        self.attempts = tuple(attempts)
        self.rounds = rounds


class PluginError(ConfhubError):
    """A plugin could not be loaded or implements a hook that does not exist."""


class RegistryError(ConfhubError):
    """A registry operation failed; ``name`` is the service, instance or lock at fault and
    ``source`` the registry's display name (credentials removed), when known."""

    def __init__(self, message: str, *, source: str = "", name: str | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.name = name


class RegistryInputError(RegistryError, ValueError):
    """A registry call got an argument it cannot use (a service name with '/', a TTL under
    a second, a missing port); the message names the argument and the fix."""


class LeaseLostError(RegistryError):
    """The store no longer has our lease, registration or session (it expired or was
    revoked): the core re-registers as soon as the store answers."""


class LockLostError(RegistryError):
    """A lock we held is gone: its lease or session expired, was revoked, or could not be
    refreshed before the lock's validity ran out. Stop acting as the holder."""


class LockTimeoutError(RegistryError):
    """``acquire(timeout=...)`` ran out before the lock was ours."""


class NoInstanceError(RegistryError, LookupError):
    """``Discovery.pick()`` found no passing instance of the service."""


class HubStateError(ConfhubError, RuntimeError):
    """The hub was used in a state that does not allow it (after close, before start)."""


def without_source(name: str, error: BaseException) -> str:
    """``error``'s message without a leading ``name: ``: backend errors start with their
    source's name, and a line that names the source already should say it once."""
    message = str(error)
    return message[len(name) + 2 :] if message.startswith(f"{name}: ") else message

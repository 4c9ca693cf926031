"""Exceptions raised by the low-level etcd client layer.

Public as ``confhub_etcd.EtcdError`` etc. (what :class:`confhub_etcd.EtcdClient` raises); the
confhub glue maps them onto confhub's own exception tree. Every class derives from
:class:`EtcdError` and, where one fits, from the builtin whose meaning it shares::

    EtcdError(Exception)
     ├── EtcdUnavailable(EtcdError, ConnectionError)   no endpoint answered in time (retryable)
     │    └── EtcdTLSError                              TLS handshake / certificate failure
     ├── EtcdAuthError(EtcdError, PermissionError)      wrong user/password, permission denied
     ├── EtcdCompacted(EtcdError)                       a revision below the compaction point
     ├── EtcdCASConflict(EtcdError)                     compare-and-swap lost (``CASResult.check``)
     ├── EtcdLimitError(EtcdError, ValueError)          request too large / too many txn ops
     │    └── EtcdTooManyKeys                           a prefix holds more than max_keys
     ├── EtcdForkError(EtcdError, RuntimeError)         parent-bound object used after fork()
     └── EtcdClosedError(EtcdError, RuntimeError)       used after ``close()``

Messages never contain passwords, tokens or values; they name the endpoint or key at fault and
the way out.
"""

from __future__ import annotations

__all__ = [
    "EtcdAuthError",
    "EtcdCASConflict",
    "EtcdClosedError",
    "EtcdCompacted",
    "EtcdError",
    "EtcdForkError",
    "EtcdLimitError",
    "EtcdTLSError",
    "EtcdTooManyKeys",
    "EtcdUnavailable",
]


class EtcdError(Exception):
    """Base class of every error raised by ``confhub_etcd``'s client layer."""


class EtcdUnavailable(EtcdError, ConnectionError):
    """No endpoint answered within the deadline, or the cluster has no leader.

    Retryable. ``endpoint`` is the last endpoint tried (``host:port``), ``code`` the gRPC
    status code name (``"UNAVAILABLE"``, ``"DEADLINE_EXCEEDED"``...) when one was received.
    """

    def __init__(self, message: str, *, endpoint: str | None = None, code: str | None = None):
        super().__init__(message)
        self.endpoint = endpoint
        self.code = code


class EtcdTLSError(EtcdUnavailable):
    """The TLS handshake failed (untrusted CA, bad or missing client certificate)."""


class EtcdAuthError(EtcdError, PermissionError):
    """Authentication failed or the user lacks permission. Not retryable without new credentials.

    ``reason`` is the server's short reason (for example ``"authentication failed, invalid user
    ID or password"``); it never includes the password.
    """

    def __init__(self, message: str, *, reason: str = "", endpoint: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.endpoint = endpoint


class EtcdCompacted(EtcdError):
    """The requested revision has been compacted away.

    ``requested_revision`` is the revision asked for, ``compact_revision`` the server's
    compaction point when known (0 if not).
    """

    def __init__(self, message: str, *, requested_revision: int, compact_revision: int = 0):
        super().__init__(message)
        self.requested_revision = requested_revision
        self.compact_revision = compact_revision


class EtcdCASConflict(EtcdError):
    """A compare-and-swap write lost: the key's mod_revision was not the expected one.

    ``actual`` is the key's current mod_revision (0 = the key does not exist).
    """

    def __init__(self, message: str, *, key: bytes, expected: int, actual: int):
        super().__init__(message)
        self.key = key
        self.expected = expected
        self.actual = actual


class EtcdLimitError(EtcdError, ValueError):
    """A request exceeds an etcd limit; raised client-side before anything is sent.

    ``limit_name`` is ``"max_request_bytes"`` or ``"max_txn_ops"``; ``limit`` and ``actual``
    are the configured bound and the offending size.
    """

    def __init__(self, message: str, *, limit_name: str, limit: int, actual: int):
        super().__init__(message)
        self.limit_name = limit_name
        self.limit = limit
        self.actual = actual


class EtcdTooManyKeys(EtcdLimitError):
    """A prefix holds more keys than the reader's ``max_keys``; the read stopped early.

    ``actual`` is etcd's count of the keys under the prefix (or, for a watcher, the keys it
    knows of), ``limit`` the cap; ``limit_name`` is ``"max_keys"``.
    """

    def __init__(self, prefix: bytes, count: int, limit: int) -> None:
        super().__init__(
            f"{count:,} keys under {prefix.decode('utf-8', 'backslashreplace')}, "
            f"more than max_keys={limit:,}",
            limit_name="max_keys",
            limit=limit,
            actual=count,
        )
        self.prefix = prefix


class EtcdForkError(EtcdError, RuntimeError):
    """An object bound to the parent process (a running watcher) was used in a forked child."""


class EtcdClosedError(EtcdError, RuntimeError):
    """The client or watcher was used after ``close()``."""

"""The ``etcd://`` spec, parsed and checked: :class:`EtcdSourceConfig` and :func:`parse_spec`.

The spec is ``etcd://[user[:password]@]host:port[,host:port...]/prefix/?options``; see
``docs/backend.md`` for every option. Parsing does no I/O; each option group has its own
small function, and each raises :class:`confhub.SpecError` naming the fix.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Final

from confhub import SourceSpec, SpecError, UrlParts
from confhub.kv import DEFAULT_MAX_KEYS, Backoff, check_options

from ._client import EtcdClient
from ._types import Credentials, TLSConfig

__all__ = ["OWN_OPTIONS", "VOLATILE_OPTIONS", "EtcdSourceConfig", "parse_spec"]

log = logging.getLogger("confhub.etcd")

_FORMATS: Final = ("json", "yaml", "toml")
_DEFAULT_MAX_RECEIVE_BYTES: Final = 64 * 1024 * 1024
#: Options this backend reads; the core's (``confhub.kv.CORE_OPTIONS``: cache, optional ...)
#: are accepted too, anything else is warned about (``confhub.kv.check_options``).
OWN_OPTIONS: Final = frozenset(
    {
        "prefix",
        "format",
        "user",
        "password",
        "password_env",
        "ca",
        "cert",
        "key",
        "tls",
        "timeout",
        "page_size",
        "max_receive_bytes",
        "retry_initial",
        "retry_max",
        "progress_interval",
        "max_keys",  # the core enforces it on every layer; read here to stop paging early
    }
)
#: Own options that do not change what a source holds (``BackendInfo.volatile_options``):
#: tuning them keeps the source's cache file. (The core drops ``timeout`` and ``retry_*``
#: from every identity too; they are listed because this backend reads them.)
VOLATILE_OPTIONS: Final = frozenset(
    {"page_size", "progress_interval", "max_receive_bytes", "timeout", "retry_initial", "retry_max"}
)


@dataclass(frozen=True, slots=True)
class EtcdSourceConfig:
    """What an ``etcd://`` spec asks for, parsed and checked (no I/O done).

    ``prefix`` is the etcd key prefix (tree layout) or the document key (``fmt`` set).
    ``credentials`` never shows its password in a repr.
    """

    endpoints: tuple[str, ...]
    prefix: str
    fmt: str | None
    credentials: Credentials | None
    tls: TLSConfig | None
    timeout: float
    page_size: int
    backoff: Backoff
    progress_interval: float
    display: str = field(default="")
    max_receive_bytes: int = _DEFAULT_MAX_RECEIVE_BYTES
    max_keys: int = DEFAULT_MAX_KEYS


def parse_spec(spec: SourceSpec, *, default_timeout: float = 2.0) -> EtcdSourceConfig:
    """Parse an ``etcd:`` spec; raises :class:`confhub.SpecError` naming the fix."""
    parts, endpoints, path = _location(spec)
    fmt, prefix = _layout(spec, path)
    page_size, max_receive_bytes, backoff, progress_interval, timeout = _timing(
        spec, default_timeout
    )
    max_keys = spec.max_keys
    check_options(spec, OWN_OPTIONS, logger=log)
    return EtcdSourceConfig(
        endpoints=endpoints,
        prefix=prefix,
        fmt=fmt,
        credentials=_credentials(spec, parts),
        tls=_tls(spec),
        timeout=timeout,
        page_size=page_size,
        backoff=backoff,
        progress_interval=progress_interval,
        display=spec.display,
        max_receive_bytes=max_receive_bytes,
        max_keys=max_keys,
    )


def open_client(config: EtcdSourceConfig, display: str) -> EtcdClient:
    """The client of ``config`` (no I/O until its first call). A TLS file that cannot be
    read, or a setting the client refuses, is a :class:`SpecError` naming the option."""
    try:
        return EtcdClient(
            list(config.endpoints),
            timeout=config.timeout,
            tls=config.tls,
            credentials=config.credentials,
            max_receive_bytes=config.max_receive_bytes,
        )
    except OSError as exc:
        raise SpecError(
            f"{display}: cannot read a TLS file ({exc.strerror}: {exc.filename}); "
            "fix the ca=, cert= or key= option",
            spec=display,
        ) from None
    except ValueError as exc:
        raise SpecError(f"{display}: {exc}", spec=display) from None


def _spec_error(spec: SourceSpec, message: str) -> SpecError:
    return SpecError(f"{spec.display}: {message}", spec=spec.display)


def _positive(spec: SourceSpec, name: str, default: float) -> float:
    value = spec.option_float(name, default)
    if not value > 0:
        raise _spec_error(spec, f"option {name}={spec.options.get(name)!r} must be above 0")
    return value


def _location(spec: SourceSpec) -> tuple[UrlParts, tuple[str, ...], str]:
    """``(parts, endpoints, path)`` of ``//[user[:password]@]host:port[,...]/path``.

    The core parses the location once (``spec.url_parts``): a password may hold ``#``,
    ``?``, ``/`` or ``@``, and the endpoints and path never hold any part of it.
    """
    parts = spec.url_parts
    if parts is None:
        raise _spec_error(
            spec, "write the spec as etcd://host:2379/prefix/ (two slashes, then host:port)"
        )
    endpoints = parts.hosts
    if not endpoints:
        raise _spec_error(spec, "no etcd endpoint given; write etcd://host:2379/prefix/")
    for endpoint in endpoints:
        host, colon, port = endpoint.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise _spec_error(
                spec, f"endpoint {endpoint!r} is not host:port; write e.g. 127.0.0.1:2379"
            )
    return parts, endpoints, parts.path


def _credentials(spec: SourceSpec, parts: UrlParts) -> Credentials | None:
    """User and password from ``user:password@`` (the core's parsed, percent-decoded
    parts), ``?user=``, ``?password=``, ``?password_env=`` (options win over the URL)."""
    user, password = parts.user, parts.password
    user = spec.options.get("user", user) or None
    password = spec.options.get("password", password)
    password_env = spec.options.get("password_env")
    if password is None and password_env:
        password = os.environ.get(str(password_env))
        if password is None:
            raise _spec_error(
                spec, f"password_env names {password_env!r}, which is not set in the environment"
            )
    if password is not None and not user:
        raise _spec_error(spec, "a password needs a user: add ?user=NAME or user:password@")
    return Credentials(str(user), str(password or "")) if user else None


def _layout(spec: SourceSpec, path: str) -> tuple[str | None, str]:
    """``(format, prefix)``: a tree prefix always ends with '/', a document key never."""
    fmt_option = spec.options.get("format")
    fmt = str(fmt_option).lower() if fmt_option else None
    if fmt == "yml":
        fmt = "yaml"
    if fmt is not None and fmt not in _FORMATS:
        raise _spec_error(spec, f"unknown format {fmt_option!r}; use one of json, yaml, toml")
    prefix_option = spec.options.get("prefix")
    prefix = str(prefix_option) if prefix_option is not None else path
    if not prefix:
        raise _spec_error(
            spec,
            "no key prefix given; write etcd://host:2379/myapp/ (keys starting with /myapp/) "
            "or add ?prefix=myapp/",
        )
    if fmt is None and not prefix.endswith("/"):
        # /myapp must not also read /myapp2/...: a tree prefix is a directory.
        prefix += "/"
    if fmt is not None and prefix.endswith("/"):
        raise _spec_error(
            spec, f"format={fmt} names one key holding a document; {prefix!r} ends with '/'"
        )
    return fmt, prefix


def _tls(spec: SourceSpec) -> TLSConfig | None:
    """TLS from ``?ca=``, ``?cert=`` + ``?key=``, or ``?tls=true`` (system roots)."""
    ca, cert, key = (spec.options.get(n) for n in ("ca", "cert", "key"))
    if (cert is None) != (key is None):
        raise _spec_error(spec, "TLS client authentication needs both cert= and key= (PEM files)")
    if ca or cert or spec.option_bool("tls", False):
        return TLSConfig(ca_file=ca or None, cert_file=cert or None, key_file=key or None)
    return None


def _timing(spec: SourceSpec, default_timeout: float) -> tuple[int, int, Backoff, float, float]:
    """``(page_size, max_receive_bytes, backoff, progress_interval, timeout)``."""
    page_size = int(_positive(spec, "page_size", 500))
    max_receive = int(_positive(spec, "max_receive_bytes", _DEFAULT_MAX_RECEIVE_BYTES))
    if max_receive < 4096:
        raise _spec_error(spec, f"max_receive_bytes={max_receive} is too small; use >= 4096")
    retry_initial = _positive(spec, "retry_initial", 0.2)
    retry_max = _positive(spec, "retry_max", 10.0)
    if retry_max < retry_initial:
        raise _spec_error(spec, "retry_max must be at least retry_initial")
    return (
        page_size,
        max_receive,
        Backoff(initial=retry_initial, maximum=retry_max),
        _positive(spec, "progress_interval", 5.0),
        _positive(spec, "timeout", default_timeout),
    )

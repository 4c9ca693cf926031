"""What a ``consul://`` spec says, parsed and checked once, with no I/O.

:meth:`ConsulOptions.from_spec` reads the spec in option groups (address and layout, TLS,
token, consistency, timing), each a small function that raises :class:`SpecError` naming the
option and the fix. Every option is described in ``docs/backend.md``.
"""

from __future__ import annotations

import logging
import os
import ssl
from typing import NamedTuple

import attrs
from confhub import BackendSettings, SourceSpec, SpecError, kv

log = logging.getLogger("confhub.consul")

_FORMATS = ("json", "yaml", "toml")
_CONSISTENCY = ("default", "stale", "consistent")
#: The options this backend reads, besides the core's (``kv.CORE_OPTIONS``).
OWN_OPTIONS = frozenset(
    {
        "token", "scheme", "ca", "cert", "key", "verify", "consistency", "dc", "timeout",
        "wait", "retry_initial", "retry_max", "rate", "burst", "format", "max_last_contact",
        "deregister_after", "lock_delay",  # the registry's (docs/registry.md)
    }
)  # fmt: skip
#: Options that change how the source is read, never what it holds (kept out of the cache
#: file's identity through ``BackendInfo.volatile_options``).
VOLATILE_OPTIONS = frozenset(
    {"timeout", "wait", "retry_initial", "retry_max", "rate", "burst", "max_last_contact"}
)


def _bad_path(path: str) -> bool:
    """Whether Consul would 301-redirect this key path (``//``, ``.``/``..``, leading ``/``)."""
    if path.startswith("/"):
        return True
    segments = path.split("/")
    # A trailing "/" leaves one empty last segment, which is allowed.
    inner = segments[:-1] if segments and segments[-1] == "" else segments
    return any(s in ("", ".", "..") for s in inner)


def _error(spec: SourceSpec, message: str) -> SpecError:
    return SpecError(f"{spec.display}: {message}", spec=spec.display)


class _Address(NamedTuple):
    host: str
    port: int | None
    path: str


class _Layout(NamedTuple):
    prefix: str
    document: str | None
    fmt: str | None


class _Tls(NamedTuple):
    https: bool
    ca: str | None
    cert: str | None
    key: str | None
    verify: bool


class _Timing(NamedTuple):
    timeout: float
    wait: float
    retry_initial: float
    retry_max: float
    rate: float
    burst: int


def _address(spec: SourceSpec) -> _Address:
    """Host, port (None: the scheme's default) and key path of ``consul://HOST:PORT/PATH``."""
    # The core parses the location once (``spec.url_parts``): user info holding "#", "?",
    # "/" or "@" is recognised whole, and the hosts and path hold no part of it.
    parts = spec.url_parts
    if parts is None:
        raise _error(
            spec,
            "write consul://HOST:PORT/PREFIX/ (for example consul://127.0.0.1:8500/myapp/)",
        )
    if parts.has_credentials:
        raise _error(
            spec,
            "credentials in the address are not supported; give the ACL token as "
            "?token=... or CONSUL_HTTP_TOKEN",
        )
    if len(parts.hosts) > 1:
        raise _error(spec, "one Consul agent per source: write consul://HOST:PORT/PREFIX/")
    host, port = _host_port(spec, parts.hosts[0] if parts.hosts else "")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if _bad_path(path):
        raise _error(
            spec,
            f"the key path {path!r} has an empty, '.' or '..' segment; Consul would "
            "redirect every request for it",
        )
    return _Address(host or "127.0.0.1", port, path)


def _host_port(spec: SourceSpec, item: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` (the host lower-cased, brackets
    dropped; port None when not given)."""
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _error(spec, f"bad address {item!r}: write [IPV6]:PORT")
        port_text = rest[1:]
    else:
        host, _, port_text = item.partition(":")
    if not port_text:
        return host.lower(), None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _error(spec, f"bad address {item!r}: the port must be a number from 1 to 65535")
    return host.lower(), int(port_text)


def _layout(spec: SourceSpec, path: str) -> _Layout:
    """A tree under a prefix, or (``?format=``) one key holding a document."""
    fmt = spec.option("format")
    if fmt is None:
        prefix = path if not path or path.endswith("/") else path + "/"
        return _Layout(prefix, None, None)
    fmt = str(fmt).lower()
    if fmt not in _FORMATS:
        raise _error(spec, f"format={fmt!r} is not one of {', '.join(_FORMATS)}")
    if not path or path.endswith("/"):
        raise _error(
            spec,
            f"with format={fmt} the path names one key holding the document "
            "(consul://host:port/myapp/config.json?format=json)",
        )
    return _Layout("", path, fmt)


def _tls(spec: SourceSpec) -> _Tls:
    """https when asked, or implied by ``ca=``/``cert=``; the files are read at first use."""
    scheme = str(spec.option("scheme", "")).lower()
    ca, cert, key = spec.option("ca"), spec.option("cert"), spec.option("key")
    if scheme not in ("", "http", "https"):
        raise _error(spec, f"scheme={scheme!r} must be http or https")
    if key and not cert:
        raise _error(spec, "key= needs cert= (the client certificate)")
    https = scheme == "https" or (scheme == "" and bool(ca or cert))
    if not https and (ca or cert):
        raise _error(spec, "ca=/cert= need scheme=https")
    return _Tls(
        https=https,
        ca=None if ca is None else str(ca),
        cert=None if cert is None else str(cert),
        key=None if key is None else str(key),
        verify=spec.option_bool("verify", True),
    )


def _token(spec: SourceSpec) -> tuple[str | None, str]:
    """The ACL token and where it came from: ``?token=`` beats ``CONSUL_HTTP_TOKEN``."""
    given = spec.option("token")
    if given is not None:
        token, origin = str(given) or None, "option"
    elif os.environ.get("CONSUL_HTTP_TOKEN"):
        token, origin = os.environ["CONSUL_HTTP_TOKEN"], "env"
    else:
        token, origin = None, "none"
    # HTTP header values go out as Latin-1, and Consul tokens are ASCII (UUIDs): anything
    # else would fail on the first request with a bare UnicodeEncodeError.
    if token is not None and not (token.isascii() and token.isprintable()):
        raise _error(spec, "the ACL token has unprintable or non-ASCII characters")
    return token, origin


def _consistency(spec: SourceSpec) -> tuple[str, float | None]:
    """The read consistency mode and, for ``stale``, the optional ``max_last_contact``."""
    consistency = str(spec.option("consistency", "default")).lower()
    if consistency not in _CONSISTENCY:
        raise _error(spec, f"consistency={consistency!r} is not one of {', '.join(_CONSISTENCY)}")
    if spec.option("max_last_contact") is None:
        return consistency, None
    bound = spec.option_float("max_last_contact", 0.0)
    if not bound >= 0:
        raise _error(spec, f"max_last_contact must be >= 0 seconds, not {bound}")
    if consistency != "stale":
        raise _error(
            spec,
            "max_last_contact needs consistency=stale (default and consistent reads are "
            "answered by the leader, never stale)",
        )
    return consistency, bound


def _timing(spec: SourceSpec, settings: BackendSettings) -> _Timing:
    """Timeouts, the watch's ``wait``, its backoff and its rate limit (all > 0); the hub's
    ``settings`` for what the spec leaves out."""
    timing = _Timing(
        timeout=spec.option_float("timeout", settings.connect_timeout),
        wait=spec.option_float("wait", 30.0),
        retry_initial=spec.option_float("retry_initial", settings.retry_initial),
        retry_max=spec.option_float("retry_max", settings.retry_max),
        rate=spec.option_float("rate", 50.0),
        burst=int(spec.option_float("burst", 10)),
    )
    for name, value in timing._asdict().items():
        if not value > 0:
            raise _error(spec, f"{name} must be > 0, not {value}")
    if timing.wait > 600:
        raise _error(spec, "wait is capped at 600 s by Consul")
    return timing._replace(retry_max=max(timing.retry_max, timing.retry_initial))


@attrs.frozen(repr=False)
class ConsulOptions:
    """Everything parsed from a ``consul://`` spec (no I/O). ``token`` is never shown."""

    display: str
    host: str
    port: int
    https: bool
    prefix: str  # tree layout: the key prefix ("" or ending in "/")
    document: str | None  # document layout: the key
    fmt: str | None
    token: str | None
    token_from: str  # "option", "env" or "none" (for docs and debugging, never the value)
    ca: str | None
    cert: str | None
    key: str | None
    verify: bool
    consistency: str
    dc: str | None
    timeout: float
    wait: float
    retry_initial: float
    retry_max: float
    rate: float
    burst: int
    #: consistency=stale only: an answer whose X-Consul-LastContact is above this many
    #: seconds is asked again of the leader. None: any stale answer is used.
    max_last_contact: float | None = None
    #: Tree layout: a listing with more entries is refused while it streams (the core
    #: checks every layer against the same cap; this only stops the download early).
    max_keys: int = kv.DEFAULT_MAX_KEYS
    #: ``?optional=true``: a missing document key is an empty layer, not an error.
    optional: bool = False

    def __repr__(self) -> str:
        return f"<ConsulOptions {self.display} token={'<redacted>' if self.token else None}>"

    @classmethod
    def from_spec(cls, spec: SourceSpec, settings: BackendSettings | None = None) -> ConsulOptions:
        """Parse and check ``spec``; raises :class:`SpecError`.

        ``settings`` (the hub's; defaults when None) fill in the timing options the spec
        leaves out. An option neither this backend nor the core reads is a warning (on
        ``confhub.consul``) naming it and the closest known name, not an error.
        """
        kv.check_options(spec, OWN_OPTIONS, logger=log)
        address = _address(spec)
        layout = _layout(spec, address.path)
        tls = _tls(spec)
        token, token_from = _token(spec)
        consistency, max_last_contact = _consistency(spec)
        timing = _timing(spec, settings or BackendSettings())
        dc = spec.option("dc")
        return cls(
            display=spec.display,
            host=address.host,
            port=address.port or (8501 if tls.https else 8500),
            https=tls.https,
            prefix=layout.prefix,
            document=layout.document,
            fmt=layout.fmt,
            token=token,
            token_from=token_from,
            ca=tls.ca,
            cert=tls.cert,
            key=tls.key,
            verify=tls.verify,
            consistency=consistency,
            dc=None if dc in (None, "") else str(dc),
            timeout=timing.timeout,
            wait=timing.wait,
            retry_initial=timing.retry_initial,
            retry_max=timing.retry_max,
            rate=timing.rate,
            burst=max(1, timing.burst),
            max_last_contact=max_last_contact,
            max_keys=spec.max_keys,
            optional=spec.optional,
        )

    @property
    def read_key(self) -> str:
        """The Consul key (document layout) or prefix (tree layout) that reads ask for."""
        return self.document if self.document is not None else self.prefix

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context (reads the CA and client certificate files: call at first use)."""
        if not self.https:
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.ca)
            if not self.verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if self.cert:
                ctx.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise SpecError(
                f"{self.display}: cannot load the TLS files (ca/cert/key): "
                f"{type(exc).__name__}: {exc}",
                spec=self.display,
            ) from exc
        return ctx

    def read_params(self) -> list[tuple[str, str]]:
        """Query parameters every read carries (consistency, datacenter)."""
        params: list[tuple[str, str]] = []
        if self.consistency != "default":
            params.append((self.consistency, ""))
        if self.dc:
            params.append(("dc", self.dc))
        return params

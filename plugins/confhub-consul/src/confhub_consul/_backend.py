"""The Consul KV backend: ``consul://host:port/prefix/`` (tree) or one document key.

- **Tree layout** (default): every key under the prefix is a leaf; ``myapp/db/pool/size``
  under ``consul://h:8500/myapp/`` is ``db.pool.size``. Values are UTF-8 text.
- **Document layout** (``?format=json|yaml|toml``): the path names one key whose value is a
  whole document, parsed with the core's strict parsers.

Reads and writes go through :mod:`confhub_consul._http` (see there why not py-consul's
client); the watch is a blocking-query loop in :mod:`confhub_consul._watch`. Everything a
user can set is described in ``docs/backend.md``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import ssl
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs
from confhub import (
    Layer,
    LayerDelta,
    Notify,
    SourceFormatError,
    SourcePermissionError,
    SourceSpec,
    SourceUnavailableError,
    SpecError,
    WriteConflictError,
    WriteError,
    parse_document,
)

from ._http import TRANSPORT_ERRORS, Aborted, ChunkCheck, Connection, Response, kv_path
from ._watch import Watcher

if TYPE_CHECKING:
    from confhub import Hub

log = logging.getLogger("confhub.consul")

#: Consul's default ``limits.kv_max_value_size``.
MAX_VALUE_SIZE = 524_288
#: Consul's default ``limits.txn_max_req_len``: larger writes use a plain PUT instead.
MAX_TXN_BODY = 524_288
#: The core's default ``max_keys`` (what ``SourceSpec.max_keys`` gives for no option): a
#: tree listing with more entries is refused while it is read, before it is parsed.
DEFAULT_MAX_KEYS = 1_000_000
#: What starts each entry of a recurse listing: Consul's JSON encoder (Go's, and the test
#: server's ``_go_json``) writes the field name as ``"Key":`` (``"Key": `` with ``?pretty``
#: or in ``-dev`` mode). It occurs nowhere else: inside a JSON string every ``"`` is escaped
#: (``\"``), so the closing ``":`` of the mark can only end a field name, and the entry's
#: other fields are numbers, base64 or null values and a session UUID.
_ENTRY_MARK = b'"Key":'
_FORMATS = ("json", "yaml", "toml")
_CONSISTENCY = ("default", "stale", "consistent")
#: One dotted-key segment a write may use: passes every released Consul key validator.
_SEGMENT = re.compile(r"[A-Za-z0-9_,-]+")
_KNOWN_OPTIONS = frozenset(
    {
        "token", "scheme", "ca", "cert", "key", "verify", "consistency", "dc", "timeout",
        "wait", "retry_initial", "retry_max", "rate", "burst", "format", "optional", "poll",
        "max_last_contact", "max_keys",
        # Read by the core (the cache, the fallback chain, polling), not by this backend.
        "cache", "cache_secrets", "max_stale", "poll_interval", "watch", "name",
    }
)  # fmt: skip


def _bad_path(path: str) -> bool:
    """Whether Consul would 301-redirect this key path (``//``, ``.``/``..``, leading ``/``)."""
    if path.startswith("/"):
        return True
    segments = path.split("/")
    # A trailing "/" leaves one empty last segment, which is allowed.
    inner = segments[:-1] if segments and segments[-1] == "" else segments
    return any(s in ("", ".", "..") for s in inner)


def _duration(seconds: float) -> str:
    """A Go duration string for ``seconds`` (Consul's ``wait`` parameter)."""
    return f"{max(1, round(seconds * 1000))}ms"


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
    max_keys: int = DEFAULT_MAX_KEYS

    def __repr__(self) -> str:
        return f"<ConsulOptions {self.display} token={'<redacted>' if self.token else None}>"

    @classmethod
    def from_spec(cls, spec: SourceSpec, hub: Hub | None) -> ConsulOptions:
        """Parse and check ``spec``; raises :class:`SpecError`."""
        display = spec.display
        unknown = sorted(set(spec.options) - _KNOWN_OPTIONS)
        if unknown:
            raise SpecError(
                f"{display}: unknown option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(_KNOWN_OPTIONS))}",
                spec=display,
            )
        if not spec.location.startswith("//"):
            raise SpecError(
                f"{display}: write consul://HOST:PORT/PREFIX/ (for example "
                "consul://127.0.0.1:8500/myapp/)",
                spec=display,
            )
        try:
            parts = urlsplit(f"consul:{spec.location}")
            port_given = parts.port
        except ValueError as exc:
            raise SpecError(f"{display}: bad address: {exc}", spec=display) from None
        if "@" in parts.netloc:
            raise SpecError(
                f"{display}: credentials in the address are not supported; "
                "give the ACL token as ?token=... or CONSUL_HTTP_TOKEN",
                spec=display,
            )
        host = parts.hostname or "127.0.0.1"
        fmt = spec.option("format")
        if fmt is not None:
            fmt = str(fmt).lower()
            if fmt not in _FORMATS:
                raise SpecError(
                    f"{display}: format={fmt!r} is not one of {', '.join(_FORMATS)}",
                    spec=display,
                )
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if _bad_path(path):
            raise SpecError(
                f"{display}: the key path {path!r} has an empty, '.' or '..' segment; "
                "Consul would redirect every request for it",
                spec=display,
            )
        document: str | None = None
        prefix = ""
        if fmt is not None:
            if not path or path.endswith("/"):
                raise SpecError(
                    f"{display}: with format={fmt} the path names one key holding the "
                    "document (consul://host:port/myapp/config.json?format=json)",
                    spec=display,
                )
            document = path
        else:
            prefix = path if not path or path.endswith("/") else path + "/"
        scheme = str(spec.option("scheme", "")).lower()
        ca, cert, key = spec.option("ca"), spec.option("cert"), spec.option("key")
        if scheme not in ("", "http", "https"):
            raise SpecError(f"{display}: scheme={scheme!r} must be http or https", spec=display)
        if key and not cert:
            raise SpecError(f"{display}: key= needs cert= (the client certificate)", spec=display)
        https = scheme == "https" or (scheme == "" and bool(ca or cert))
        if not https and (ca or cert):
            raise SpecError(f"{display}: ca=/cert= need scheme=https", spec=display)
        token_opt = spec.option("token")
        if token_opt is not None:
            token, token_from = str(token_opt) or None, "option"
        elif os.environ.get("CONSUL_HTTP_TOKEN"):
            token, token_from = os.environ["CONSUL_HTTP_TOKEN"], "env"
        else:
            token, token_from = None, "none"
        # HTTP header values go out as Latin-1, and Consul tokens are ASCII (UUIDs): anything
        # else would fail on the first request with a bare UnicodeEncodeError.
        if token is not None and not (token.isascii() and token.isprintable()):
            raise SpecError(
                f"{display}: the ACL token has unprintable or non-ASCII characters",
                spec=display,
            )
        consistency = str(spec.option("consistency", "default")).lower()
        if consistency not in _CONSISTENCY:
            raise SpecError(
                f"{display}: consistency={consistency!r} is not one of {', '.join(_CONSISTENCY)}",
                spec=display,
            )
        connect_timeout = float(getattr(hub, "connect_timeout", 2.0))
        timeout = spec.option_float("timeout", connect_timeout)
        wait = spec.option_float("wait", 30.0)
        retry_initial = spec.option_float("retry_initial", getattr(hub, "retry_initial", 0.5))
        retry_max = spec.option_float("retry_max", getattr(hub, "retry_max", 30.0))
        rate = spec.option_float("rate", 50.0)
        burst = int(spec.option_float("burst", 10))
        for name, value in (
            ("timeout", timeout), ("wait", wait), ("retry_initial", retry_initial),
            ("retry_max", retry_max), ("rate", rate), ("burst", burst),
        ):  # fmt: skip
            if not value > 0:
                raise SpecError(f"{display}: {name} must be > 0, not {value}", spec=display)
        if wait > 600:
            raise SpecError(f"{display}: wait is capped at 600 s by Consul", spec=display)
        max_last_contact: float | None = None
        if spec.option("max_last_contact") is not None:
            max_last_contact = spec.option_float("max_last_contact", 0.0)
            if not max_last_contact >= 0:
                raise SpecError(
                    f"{display}: max_last_contact must be >= 0 seconds, not {max_last_contact}",
                    spec=display,
                )
            if consistency != "stale":
                raise SpecError(
                    f"{display}: max_last_contact needs consistency=stale (default and "
                    "consistent reads are answered by the leader, never stale)",
                    spec=display,
                )
        dc = spec.option("dc")
        return cls(
            display=display,
            host=host,
            port=port_given or (8501 if https else 8500),
            https=https,
            prefix=prefix,
            document=document,
            fmt=fmt,
            token=token,
            token_from=token_from,
            ca=None if ca is None else str(ca),
            cert=None if cert is None else str(cert),
            key=None if key is None else str(key),
            verify=spec.option_bool("verify", True),
            consistency=consistency,
            dc=None if dc in (None, "") else str(dc),
            timeout=timeout,
            wait=wait,
            retry_initial=retry_initial,
            retry_max=max(retry_max, retry_initial),
            rate=rate,
            burst=max(1, burst),
            max_last_contact=max_last_contact,
            max_keys=spec.max_keys,
        )

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
            ) from None
        return ctx

    def read_params(self) -> list[tuple[str, str]]:
        """Query parameters every read carries (consistency, datacenter)."""
        params: list[tuple[str, str]] = []
        if self.consistency != "default":
            params.append((self.consistency, ""))
        if self.dc:
            params.append(("dc", self.dc))
        return params


@attrs.frozen
class Snapshot:
    """What one read returned: the Consul index and the raw entries (or the document)."""

    index: int
    #: Tree layout: Consul key -> (ModifyIndex, base64 value or None). Document layout: the
    #: one entry, or nothing when the key is missing.
    entries: Mapping[str, tuple[int, str | None]]


class ConsulBackend:
    """The backend object for one ``consul://`` source. See the module docstring.

    ``load`` reads the prefix (or document) once; ``watch`` starts a blocking-query thread;
    ``write`` does a compare-and-swap; ``close`` stops and joins the thread (idempotent).
    """

    cacheable = True

    def __init__(self, spec: SourceSpec, hub: Hub | None = None) -> None:
        self.spec = spec
        self.opts = ConsulOptions.from_spec(spec, hub)
        self.source = self.opts.display
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._closed = False
        self._watcher: Watcher | None = None
        # The state the last delivered layer was built from (shared with the watcher).
        self._index = 0
        self._mod: dict[str, int] = {}
        self._layer: Layer | None = None
        # Whether the last stale answer was over max_last_contact (logged on changes only).
        self._lagging = False

    def __repr__(self) -> str:
        return f"<ConsulBackend {self.source}>"

    # -- connections -----------------------------------------------------------------------
    def new_connection(self) -> Connection:
        """A new connection with this source's TLS settings and token."""
        headers = {"User-Agent": "confhub-consul"}
        if self.opts.token:
            headers["X-Consul-Token"] = self.opts.token
        return Connection(
            self.opts.host,
            self.opts.port,
            tls=self.opts.ssl_context(),
            connect_timeout=self.opts.timeout,
            headers=headers,
        )

    def _shared(self) -> Connection:
        with self._lock:
            if self._closed:
                raise SourceUnavailableError(
                    f"{self.source}: the backend is closed", source=self.source
                )
            if self._conn is None:
                self._conn = self.new_connection()
            return self._conn

    # -- reading ---------------------------------------------------------------------------
    @property
    def read_key(self) -> str:
        """The Consul key (or prefix) that reads ask for."""
        return self.opts.document if self.opts.document is not None else self.opts.prefix

    def fetch(self, conn: Connection, *, index: int = 0, wait: float | None = None) -> Snapshot:
        """One read of the prefix or document; blocking when ``index`` is given.

        Raises :class:`SourceUnavailableError` (transport, 5xx, 429),
        :class:`SourcePermissionError` (403, or a listing filtered by ACLs),
        :class:`SourceFormatError` (a tree listing over ``max_keys``, refused while it is
        read) and :class:`~confhub_consul._http.Aborted` when the backend is closing.
        """
        query = self.opts.read_params()
        if self.opts.document is None:
            query.append(("recurse", ""))
        read_timeout = self.opts.timeout
        blocking: list[tuple[str, str]] = []
        if index > 0 and wait is not None:
            blocking = [("index", str(index)), ("wait", _duration(wait))]
            # Consul adds up to wait/16 of jitter; the margin covers the network.
            read_timeout = wait + wait / 16 + self.opts.timeout
        resp = self._get(conn, query + blocking, read_timeout)
        lag = self._too_stale(resp)
        if lag is not None:
            # Asked again of the leader, at once (no index): its answer is at least as new.
            leader = [p for p in query if p[0] != "stale"]
            resp = self._get(conn, leader, self.opts.timeout)
            if resp.status == 429 or resp.status >= 500:
                raise SourceUnavailableError(
                    f"{self.source}: a stale answer was {lag} behind the leader (over "
                    f"max_last_contact={self.opts.max_last_contact:g}s) and the leader "
                    f"answered {resp.status} {_body_text(resp)}; retrying",
                    source=self.source,
                )
        return self._snapshot(resp)

    def _get(self, conn: Connection, query: list[tuple[str, str]], read_timeout: float) -> Response:
        try:
            return conn.request(
                "GET",
                kv_path(self.read_key),
                query=query,
                read_timeout=read_timeout,
                guard=self._listing_guard,
            )
        except Aborted:
            raise
        except TRANSPORT_ERRORS as exc:
            raise SourceUnavailableError(
                f"{self.source}: cannot reach Consul at {self.opts.host}:{self.opts.port} "
                f"({type(exc).__name__}: {exc}); retrying",
                source=self.source,
            ) from None

    def _listing_guard(self, status: int, headers: Mapping[str, str]) -> ChunkCheck | None:
        """The entry counter of a tree listing (200 only), which stops it over ``max_keys``."""
        if status != 200 or self.opts.document is not None:
            return None
        return _EntryCounter(self.source, self.opts.max_keys)

    def _too_stale(self, resp: Response) -> str | None:
        """How far behind the leader a stale answer is, when over ``max_last_contact``.

        None when the answer may be used: no bound set, not a stale read, an error status
        (handled as any other), or a ``X-Consul-LastContact`` within the bound. A missing or
        unreadable header cannot prove the bound holds, so it counts as too stale.
        """
        bound = self.opts.max_last_contact
        if bound is None or resp.status not in (200, 404):
            return None
        raw = resp.header("X-Consul-LastContact")
        try:
            ms = int(raw or "")
        except ValueError:
            ms = -1
        if 0 <= ms <= bound * 1000:
            if self._lagging:
                self._lagging = False
                log.info("%s: stale answers are within max_last_contact again", self.source)
            return None
        lag = f"{ms} ms" if ms >= 0 else f"an unknown time (X-Consul-LastContact {raw!r})"
        if not self._lagging:
            self._lagging = True
            log.info(
                "%s: a stale answer was %s behind the leader (max_last_contact=%gs); "
                "asking the leader until stale answers are within the bound again",
                self.source,
                lag,
                bound,
            )
        return lag

    def _snapshot(self, resp: Response) -> Snapshot:
        status = resp.status
        if status == 403:
            raise SourcePermissionError(
                f"{self.source}: Consul refused to read {self.read_key!r} (403 "
                f"{_body_text(resp)}); check the ACL token's key_prefix read rule",
                source=self.source,
                key=self.read_key,
            )
        if status not in (200, 404):
            raise SourceUnavailableError(
                f"{self.source}: Consul answered {status} {_body_text(resp)}; retrying",
                source=self.source,
            )
        if (resp.header("X-Consul-Results-Filtered-By-Acls") or "").lower() == "true":
            raise SourcePermissionError(
                f"{self.source}: the ACL token may not read every key under "
                f"{self.read_key!r} (Consul filtered the listing); keys it hides would look "
                "deleted, so the listing is not used: grant key_prefix read on the prefix",
                source=self.source,
                key=self.read_key,
            )
        raw_index = resp.header("X-Consul-Index")
        try:
            index = int(raw_index or "")
        except ValueError:
            raise SourceUnavailableError(
                f"{self.source}: Consul sent no usable X-Consul-Index ({raw_index!r}); retrying",
                source=self.source,
            ) from None
        if status == 404:
            return Snapshot(index, {})
        try:
            items = json.loads(resp.body)
            entries = {str(e["Key"]): (int(e["ModifyIndex"]), e.get("Value")) for e in items}
        except (ValueError, TypeError, KeyError) as exc:
            raise SourceUnavailableError(
                f"{self.source}: Consul sent a malformed listing ({type(exc).__name__}); retrying",
                source=self.source,
            ) from None
        return Snapshot(index, entries)

    def build(self, snap: Snapshot) -> Layer:
        """Turn a whole read into a Layer; raises :class:`SourceFormatError`."""
        if self.opts.document is not None:
            return self._build_document(snap)
        values: dict[str, Any] = {}
        where: dict[str, tuple[str, int]] = {}
        for ckey, (mod, raw) in snap.entries.items():
            dotted = self.dotted(ckey, raw)
            if dotted is None:
                continue
            values[dotted] = self.decode(ckey, raw)
            where[dotted] = (ckey, mod)
        # Provenance is computed on demand (explain is rare; a load of 10,000 keys is not).
        try:
            return Layer.from_flat(
                values, source=self.source, revision=snap.index, locate=_TreeLocator(where)
            )
        except SourceFormatError as exc:
            raise self._clash(exc, {d: ckey for d, (ckey, _) in where.items()}) from None

    def _clash(self, exc: SourceFormatError, where: Mapping[str, str]) -> SourceFormatError:
        """A leaf/parent clash ``exc`` (dotted keys) reworded with the Consul keys.

        ``where`` maps each dotted key of the clashing state to its Consul key; ``exc`` is
        returned as it is when the clash cannot be found there.
        """
        parent = exc.key or ""
        child = next((k for k in where if k.startswith(parent + ".")), None)
        if parent not in where or child is None:
            return exc
        a, b = where[parent], where[child]
        return SourceFormatError(
            f"{self.source}: Consul key {a!r} is both a value and the parent of {b!r}; "
            "a key cannot be both a leaf and a parent: delete or rename one of them",
            source=self.source,
            key=a,
        )

    def _build_document(self, snap: Snapshot) -> Layer:
        key, fmt = self.opts.document or "", self.opts.fmt or "json"
        found = snap.entries.get(key)
        if found is None:
            raise SourceUnavailableError(
                f"{self.source}: the document key {key!r} does not exist; "
                "create it or fix the path",
                source=self.source,
                key=key,
            )
        mod, raw = found
        data = parse_document(_b64(self.source, key, raw), fmt, source=self.source, path=key)
        return Layer.from_mapping(
            data,
            source=self.source,
            revision=snap.index,
            locate=_DocumentLocator(f"consul key {key} (ModifyIndex {mod})"),
        )

    def dotted(self, ckey: str, raw: str | None) -> str | None:
        """The dotted key of Consul key ``ckey``, or None for a folder to skip.

        A key that is not UTF-8 never reaches the client as such: Consul takes the key from
        the percent-decoded URL path, so ``PUT /v1/kv/app/%FF`` stores the byte 0xFF, but
        listings are JSON, and Go's encoder writes every byte that is not UTF-8 as U+FFFD
        (``app/%FF`` and ``app/%FE`` both list as ``app/`` and U+FFFD). A key holding
        U+FFFD is therefore refused (a SourceFormatError naming it): its real name is
        unknown, a write to the listed name would reach another key, and U+FFFD is never
        published.
        """
        rel = ckey[len(self.opts.prefix) :]
        if not ckey.startswith(self.opts.prefix):  # pragma: no cover - recurse is a prefix
            return None
        if "\ufffd" in rel:
            raise SourceFormatError(
                f"{self.source}: Consul key {ckey!r} holds U+FFFD, which Consul lists in "
                "place of bytes that are not UTF-8, so its real name is unknown: rename it "
                "to a UTF-8 name",
                source=self.source,
                key=ckey,
            )
        if rel == "" or rel.endswith("/"):
            if raw is None:
                return None  # a folder marker (the UI creates them) or the prefix itself
            raise SourceFormatError(
                f"{self.source}: Consul key {ckey!r} ends with '/' but holds a value; "
                "folders cannot hold values here: move the value to a key without the "
                "trailing slash",
                source=self.source,
                key=ckey,
            )
        # One pass over the string instead of per segment: an empty segment, or one that
        # starts or ends with "." or holds "..", would give an empty dotted segment.
        if (
            "//" in rel
            or rel[0] in "/."
            or rel[-1] == "."
            or ".." in rel
            or "/." in rel
            or "./" in rel
        ):
            raise SourceFormatError(
                f"{self.source}: Consul key {ckey!r} has an empty segment (a '//' or a "
                "segment starting or ending with '.'); rename it",
                source=self.source,
                key=ckey,
            )
        return rel.replace("/", ".")

    def decode(self, ckey: str, raw: str | None) -> str:
        """The text of a base64 value; an empty value is ``""``."""
        data = _b64(self.source, ckey, raw)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SourceFormatError(
                f"{self.source}: the value of Consul key {ckey!r} is not valid UTF-8 "
                f"(byte {exc.start}); store text, or use a document key",
                source=self.source,
                key=ckey,
            ) from None

    def load(self) -> Layer:
        """Read the whole source; remember its state for :meth:`watch`."""
        conn = self._shared()
        try:
            snap = self.fetch(conn)
        except Aborted:
            raise SourceUnavailableError(
                f"{self.source}: the backend is closed", source=self.source
            ) from None
        layer = self.build(snap)
        with self._lock:
            self._index = snap.index
            self._mod = {k: m for k, (m, _) in snap.entries.items()}
            self._layer = layer
        return layer

    # -- watching --------------------------------------------------------------------------
    def watch(self, notify: Notify) -> None:
        """Start the blocking-query thread (from the state of the last ``load``)."""
        with self._lock:
            if self._closed or self._watcher is not None:
                return
            # Started under the lock: a close() racing with watch() then always finds a
            # running thread to join (the thread's first step waits for this lock).
            self._watcher = Watcher(self, notify)
            self._watcher.start()

    def state(self) -> tuple[int, dict[str, int], Layer | None]:
        """The index, ModifyIndex per key and layer of the last delivered state."""
        with self._lock:
            return self._index, self._mod, self._layer

    def set_state(self, index: int, mod: dict[str, int], layer: Layer) -> None:
        """Record the state the hub now has (called by the watcher after notify)."""
        with self._lock:
            self._index, self._mod, self._layer = index, mod, layer

    def delta(
        self, snap: Snapshot, mod: Mapping[str, int], layer: Layer
    ) -> tuple[LayerDelta, dict[str, int], Layer]:
        """The delta from ``layer`` (built from ``mod``) to ``snap``; raises SourceFormatError.

        Only entries whose ModifyIndex changed are decoded, so a change under a 10,000-key
        prefix costs one pass over the indexes, not 10,000 base64+UTF-8 decodes.
        """
        changed: dict[str, Any] = {}
        details: dict[str, str] = {}
        new_mod: dict[str, int] = {}
        for ckey, (m, raw) in snap.entries.items():
            new_mod[ckey] = m
            if mod.get(ckey) == m:
                continue
            dotted = self.dotted(ckey, raw)
            if dotted is None:
                continue
            changed[dotted] = self.decode(ckey, raw)
            details[dotted] = f"consul key {ckey} (ModifyIndex {m})"
        deleted = []
        for ckey in mod:
            if ckey not in new_mod:
                dotted = self.dotted(ckey, None)
                if dotted is not None and dotted not in changed:
                    deleted.append(dotted)
        delta = LayerDelta(set=changed, deleted=deleted, revision=snap.index, details=details)
        # Applying it here checks leaf/parent clashes before the hub sees it.
        try:
            new_layer = layer.apply(delta, source=self.source)
        except SourceFormatError as exc:
            # Named by their Consul keys, as a load names them (a rare path: one pass).
            where: dict[str, str] = {}
            for ckey, (_, raw) in snap.entries.items():
                dotted = self.dotted(ckey, raw)
                if dotted is not None:
                    where[dotted] = ckey
            raise self._clash(exc, where) from None
        return delta, new_mod, new_layer

    # -- writing ---------------------------------------------------------------------------
    def consul_key(self, key: str) -> str:
        """The Consul key a dotted key is written to; raises :class:`WriteError`."""
        if self.opts.document is not None:
            raise WriteError(
                f"{self.source}: this source is one {self.opts.fmt} document; write the whole "
                "document to the key with consul kv put, or use a tree-layout source",
                source=self.source,
                key=key,
            )
        segments = key.split(".") if isinstance(key, str) else []
        if not segments or not all(_SEGMENT.fullmatch(s) for s in segments):
            raise WriteError(
                f"{self.source}: cannot write key {key!r}: each dotted segment must be "
                "non-empty and use only letters, digits, '_', ',' and '-' (Consul redirects "
                "'//', '.' and '..' paths, which would store an empty value)",
                source=self.source,
                key=str(key),
            )
        return self.opts.prefix + "/".join(segments)

    def write(self, key: str, value: object, expected_revision: object = None) -> int:
        """Write one dotted key; compare-and-swap on its ModifyIndex when asked.

        ``expected_revision``: None for a plain write, 0 for "must not exist", N for "only if
        the key's ModifyIndex is N". Returns the key's new ModifyIndex. Raises
        :class:`WriteConflictError` when the CAS loses, :class:`WriteError` for a refused
        write, :class:`SourceUnavailableError` when Consul cannot be reached.
        """
        ckey = self.consul_key(key)
        data = _encode_value(self.source, key, value)
        if len(data) > MAX_VALUE_SIZE:
            raise WriteError(
                f"{self.source}: the value for {key!r} is {len(data)} bytes; Consul's limit "
                f"is {MAX_VALUE_SIZE} bytes (512 KiB): store less, or split it",
                source=self.source,
                key=key,
            )
        cas: int | None = None
        if expected_revision is not None:
            try:
                cas = int(expected_revision)  # type: ignore[call-overload]
            except (TypeError, ValueError):
                cas = -1
            if cas < 0 or isinstance(expected_revision, bool):
                raise WriteError(
                    f"{self.source}: expected_revision must be a ModifyIndex >= 0 (0: must not "
                    f"exist), not {expected_revision!r}",
                    source=self.source,
                    key=key,
                )
        op: dict[str, Any] = {
            "Verb": "set" if cas is None else "cas",
            "Key": ckey,
            "Value": base64.b64encode(data).decode("ascii"),
        }
        if cas is not None:
            op["Index"] = cas
        body = json.dumps([{"KV": op}]).encode()
        conn = self._shared()
        query = [("dc", self.opts.dc)] if self.opts.dc else []
        if len(body) <= MAX_TXN_BODY:
            resp = self._send(
                conn=conn, method="PUT", path="/v1/txn", query=query, body=body, key=key
            )
            return self._txn_result(resp, key, ckey, cas)
        # Too big for a transaction body (base64 grows it by 4/3): a plain PUT, then a read
        # for the new ModifyIndex (another writer may have written in between).
        if cas is not None:
            query.append(("cas", str(cas)))
        resp = self._send(
            conn=conn, method="PUT", path=kv_path(ckey), query=query, body=data, key=key
        )
        self._check_write_status(resp, key)
        if resp.body.strip() != b"true":
            raise self._conflict(conn, key, ckey, cas)
        return self._modify_index(conn, key, ckey) or 0

    def _send(
        self,
        *,
        conn: Connection,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        body: bytes | None,
        key: str,
    ) -> Response:
        try:
            return conn.request(
                method, path, query=query, body=body, read_timeout=self.opts.timeout
            )
        except Aborted:
            raise WriteError(
                f"{self.source}: the backend is closed", source=self.source, key=key
            ) from None
        except TRANSPORT_ERRORS as exc:
            raise SourceUnavailableError(
                f"{self.source}: cannot reach Consul at {self.opts.host}:{self.opts.port} "
                f"({type(exc).__name__}: {exc}); the write of {key!r} may or may not have "
                "happened: re-read before retrying",
                source=self.source,
                key=key,
            ) from None

    def _check_write_status(self, resp: Response, key: str) -> None:
        if resp.status in (200, 409):
            return
        if resp.status == 403:
            raise WriteError(
                f"{self.source}: Consul refused the write of {key!r} (403 {_body_text(resp)}); "
                "the ACL token needs key_prefix write on the prefix",
                source=self.source,
                key=key,
            )
        if resp.status == 413:
            raise WriteError(
                f"{self.source}: Consul refused the write of {key!r} as too large "
                f"({_body_text(resp)})",
                source=self.source,
                key=key,
            )
        if resp.status >= 500 or resp.status == 429:
            raise SourceUnavailableError(
                f"{self.source}: Consul answered {resp.status} {_body_text(resp)} to the write "
                f"of {key!r}; retry later",
                source=self.source,
                key=key,
            )
        raise WriteError(
            f"{self.source}: Consul refused the write of {key!r} ({resp.status} "
            f"{_body_text(resp)})",
            source=self.source,
            key=key,
        )

    def _txn_result(self, resp: Response, key: str, ckey: str, cas: int | None) -> int:
        self._check_write_status(resp, key)
        try:
            payload = json.loads(resp.body)
        except ValueError:
            payload = None
        if resp.status == 409:
            errors = (payload or {}).get("Errors") or []
            what = "; ".join(str(e.get("What", "")) for e in errors if isinstance(e, dict))
            if "Permission denied" in what or "ACL" in what:
                raise WriteError(
                    f"{self.source}: Consul refused the write of {key!r} ({what}); the ACL "
                    "token needs key_prefix write on the prefix",
                    source=self.source,
                    key=key,
                )
            conn = self._shared()
            raise self._conflict(conn, key, ckey, cas)
        try:
            return int(payload["Results"][0]["KV"]["ModifyIndex"])
        except (TypeError, KeyError, IndexError, ValueError):
            raise WriteError(
                f"{self.source}: Consul accepted the write of {key!r} but sent no ModifyIndex back",
                source=self.source,
                key=key,
            ) from None

    def _modify_index(self, conn: Connection, key: str, ckey: str) -> int | None:
        # Asked of the leader whatever ``consistency`` says: a stale server may not have the
        # write yet and would report an older ModifyIndex.
        query = [("dc", self.opts.dc)] if self.opts.dc else []
        resp = self._send(
            conn=conn, method="GET", path=kv_path(ckey), query=query, body=None, key=key
        )
        if resp.status != 200:
            return None
        try:
            return int(json.loads(resp.body)[0]["ModifyIndex"])
        except (ValueError, TypeError, KeyError, IndexError):
            return None

    def _conflict(
        self, conn: Connection, key: str, ckey: str, cas: int | None
    ) -> WriteConflictError:
        try:
            actual: int | None = self._modify_index(conn, key, ckey)
        except (SourceUnavailableError, WriteError):
            actual = None
        now = "does not exist" if actual is None else f"is at revision {actual}"
        want = "absent" if cas == 0 else f"at revision {cas}"
        return WriteConflictError(
            f"{self.source}: {key!r} {now}, not {want}; re-read it and retry",
            source=self.source,
            key=key,
            expected=cas,
            actual=actual if actual is not None else 0,
        )

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the watch thread (waking a blocking query at once) and close connections."""
        with self._lock:
            self._closed = True
            watcher, self._watcher = self._watcher, None
            conn, self._conn = self._conn, None
        if watcher is not None:
            watcher.stop()
        if conn is not None:
            conn.close()


class _EntryCounter:
    """Counts the entries of a recurse listing as its body streams (a :data:`ChunkCheck`).

    Each entry holds :data:`_ENTRY_MARK` exactly once. A mark split across chunks (it is 6
    bytes; a chunk may be 1 byte when a server drips) is found in the last 5 bytes seen
    before a chunk joined with its first 5 bytes: no mark fits wholly in either part, so
    none is counted twice. Over ``cap`` entries it raises the SourceFormatError that
    refuses the listing, naming ``cap + 1`` (the exact count is not known, and a stable
    message is reported once by the watch, not once per retry).
    """

    __slots__ = ("_tail", "cap", "count", "source")

    def __init__(self, source: str, cap: int) -> None:
        self.source = source
        self.cap = cap
        self.count = 0
        self._tail = b""

    def __call__(self, chunk: bytes) -> None:
        keep = len(_ENTRY_MARK) - 1
        if self._tail:
            self.count += (self._tail + chunk[:keep]).count(_ENTRY_MARK)
        self.count += chunk.count(_ENTRY_MARK)
        self._tail = chunk[-keep:] if len(chunk) >= keep else (self._tail + chunk)[-keep:]
        if self.count > self.cap:
            seen = self.cap + 1
            raise SourceFormatError(
                f"{self.source}: at least {seen:,} keys, more than max_keys={self.cap:,}; "
                f"refusing them (stopped reading at {seen:,} keys): raise ?max_keys= on the "
                "source if that many keys are intended, or delete the runaway keys",
                source=self.source,
            )


class _TreeLocator:
    """``Layer.locate`` for a tree: the Consul key and ModifyIndex of a dotted key."""

    def __init__(self, where: Mapping[str, tuple[str, int]]) -> None:
        self.where = where

    def __call__(self, key: str) -> str | None:
        found = self.where.get(key)
        if found is None:
            return None
        return f"consul key {found[0]} (ModifyIndex {found[1]})"


class _DocumentLocator:
    """``Layer.locate`` for a document: every key comes from the same Consul key."""

    def __init__(self, detail: str) -> None:
        self.detail = detail

    def __call__(self, key: str) -> str | None:
        return self.detail


def _b64(source: str, ckey: str, raw: str | None) -> bytes:
    if raw is None:
        return b""
    try:
        return binascii.a2b_base64(raw, strict_mode=True)
    except (binascii.Error, ValueError):
        raise SourceUnavailableError(
            f"{source}: Consul sent a value for {ckey!r} that is not base64; retrying",
            source=source,
            key=ckey,
        ) from None


def _encode_value(source: str, key: str, value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, (int, float)):
        return str(value).encode()
    raise WriteError(
        f"{source}: cannot write a {type(value).__name__} to {key!r}; KV values are text "
        "(str or bytes; numbers and booleans are written as their text)",
        source=source,
        key=key,
    )


def _body_text(resp: Response) -> str:
    text = resp.body[:300].decode("utf-8", "replace").strip()
    return text or "(empty body)"

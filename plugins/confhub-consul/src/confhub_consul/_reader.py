"""Reading a Consul prefix (or document key) and turning what it holds into layers.

:class:`ConsulReader` does one read (:meth:`~ConsulReader.fetch`, blocking when given an
index) into a :class:`KVListing`, then builds a whole :class:`~confhub.Layer` from it
(:meth:`~ConsulReader.build`) or the :class:`~confhub.LayerDelta` from the last delivered
state (:meth:`~ConsulReader.delta`). It holds no connection and no watch state: the backend
and the watcher pass their own connection, and share a :class:`WatchedState`.

A key that is not UTF-8 never reaches the client as such: Consul takes the key from the
percent-decoded URL path, so ``PUT /v1/kv/app/%FF`` stores the byte 0xFF, but listings are
JSON, and Go's encoder writes every byte that is not UTF-8 as U+FFFD (``app/%FF`` and
``app/%FE`` both list as ``app/`` and U+FFFD). A key holding U+FFFD is therefore refused (a
SourceFormatError naming it): its real name is unknown, a write to the listed name would
reach another key, and U+FFFD is never published.
"""

from __future__ import annotations

import binascii
import json
import logging
import ssl
import threading
from collections.abc import Hashable, Mapping
from typing import Any

import attrs
from confhub import (
    Layer,
    LayerDelta,
    SourceError,
    SourceFormatError,
    SourcePermissionError,
    SourceUnavailableError,
    kv,
    parse_document,
)

from ._http import TRANSPORT_ERRORS, Aborted, ChunkCheck, Connection, Response, kv_path
from ._index import response_index
from ._options import ConsulOptions

log = logging.getLogger("confhub.consul")

#: What starts each entry of a recurse listing: Consul's JSON encoder (Go's, and the test
#: server's ``_go_json``) writes the field name as ``"Key":`` (``"Key": `` with ``?pretty``
#: or in ``-dev`` mode). It occurs nowhere else: inside a JSON string every ``"`` is escaped
#: (``\"``), so the closing ``":`` of the mark can only end a field name, and the entry's
#: other fields are numbers, base64 or null values and a session UUID.
ENTRY_MARK = b'"Key":'


@attrs.frozen
class KVListing:
    """What one read returned: the Consul index and the raw entries (or the document)."""

    index: int
    #: Tree layout: Consul key -> (ModifyIndex, base64 value or None). Document layout: the
    #: one entry, or nothing when the key is missing.
    entries: Mapping[str, tuple[int, str | None]]

    def modify_indexes(self) -> dict[str, int]:
        """The ModifyIndex of each listed Consul key."""
        return {key: modify for key, (modify, _) in self.entries.items()}


class WatchedState:
    """The state the hub last received from this source, under a lock.

    ``index`` is the Consul index it was read at, ``modify_indexes`` the ModifyIndex of each
    Consul key in it, ``layer`` the layer built from it (None before the first load). The
    backend's ``load`` records it; the watcher starts from it and records what it delivers.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._index = 0
        self._modify_indexes: Mapping[str, int] = {}
        self._layer: Layer | None = None

    def get(self) -> tuple[int, Mapping[str, int], Layer | None]:
        """``(index, modify_indexes, layer)`` as last recorded."""
        with self._lock:
            return self._index, self._modify_indexes, self._layer

    def record(self, index: int, modify_indexes: Mapping[str, int], layer: Layer) -> None:
        """Remember the state the hub now has."""
        with self._lock:
            self._index, self._modify_indexes, self._layer = index, modify_indexes, layer


def failure_kind(exc: SourceError) -> Hashable:
    """What kind of failure ``exc`` is, from its type and attributes (never its message).

    The watch reports a failure once per kind: a failure that repeats, or that changes only
    in detail (refused, then timed out; 500, then 503), is not reported again.
    """
    cause = exc.__cause__
    how = None if cause is None else type(cause).__name__
    if isinstance(cause, TRANSPORT_ERRORS):
        how = "transport"
    return (type(exc).__name__, exc.key, getattr(exc, "line", None), how)


def duration(seconds: float) -> str:
    """A Go duration string for ``seconds`` (Consul's ``wait`` parameter)."""
    return f"{max(1, round(seconds * 1000))}ms"


def body_text(resp: Response) -> str:
    """The start of a response body, for an error message."""
    text = resp.body[:300].decode("utf-8", "replace").strip()
    return text or "(empty body)"


class ConsulReader:
    """Reads one source's prefix or document key and builds layers from what it holds."""

    def __init__(self, options: ConsulOptions) -> None:
        self.options = options
        self.source = options.display
        self.keys = kv.KeyMap(options.prefix, source=self.source, noun="Consul key")
        # Whether the last stale answer was over max_last_contact (logged on changes only).
        self._lagging = False

    # -- reading -------------------------------------------------------------------------------
    def fetch(self, conn: Connection, *, index: int = 0, wait: float | None = None) -> KVListing:
        """One read of the prefix or document; blocking when ``index`` is given.

        Raises :class:`SourceUnavailableError` (transport, 5xx, 429),
        :class:`SourcePermissionError` (403, or a listing filtered by ACLs),
        :class:`SourceFormatError` (a tree listing over ``max_keys``, refused while it is
        read) and :class:`~confhub_consul._http.Aborted` when the backend is closing.
        """
        opts = self.options
        query = opts.read_params()
        if opts.document is None:
            query.append(("recurse", ""))
        read_timeout = opts.timeout
        blocking: list[tuple[str, str]] = []
        if index > 0 and wait is not None:
            blocking = [("index", str(index)), ("wait", duration(wait))]
            # Consul adds up to wait/16 of jitter; the margin covers the network.
            read_timeout = wait + wait / 16 + opts.timeout
        resp = self._get(conn, query + blocking, read_timeout)
        lag = self.too_stale(resp)
        if lag is not None:
            # Asked again of the leader, at once (no index): its answer is at least as new.
            leader = [p for p in query if p[0] != "stale"]
            resp = self._get(conn, leader, opts.timeout)
            if resp.status == 429 or resp.status >= 500:
                raise SourceUnavailableError(
                    f"{self.source}: a stale answer was {lag} behind the leader (over "
                    f"max_last_contact={opts.max_last_contact:g}s) and the leader "
                    f"answered {resp.status} {body_text(resp)}; retrying",
                    source=self.source,
                )
        return self._listing(resp)

    def _get(self, conn: Connection, query: list[tuple[str, str]], read_timeout: float) -> Response:
        try:
            return conn.request(
                "GET",
                kv_path(self.options.read_key),
                query=query,
                read_timeout=read_timeout,
                guard=self._listing_guard,
            )
        except Aborted:
            raise
        except TRANSPORT_ERRORS as exc:
            raise SourceUnavailableError(
                f"{self.source}: cannot reach Consul at {self.options.host}:"
                f"{self.options.port} ({type(exc).__name__}: {exc}); retrying",
                source=self.source,
                # A certificate refused stays refused: a start does not retry it (as etcd).
                retry_at_start=not isinstance(exc, ssl.SSLCertVerificationError),
            ) from exc

    def _listing_guard(self, status: int, headers: Mapping[str, str]) -> ChunkCheck | None:
        """The entry counter of a tree listing (200 only), which stops it over ``max_keys``."""
        if status != 200 or self.options.document is not None:
            return None
        return EntryCounter(self.source, self.options.max_keys)

    def too_stale(self, resp: Response) -> str | None:
        """How far behind the leader a stale answer is, when over ``max_last_contact``.

        None when the answer may be used: no bound set, not a stale read, an error status
        (handled as any other), or a ``X-Consul-LastContact`` within the bound. A missing or
        unreadable header cannot prove the bound holds, so it counts as too stale.
        """
        bound = self.options.max_last_contact
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

    def _listing(self, resp: Response) -> KVListing:
        status, read_key = resp.status, self.options.read_key
        if status == 403:
            raise SourcePermissionError(
                f"{self.source}: Consul refused to read {read_key!r} (403 "
                f"{body_text(resp)}); check the ACL token's key_prefix read rule",
                source=self.source,
                key=read_key,
            )
        if status not in (200, 404):
            raise SourceUnavailableError(
                f"{self.source}: Consul answered {status} {body_text(resp)}; retrying",
                source=self.source,
            )
        if (resp.header("X-Consul-Results-Filtered-By-Acls") or "").lower() == "true":
            raise SourcePermissionError(
                f"{self.source}: the ACL token may not read every key under "
                f"{read_key!r} (Consul filtered the listing); keys it hides would look "
                "deleted, so the listing is not used: grant key_prefix read on the prefix",
                source=self.source,
                key=read_key,
            )
        index = response_index(resp, self.source)
        if status == 404:
            return KVListing(index, {})
        try:
            items = json.loads(resp.body)
            entries = {str(e["Key"]): (int(e["ModifyIndex"]), e.get("Value")) for e in items}
        except (ValueError, TypeError, KeyError) as exc:
            raise SourceUnavailableError(
                f"{self.source}: Consul sent a malformed listing ({type(exc).__name__}); retrying",
                source=self.source,
            ) from exc
        return KVListing(index, entries)

    # -- building layers -----------------------------------------------------------------------
    def build(self, listing: KVListing) -> Layer:
        """Turn a whole read into a Layer; raises :class:`SourceFormatError`, or for a
        missing document key of a required source :class:`SourceUnavailableError`."""
        if self.options.document is not None:
            return self._document(listing)
        values: dict[str, Any] = {}
        where: dict[str, tuple[str, int]] = {}
        for ckey, (modify, raw) in listing.entries.items():
            dotted = self.dotted(ckey, raw)
            if dotted is None:
                continue
            values[dotted] = self.decode(ckey, raw)
            where[dotted] = (ckey, modify)
        # Provenance is computed on demand (explain is rare; a load of 10,000 keys is not).
        try:
            return Layer.from_flat(
                values, source=self.source, revision=listing.index, locate=_TreeLocator(where)
            )
        except SourceFormatError as exc:
            clash = self._clash(exc, {d: ckey for d, (ckey, _) in where.items()})
            if clash is exc:
                raise
            raise clash from exc

    def _clash(self, exc: SourceFormatError, where: Mapping[str, str]) -> SourceFormatError:
        """A leaf/parent clash ``exc`` (dotted keys) reworded with the Consul keys.

        ``where`` maps each dotted key of the clashing state to its Consul key; ``exc`` is
        returned as it is when the clash cannot be found there.
        """
        parent = exc.key or ""
        child = next((k for k in where if k.startswith(parent + ".")), None)
        if parent not in where or child is None:
            return exc
        return kv.leaf_parent_clash(self.source, where[parent], where[child], noun="Consul key")

    def _document(self, listing: KVListing) -> Layer:
        key, fmt = self.options.document or "", self.options.fmt or "json"
        found = listing.entries.get(key)
        if found is None:
            if self.options.optional:
                return Layer.from_flat({}, source=self.source, revision=listing.index)
            raise SourceUnavailableError(
                f"{self.source}: the document key {key!r} does not exist; create it, fix "
                "the path, or add ?optional=true",
                source=self.source,
                key=key,
            )
        modify, raw = found
        data = parse_document(b64(self.source, key, raw), fmt, source=self.source, path=key)
        return Layer.from_mapping(
            data,
            source=self.source,
            revision=listing.index,
            locate=_DocumentLocator(f"consul key {key} (ModifyIndex {modify})"),
        )

    def dotted(self, ckey: str, raw: str | None) -> str | None:
        """The dotted key of Consul key ``ckey``, or None for a folder to skip.

        A key holding U+FFFD (see the module docstring), a folder holding a value, or an
        empty dotted segment is a :class:`SourceFormatError` naming the Consul key.
        """
        if "\ufffd" in ckey:
            raise SourceFormatError(
                f"{self.source}: Consul key {ckey!r} holds U+FFFD, which Consul lists in "
                "place of bytes that are not UTF-8, so its real name is unknown: rename it "
                "to a UTF-8 name",
                source=self.source,
                key=ckey,
            )
        if raw is not None and ckey.endswith("/"):
            raise SourceFormatError(
                f"{self.source}: Consul key {ckey!r} ends with '/' but holds a value; "
                "folders cannot hold values here: move the value to a key without the "
                "trailing slash",
                source=self.source,
                key=ckey,
            )
        return self.keys.to_dotted(ckey)

    def decode(self, ckey: str, raw: str | None) -> str:
        """The text of a base64 value; an empty value is ``""``."""
        return kv.decode_text(
            b64(self.source, ckey, raw), source=self.source, key=ckey, noun="Consul key"
        )

    def delta(
        self, listing: KVListing, modify_indexes: Mapping[str, int], layer: Layer
    ) -> tuple[LayerDelta, dict[str, int], Layer]:
        """The delta from ``layer`` (built from ``modify_indexes``) to ``listing``, the new
        ModifyIndex per key and the new layer; raises :class:`SourceFormatError`.

        Only entries whose ModifyIndex changed are decoded, so a change under a 10,000-key
        prefix costs one pass over the indexes, not 10,000 base64+UTF-8 decodes.
        """
        changed: dict[str, Any] = {}
        details: dict[str, str] = {}
        new_indexes: dict[str, int] = {}
        for ckey, (modify, raw) in listing.entries.items():
            new_indexes[ckey] = modify
            if modify_indexes.get(ckey) == modify:
                continue
            dotted = self.dotted(ckey, raw)
            if dotted is None:
                continue
            changed[dotted] = self.decode(ckey, raw)
            details[dotted] = f"consul key {ckey} (ModifyIndex {modify})"
        deleted = []
        for ckey in modify_indexes:
            if ckey not in new_indexes:
                dotted = self.dotted(ckey, None)
                if dotted is not None and dotted not in changed:
                    deleted.append(dotted)
        delta = LayerDelta(set=changed, deleted=deleted, revision=listing.index, details=details)
        # Applying it here checks leaf/parent clashes before the hub sees it.
        try:
            new_layer = layer.apply(delta, source=self.source)
        except SourceFormatError as exc:
            # Named by their Consul keys, as a load names them (a rare path: one pass).
            where: dict[str, str] = {}
            for ckey, (_, raw) in listing.entries.items():
                dotted = self.dotted(ckey, raw)
                if dotted is not None:
                    where[dotted] = ckey
            clash = self._clash(exc, where)
            if clash is exc:
                raise
            raise clash from exc
        return delta, new_indexes, new_layer


class EntryCounter:
    """Counts the entries of a recurse listing as its body streams (a :data:`ChunkCheck`).

    Each entry holds :data:`ENTRY_MARK` exactly once. A mark split across chunks (it is 6
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
        keep = len(ENTRY_MARK) - 1
        if self._tail:
            self.count += (self._tail + chunk[:keep]).count(ENTRY_MARK)
        self.count += chunk.count(ENTRY_MARK)
        self._tail = chunk[-keep:] if len(chunk) >= keep else (self._tail + chunk)[-keep:]
        if self.count > self.cap:
            raise kv.too_many_keys(self.source, self.cap + 1, self.cap, at_least=True)


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


def b64(source: str, ckey: str, raw: str | None) -> bytes:
    """The bytes of a base64 ``Value`` (``None``, an empty value, is ``b""``)."""
    if raw is None:
        return b""
    try:
        return binascii.a2b_base64(raw, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise SourceUnavailableError(
            f"{source}: Consul sent a value for {ckey!r} that is not base64; retrying",
            source=source,
            key=ckey,
        ) from exc

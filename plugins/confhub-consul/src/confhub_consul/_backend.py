"""The Consul KV backend: ``consul://host:port/prefix/`` (tree) or one document key.

- **Tree layout** (default): every key under the prefix is a leaf; ``myapp/db/pool/size``
  under ``consul://h:8500/myapp/`` is ``db.pool.size``. Values are UTF-8 text.
- **Document layout** (``?format=json|yaml|toml``): the path names one key whose value is a
  whole document, parsed with the core's strict parsers. A missing document key is a missing
  file: unavailable for a required source, an empty layer with ``?optional=true``.

The pieces, imported in one direction: :mod:`~confhub_consul._options` parses the spec,
:mod:`~confhub_consul._reader` reads and builds layers, :mod:`~confhub_consul._watch` runs
the blocking-query loop, :mod:`~confhub_consul._writer` writes (its requests in
:mod:`~confhub_consul._kvrequests`, the document layout in :mod:`~confhub_consul._docwriter`);
this module wires them.
Requests go through :mod:`confhub_consul._http` (see there why not py-consul's client).
Everything a user can set is described in ``docs/backend.md``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from confhub import BackendSettings, Layer, Notify, SourceSpec, SourceUnavailableError, WriteOp

from ._calls import new_connection
from ._http import Aborted, Connection
from ._options import ConsulOptions
from ._reader import ConsulReader, WatchedState
from ._watch import Watcher
from ._writer import ConsulWriter


class ConsulBackend:
    """The backend object for one ``consul://`` source. See the module docstring.

    ``load`` reads the prefix (or document) once; ``watch`` starts a blocking-query thread;
    ``write`` does a compare-and-swap; ``close`` stops and joins the thread (idempotent).
    """

    cacheable = True

    def __init__(self, spec: SourceSpec, settings: BackendSettings | None = None) -> None:
        self.spec = spec
        self.opts = ConsulOptions.from_spec(spec, settings)
        #: Who reads (``Backend.cache_principal``): the ACL token, from ``?token=`` or
        #: ``CONSUL_HTTP_TOKEN``. The cache keys its file by an HMAC of it (never the token
        #: itself), so a token Consul would refuse never gets another token's cached copy.
        self.cache_principal = f"token:{self.opts.token}" if self.opts.token else None
        self.source = self.opts.display
        self._reader = ConsulReader(self.opts)
        self._writer = ConsulWriter(self.opts, self._shared)
        self._state = WatchedState()
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._closed = False
        self._watcher: Watcher | None = None

    def __repr__(self) -> str:
        return f"<ConsulBackend {self.source}>"

    # -- connections ---------------------------------------------------------------------------
    def _new_connection(self) -> Connection:
        """A new connection with this source's TLS settings and token."""
        return new_connection(self.opts)

    def _shared(self) -> Connection:
        """The connection of loads and writes (the watch has its own), made at first use."""
        with self._lock:
            if self._closed:
                raise SourceUnavailableError(
                    f"{self.source}: the backend is closed", source=self.source
                )
            if self._conn is None:
                self._conn = self._new_connection()
            return self._conn

    # -- reading -------------------------------------------------------------------------------
    def load(self) -> Layer:
        """Read the whole source; remember its state for :meth:`watch`."""
        conn = self._shared()
        try:
            listing = self._reader.fetch(conn)
        except Aborted:
            raise SourceUnavailableError(
                f"{self.source}: the backend is closed", source=self.source
            ) from None
        layer = self._reader.build(listing)
        self._state.record(listing.index, listing.modify_indexes(), layer)
        return layer

    def resume(self, layer: Layer) -> bool:
        """Adopt ``layer`` (this source's content at Consul index ``layer.revision``, as
        another process of a host-shared group read it) as the last load: the next
        :meth:`watch` blocks on that index without reading first, so a change made
        meanwhile arrives once. ``False`` for a layer without a Consul index, or once
        watching. (The ModifyIndex of each key is unknown here: the first answer re-reads
        every key of the prefix and the hub publishes only what changed; a key deleted
        meanwhile is still seen as deleted.)"""
        index = layer.revision
        if isinstance(index, bool) or not isinstance(index, int) or index < 1:
            return False
        indexes: dict[str, int] = {}
        if self.opts.document is None:
            indexes = {self._reader.keys.to_store(key): 0 for key in layer.values}
        with self._lock:
            if self._closed or self._watcher is not None:
                return False
            self._state.record(index, indexes, layer)
        return True

    def watch(self, notify: Notify) -> None:
        """Start the blocking-query thread (from the state of the last ``load``)."""
        with self._lock:
            if self._closed or self._watcher is not None:
                return
            # Started under the lock: a close() racing with watch() then always finds a
            # running thread to join.
            self._watcher = Watcher(self._reader, self._new_connection(), self._state, notify)
            self._watcher.start()

    # -- writing -------------------------------------------------------------------------------
    def write(self, key: str, value: object, expected_revision: object = None) -> int:
        """Write one dotted key; compare-and-swap on its ModifyIndex when asked.

        ``expected_revision``: None for a plain write, 0 for "must not exist", N for "only if
        the ModifyIndex is N" (in the document layout, the document key's). Returns the new
        ModifyIndex. Raises :class:`WriteConflictError` when the CAS loses,
        :class:`WriteError` for a refused write, :class:`SourceUnavailableError` when Consul
        cannot be reached.
        """
        return self._writer.write(key, value, expected_revision)

    def delete(self, key: str, expected_revision: object = None) -> int:
        """Delete one dotted key (nothing there: no error; a table: :class:`WriteError`)."""
        return self._writer.delete(key, expected_revision)

    def commit(self, ops: Sequence[WriteOp], force: bool = False) -> int:
        """Apply puts and deletes in ONE ``/v1/txn`` (all or nothing); the new index."""
        return self._writer.commit(ops, force)

    def read(self, key: str) -> tuple[Any, int]:
        """``(value, ModifyIndex)`` of one dotted key, from the leader."""
        return self._writer.read(key)

    # -- lifecycle -----------------------------------------------------------------------------
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

"""etcd writes of one key: ``write`` (a put guarded by the keys under its write scope, or a
compare-and-swap on the key's mod_revision) and, for a document source, read-modify-CAS of
the document key, for :class:`~confhub_etcd._backend.EtcdBackend`.

The backend passes what these need (its client, key map, settings and error translation),
not itself; :meth:`EtcdWrites.check_key` is also the dotted-key check the transactions use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confhub import WriteConflictError, WriteError, kv

from ._client import EtcdClient
from ._config import EtcdSourceConfig
from ._documents import updated_document
from ._errors import EtcdError, EtcdLimitError
from ._transactions import WRITE_ATTEMPTS

__all__ = ["EtcdWrites"]


class EtcdWrites:
    """Single-key writes of one etcd source (see the module docstring)."""

    def __init__(
        self,
        *,
        client: Callable[[], EtcdClient],
        keys: kv.KeyMap,
        config: EtcdSourceConfig,
        display: str,
        translate: Callable[[EtcdError, str], Exception],
    ) -> None:
        self._client = client
        self._keys = keys
        self._config = config
        self._display = display
        self._translate = translate

    def check_key(self, key: str) -> str:
        """The etcd key of dotted ``key``; :class:`confhub.WriteError` when it is not one."""
        parts = key.split(".")
        if not key or any(not p for p in parts) or "/" in key:
            raise WriteError(
                f"{self._display}: {key!r} is not a dotted key such as db.pool.size "
                "(no empty segments, no '/')",
                source=self._display,
                key=key,
            )
        return self._keys.to_store(key)

    def write(self, key: str, value: Any, expected_revision: Any = None) -> int:
        """Write dotted ``key``; with ``expected_revision`` a compare-and-swap on the etcd
        key's mod_revision (0: the key must not exist). Returns the new revision.

        A write that would put a value over a table, or a key under a value, is refused
        before anything is sent (:func:`confhub.kv.check_write_shape`, against the keys
        under :meth:`~confhub.kv.KeyMap.write_scope`, read keys-only), and the put is
        guarded by that read: if a key under the scope was written since, it is read and
        checked again (a bounded number of times), so no concurrent write slips in between.
        """
        if self._config.fmt is not None:
            return self._write_document(key, value, expected_revision)
        etcd_key = self.check_key(key)
        payload = kv.encode_value(value, source=self._display, key=key)
        expected = None if expected_revision is None else int(expected_revision)
        scope = self._keys.write_scope(key)
        client = self._client()
        for _ in range(WRITE_ATTEMPTS):
            try:
                revision, names = client.keys_under(scope)
                kv.check_write_shape(self._keys.index(names), key, value, source=self._display)
                result = client.put_if_unchanged_under(
                    etcd_key,
                    payload,
                    scope=scope,
                    scope_revision=revision,
                    expected_mod_revision=expected,
                )
            except EtcdLimitError as exc:
                raise WriteError(f"{self._display}: {exc}", source=self._display, key=key) from None
            except EtcdError as exc:
                raise self._translate(exc, f"the write of {key!r}") from None
            if result.succeeded:
                return result.revision
            if expected is not None and result.actual != expected:
                raise WriteConflictError(
                    f"{self._display}: {key} (etcd key {etcd_key}) is at mod_revision "
                    f"{result.actual or 'none (absent)'}, not {expected}; re-read "
                    "(confhub explain shows the mod_revision) and retry",
                    source=self._display,
                    key=key,
                    expected=expected,
                    actual=result.actual,
                )
            # Another key under the scope was written since the read: read and check again.
        raise WriteConflictError(
            f"{self._display}: the keys under {scope!r} kept changing during "
            f"{WRITE_ATTEMPTS} attempts to write {key!r}; retry later",
            source=self._display,
            key=key,
        )

    def _write_document(self, key: str, value: Any, expected_revision: Any) -> int:
        """Read-modify-CAS of the one document key (a lost race without
        ``expected_revision`` is retried up to 5 times)."""
        cfg = self._config
        self.check_key(key)  # validates the dotted key
        client = self._client()
        for _ in range(5):
            try:
                item, _rev = client.get(cfg.prefix)
            except EtcdError as exc:
                raise self._translate(exc, "the read") from None
            actual = item.mod_revision if item is not None else 0
            expected = actual if expected_revision is None else int(expected_revision)
            if expected != actual:
                raise WriteConflictError(
                    f"{self._display}: document key {cfg.prefix} is at mod_revision {actual}, "
                    f"not {expected}; re-read and retry",
                    source=self._display,
                    key=key,
                    expected=expected,
                    actual=actual,
                )
            raw = item.value if item is not None else None
            payload = updated_document(raw, cfg.fmt or "json", key, value, source=self._display)
            try:
                result = client.put_if_revision(cfg.prefix, payload, expected)
            except EtcdLimitError as exc:
                raise WriteError(f"{self._display}: {exc}", source=self._display, key=key) from None
            except EtcdError as exc:
                raise self._translate(exc, f"the write of {key!r}") from None
            if result.succeeded:
                return result.revision
            if expected_revision is not None:
                raise WriteConflictError(
                    f"{self._display}: document key {cfg.prefix} changed (mod_revision "
                    f"{result.actual}, not {expected}); re-read and retry",
                    source=self._display,
                    key=key,
                    expected=expected,
                    actual=result.actual,
                )
        raise WriteConflictError(
            f"{self._display}: document key {cfg.prefix} kept changing; retry later",
            source=self._display,
            key=key,
        )

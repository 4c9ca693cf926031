"""The backend interface that plugins implement."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol, runtime_checkable

import attrs
import pluggy

from ._health import Sharing
from ._layer import Layer, LayerDelta

#: Marks a plugin's hook implementations: ``@confhub.hookimpl``.
hookimpl = pluggy.HookimplMarker("confhub")

#: What a watching backend reports: a whole new layer, a delta, or the error that stopped it.
Update = Layer | LayerDelta | BaseException
Notify = Callable[[Update], None]


def _frozen_names(names: Iterable[str]) -> frozenset[str]:
    return frozenset(names)


@attrs.frozen
class BackendInfo:
    """A scheme a plugin provides, as ``confhub backends`` lists it.

    ``volatile_options`` names the scheme's own options that do not change what a source
    holds (timeouts, page sizes, rate limits): they are kept out of the source's cache
    identity, so tuning one keeps its cache file. The core's own options need no listing.
    """

    scheme: str
    description: str = ""
    writable: bool = False
    watchable: bool = False
    volatile_options: frozenset[str] = attrs.field(default=frozenset(), converter=_frozen_names)


@attrs.frozen(kw_only=True)
class BackendSettings:
    """What a backend gets from the hub that creates it (``confhub_make_backend(spec,
    settings)``): the hub's timeouts, retry policy and cache policy, as the hub was
    configured. A spec's own option (``?timeout=``, ``?retry_max=``) wins over these.

    - ``connect_timeout``: one attempt to reach a remote store, when the spec has no
      ``timeout=``;
    - ``retry_initial``/``retry_max``: the first and the largest delay of a capped,
      jittered backoff (see :class:`confhub.kv.Backoff`);
    - ``start_timeout``: the ceiling of the hub's whole start-up;
    - ``cache_enabled``: whether the hub keeps a last good copy of cacheable sources on disk.
    """

    connect_timeout: float = 2.0
    retry_initial: float = 0.5
    retry_max: float = 30.0
    start_timeout: float = 10.0
    cache_enabled: bool = True


def _action(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("put", "delete"):
        raise ValueError(f"WriteOp action must be 'put' or 'delete', not {value!r}")


def _dotted(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value or any(not p for p in value.split(".")):
        raise ValueError(
            f"{value!r} is not a dotted key such as db.pool.size (text, no empty segments)"
        )


@attrs.frozen
class WriteOp:
    """One operation of a transaction (:meth:`Hub.transaction`), as a backend's ``commit``
    gets it: ``put`` dotted ``key`` = ``value``, or ``delete`` it. ``expected_revision``
    makes the whole transaction depend on the key's revision (``0``: the key must not
    exist; ``None``: no check). Build them with :meth:`put` and :meth:`delete`."""

    action: Literal["put", "delete"] = attrs.field(validator=_action)
    key: str = attrs.field(validator=_dotted)
    value: Any = None
    expected_revision: Any = None

    @classmethod
    def put(cls, key: str, value: Any, expected_revision: Any = None) -> WriteOp:
        """A write of ``key``."""
        return cls("put", key, value, expected_revision)

    @classmethod
    def delete(cls, key: str, expected_revision: Any = None) -> WriteOp:
        """A delete of ``key``."""
        return cls("delete", key, None, expected_revision)


@runtime_checkable
class Backend(Protocol):
    """What a backend object provides. ``watch`` and ``write`` are optional.

    - ``load()`` reads the whole source and returns a :class:`Layer` (with the source's
      revision). It may block for at most its configured timeout; raise
      :class:`SourceUnavailableError` when the store cannot be reached.
    - ``watch(notify)`` (optional) starts watching from the revision of the last ``load`` and
      returns at once. The backend calls ``notify`` from its own thread with a
      :class:`LayerDelta` (preferred: one per revision, all keys of a transaction together),
      a whole :class:`Layer`, or an exception when it lost the source (it keeps retrying and
      reports the next good update). Backends without ``watch`` are polled when the source
      has a ``poll=SECONDS`` option, else read once.
    - ``write(key, value, expected_revision)`` (optional) writes one dotted key with
      compare-and-swap and returns the new revision.
    - ``delete(key, expected_revision)`` (optional) deletes the value at one dotted key
      (nothing there: no error; a table there: :class:`WriteError`) and returns the
      revision after it.
    - ``commit(ops, force)`` (optional) applies a sequence of :class:`WriteOp` in ONE
      atomic store transaction, every ``expected_revision`` checked in it, and returns the
      new revision; a transaction that would turn a table into a value or a value into a
      table is refused unless ``force`` (:func:`confhub.kv.check_transaction`). A backend
      that cannot apply them atomically leaves ``commit`` out: the hub refuses
      transactions on it, never applies them one by one.
    - ``read(key)`` (optional) reads one dotted key from the store itself (not a cache):
      ``(value, revision)``, ``(MISSING, 0)`` when absent; the revision is the one
      ``write``'s ``expected_revision`` compares with (:meth:`Hub.update` uses it).
    - ``close()`` stops watching and joins the backend's threads; it must be idempotent.
    - ``cacheable`` (default ``False``) marks a remote store: the hub bounds its start-time
      loads by the timeout, keeps its last good copy on disk, and retries it in the
      background when it starts from the cache or absent. Subclass ``Backend`` to inherit
      the default; the core reads it with :func:`is_cacheable`, which assumes the default
      for a backend that leaves it out.
    """

    cacheable: bool = False

    def load(self) -> Layer: ...

    def close(self) -> None: ...

    #: Who reads the store (an etcd user, a Consul ACL token; ``None``: nobody in
    #: particular). The cache keys its file by a salted HMAC of it, so a process reading
    #: as another identity never gets this one's cached copy; the value itself is never
    #: written, logged or put in a file name. Read with :func:`cache_principal_of`.
    cache_principal: str | None = None

    #: ``False`` when another process keeps this source's cache file (a follower of a
    #: host-shared source: its leader writes the cache). Read with :func:`writes_cache`.
    cache_writes: bool = True

    #: The process's role in the source's host-shared group (``None``: not shared).
    #: Read with :func:`sharing_of`; ``hub.health()`` reports it.
    sharing: Sharing | None = None

    #: ``False`` when the source's keys are not all meant for the app (the environment
    #: holds every program's variables): strict binding then never counts a key only this
    #: source holds as unknown. Read with :func:`is_strict`.
    strict_keys: bool = True

    def resume(self, layer: Layer) -> bool:
        """(Optional) Adopt ``layer``, the content this source held at ``layer.revision``
        as another process of a host-shared group read it, as the last ``load``: the next
        ``watch`` starts right after that revision, without reading the store first, so no
        change is missed and none is delivered twice. Return ``False`` (the default) when
        the backend cannot (the group's new leader then loads the source in full). Call
        with :func:`resume_watch`."""
        return False


def resume_watch(backend: Any, layer: Layer) -> bool:
    """Ask ``backend`` to watch from ``layer``'s revision (:meth:`Backend.resume`)."""
    resume = getattr(backend, "resume", None)
    return bool(resume(layer)) if callable(resume) else False


def writes_cache(backend: Any) -> bool:
    """Whether this process writes ``backend``'s cache file (:attr:`Backend.cache_writes`)."""
    return bool(getattr(backend, "cache_writes", Backend.cache_writes))


def sharing_of(backend: Any) -> Sharing | None:
    """``backend``'s :attr:`Backend.sharing` (``None`` when left out or not shared)."""
    found = getattr(backend, "sharing", None)
    return found if isinstance(found, Sharing) else None


def cache_principal_of(backend: Any) -> str | None:
    """``backend``'s :attr:`Backend.cache_principal` (default ``None`` when left out)."""
    principal = getattr(backend, "cache_principal", Backend.cache_principal)
    return None if principal is None else str(principal)


def is_strict(backend: Any) -> bool:
    """Whether an unknown key from ``backend`` counts (:attr:`Backend.strict_keys`, default
    ``True`` when left out)."""
    return bool(getattr(backend, "strict_keys", Backend.strict_keys))


def is_cacheable(backend: Any) -> bool:
    """Whether ``backend`` is a remote store (:attr:`Backend.cacheable`, default ``False``)."""
    return bool(getattr(backend, "cacheable", Backend.cacheable))


def can_watch(backend: Any) -> bool:
    """Whether ``backend`` implements ``watch``."""
    return callable(getattr(backend, "watch", None))


def can_write(backend: Any) -> bool:
    """Whether ``backend`` implements ``write``."""
    return callable(getattr(backend, "write", None))


def can_delete(backend: Any) -> bool:
    """Whether ``backend`` implements ``delete``."""
    return callable(getattr(backend, "delete", None))


def can_commit(backend: Any) -> bool:
    """Whether ``backend`` implements ``commit`` (atomic multi-key transactions)."""
    return callable(getattr(backend, "commit", None))


def can_read(backend: Any) -> bool:
    """Whether ``backend`` implements ``read`` (one key and its revision, from the store)."""
    return callable(getattr(backend, "read", None))

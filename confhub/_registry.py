"""The service registry facade: :class:`Registry` (register, discover, lock, elect).

A registry is made from a spec (``etcd://host:2379/prefix/``, ``consul://host:8500/``,
``memory:``) through the ``confhub_make_registry`` hook of the same plugins a
:class:`confhub.Hub` loads, so it shares their connection code, TLS, auth and retries. It
checks every input before the store sees it, and gives each discovery, lock and election a
connection of its own (closing one ends the waits in progress on it at once).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from ._backend import BackendSettings
from ._discovery import DEFAULT_MAX_STALENESS, Discovery
from ._errors import BackendNotFoundError, RegistryError, RegistryInputError
from ._locks import Election, Lock
from ._plugins import make_plugin_manager
from ._regforks import track, untrack
from ._registration import Registration, RegistrationState
from ._registry_types import CheckSpec, Instance, ServiceListing
from ._spec import SourceSpec, as_spec

if TYPE_CHECKING:
    from ._errors import LockLostError
    from ._registry_types import RegistryBackend

log = logging.getLogger("confhub.registry")

#: The smallest TTL a registration, lock or election accepts, in seconds.
MIN_TTL = 1.0
#: The TTL used when none is given (kept alive every TTL/3).
DEFAULT_TTL = 10.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_EXAMPLES = "etcd://127.0.0.1:2379/services/, consul://127.0.0.1:8500/ or memory:"


def check_name(what: str, name: object) -> str:
    """``name`` if it is a valid service or lock name, else :class:`RegistryInputError`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        why = ""
        if isinstance(name, str) and "/" in name:
            why = " ('/' separates the parts of the store's keys)"
        raise RegistryInputError(
            f"{what} {name!r} is not valid{why}: use 1-128 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit (e.g. {_suggest(name)!r})",
            name=str(name),
        )
    return name


def _suggest(name: object) -> str:
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-._")
    return text[:128] or "my-service"


def check_ttl(what: str, ttl: object) -> float:
    """``ttl`` as a float if at least :data:`MIN_TTL`, else :class:`RegistryInputError`."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl >= MIN_TTL:
        raise RegistryInputError(
            f"{what}: ttl={ttl!r} is under {MIN_TTL:g} s; the stores count TTLs in whole "
            f"seconds, so pass ttl=1 or more ({DEFAULT_TTL:g} is the usual)",
        )
    return float(ttl)


def _check_port(service: str, port: object) -> int:
    if port is None:
        raise RegistryInputError(
            f"register({service!r}) needs port=: the port clients connect to (e.g. port=8080)",
            name=service,
        )
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise RegistryInputError(
            f"register({service!r}): port={port!r} is not a TCP port; pass an int from 1 to 65535",
            name=service,
        )
    return port


def _check_address(service: str, address: object) -> str:
    if not isinstance(address, str) or not address.strip() or "/" in address:
        raise RegistryInputError(
            f"register({service!r}) needs address=: the host or IP clients connect to "
            f"(e.g. address='10.0.0.5'), not {address!r}",
            name=service,
        )
    return address.strip()


def _check_meta(service: str, meta: Mapping[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (meta or {}).items():
        if not isinstance(key, str) or not key:
            raise RegistryInputError(
                f"register({service!r}): meta key {key!r} must be a non-empty string",
                name=service,
            )
        if not isinstance(value, str | int | float | bool):
            raise RegistryInputError(
                f"register({service!r}): meta[{key!r}] is a {type(value).__name__}; meta "
                "values are strings (convert it, e.g. with json.dumps)",
                name=service,
            )
        out[key] = str(value)
    return out


def default_identity() -> str:
    """``host:pid``, who this process is in locks and elections unless told."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Registry:
    """Service registration, discovery, locks and leader election on one store.

    ``spec`` is ``etcd://host:2379/prefix/``, ``consul://host:8500/`` or ``memory:`` (the
    in-process store of :mod:`confhub.testing`). ``plugins``, ``autoload`` and
    ``settings`` are as for :class:`confhub.Hub` (``settings.connect_timeout`` bounds every
    call to the store). No I/O happens until the first call. A context manager: closing it
    closes every registration (deregistering), discovery, lock and election it made.
    """

    def __init__(
        self,
        spec: str | SourceSpec,
        *,
        plugins: Sequence[Any] = (),
        settings: BackendSettings | None = None,
        autoload: bool | None = None,
        max_staleness: float | None = DEFAULT_MAX_STALENESS,
    ) -> None:
        self._spec = as_spec(spec)
        self._settings = settings or BackendSettings()
        self._pm = make_plugin_manager(plugins, autoload=autoload)
        self._max_staleness = max_staleness
        self._guard = threading.Lock()
        self._children: list[Any] = []
        self._closed = False
        self._backend: RegistryBackend | None = self._new_backend()
        self._inherited: list[RegistryBackend] = []  # the parents' (after fork: never closed)
        track(self)

    def __repr__(self) -> str:
        return f"Registry({self._spec.display!r})"

    @property
    def display(self) -> str:
        """The registry's spec, credentials removed."""
        return self._spec.display

    # -- registration ------------------------------------------------------------------------

    def register(
        self,
        service: str,
        *,
        address: str | None = None,
        port: int | None = None,
        meta: Mapping[str, Any] | None = None,
        ttl: float = DEFAULT_TTL,
        instance_id: str | None = None,
        status: str = "passing",
        checks: Iterable[CheckSpec] = (),
        on_state: Callable[[RegistrationState], None] | None = None,
    ) -> Registration:
        """Register an instance of ``service`` and keep it alive until closed.

        ``address``/``port`` are what clients connect to; ``meta`` string pairs (version,
        zone); ``ttl`` (seconds, at least 1) how long the instance stays visible after this
        process stops without closing it; ``instance_id`` defaults to ``host-pid-random``;
        ``checks`` (:class:`confhub.CheckSpec`) are run by stores that run checks (Consul)
        and refused by the others. Returns the :class:`Registration` (a context manager).
        """
        self._check_open()
        service = check_name("service name", service)
        instance = Instance(
            service=service,
            instance_id=self._instance_id(service, instance_id),
            address=_check_address(service, address),
            port=_check_port(service, port),
            meta=_check_meta(service, meta),
            status=self._status(service, status),
        )
        registration = Registration(
            self._store(),
            instance,
            ttl=check_ttl(f"register({service!r})", ttl),
            checks=tuple(checks),
            on_state=on_state,
            source=self.display,
        )
        self._adopt(registration)
        return registration

    @staticmethod
    def _instance_id(service: str, instance_id: str | None) -> str:
        if instance_id is None:
            host = re.sub(r"[^A-Za-z0-9._-]+", "-", socket.gethostname()).strip("-") or "host"
            return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"
        if not isinstance(instance_id, str) or not _ID.fullmatch(instance_id):
            raise RegistryInputError(
                f"register({service!r}): instance_id={instance_id!r} is not valid: use 1-128 "
                "letters, digits, '.', '_', ':' or '-' (no '/'), or leave it out for a "
                "generated one",
                name=service,
            )
        return instance_id

    @staticmethod
    def _status(service: str, status: str) -> str:
        if status not in ("passing", "warning", "critical"):
            raise RegistryInputError(
                f"register({service!r}): status={status!r} is not one of passing, warning, "
                "critical",
                name=service,
            )
        return status

    # -- discovery ---------------------------------------------------------------------------

    def discover(
        self,
        service: str,
        *,
        passing_only: bool = True,
        strategy: str = "round_robin",
        max_staleness: float | object | None = ...,
        cache_path: str | os.PathLike[str] | None = None,
    ) -> Discovery:
        """Follow the instances of ``service``: a live :class:`Discovery`.

        Reads the list once before returning (raises
        :class:`confhub.SourceUnavailableError` when the store cannot be reached), then
        watches it. ``max_staleness`` (default: the registry's) bounds how long a list is
        served while the store does not answer; ``None`` serves it forever. ``cache_path``
        (opt-in) keeps the last list in a JSON file that a discovery starting while the store
        is unreachable serves (stale) if it is younger than ``max_staleness``.
        """
        self._check_open()
        service = check_name("service name", service)
        staleness = self._max_staleness if max_staleness is ... else max_staleness
        backend = self._new_backend()
        try:
            discovery = Discovery(
                backend,
                service,
                passing_only=passing_only,
                strategy=strategy,
                max_staleness=staleness,  # type: ignore[arg-type]
                retry=self._retry_delay,
                source=self.display,
                cache_path=cache_path,
                renew=self._new_backend,
            )
        except BaseException:
            backend.close()
            raise
        self._adopt(discovery)
        return discovery

    def instances(self, service: str) -> ServiceListing:
        """The :class:`confhub.ServiceListing` of ``service`` now (one read, every status)."""
        self._check_open()
        return self._store().list_instances(check_name("service name", service))

    def services(self) -> tuple[str, ...]:
        """The names of the services with at least one instance, sorted."""
        self._check_open()
        return tuple(sorted(self._store().services()))

    # -- locks and elections -----------------------------------------------------------------

    def lock(
        self,
        name: str,
        *,
        ttl: float = DEFAULT_TTL,
        identity: str | None = None,
        timeout: float | None = None,
        on_lost: Callable[[LockLostError], None] | None = None,
    ) -> Lock:
        """A distributed :class:`Lock` named ``name`` (not acquired yet).

        ``ttl`` bounds how long the lock stays held after this process dies; ``timeout``
        is what ``with registry.lock(...)`` waits for it (``None``: no bound).
        """
        self._check_open()
        name = check_name("lock name", name)
        ttl = check_ttl(f"lock({name!r})", ttl)
        who = identity or default_identity()
        backend = self._new_backend()
        lock = Lock(
            backend.lock(name, ttl, who),
            name,
            ttl=ttl,
            identity=who,
            timeout=timeout,
            on_lost=on_lost,
            closer=backend.close,
            source=self.display,
        )
        self._adopt(lock)
        return lock

    def election(
        self,
        name: str,
        *,
        identity: str | None = None,
        ttl: float = DEFAULT_TTL,
        on_lost: Callable[[LockLostError], None] | None = None,
    ) -> Election:
        """A leader :class:`Election` named ``name`` (call ``campaign()`` to run in it)."""
        self._check_open()
        name = check_name("election name", name)
        ttl = check_ttl(f"election({name!r})", ttl)
        who = identity or default_identity()
        backend = self._new_backend()
        lock = Lock(
            backend.lock(name, ttl, who),
            name,
            ttl=ttl,
            identity=who,
            on_lost=on_lost,
            closer=backend.close,
            source=self.display,
        )
        election = Election(lock)
        self._adopt(election)
        return election

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close every registration (deregistering it), discovery, lock and election made
        here, then the store connection. Idempotent.

        In a process that inherited the registry across ``fork()``, the inherited
        registrations, locks and elections are left to the parent (see
        :class:`RegistrationState`), and only the connections this process opened close."""
        with self._guard:
            if self._closed:
                return
            self._closed = True
            children = list(reversed(self._children))
            self._children.clear()
            backend, self._backend = self._backend, None
        untrack(self)
        for child in children:
            try:
                child.close()
            except Exception:
                log.exception("closing %r failed", child)
        if backend is not None:
            backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def after_fork(self, parent: int) -> str | None:
        """In a child, from the at-fork handler: drop the parent's shared connection (never
        used nor closed here); the first call that needs one makes a new one."""
        self._guard = threading.Lock()
        if self._backend is not None:
            self._inherited.append(self._backend)
        self._backend = None
        return None

    def _store(self) -> RegistryBackend:
        backend = self._backend
        if backend is None:
            with self._guard:
                self._check_open()
                if self._backend is None:
                    self._backend = self._new_backend()
                backend = self._backend
        return backend

    def _check_open(self) -> None:
        if self._closed:
            raise RegistryError(
                f"registry {self.display} is closed; create a new Registry",
                source=self.display,
            )

    def _adopt(self, child: Any) -> None:
        with self._guard:
            self._children.append(child)

    def _retry_delay(self, attempt: int) -> float:
        return float(min(self._settings.retry_max, self._settings.retry_initial * 2**attempt))

    def _new_backend(self) -> RegistryBackend:
        backend = self._pm.hook.confhub_make_registry(spec=self._spec, settings=self._settings)
        if backend is None:
            providers = sorted(
                impl.plugin_name for impl in self._pm.hook.confhub_make_registry.get_hookimpls()
            )
            raise BackendNotFoundError(
                f"no installed plugin provides a registry for {self._spec.scheme!r} "
                f"(registry {self.display}); registry specs look like {_EXAMPLES}; install "
                f"the plugin that provides it (e.g. 'pip install confhub-{self._spec.scheme}')",
                spec=self.display,
                scheme=self._spec.scheme,
                installed=providers,
            )
        return backend  # type: ignore[no-any-return]

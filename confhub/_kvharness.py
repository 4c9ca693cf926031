"""The KV backend contract's harness protocol and the helpers its test groups share.

:class:`KVStoreHarness` is what a backend author's ``kv_store`` fixture returns;
:class:`ContractBase` holds the helpers (fresh prefixes, hubs with their own cache
directory, bounded waits that are hang backstops, never pace checks). The tests themselves
are in :mod:`confhub._kvcontract`; both are shipped through :mod:`confhub.testing`.
"""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from ._errors import WriteError
from ._hub import Hub
from ._snapshot import Change
from .kv import check_write_shape

if TYPE_CHECKING:
    from pathlib import Path


__all__ = ["ContractBase", "KVStoreHarness"]

#: The longest the suite waits for something the store should do soon: a backstop against a
#: hang, generous so that a loaded machine never fails a test that would pass.
WAIT = 30.0


@runtime_checkable
class KVStoreHarness(Protocol):
    """What the contract suite needs to know about your store (your ``kv_store`` fixture).

    Required:

    - ``spec(prefix, **options) -> str``: the spec string of a source reading the store keys
      under ``prefix`` (``"contract-1a2b/"``; tree layout), or the one key ``prefix`` when
      ``options`` has ``format="json"`` (document layout). ``options`` are spec options
      (``optional="true"``, ``max_keys="3"``); add them to the query string as given.
    - ``put(key, value)``: write store key ``key`` (``value`` is ``bytes`` or ``str``) with
      the store's own client, as another process would.
    - ``delete(key)``: delete store key ``key`` the same way.

    Keys are written as the suite names them (``contract-1a2b/db/port``); a store whose keys
    need a leading ``/`` or another root adds it in ``spec``, ``put`` and ``delete`` alike.

    Optional attributes, read with ``getattr``:

    - ``plugins`` (default ``()``): plugin objects or modules serving your scheme, given to
      every hub as ``Hub(plugins=...)``. Leave it empty when your distribution is installed
      and found through its entry point.
    - ``unsupported`` (default ``{}``): capability name -> why your store cannot do it (see
      :attr:`KVBackendContract.capabilities`); the tests that need it are skipped with that
      reason. A name that is not a capability fails every test (a misspelling).
    - ``stop()`` / ``start()``: take the store away (an outage: refuse or drop requests) and
      bring it back with its data. Needed unless ``"outage"`` is unsupported.
    """

    def spec(self, prefix: str, **options: str) -> str: ...

    def put(self, key: str, value: bytes | str) -> None: ...

    def delete(self, key: str) -> None: ...


class ContractBase:
    """What the contract's test groups share: the capabilities a harness may decline and the
    helpers (fresh prefixes, hubs with their own cache directory, bounded waits).

    Test methods take ``kv_store`` and pytest's own ``tmp_path`` (each hub's cache
    directory) and ``caplog``. Override one to skip it with a reason, never to change what
    it checks: the suite is the contract the etcd and Consul plugins pass as well.
    """

    #: Capabilities a harness may declare ``unsupported`` (with a reason).
    capabilities: ClassVar[Mapping[str, str]] = {
        "watch": "the backend watches: store changes reach subscribers without polling",
        "write": "hub.write() writes store keys, with compare-and-swap",
        "documents": "format=json reads one store key holding a whole JSON document",
        "outage": "the harness can stop() and start() the store",
        "transactions": "hub.delete(), hub.transaction() (one atomic store transaction with "
        "per-key expected revisions) and hub.update() (the backend's delete, commit, read)",
    }

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def new_prefix() -> str:
        """A store prefix no other test uses (``contract-1a2b3c4d/``)."""
        return f"contract-{uuid.uuid4().hex[:8]}/"

    def unsupported(self, store: KVStoreHarness) -> Mapping[str, str]:
        """The harness's ``unsupported`` capabilities; a name that is not a capability is a
        TypeError (a misspelling would silently run what the store cannot do)."""
        unsupported: Mapping[str, str] = getattr(store, "unsupported", {})
        unknown = sorted(set(unsupported) - set(self.capabilities))
        if unknown:
            raise TypeError(
                f"{type(store).__name__}.unsupported names {', '.join(map(repr, unknown))}, "
                f"which are not capabilities of the KV contract; use one of "
                f"{', '.join(sorted(self.capabilities))}"
            )
        return unsupported

    def require(self, store: KVStoreHarness, *needed: str) -> None:
        """Skip the running test, with the harness's reason, when ``store`` lacks one of
        the ``needed`` capabilities."""
        unsupported = self.unsupported(store)
        for name in needed:
            if name in unsupported:
                import pytest  # here: confhub.testing imports without pytest

                pytest.skip(
                    f"{type(store).__name__} lacks {name!r} ({self.capabilities[name]}): "
                    f"{unsupported[name]}"
                )
            if name == "outage" and not (
                callable(getattr(store, "stop", None)) and callable(getattr(store, "start", None))
            ):
                raise TypeError(
                    f"{type(store).__name__} has no stop()/start(): implement them, or declare "
                    "unsupported = {'outage': 'why the store cannot be stopped'}"
                )

    def hub(self, store: KVStoreHarness, tmp_path: Path, *sources: Any) -> Hub:
        """A hub over ``sources`` with the harness's plugins, a fresh cache directory, and
        short retry delays (not started)."""
        self.unsupported(store)
        return Hub(
            list(sources),
            plugins=list(getattr(store, "plugins", ())),
            cache_dir=tmp_path / f"cache-{uuid.uuid4().hex[:6]}",
            retry_initial=0.05,
            retry_max=0.5,
        )

    @staticmethod
    def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        """Return once ``condition()`` is true; fail naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up after {timeout:.0f}s waiting for {what}")
            time.sleep(0.02)

    @contextmanager
    def changes(self, hub: Hub) -> Iterator[queue.Queue[Change]]:
        """The hub's published changes, as a queue, while the block runs."""
        inbox: queue.Queue[Change] = queue.Queue()
        subscription = hub.subscribe(inbox.put)
        try:
            yield inbox
        finally:
            subscription.cancel()

    @staticmethod
    def next_change(inbox: queue.Queue[Change], what: str) -> Change:
        """The next published change; fail naming ``what`` if none comes in time."""
        try:
            return inbox.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"gave up after {WAIT:.0f}s waiting for {what}") from None

    @staticmethod
    def state(hub: Hub) -> str:
        """The health state of the hub's last (highest) source."""
        return hub.health().sources[-1].state

    @staticmethod
    def error_of(call: Callable[[], object], what: str) -> Exception:
        """The exception ``call()`` raises; fails naming ``what`` if it returns."""
        try:
            result = call()
        except Exception as exc:  # noqa: BLE001 - the caller checks what it is
            return exc
        raise AssertionError(f"{what} did not fail (it returned {result!r})")

    @staticmethod
    def start_error(hub: Hub) -> BaseException:
        """The exception ``hub.start()`` raises (the hub is closed); fails if it starts."""
        try:
            hub.start()
        except Exception as exc:  # noqa: BLE001 - the caller checks what it is
            return exc
        served = dict(hub.snapshot().flat())
        hub.close()
        raise AssertionError(f"the hub started, serving {served!r}")

    def shape_refusal(
        self, hub: Hub, existing: Mapping[str, Any], key: str, value: object
    ) -> WriteError:
        """The error ``hub.write(key, value)`` raises, checked against the kit's wording for
        a source holding ``existing`` (``kv.check_write_shape``)."""
        source = hub.sources[-1]
        error = self.error_of(lambda: hub.write(key, value), f"the write of {key!r}")
        expected = self.error_of(
            lambda: check_write_shape(existing, key, value, source=source), "the kit's check"
        )
        assert type(error) is WriteError, repr(error)
        assert str(error) == str(expected), str(error)
        assert (error.key, error.source) == (key, source), error
        return error

"""The registry contract: one test suite every registry store runs against itself.

Shipped in :mod:`confhub.testing` for plugin authors, like the KV contract: subclass
:class:`RegistryBackendContract` and give it a ``registry_store`` fixture returning an
object that fits :class:`RegistryStoreHarness`::

    class TestMyRegistry(RegistryBackendContract):
        @pytest.fixture
        def registry_store(self, my_server):
            return MyRegistryHarness(my_server)

Every test goes through a real :class:`confhub.Registry` under a fresh prefix and waits for
what it expects with a bounded wait (a hang backstop, never a pace check): orders, states
and counts are asserted, not speed.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from ._backend import BackendSettings
from ._discovery import DiscoveryChange
from ._errors import LockTimeoutError, NoInstanceError, RegistryError, RegistryInputError
from ._registration import RegistrationState
from ._registry import Registry

__all__ = ["RegistryBackendContract", "RegistryStoreHarness"]

#: The hang backstop of every wait in the suite, in seconds.
WAIT = 20.0


class RegistryStoreHarness(Protocol):
    """How the registry contract reaches a store and acts on it behind the registry's back.

    - ``spec(prefix)``: a registry spec whose records live under ``prefix`` (unique per test);
    - ``stop()`` / ``start()``: make the store unreachable, and reachable again with its data;
    - ``expire(service, instance_id)``: make the store forget a registration's lease or
      session now, as if it had expired;
    - ``expires_within``: how many seconds past a TTL the store may take to drop a record
      whose owner died (etcd: 1; Consul: the reaping interval);
    - ``plugins`` (optional): plugin objects to pass to the registry;
    - ``one_process`` (optional, default false): the store lives in the test's process (a
      forked child has a copy of it), so the fork test skips what needs a shared store.
    """

    expires_within: float

    def spec(self, prefix: str) -> str: ...

    def stop(self) -> None: ...

    def start(self) -> None: ...

    def expire(self, service: str, instance_id: str) -> None: ...


def _forked_child(
    spec: str,
    plugins: list[Any],
    registry: Registry,
    objects: dict[str, Any],
    later: Any,
    results: Any,
) -> None:
    """The fork test's child: report what the inherited objects say, wait for the parent's
    later registration in the inherited discovery, close everything and report again."""
    try:
        registration, lock, election = objects["registration"], objects["lock"], objects["election"]
        discovery = objects["discovery"]
        report: dict[str, Any] = {
            "state": str(registration.state),
            "held": lock.held,
            "token": lock.token,
            "leader": election.is_leader,
        }
        calls: tuple[tuple[str, Callable[[], object]], ...] = (
            ("acquire", lambda: lock.acquire(timeout=0.1)),
            ("set_status", lambda: registration.set_status("warning")),
        )
        for name, call in calls:
            try:
                call()
                report[name] = "no error"
            except RegistryError as exc:
                report[name] = str(exc)
        if later is not None:
            later.wait(WAIT)
            deadline = time.monotonic() + WAIT
            while "later" not in {i.instance_id for i in discovery.instances}:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            report["seen"] = sorted(i.instance_id for i in discovery.instances)
            report["stale"] = discovery.health().stale
        registry.close()
        report["closed_state"] = str(registration.state)
        # One read from a fresh process: its deadline is a hang guard, not a pace (1 s was
        # missed on a loaded 2-core machine: a new channel, then the read).
        settings = BackendSettings(connect_timeout=WAIT, retry_initial=0.05, retry_max=0.5)
        with Registry(spec, plugins=plugins, settings=settings) as other:
            report["listed"] = sorted(i.instance_id for i in other.instances("api").instances)
            report["holder"] = other.lock("job").holder()
        results.put(("ok", report))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails
        results.put(("error", repr(exc)))


class RegistryContractBase:
    """What the registry contract's groups share: fresh prefixes, a registry on the store,
    bounded waits, an outage."""

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def new_prefix() -> str:
        """A prefix no other test uses."""
        return f"reg-{uuid.uuid4().hex[:8]}/"

    @staticmethod
    def registry(store: RegistryStoreHarness, prefix: str, **kwargs: Any) -> Registry:
        """A registry on ``store`` under ``prefix`` with short retry delays."""
        # One read from a fresh process: its deadline is a hang guard, not a pace (1 s was
        # missed on a loaded 2-core machine: a new channel, then the read).
        settings = BackendSettings(connect_timeout=WAIT, retry_initial=0.05, retry_max=0.5)
        return Registry(
            store.spec(prefix),
            plugins=list(getattr(store, "plugins", ())),
            settings=settings,
            **kwargs,
        )

    @staticmethod
    def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        """Return once ``condition()`` is true; fail naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up after {timeout:.0f}s waiting for {what}")
            time.sleep(0.02)

    @staticmethod
    def next_item(inbox: queue.Queue[Any], what: str) -> Any:
        """The next item put in ``inbox``; fail naming ``what`` if none comes in time."""
        try:
            return inbox.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"gave up after {WAIT:.0f}s waiting for {what}") from None

    @staticmethod
    def error_of(call: Callable[[], object], what: str) -> Exception:
        """The exception ``call()`` raises; fails naming ``what`` if it returns."""
        try:
            result = call()
        except Exception as exc:  # noqa: BLE001 - the caller checks what it is
            return exc
        raise AssertionError(f"{what} did not fail (it returned {result!r})")

    @contextmanager
    def outage(self, store: RegistryStoreHarness) -> Iterator[None]:
        """The store is down inside the block, and up again after it."""
        store.stop()
        try:
            yield
        finally:
            store.start()


class RegistrationContract(RegistryContractBase):
    """Registrations and discoveries: listing, changes, passing-only, pick, lost leases,
    outages, bad input."""

    # -- registration and listing ------------------------------------------------------------

    def test_registered_instance_is_listed_with_its_fields(
        self, registry_store: RegistryStoreHarness
    ) -> None:
        """A registered instance is listed with its address, port, meta, status and origin."""
        with self.registry(registry_store, self.new_prefix()) as registry:
            registry.register(
                "api", address="127.0.0.1", port=8080, meta={"zone": "a"}, instance_id="api-1"
            )
            listing = registry.instances("api")
            assert [(i.instance_id, i.address, i.port) for i in listing.instances] == [
                ("api-1", "127.0.0.1", 8080)
            ]
            (instance,) = listing.instances
            assert dict(instance.meta) == {"zone": "a"}
            assert instance.status == "passing"
            assert instance.origin
            assert registry.services() == ("api",)

    def test_close_deregisters_at_once(self, registry_store: RegistryStoreHarness) -> None:
        """Closing a registration removes the instance before close() returns."""
        with self.registry(registry_store, self.new_prefix()) as registry:
            registration = registry.register("api", address="127.0.0.1", port=1, ttl=30)
            assert len(registry.instances("api").instances) == 1
            registration.close()
            assert registry.instances("api").instances == ()
            assert registration.state is RegistrationState.CLOSED

    def test_discovery_reports_added_changed_removed_in_order(
        self, registry_store: RegistryStoreHarness
    ) -> None:
        """A subscriber sees the add, the status change and the removal, in that order."""
        with self.registry(registry_store, self.new_prefix()) as registry:
            discovery = registry.discover("api", passing_only=False)
            inbox: queue.Queue[DiscoveryChange] = queue.Queue()
            discovery.subscribe(inbox.put)
            registration = registry.register("api", address="127.0.0.1", port=9, instance_id="a")
            added = self.next_item(inbox, "the added instance")
            assert [i.instance_id for i in added.added] == ["a"]
            registration.set_status("warning")
            changed = self.next_item(inbox, "the changed instance")
            assert [(i.instance_id, i.status) for i in changed.changed] == [("a", "warning")]
            registration.close()
            removed = self.next_item(inbox, "the removed instance")
            assert [i.instance_id for i in removed.removed] == ["a"]
            assert discovery.instances == ()

    def test_discovery_serves_passing_instances_only_by_default(
        self, registry_store: RegistryStoreHarness
    ) -> None:
        """A critical instance leaves ``instances`` and ``pick()``; passing_only=False keeps it."""
        with self.registry(registry_store, self.new_prefix()) as registry:
            good = registry.register("api", address="127.0.0.1", port=1, instance_id="good")
            bad = registry.register("api", address="127.0.0.1", port=2, instance_id="bad")
            discovery = registry.discover("api")
            everything = registry.discover("api", passing_only=False)
            self.wait_until(lambda: len(discovery.instances) == 2, "both instances")
            bad.set_status("critical")
            self.wait_until(lambda: len(discovery.instances) == 1, "the critical one gone")
            assert discovery.pick().instance_id == "good"
            assert {i.instance_id for i in everything.instances} == {"good", "bad"}
            good.set_status("critical")
            self.wait_until(lambda: not discovery.instances, "no passing instance")
            error = self.error_of(discovery.pick, "pick() among critical instances")
            assert isinstance(error, NoInstanceError), repr(error)
            assert "'api'" in str(error)

    def test_pick_round_robin_visits_every_instance(
        self, registry_store: RegistryStoreHarness
    ) -> None:
        """Round robin returns each of three instances once in three picks."""
        with self.registry(registry_store, self.new_prefix()) as registry:
            for port in (1, 2, 3):
                registry.register("api", address="127.0.0.1", port=port)
            discovery = registry.discover("api")
            self.wait_until(lambda: len(discovery.instances) == 3, "three instances")
            assert sorted(discovery.pick().port for _ in range(3)) == [1, 2, 3]

    def test_lost_lease_is_reregistered_without_the_app(
        self, registry_store: RegistryStoreHarness
    ) -> None:
        """When the store forgets a registration, it is lost, then re-registered and listed."""
        with self.registry(registry_store, self.new_prefix()) as registry:
            states: queue.Queue[RegistrationState] = queue.Queue()
            registration = registry.register(
                "api", address="127.0.0.1", port=1, ttl=2, on_state=states.put
            )
            registry_store.expire("api", registration.instance_id)
            assert self.next_item(states, "the loss") is RegistrationState.LOST
            assert self.next_item(states, "the return") is RegistrationState.REREGISTERED
            self.wait_until(
                lambda: (
                    [i.instance_id for i in registry.instances("api").instances]
                    == [registration.instance_id]
                ),
                "the instance listed again",
            )

    # -- outages -----------------------------------------------------------------------------

    def test_discovery_serves_the_last_list_while_the_store_is_down(
        self, registry_store: RegistryStoreHarness
    ) -> None:
        """Down: the last list is served and health says stale; up: stale clears."""
        prefix = self.new_prefix()
        with self.registry(registry_store, prefix) as registry:
            registry.register("api", address="127.0.0.1", port=1, ttl=30, instance_id="a")
            discovery = registry.discover("api")
            with self.outage(registry_store):
                self.wait_until(lambda: discovery.health().stale, "the discovery going stale")
                assert [i.instance_id for i in discovery.instances] == ["a"]
                assert not discovery.health().dropped
            self.wait_until(lambda: not discovery.health().stale, "the discovery recovering")
            assert [i.instance_id for i in discovery.instances] == ["a"]

    def test_discovery_drops_the_list_after_max_staleness(
        self, registry_store: RegistryStoreHarness
    ) -> None:
        """Down for longer than max_staleness: the list is dropped, pick() says why."""
        with self.registry(registry_store, self.new_prefix()) as registry:
            registry.register("api", address="127.0.0.1", port=1, ttl=30)
            discovery = registry.discover("api", max_staleness=1.0)
            removed: queue.Queue[DiscoveryChange] = queue.Queue()
            discovery.subscribe(removed.put)
            with self.outage(registry_store):
                change = self.next_item(removed, "the list dropped")
                assert len(change.removed) == 1
                assert discovery.health().dropped
                error = self.error_of(discovery.pick, "pick() on a dropped list")
                assert isinstance(error, NoInstanceError), repr(error)
                assert "max_staleness" in str(error)
            back = self.next_item(removed, "the list back")
            assert len(back.added) == 1

    def test_registration_survives_an_outage_shorter_than_the_ttl(
        self, registry_store: RegistryStoreHarness
    ) -> None:
        """A keepalive that fails during a short outage (under the TTL) loses nothing."""
        with self.registry(registry_store, self.new_prefix()) as registry:
            states: list[RegistrationState] = []
            registration = registry.register(
                "api", address="127.0.0.1", port=1, ttl=5, on_state=states.append
            )
            with self.outage(registry_store):
                self.wait_until(lambda: registration.last_error is not None, "a keepalive failing")
                before = registration.keepalives
            self.wait_until(
                lambda: registration.keepalives > before, "a keepalive after the outage"
            )
            assert RegistrationState.LOST not in states
            assert len(registry.instances("api").instances) == 1

    def test_registration_comes_back_after_an_outage_longer_than_the_ttl(
        self, registry_store: RegistryStoreHarness
    ) -> None:
        """After an outage longer than the TTL the instance is listed again, unasked."""
        with self.registry(registry_store, self.new_prefix()) as registry:
            registration = registry.register("api", address="127.0.0.1", port=1, ttl=1)
            with self.outage(registry_store):
                deadline = time.monotonic() + 1.5
                self.wait_until(lambda: time.monotonic() > deadline, "the TTL to pass")
            self.wait_until(
                lambda: (
                    [i.instance_id for i in registry.instances("api").instances]
                    == [registration.instance_id]
                ),
                "the instance listed after the outage",
            )
            assert registration.state is not RegistrationState.CLOSED

    # -- bad input ---------------------------------------------------------------------------

    def test_bad_input_is_refused_naming_the_argument(
        self, registry_store: RegistryStoreHarness
    ) -> None:
        """A '/' in a name, a TTL under 1 s and a missing port are refused before any I/O."""
        with self.registry(registry_store, self.new_prefix()) as registry:
            cases: list[tuple[Callable[[], object], str]] = [
                (lambda: registry.register("a/b", address="h", port=1), "'/'"),
                (lambda: registry.register("a", address="h", port=1, ttl=0.5), "ttl=0.5"),
                (lambda: registry.register("a", address="h"), "port="),
                (lambda: registry.lock("x/y"), "lock name"),
            ]
            for call, needle in cases:
                error = self.error_of(call, f"bad input ({needle})")
                assert isinstance(error, RegistryInputError), repr(error)
                assert needle in str(error), str(error)
            assert registry.services() == ()


class LockContract(RegistryContractBase):
    """Locks and elections, and what a forked child does with inherited registry objects."""

    # -- locks and elections -----------------------------------------------------------------

    def test_lock_is_held_by_one_at_a_time_and_handed_over_on_release(
        self, registry_store: RegistryStoreHarness
    ) -> None:
        """The second acquirer waits for the release, then holds a larger token."""
        with self.registry(registry_store, self.new_prefix()) as registry:
            first = registry.lock("job", ttl=5, identity="first")
            second = registry.lock("job", ttl=5, identity="second")
            token = first.acquire()
            assert first.holder() == ("first", token)
            events: queue.Queue[str] = queue.Queue()
            got: list[int] = []

            def wait() -> None:
                got.append(second.acquire(timeout=WAIT))
                events.put("second acquired")

            waiter = threading.Thread(target=wait)
            waiter.start()
            try:
                self.wait_until(lambda: first.holder() == ("first", token), "the holder")
                assert events.empty()
                events.put("first releases")
                first.release()
                assert self.next_item(events, "the order") == "first releases"
                assert self.next_item(events, "the handover") == "second acquired"
            finally:
                waiter.join(WAIT)
            assert got[0] > token
            assert second.held
            assert not first.held
            assert second.holder() == ("second", got[0])
            second.release()
            assert second.holder() is None

    def test_lock_acquire_times_out(self, registry_store: RegistryStoreHarness) -> None:
        """acquire(timeout=) on a held lock raises LockTimeoutError, leaving the holder."""
        with self.registry(registry_store, self.new_prefix()) as registry:
            holder = registry.lock("job", ttl=5, identity="holder")
            token = holder.acquire()
            other = registry.lock("job", ttl=5, identity="other")
            error = self.error_of(lambda: other.acquire(timeout=0.3), "acquiring a held lock")
            assert isinstance(error, LockTimeoutError), repr(error)
            assert "'job'" in str(error)
            assert holder.holder() == ("holder", token)
            assert not other.held

    def test_election_hands_leadership_over_on_resign(
        self, registry_store: RegistryStoreHarness
    ) -> None:
        """One leader at a time; a subscriber sees each leader, tokens grow."""
        with self.registry(registry_store, self.new_prefix()) as registry:
            one = registry.election("leader", identity="one", ttl=5)
            two = registry.election("leader", identity="two", ttl=5)
            seen: queue.Queue[tuple[str, int] | None] = queue.Queue()
            one.subscribe(seen.put)
            assert self.next_item(seen, "the first report") is None
            token_one = one.campaign()
            assert self.next_item(seen, "leader one") == ("one", token_one)
            campaign = threading.Thread(target=two.campaign, kwargs={"timeout": WAIT})
            campaign.start()
            try:
                assert one.is_leader
                assert not two.is_leader
                one.resign()
                leader = self.next_item(seen, "leader two")
                if leader is None:  # the gap between the two leaders
                    leader = self.next_item(seen, "leader two")
            finally:
                campaign.join(WAIT)
            assert leader is not None
            assert leader[0] == "two"
            assert leader[1] > token_one
            assert two.is_leader
            assert not one.is_leader
            assert two.token == leader[1]

    # -- fork ----------------------------------------------------------------------------------

    def test_forked_child_leaves_the_parents_registration_and_lock(
        self, registry_store: RegistryStoreHarness
    ) -> None:
        """A child forked from a process that registered, holds a lock and leads does not
        hold them, refuses to act on them, and closing them there leaves them to the
        parent: still registered (never lost) and kept alive, the lock still the parent's.
        The inherited discovery follows the store again in the child."""
        shared = not getattr(registry_store, "one_process", False)
        prefix = self.new_prefix()
        states: list[RegistrationState] = []
        with self.registry(registry_store, prefix) as registry:
            registration = registry.register(
                "api", address="127.0.0.1", port=8080, ttl=2, on_state=states.append
            )
            lock = registry.lock("job", ttl=2, identity="parent")
            token = lock.acquire(timeout=WAIT)
            election = registry.election("leader", ttl=2, identity="parent")
            election.campaign(timeout=WAIT)
            discovery = registry.discover("api")
            objects = {
                "registration": registration,
                "lock": lock,
                "election": election,
                "discovery": discovery,
            }
            context = multiprocessing.get_context("fork")
            results = context.Queue()
            later = context.Event() if shared else None
            process = context.Process(
                target=_forked_child,
                args=(
                    registry_store.spec(prefix),
                    list(getattr(registry_store, "plugins", ())),
                    registry,
                    objects,
                    later,
                    results,
                ),
            )
            with warnings.catch_warnings():  # fork() of a threaded process: what we test
                warnings.simplefilter("ignore", DeprecationWarning)
                process.start()
            try:
                if later is not None:
                    with registry.register(
                        "api", address="127.0.0.1", port=8081, ttl=2, instance_id="later"
                    ):
                        later.set()
                        outcome = results.get(timeout=WAIT * 3)
                else:
                    outcome = results.get(timeout=WAIT * 3)
            finally:
                process.join(WAIT)
                if process.is_alive():
                    process.kill()
                    process.join(WAIT)
            assert outcome[0] == "ok", outcome
            report = outcome[1]
            assert process.exitcode == 0
            # In the child: inherited, not held, not leading; acting on them is refused.
            assert report["state"] == "inherited"
            assert report["held"] is False
            assert report["token"] is None
            assert report["leader"] is False
            assert "inherited across fork()" in report["acquire"]
            assert "post_fork" in report["set_status"]
            assert report["closed_state"] == "inherited"
            # The child's close() did not deregister nor release (seen from the child).
            assert registration.instance_id in report["listed"]
            assert report["holder"] == ("parent", token)
            if shared:
                assert "later" in report["seen"]
                assert report["stale"] is False
            # In the parent, after the child exited: kept alive, never lost, still held.
            acked = registration.keepalives
            self.wait_until(
                lambda: registration.keepalives >= acked + 2, "two keepalives after the child"
            )
            assert states == []
            assert registration.state is RegistrationState.REGISTERED
            listed = {i.instance_id for i in registry.instances("api").instances}
            assert registration.instance_id in listed
            assert lock.held
            assert lock.holder() == ("parent", token)
            assert election.is_leader
            assert election.leader() == ("parent", election.token)


class RegistryBackendContract(RegistrationContract, LockContract):
    """The registry behaviours every store provides, against a real store; subclass it and
    provide a ``registry_store`` fixture (see :class:`RegistryStoreHarness`)."""

"""The registry core on the in-process ``memory:`` store: the shared contract, plus what only
an in-process store can show (leases forgotten on demand, outages, thread cleanup)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import queue
import threading
import time
import uuid
import warnings
from pathlib import Path

import pytest

import confhub
from confhub import (
    RegistrationState,
    Registry,
    RegistryInputError,
)
from confhub.testing import (
    MemoryRegistryStore,
    RegistryBackendContract,
    memory_registry_store,
)

WAIT = 20.0


class MemoryHarness:
    """The contract's view of the in-process store: ``memory:PREFIX`` is a store per test."""

    expires_within = 0.0
    #: A forked child has a copy of the store, not the store.
    one_process = True

    def __init__(self) -> None:
        self.stores: list[MemoryRegistryStore] = []

    def spec(self, prefix: str) -> str:
        self.stores.append(memory_registry_store(prefix))
        return f"memory:{prefix}"

    def stop(self) -> None:
        for store in self.stores:
            store.fail()

    def start(self) -> None:
        for store in self.stores:
            store.recover()

    def expire(self, service: str, instance_id: str) -> None:
        for store in self.stores:
            store.expire(instance_id)


class TestMemoryContract(RegistryBackendContract):
    """The memory store keeps the registry contract."""

    @pytest.fixture
    def registry_store(self) -> MemoryHarness:
        return MemoryHarness()


@pytest.fixture
def name() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def wait_for(inbox: queue.Queue[object], what: str) -> object:
    try:
        return inbox.get(timeout=WAIT)
    except queue.Empty:
        raise AssertionError(f"gave up waiting for {what}") from None


def test_unknown_scheme_names_the_registry_specs() -> None:
    """A registry spec no plugin serves fails naming the specs that exist."""
    with pytest.raises(confhub.BackendNotFoundError, match="memory:"):
        Registry("nosuch://x/")


def test_instance_not_kept_alive_expires_within_its_ttl(name: str) -> None:
    """A registration whose keepalives stop (the store down) leaves the listing by itself."""
    store = memory_registry_store(name)
    with Registry(f"memory:{name}") as registry:
        states: queue.Queue[RegistrationState] = queue.Queue()
        registration = registry.register("api", address="h", port=1, ttl=1, on_state=states.put)
        store.fail()
        assert wait_for(states, "the loss") is RegistrationState.LOST
        store.recover()
        assert wait_for(states, "the return") is RegistrationState.REREGISTERED
        assert registration.state is RegistrationState.REREGISTERED


def test_close_of_the_registry_closes_everything_it_made(name: str) -> None:
    """Closing the registry deregisters, stops discoveries and releases locks; no thread left."""
    before = set(threading.enumerate())
    registry = Registry(f"memory:{name}")
    registration = registry.register("api", address="h", port=1)
    registry.discover("api")
    lock = registry.lock("job")
    lock.acquire()
    election = registry.election("lead")
    election.subscribe(lambda leader: None)
    registry.close()
    assert registration.state is RegistrationState.CLOSED
    assert not lock.held
    with Registry(f"memory:{name}") as other:
        assert other.instances("api").instances == ()
        assert other.lock("job").holder() is None
    leaked = [t for t in set(threading.enumerate()) - before if t.name.startswith("confhub")]
    assert leaked == []
    with pytest.raises(confhub.RegistryError, match="closed"):
        registry.register("api", address="h", port=1)


def test_lock_lost_when_the_store_forgets_it_tells_the_holder(name: str) -> None:
    """A holder whose lease the store forgot is told (on_lost), stops holding, check() raises."""
    store = memory_registry_store(name)
    lost: queue.Queue[confhub.LockLostError] = queue.Queue()
    with Registry(f"memory:{name}") as registry:
        lock = registry.lock("job", ttl=1, on_lost=lost.put)
        token = lock.acquire()
        assert lock.check() == token
        store.expire_lock("job")
        error = wait_for(lost, "the loss")
        assert isinstance(error, confhub.LockLostError)
        assert not lock.held
        with pytest.raises(confhub.LockLostError):
            lock.check()


def test_lock_stops_claiming_before_the_store_can_expire_it(name: str) -> None:
    """With the store down, the holder gives the lock up before the store's TTL runs out."""
    store = memory_registry_store(name)
    seen_by_store: queue.Queue[str | None] = queue.Queue()
    with Registry(f"memory:{name}") as registry:
        lock = registry.lock(
            "job",
            ttl=1,
            identity="holder",
            on_lost=lambda _: seen_by_store.put(store.holder("job")),
        )
        other = registry.lock("job", ttl=1, identity="other")
        lock.acquire()
        store.fail()
        # When the holder gives up, the store still counts it as the holder.
        assert wait_for(seen_by_store, "the holder giving up") == "holder"
        assert not lock.held
        store.recover()
        other.acquire(timeout=WAIT)
        assert other.held
        assert not lock.held


def test_async_iteration_yields_the_current_list_then_changes(name: str) -> None:
    """``async for`` yields the instances as added first, then each change."""

    async def main() -> list[list[int]]:
        with Registry(f"memory:{name}") as registry:
            registry.register("api", address="h", port=1)
            discovery = registry.discover("api")
            seen: list[list[int]] = []
            async for change in discovery:
                seen.append([i.port for i in change.added])
                if len(seen) == 1:
                    registry.register("api", address="h", port=2)
                else:
                    break
            return seen

    assert asyncio.run(asyncio.wait_for(main(), WAIT)) == [[1], [2]]


def test_bad_ids_statuses_and_addresses_are_refused(name: str) -> None:
    """Every argument is checked, the message naming it."""
    with Registry(f"memory:{name}") as registry:
        for kwargs, needle in [
            ({"address": "h", "port": 1, "instance_id": "a/b"}, "instance_id"),
            ({"address": "h", "port": 1, "status": "fine"}, "status"),
            ({"address": "", "port": 1}, "address="),
            ({"address": "h", "port": 70000}, "65535"),
            ({"address": "h", "port": 1, "meta": {"k": object()}}, "meta"),
            ({"address": "h", "port": 1, "checks": [confhub.CheckSpec("http", "x")]}, "checks"),
        ]:
            with pytest.raises(RegistryInputError, match=needle):
                registry.register("api", **kwargs)  # type: ignore[arg-type]
        with pytest.raises(RegistryInputError, match="under 1 s"):
            registry.lock("job", ttl=0)
        registration = registry.register("api", address="h", port=1)
        with pytest.raises(ValueError, match="status"):
            registration.set_status("great")


def test_close_on_signal_closes_then_exits() -> None:
    """The SIGTERM helper closes what it was given and exits with 143."""
    import signal

    closed: list[str] = []

    class Thing:
        def close(self) -> None:
            closed.append("closed")

    restore = confhub.close_on_signal(Thing())
    try:
        with pytest.raises(SystemExit) as exit_info:
            signal.raise_signal(signal.SIGTERM)
    finally:
        restore()
    assert closed == ["closed"]
    assert exit_info.value.code == 143


def test_opt_in_cache_serves_the_last_list_when_the_store_is_down_at_start(
    name: str, tmp_path: Path
) -> None:
    """With cache_path, a discovery started while the store is down serves the saved list,
    stale, and follows the store once it answers; without it, the start fails."""
    store = memory_registry_store(name)
    cache = tmp_path / "api.json"
    with Registry(f"memory:{name}") as registry:
        registry.register("api", address="h", port=1, instance_id="a", ttl=30)
        with registry.discover("api", cache_path=cache) as first:
            assert [i.instance_id for i in first.instances] == ["a"]
        store.fail()
        with pytest.raises(confhub.SourceUnavailableError):
            registry.discover("api")
        with registry.discover("api", cache_path=cache) as second:
            assert [i.instance_id for i in second.instances] == ["a"]
            assert second.health().stale
            store.recover()
            registry.register("api", address="h", port=2, instance_id="b", ttl=30)
            changes: queue.Queue[object] = queue.Queue()
            second.subscribe(changes.put)
            while [i.instance_id for i in second.instances] != ["a", "b"]:
                wait_for(changes, "the store's list")
            assert not second.health().stale


def test_opt_in_cache_older_than_max_staleness_is_not_served(name: str, tmp_path: Path) -> None:
    """A cached list older than max_staleness is refused: the start fails instead."""
    store = memory_registry_store(name)
    cache = tmp_path / "api.json"
    cache.write_text(
        json.dumps(
            {
                "service": "api",
                "saved_at": time.time() - 120,
                "instances": [{"id": "old", "address": "h", "port": 1}],
            }
        )
    )
    store.fail()
    try:
        with Registry(f"memory:{name}") as registry, pytest.raises(confhub.SourceUnavailableError):
            registry.discover("api", cache_path=cache, max_staleness=60)
    finally:
        store.recover()


def test_status_set_while_the_lease_is_lost_is_carried_by_the_reregistration(name: str) -> None:
    """set_status on a lost registration does not fail; the re-registration carries it."""
    store = memory_registry_store(name)
    with Registry(f"memory:{name}") as registry:
        states: queue.Queue[RegistrationState] = queue.Queue()
        registration = registry.register(
            "api", address="h", port=1, ttl=3, instance_id="a", on_state=states.put
        )
        store.expire("a")
        registration.set_status("warning")
        assert wait_for(states, "the loss") is RegistrationState.LOST
        assert wait_for(states, "the return") is RegistrationState.REREGISTERED
        (instance,) = registry.instances("api").instances
        assert instance.status == "warning"


def _register_in_child(registry: Registry, results: multiprocessing.Queue[object]) -> None:
    try:
        inherited = registry.instances("api").instances  # a new connection, on first use
        own = registry.register("api", address="h", port=2, ttl=3, instance_id="child")
        listed = sorted(i.instance_id for i in registry.instances("api").instances)
        results.put((len(inherited), str(own.state), listed))
        registry.close()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails
        results.put(repr(exc))


def test_a_forked_child_registers_its_own_instance_on_an_inherited_registry(name: str) -> None:
    """The worker's post_fork recipe: the inherited Registry makes a new connection in the
    child and registers the child's own instance there like any registration."""
    with Registry(f"memory:{name}") as registry:
        registry.register("api", address="h", port=1, ttl=3, instance_id="parent")
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        process = context.Process(target=_register_in_child, args=(registry, results))
        with warnings.catch_warnings():  # fork() of a threaded process: what we test
            warnings.simplefilter("ignore", DeprecationWarning)
            process.start()
        try:
            outcome = results.get(timeout=WAIT)
        finally:
            process.join(WAIT)
            if process.is_alive():
                process.kill()
                process.join(WAIT)
        assert outcome == (1, "registered", ["child", "parent"]), outcome
        assert process.exitcode == 0
        # The child's copy of the store is its own: the parent lists only its instance.
        assert [i.instance_id for i in registry.instances("api").instances] == ["parent"]


def test_random_pick_leaves_the_random_module_alone(name: str) -> None:
    """``pick("random")`` spreads over every instance without drawing from the ``random``
    module: an app that seeds it gets its own sequence."""
    import random

    with Registry(f"memory:{name}") as registry:
        for port in (1, 2, 3):
            registry.register("api", address="h", port=port, instance_id=f"i{port}")
        discovery = registry.discover("api")
        deadline = time.monotonic() + WAIT  # a hang guard
        while len(discovery.instances) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(discovery.instances) == 3
        random.seed(99)
        expected = [random.random() for _ in range(3)]
        random.seed(99)
        ports = {discovery.pick("random").port for _ in range(200)}
        assert [random.random() for _ in range(3)] == expected
    assert ports == {1, 2, 3}

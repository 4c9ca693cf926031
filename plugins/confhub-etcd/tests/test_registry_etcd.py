"""The etcd registry's own failure behaviour, with real processes killed with SIGKILL.

Bounds come from the store (the granted TTL of a lease, its expiry) and from the order of
events, never from a stopwatch.
"""

from __future__ import annotations

import itertools
import queue
import signal
import threading
import time
from collections.abc import Iterator

import confhub
import pluggy
import pytest
from confhub import BackendSettings, DiscoveryChange, Registry, SourceSpec
from registry_lib import WAIT, Child, lease_ttl, leases_of, wait_until

from confhub_etcd.testing import EtcdServer

FAST = BackendSettings(connect_timeout=1.0, retry_initial=0.05, retry_max=0.5)


@pytest.fixture
def spec(etcd: EtcdServer) -> str:
    return f"etcd://{etcd.endpoint}/services/"


@pytest.fixture
def registry(spec: str) -> Iterator[Registry]:
    with Registry(spec, settings=FAST) as reg:
        yield reg


def next_change(inbox: queue.Queue[DiscoveryChange], what: str) -> DiscoveryChange:
    try:
        return inbox.get(timeout=WAIT)
    except queue.Empty:
        raise AssertionError(f"gave up waiting for {what}") from None


def test_killed_process_disappears_when_its_lease_expires(
    etcd: EtcdServer, spec: str, registry: Registry
) -> None:
    """kill -9 of a registering process: its instance goes exactly when its TTL lease does."""
    child = Child("register", spec, "api", "2")
    try:
        instance_id = child.report()["instance_id"]
        (lease,) = leases_of(etcd, f"/api/{instance_id}")
        assert lease_ttl(etcd, lease)[1] == 2  # the store will drop it 2 s after the last refresh
        discovery = registry.discover("api")
        removed: queue.Queue[DiscoveryChange] = queue.Queue()
        discovery.subscribe(lambda change: removed.put(change) if change.removed else None)
        assert [i.instance_id for i in discovery.instances] == [instance_id]
        child.kill()
        assert lease_ttl(etcd, lease)[0] > 0  # still alive right after the kill
        change = next_change(removed, "the instance to disappear")
        assert [i.instance_id for i in change.removed] == [instance_id]
        assert lease_ttl(etcd, lease)[0] == -1  # gone because its lease expired
    finally:
        child.close()


def test_sigterm_helper_deregisters_before_the_process_exits(
    etcd: EtcdServer, spec: str, registry: Registry
) -> None:
    """SIGTERM with close_on_signal: the lease is revoked (not expired) and the process exits."""
    child = Child("register", spec, "api", "30", "sigterm")
    try:
        instance_id = child.report()["instance_id"]
        (lease,) = leases_of(etcd, f"/api/{instance_id}")
        child.process.send_signal(signal.SIGTERM)
        assert child.process.wait(WAIT) == 143
        assert registry.instances("api").instances == ()
        assert lease_ttl(etcd, lease)[0] == -1  # revoked: a 30 s lease cannot have expired
    finally:
        child.close()


def test_bad_records_are_skipped_and_reported(etcd: EtcdServer, registry: Registry) -> None:
    """Invalid JSON, a missing port and a nested key are skipped, each named; others served."""
    registry.register("api", address="127.0.0.1", port=1, instance_id="good")
    etcd.put("/services/api/not-json", "{")
    etcd.put("/services/api/no-port", '{"address": "h"}')
    etcd.put("/services/api/deep/key", '{"address": "h", "port": 2}')
    discovery = registry.discover("api")
    assert [i.instance_id for i in discovery.instances] == ["good"]
    by_key = {e.key: str(e) for e in discovery.skipped}
    assert set(by_key) == {
        "/services/api/not-json",
        "/services/api/no-port",
        "/services/api/deep/key",
    }
    assert "not valid JSON" in by_key["/services/api/not-json"]
    assert "port None" in by_key["/services/api/no-port"]
    assert "PREFIX/SERVICE/INSTANCE_ID" in by_key["/services/api/deep/key"]
    for key, message in by_key.items():
        assert repr(key) in message
        assert "delete" in message  # each names the fix
    health = discovery.health()
    assert len(health.skipped) == 3
    assert not health.stale


def test_discovery_converges_across_a_restart_and_a_compaction(etcd: EtcdServer, spec: str) -> None:
    """Changes and a compaction made while a discovery was cut off: it converges to the store."""
    slow = BackendSettings(connect_timeout=1.0, retry_initial=3.0, retry_max=3.0)
    with Registry(spec, settings=FAST) as writer, Registry(spec, settings=slow) as reader:
        old = writer.register("api", address="127.0.0.1", port=1, instance_id="old", ttl=30)
        discovery = reader.discover("api")
        assert [i.instance_id for i in discovery.instances] == ["old"]
        etcd.stop()
        wait_until(lambda: discovery.health().stale, "the discovery to go stale")
        etcd.start()
        # The discovery waits 3 s before reading again: change and compact meanwhile.
        writer.register("api", address="127.0.0.1", port=2, instance_id="new", ttl=30)
        old.close()
        etcd.compact()
        wait_until(
            lambda: [i.instance_id for i in discovery.instances] == ["new"],
            "the discovery to converge",
        )
        assert not discovery.health().stale


def test_wait_from_a_compacted_index_returns_the_current_listing(
    etcd: EtcdServer, spec: str
) -> None:
    """The backend's wait_instances from a compacted revision answers with a fresh read."""
    pm = pluggy.PluginManager("confhub")
    pm.add_hookspecs(confhub.hookspecs)
    pm.load_setuptools_entrypoints("confhub")
    backend = pm.hook.confhub_make_registry(spec=SourceSpec.parse(spec), settings=FAST)
    try:
        with Registry(spec, settings=FAST) as registry:
            registry.register("api", address="127.0.0.1", port=1, instance_id="a", ttl=30)
            first = backend.list_instances("api")
            registry.register("api", address="127.0.0.1", port=2, instance_id="b", ttl=30)
            etcd.compact()
            listing = backend.wait_instances("api", first.index, WAIT)
        assert listing.index > first.index
        assert sorted(i.instance_id for i in listing.instances) == ["a", "b"]
    finally:
        backend.close()


def test_lock_never_has_two_holders(registry: Registry) -> None:
    """Threads with locks of their own take turns: no overlap, tokens grow in order."""
    inside = threading.Lock()
    log: list[tuple[str, int]] = []
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        lock = registry.lock("critical", ttl=5, identity=name)
        try:
            for _ in range(4):
                token = lock.acquire(timeout=WAIT)
                if not inside.acquire(blocking=False):
                    errors.append(AssertionError(f"{name} entered while another was inside"))
                    return
                log.append((name, token))
                time.sleep(0.01)
                inside.release()
                lock.release()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    assert errors == []
    assert len(log) == 12
    tokens = [token for _, token in log]
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 12


def test_next_waiter_gets_the_lock_when_a_killed_holder_lease_expires(
    etcd: EtcdServer, spec: str, registry: Registry
) -> None:
    """kill -9 of the holder: the waiter holds the lock only once the holder's lease expired."""
    child = Child("lock", spec, "job", "2", "child")
    try:
        child_token = child.report()["token"]
        (child_lease,) = leases_of(etcd, "/_locks/job/", contains=True)
        lock = registry.lock("job", ttl=2, identity="parent")
        assert lock.holder() == ("child", child_token)
        child.kill()
        assert lease_ttl(etcd, child_lease)[0] > 0  # still held right after the kill
        token = lock.acquire(timeout=WAIT)
        assert lease_ttl(etcd, child_lease)[0] == -1  # handed over by the expiry
        assert token > child_token
        assert lock.holder() == ("parent", token)
    finally:
        child.close()


def test_election_has_at_most_one_leader_by_fencing_tokens(
    etcd: EtcdServer, spec: str, registry: Registry
) -> None:
    """A leader killed with SIGKILL is followed by one leader with a larger token, after the
    killed one's lease expired; leaderships never overlap."""
    child = Child("lead", spec, "leader", "2", "child")
    try:
        child_token = child.report()["token"]
        election = registry.election("leader", identity="parent", ttl=2)
        seen: queue.Queue[tuple[str, int] | None] = queue.Queue()
        election.subscribe(seen.put)
        assert seen.get(timeout=WAIT) == ("child", child_token)
        campaign = threading.Thread(target=election.campaign, kwargs={"timeout": WAIT})
        campaign.start()
        assert not election.is_leader
        child.kill()
        campaign.join(WAIT)
        assert election.is_leader
        reports = []
        while election.token not in [r[1] for r in reports if r]:
            reports.append(seen.get(timeout=WAIT))
        leaders = [r for r in reports if r is not None]
        assert leaders == [("parent", election.token)]
        assert election.token is not None and election.token > child_token
    finally:
        child.close()


def test_a_bad_record_written_while_watching_is_skipped_until_fixed(
    etcd: EtcdServer, registry: Registry
) -> None:
    """A record broken by a later write is reported and dropped; fixing it serves it again."""
    registry.register("api", address="127.0.0.1", port=1, instance_id="good")
    discovery = registry.discover("api")
    changes: queue.Queue[DiscoveryChange] = queue.Queue()
    discovery.subscribe(changes.put)
    etcd.put("/services/api/late", '{"address": "h", "port": 2}')
    assert [i.instance_id for i in next_change(changes, "the late one").added] == ["late"]
    etcd.put("/services/api/late", "][")
    assert [i.instance_id for i in next_change(changes, "the broken one").removed] == ["late"]
    assert [e.key for e in discovery.skipped] == ["/services/api/late"]
    etcd.put("/services/api/late", '{"address": "h", "port": 3}')
    assert [i.port for i in next_change(changes, "the fixed one").added] == [3]
    assert discovery.skipped == ()
    assert [i.instance_id for i in discovery.instances] == ["good", "late"]


def test_leaderships_never_overlap_and_tokens_order_them(registry: Registry) -> None:
    """Candidates that campaign and resign in turn lead one at a time, in token order."""
    terms: list[tuple[int, float, float, str]] = []
    errors: list[BaseException] = []
    guard = threading.Lock()

    def candidate(name: str) -> None:
        election = registry.election("rotation", identity=name, ttl=5)
        try:
            for _ in range(3):
                token = election.campaign(timeout=WAIT)
                start = time.monotonic()
                time.sleep(0.01)
                if not election.is_leader or election.leader() != (name, token):
                    errors.append(AssertionError(f"{name} lost the lead it holds"))
                end = time.monotonic()
                with guard:
                    terms.append((token, start, end, name))
                election.resign()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=candidate, args=(f"c{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    assert errors == []
    terms.sort()
    assert len(terms) == 9
    for (_, _, end, _), (_, start, _, _) in itertools.pairwise(terms):
        assert end <= start  # the next leader (larger token) began after the last one ended


def test_holder_cut_off_gives_up_before_another_can_hold(etcd: EtcdServer, spec: str) -> None:
    """etcd stops: the holder gives the lock up (on_lost) while etcd is still down, so before
    etcd can hand it to anyone; once etcd is back, the waiter holds it."""
    store_running_at_loss: list[bool] = []
    lost = threading.Event()

    def on_lost(error: confhub.LockLostError) -> None:
        store_running_at_loss.append(etcd.members[0].running)
        lost.set()

    with Registry(spec, settings=FAST) as holder_side, Registry(spec, settings=FAST) as other:
        holder = holder_side.lock("job", ttl=2, identity="holder", on_lost=on_lost)
        holder.acquire()
        etcd.stop()
        try:
            assert lost.wait(WAIT)
            assert not holder.held
        finally:
            etcd.start()
        assert store_running_at_loss == [False]
        waiter = other.lock("job", ttl=2, identity="waiter")
        # The shared gRPC channel may still be in its reconnect backoff just after the
        # restart: a call then fails at once (SourceUnavailableError) until it reconnects.
        deadline = time.monotonic() + WAIT
        while True:
            try:
                token = waiter.acquire(timeout=WAIT)
                break
            except confhub.SourceUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert waiter.holder() == ("waiter", token)

"""The service registry on Consul: :class:`confhub.Registry` with ``consul://`` specs against
the in-repo test server (real HTTP, real processes for ``kill -9``).

The test server runs with short registry floors so that these tests take seconds, and says
so: ``DeregisterCriticalServiceAfter`` >= 0.5 s reaped every 0.2 s (Consul: 1 min, 30 s) and
session TTLs from 1 s (Consul: 10 s). Bounds are orders and counts; every wait is capped so a
failure cannot hang.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import confhub
import pytest
import requests
from confhub import (
    CheckSpec,
    LockTimeoutError,
    RegistrationState,
    Registry,
    RegistryInputError,
    SourceFormatError,
    SourcePermissionError,
    SourceUnavailableError,
    SpecError,
)

from confhub_consul.testing import AclToken, ConsulTestServer

DEFAULT_WAIT = 30.0  # how long the core's discovery asks one blocking query to wait

CAP = 30.0  # the longest any wait in these tests may take before it fails


def wait_until(fn: Callable[[], bool], timeout: float = CAP) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture
def server() -> Iterator[ConsulTestServer]:
    with ConsulTestServer(
        dcsa_min=0.5, check_reap_interval=0.2, session_ttl_min=1, default_query_time=5
    ) as srv:
        yield srv


@pytest.fixture
def spec(server: ConsulTestServer) -> str:
    return f"consul://{server.address}/app/?deregister_after=0.5"


@pytest.fixture
def registry(spec: str) -> Iterator[Registry]:
    with Registry(spec) as reg:
        yield reg


class Child:
    """A Python child process running ``code`` (argv after it); killed at teardown."""

    def __init__(self, code: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def line(self) -> str:
        """The child's next output line (it prints when ready); bounded by CAP."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], CAP)
        assert ready, "the child printed nothing"
        line = self.proc.stdout.readline()
        assert line, "the child ended without printing"
        return line.strip()

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=CAP)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=CAP)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    made: list[Child] = []
    yield made
    for child in made:
        child.close()


_REGISTER_CHILD = """
import sys, time, confhub
reg = confhub.Registry(sys.argv[1])
reg.register("orders", address="127.0.0.1", port=9000, ttl=float(sys.argv[3]),
             instance_id=sys.argv[2])
print("ready", flush=True)
time.sleep(600)
"""

_LOCK_CHILD = """
import sys, time, confhub
reg = confhub.Registry(sys.argv[1])
lock = reg.lock("job", ttl=float(sys.argv[2]), identity="child")
print(lock.acquire(timeout=20), flush=True)
time.sleep(600)
"""


# ------------------------------------------------------------------------- registration


def test_register_discover_pick(registry: Registry, server: ConsulTestServer) -> None:
    """Registered instances are listed (address, port, meta), discovered and picked round
    robin; graceful close removes an instance from the agent at once."""
    one = registry.register(
        "orders", address="127.0.0.1", port=8001, meta={"zone": "a"}, instance_id="o-1"
    )
    two = registry.register("orders", address="127.0.0.1", port=8002, instance_id="o-2")
    assert server.service_ids() == ["o-1", "o-2"]
    assert server.check_status("service:o-1") == "passing"
    listing = registry.instances("orders")
    assert [(i.instance_id, i.port, dict(i.meta)) for i in listing.instances] == [
        ("o-1", 8001, {"zone": "a"}),
        ("o-2", 8002, {}),
    ]
    assert registry.services() == ("orders",)
    with registry.discover("orders") as found:
        assert [i.instance_id for i in found.instances] == ["o-1", "o-2"]
        picks = [found.pick().instance_id for _ in range(4)]
        assert sorted(picks[:2]) == ["o-1", "o-2"]
        assert picks[:2] == picks[2:]
        two.close()
        assert server.service_ids() == ["o-1"]  # gone from the agent before close returns
        wait_until(lambda: [i.instance_id for i in found.instances] == ["o-1"])
    one.close()
    assert one.state == RegistrationState.CLOSED


def test_status_reaches_consul_and_discovery(registry: Registry, server: ConsulTestServer) -> None:
    """set_status moves the TTL check; a warning instance leaves the passing list, and a
    keepalive keeps pushing the status set (not ``passing``)."""
    # ttl=3: keepalives every second, and a slow machine's pauses stay under the TTL.
    reg = registry.register("orders", address="127.0.0.1", port=8001, ttl=3, instance_id="o-1")
    with (
        registry.discover("orders") as found,
        registry.discover("orders", passing_only=False) as every,
    ):
        reg.set_status("warning")
        assert server.check_status("service:o-1") == "warning"
        wait_until(lambda: found.instances == ())
        wait_until(lambda: [i.status for i in every.instances] == ["warning"])
        keepalives = reg.keepalives
        wait_until(lambda: reg.keepalives >= keepalives + 2)
        assert server.check_status("service:o-1") == "warning"
        reg.set_status("passing")
        wait_until(lambda: len(found.instances) == 1)


def test_http_and_tcp_checks_pass_through(registry: Registry, server: ConsulTestServer) -> None:
    """CheckSpecs become agent checks next to the TTL check; a failing TCP check makes the
    instance critical although its keepalives go on."""
    with ConsulTestServer() as other:  # something listening on loopback for the TCP check
        alive = CheckSpec("tcp", other.address, interval=0.2, timeout=1)
        reg = registry.register(
            "orders", address="127.0.0.1", port=1, instance_id="o-1", checks=[alive]
        )
        wait_until(lambda: server.check_status("service:o-1:tcp1") == "passing")
        assert registry.instances("orders").instances[0].status == "passing"
    wait_until(lambda: server.check_status("service:o-1:tcp1") == "critical")
    assert registry.instances("orders").instances[0].status == "critical"
    assert server.check_status("service:o-1") == "passing"
    reg.close()


def test_bad_check_kind_is_refused(registry: Registry) -> None:
    """A check kind Consul is not asked to run is a RegistryInputError naming the fix."""
    with pytest.raises(RegistryInputError, match="use 'http' or 'tcp'"):
        registry.register("orders", address="127.0.0.1", port=1, checks=[CheckSpec("grpc", "x")])


def test_kill9_disappears_after_ttl_and_reaping(
    server: ConsulTestServer, registry: Registry, children: list[Child]
) -> None:
    """A registering process killed -9 first leaves the passing list (its TTL check
    expired: still registered, critical), then is reaped from the agent
    (``deregister_after=2``; conformance #64 pins the check's timing)."""
    spec = f"consul://{server.address}/app/?deregister_after=2"
    child = Child(_REGISTER_CHILD, spec, "o-kill", "1.5")
    children.append(child)
    assert child.line() == "ready"
    with (
        registry.discover("orders") as found,
        registry.discover("orders", passing_only=False) as every,
    ):
        assert [i.instance_id for i in found.instances] == ["o-kill"]
        child.kill9()
        wait_until(lambda: found.instances == ())
        wait_until(lambda: [i.status for i in every.instances] in ([], ["critical"]))
        assert [i.status for i in every.instances] == ["critical"]  # not reaped yet
        assert server.service_ids() == ["o-kill"]
        wait_until(lambda: server.service_ids() == [])
        wait_until(lambda: every.instances == ())
        assert registry.instances("orders").instances == ()


def test_lost_registration_comes_back(registry: Registry, server: ConsulTestServer) -> None:
    """When the agent forgets the instance (reaped during an outage longer than TTL +
    DeregisterCriticalServiceAfter), the registration says lost and registers again as soon
    as Consul answers."""
    states: list[RegistrationState] = []
    reg = registry.register(
        "orders", address="127.0.0.1", port=1, ttl=1, instance_id="o-1", on_state=states.append
    )
    outage = server.drop_connections(times=None, path_prefix="/v1/agent/")
    wait_until(lambda: server.service_ids() == [])  # critical after 1 s, reaped 0.5 s later
    outage.clear()
    wait_until(lambda: reg.state == RegistrationState.REREGISTERED)
    assert server.service_ids() == ["o-1"]
    assert server.check_status("service:o-1") == "passing"
    assert states.index(RegistrationState.LOST) < states.index(RegistrationState.REREGISTERED)


def test_short_outage_keeps_registration(registry: Registry, server: ConsulTestServer) -> None:
    """An outage shorter than the TTL leaves the instance registered and passing."""
    reg = registry.register("orders", address="127.0.0.1", port=1, ttl=3, instance_id="o-1")
    before = reg.keepalives
    outage = server.drop_connections(times=2, path_prefix="/v1/agent/check/")
    wait_until(lambda: outage.remaining == 0)
    wait_until(lambda: reg.keepalives > before)
    assert reg.state == RegistrationState.REGISTERED
    assert server.check_status("service:o-1") == "passing"


# ------------------------------------------------------------------------------ discovery


def test_bad_record_is_skipped_and_reported(registry: Registry, server: ConsulTestServer) -> None:
    """A service record with no port (registered by someone else) is skipped and reported
    naming its ID and the fix; the good instances are still served."""
    registry.register("orders", address="127.0.0.1", port=8001, instance_id="o-1")
    body = {"Name": "orders", "ID": "portless", "Check": {"TTL": "30s", "Status": "passing"}}
    requests.put(f"{server.url}/v1/agent/service/register", data=json.dumps(body), timeout=10)
    listing = registry.instances("orders")
    assert [i.instance_id for i in listing.instances] == ["o-1"]
    assert len(listing.skipped) == 1
    error = listing.skipped[0]
    assert isinstance(error, SourceFormatError)
    assert error.key == "portless"
    assert "register it with a Port" in str(error)
    with registry.discover("orders") as found:
        assert [i.instance_id for i in found.instances] == ["o-1"]
        assert any("portless" in s for s in found.health().skipped)


def test_discovery_follows_an_index_reset(registry: Registry, server: ConsulTestServer) -> None:
    """After a snapshot restore lowers every index, discovery still sees the next change."""
    registry.register("orders", address="127.0.0.1", port=8001, instance_id="o-1")
    with registry.discover("orders") as found:
        server.wait_for_blocked(1, timeout=CAP)
        server.reset_index(1)
        registry.register("orders", address="127.0.0.1", port=8002, instance_id="o-2")
        wait_until(lambda: len(found.instances) == 2)


def test_discovery_stale_while_consul_is_down(registry: Registry, server: ConsulTestServer) -> None:
    """While health reads fail, discovery keeps the last list and says it is stale."""
    registry.register("orders", address="127.0.0.1", port=8001, instance_id="o-1")
    with registry.discover("orders") as found:
        server.wait_for_blocked(1, timeout=CAP)
        fault = server.inject_status(500, times=None, path_prefix="/v1/health/")
        server.reset_index(1)  # wake the parked query so it meets the fault
        wait_until(lambda: found.health().stale)
        assert [i.instance_id for i in found.instances] == ["o-1"]
        fault.clear()
        wait_until(lambda: not found.health().stale)


def test_wait_instances_returns_on_close(spec: str, server: ConsulTestServer) -> None:
    """Closing a discovery wakes its parked blocking query at once: close returns long
    before the query's wait (30 s) would have ended."""
    with Registry(spec) as reg:
        found = reg.discover("orders")
        server.wait_for_blocked(1, timeout=CAP)
        query = server.requests[-1]
        assert "wait=" in query.query
        started = time.monotonic()
        found.close()
        assert time.monotonic() - started < DEFAULT_WAIT / 2


# ------------------------------------------------------------------------ locks, election


def test_lock_handover_after_release(spec: str, server: ConsulTestServer) -> None:
    """A waiter gets the lock once the holder releases, with a higher fencing token; never
    two holders."""
    with Registry(spec) as a, Registry(spec) as b:
        first = a.lock("job", ttl=2, identity="a")
        token_a = first.acquire(timeout=5)
        second = b.lock("job", ttl=2, identity="b")
        got: list[int] = []
        waiter = threading.Thread(target=lambda: got.append(second.acquire(timeout=CAP)))
        waiter.start()
        wait_until(lambda: server.blocked_queries >= 1)
        assert first.holder() == ("a", token_a)
        assert not got
        first.release()
        waiter.join(CAP)
        assert got
        assert got[0] > token_a
        assert second.holder() == ("b", got[0])
        second.release()


def test_lock_handover_after_holder_killed(
    spec: str, registry: Registry, children: list[Child]
) -> None:
    """After the holding process is killed -9, its session expires and the waiter parked in
    acquire() gets the lock with a higher token, and keeps it."""
    child = Child(_LOCK_CHILD, spec, "1")
    children.append(child)
    token_child = int(child.line())
    lock = registry.lock("job", ttl=3, identity="parent")
    assert lock.holder() == ("child", token_child)
    with pytest.raises(LockTimeoutError):
        lock.acquire(timeout=0.3)
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(lock.acquire(timeout=CAP)))
    waiter.start()
    child.kill9()
    waiter.join(CAP)
    assert got, "the waiter never got the lock"
    assert got[0] > token_child
    assert lock.holder() == ("parent", got[0])
    assert lock.held
    lock.release()


def test_election_one_leader_with_rising_tokens(spec: str) -> None:
    """Two candidates: one leads, the other takes over after a resign with a higher fencing
    token; at no sampled moment do both lead."""
    with Registry(spec) as a, Registry(spec) as b:
        ea, eb = (
            a.election("leader", identity="a", ttl=2),
            b.election("leader", identity="b", ttl=2),
        )
        token_a = ea.campaign(timeout=5)
        assert ea.is_leader
        got: list[int] = []
        runner = threading.Thread(target=lambda: got.append(eb.campaign(timeout=CAP)))
        runner.start()
        both = False
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            both = both or (ea.is_leader and eb.is_leader)
            time.sleep(0.01)
        assert eb.leader() == ("a", token_a)
        ea.resign()
        runner.join(CAP)
        assert not both
        assert got
        assert got[0] > token_a
        assert eb.is_leader
        assert not ea.is_leader
        wait_until(lambda: ea.leader() == ("b", got[0]))
        eb.resign()


# ------------------------------------------------------------------------------- the spec


def test_registry_spec_errors(server: ConsulTestServer) -> None:
    """A document spec and bad registry options are SpecErrors naming the fix."""
    with pytest.raises(SpecError, match="drop format="):
        Registry(f"consul://{server.address}/app/x.json?format=json")
    with pytest.raises(SpecError, match="deregister_after"):
        Registry(f"consul://{server.address}/?deregister_after=0")


def test_unreachable_agent_is_source_unavailable(server: ConsulTestServer) -> None:
    """An agent that does not answer gives SourceUnavailableError naming the address."""
    with Registry(f"consul://{server.address}/?timeout=1") as reg:
        server.drop_connections(times=None)
        with pytest.raises(SourceUnavailableError, match=server.address):
            reg.instances("orders")
    assert confhub.SourceUnavailableError is SourceUnavailableError


def test_stale_discovery_works_without_a_leader(server: ConsulTestServer) -> None:
    """With ``consistency=stale`` discovery reads any server: without a leader it still
    follows registrations (agent-local, so they work too); the default mode goes stale."""
    with (
        Registry(f"consul://{server.address}/?consistency=stale") as stale_reg,
        Registry(f"consul://{server.address}/") as default_reg,
    ):
        stale_reg.register("orders", address="127.0.0.1", port=1, instance_id="o-1")
        stale, default = stale_reg.discover("orders"), default_reg.discover("orders")
        server.wait_for_blocked(2, timeout=CAP)
        server.set_leader(False)
        server.reset_index(1)  # wake the parked queries: they run again without a leader
        stale_reg.register("orders", address="127.0.0.1", port=2, instance_id="o-2")
        wait_until(lambda: len(stale.instances) == 2)
        wait_until(lambda: default.health().stale)
        assert not stale.health().stale
        assert "No cluster leader" in (default.health().error or "")


def test_lock_taken_away_by_hand_is_lost(registry: Registry, server: ConsulTestServer) -> None:
    """When an operator deletes the lock key, the holder's next keepalive finds it gone: the
    lock is lost (on_lost is called) and its session destroyed."""
    lost: list[Exception] = []
    lock = registry.lock("job", ttl=3, identity="me", on_lost=lost.append)
    lock.acquire(timeout=5)
    assert [s.name for s in server.sessions()] == ["confhub lock app/_locks/job (me)"]
    server.delete("app/_locks/job")
    wait_until(lambda: bool(lost))
    assert not lock.held
    assert "was lost" in str(lost[0])
    wait_until(lambda: server.sessions() == [])


def test_acl_token_is_sent_and_refusals_name_the_rules() -> None:
    """The spec's token reaches every call: a token with service:write registers; one with
    read only gets SourcePermissionError naming the rules it needs."""
    tokens = [
        AclToken(secret_id="writer", service="write"),
        AclToken(secret_id="reader", service="read"),
    ]
    with ConsulTestServer(acl_enabled=True, acl_default_policy="deny", tokens=tokens) as srv:
        with (
            Registry(f"consul://{srv.address}/?token=writer") as writer,
            Registry(f"consul://{srv.address}/?token=reader") as reader,
        ):
            writer.register("orders", address="127.0.0.1", port=1, instance_id="o-1")
            assert srv.service_ids() == ["o-1"]
            assert [i.instance_id for i in reader.instances("orders").instances] == ["o-1"]
            with pytest.raises(SourcePermissionError, match="service:write"):
                reader.register("orders", address="127.0.0.1", port=2, instance_id="o-2")
        with (
            Registry(f"consul://{srv.address}/") as anonymous,
            pytest.raises(SourcePermissionError),
        ):
            anonymous.register("orders", address="127.0.0.1", port=3)

"""The test server's own registry-side API: partition(), run_timers(), service_ids(),
check_status() and the ``service`` ACL rule (real Consul has none of these hooks)."""

from __future__ import annotations

import threading

import pytest
import requests
from conftest import make_double

from confhub_consul.testing import AclToken, ConsulTestServer, ManualClock

pytestmark = pytest.mark.double_only

_TTL = {"Name": "web", "ID": "web-1", "Check": {"TTL": "10s", "Status": "passing"}}


def test_partition_cuts_parked_queries_and_drops_requests(double: ConsulTestServer) -> None:
    """A parked blocking query sees its connection cut, new requests get no answer, and
    clearing the fault serves the same state again."""
    double.put("k", "v")
    index = double.get("k").modify_index  # type: ignore[union-attr]
    errors: list[BaseException] = []

    def park() -> None:
        try:
            requests.get(
                f"{double.url}/v1/kv/k", params={"index": index, "wait": "30s"}, timeout=30
            )
        except requests.RequestException as exc:
            errors.append(exc)

    waiter = threading.Thread(target=park)
    waiter.start()
    double.wait_for_blocked(1)
    fault = double.partition()
    waiter.join(10)
    assert not waiter.is_alive()
    assert len(errors) == 1
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{double.url}/v1/kv/k", timeout=5)
    fault.clear()
    assert requests.get(f"{double.url}/v1/kv/k", timeout=5).status_code == 200


def test_run_timers_service_ids_and_check_status() -> None:
    """With a manual clock, run_timers() expires TTL checks and reaps at once; service_ids()
    and check_status() read the agent's state directly."""
    clock = ManualClock()
    with make_double(clock=clock, dcsa_min=1, check_reap_interval=1) as server:
        body = {**_TTL, "Check": {**_TTL["Check"], "DeregisterCriticalServiceAfter": "1s"}}  # type: ignore[dict-item]
        requests.put(f"{server.url}/v1/agent/service/register", json=body, timeout=5)
        assert server.service_ids() == ["web-1"]
        assert server.check_status("service:web-1") == "passing"
        assert server.check_status("nope") is None
        clock.advance(10)
        server.run_timers()
        assert server.check_status("service:web-1") == "critical"
        clock.advance(2)
        server.run_timers()
        assert server.service_ids() == []


def test_service_acl_rule() -> None:
    """Registration needs service:write and health reads service:read under default deny."""
    reader = AclToken(secret_id="reader", service="read")
    writer = AclToken(secret_id="writer", service="write")
    with make_double(acl_enabled=True, acl_default_policy="deny", tokens=[reader, writer]) as srv:
        url = f"{srv.url}/v1/agent/service/register"
        denied = requests.put(url, json=_TTL, headers={"X-Consul-Token": "reader"}, timeout=5)
        assert denied.status_code == 403
        assert denied.text.startswith("Permission denied")
        assert requests.put(url, json=_TTL, headers={"X-Consul-Token": "writer"}, timeout=5).ok
        health = f"{srv.url}/v1/health/service/web"
        assert (
            len(requests.get(health, headers={"X-Consul-Token": "reader"}, timeout=5).json()) == 1
        )
        assert requests.get(health, timeout=5).json() == []  # anonymous: filtered out


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('Service.Meta.zone == "a"', ["a1"]),
        ('Service.Meta.zone != "a"', ["b1", "none"]),
        ('"v2" in Service.Tags', ["b1"]),
        ('"v2" not in Service.Tags', ["a1", "none"]),
        ("Service.Tags is empty", ["none"]),
        ("Service.Tags is not empty", ["a1", "b1"]),
        ('Service.ID contains "1"', ["a1", "b1"]),
        ('Service.ID matches "^[ab]"', ["a1", "b1"]),
        ('Service.ID not matches "^a"', ["b1", "none"]),
        ('not (Service.Meta.zone == "a") and Service.Port == 2', ["b1"]),
        ('Service.ID == "a1" or Service.ID == `none`', ["a1", "none"]),
        ('Checks.Status == "critical"', ["none"]),
    ],
)
def test_health_filter_expressions(
    double: ConsulTestServer, expr: str, expected: list[str]
) -> None:
    """The ?filter subset: comparisons, membership, emptiness, regexes, boolean logic."""
    services = [
        {"Name": "f", "ID": "a1", "Port": 1, "Tags": ["v1"], "Meta": {"zone": "a"},
         "Check": {"TTL": "30s", "Status": "passing"}},
        {"Name": "f", "ID": "b1", "Port": 2, "Tags": ["v1", "v2"], "Meta": {"zone": "b"},
         "Check": {"TTL": "30s", "Status": "passing"}},
        {"Name": "f", "ID": "none", "Port": 3, "Check": {"TTL": "30s"}},
    ]  # fmt: skip
    for body in services:
        requests.put(f"{double.url}/v1/agent/service/register", json=body, timeout=5)
    resp = requests.get(f"{double.url}/v1/health/service/f", params={"filter": expr}, timeout=5)
    assert resp.status_code == 200, resp.text
    assert sorted(e["Service"]["ID"] for e in resp.json()) == expected


@pytest.mark.parametrize(
    "expr", ["Service.ID ==", "Bogus.ID == x", '(Service.ID == "a"', "Service.ID ~ 1", '"x" in']
)
def test_health_filter_errors(double: ConsulTestServer, expr: str) -> None:
    """A malformed filter, or one naming an unknown selector, is 400."""
    resp = requests.get(f"{double.url}/v1/health/service/f", params={"filter": expr}, timeout=5)
    assert resp.status_code == 400
    assert resp.text.startswith("Failed to create boolean expression evaluator")

"""Conformance tests of the registry part of the test server: items 56-81 of
``shared/consul-api.md`` section 4 (agent services, checks, health, catalog, sessions in
depth).

As in ``test_conformance.py``: tests taking ``target`` run against the test server and, when
a ``consul`` binary is on PATH, a real ``consul agent -dev``; tests marked ``double_only``
use the test server's knobs (a short ``DeregisterCriticalServiceAfter`` floor and reap
period, a short session TTL floor, an injectable clock) or its fault injection. Each
docstring names its checklist item as ``[#N]``. Service names are fresh per test (``K``),
so a shared real agent is never confused by an earlier test.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import consul
import consul.exceptions
import pytest
import requests
from confhub.testing import free_ports
from conftest import MAX_QUERY_TIME, Target, make_double
from consul import Check
from test_conformance import Call, idx, settle

from confhub_consul.testing import ConsulTestServer, ManualClock


def register(target: Target, body: dict[str, Any], **params: Any) -> requests.Response:
    return target.http("PUT", "/v1/agent/service/register", json_body=body, params=params or None)


def health(target: Target, svc: str, **params: Any) -> requests.Response:
    resp = target.http("GET", f"/v1/health/service/{svc}", params=params or None)
    assert resp.status_code == 200, resp.text
    return resp


def ids(resp: requests.Response) -> list[str]:
    return sorted(e["Service"]["ID"] for e in resp.json())


def check_of(target: Target, check_id: str) -> dict[str, Any] | None:
    checks: dict[str, Any] = target.http("GET", "/v1/agent/checks").json()
    return checks.get(check_id)


def wait_until(fn: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def session(target: Target, **body: Any) -> str:
    resp = target.http("PUT", "/v1/session/create", json_body=body)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["ID"])


@pytest.fixture
def svc(K: str) -> str:
    return f"svc-{K}"


@pytest.fixture
def fast() -> Iterator[ConsulTestServer]:
    """A test server with short registry floors: DCSA >= 0.5 s reaped every 0.2 s, session
    TTLs from 1 s (real Consul: 1 min, 30 s, 10 s)."""
    with make_double(dcsa_min=0.5, check_reap_interval=0.2, session_ttl_min=1) as server:
        yield server


@pytest.fixture
def ftarget(fast: ConsulTestServer) -> Iterator[Target]:
    tgt = Target("double", fast.host, fast.port, fast)
    try:
        yield tgt
    finally:
        tgt.close()


class _StatusServer(http.server.ThreadingHTTPServer):
    """A loopback HTTP server answering every GET with ``status``."""

    daemon_threads = True
    status = 200


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    server: _StatusServer

    def do_GET(self) -> None:
        body = b"ok"
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass


@pytest.fixture
def status_server() -> Iterator[_StatusServer]:
    server = _StatusServer(("127.0.0.1", 0), _StatusHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# ------------------------------------------------------------ agent service registration


def test_56_register_and_agent_services(target: Target, svc: str) -> None:
    """[#56] Register returns 200 empty; /v1/agent/services shows the definition; ID defaults
    to Name; lower-case and snake_case keys are accepted."""
    body = {
        "Name": svc,
        "ID": f"{svc}-1",
        "Address": "127.0.0.1",
        "Port": 8080,
        "Meta": {"v": "1"},
        "Tags": ["a", "b"],
        "Check": {"TTL": "10s"},
    }
    resp = register(target, body)
    assert resp.status_code == 200
    assert resp.content == b""
    services = target.http("GET", "/v1/agent/services").json()
    got = services[f"{svc}-1"]
    assert got["Service"] == svc
    assert got["Port"] == 8080
    assert got["Meta"] == {"v": "1"}
    assert got["Tags"] == ["a", "b"]
    assert got["Weights"] == {"Passing": 1, "Warning": 1}
    lower = {
        "name": f"{svc}x",
        "port": 1,
        "check": {"ttl": "10s", "deregister_critical_service_after": "1m"},
    }
    assert register(target, lower).status_code == 200
    assert f"{svc}x" in target.http("GET", "/v1/agent/services").json()


@pytest.mark.parametrize(
    "body",
    [
        {"Port": 1},
        {"Name": "N", "Check": {"TTL": "10s", "Interval": "10s"}},
        {"Name": "N", "Check": {"HTTP": "http://127.0.0.1:1/"}},
        {"Name": "N", "Check": {"TTL": "10s", "Status": "bogus"}},
        {"Name": "N", "Check": {"Notes": "no kind"}},
    ],
    ids=["no-name", "ttl-and-interval", "http-no-interval", "bad-status", "no-kind"],
)
def test_57_register_validation(target: Target, svc: str, body: dict[str, Any]) -> None:
    """[#57] Invalid registrations are 400 and register nothing."""
    if body.get("Name") == "N":
        body = {**body, "Name": svc}
    resp = register(target, body)
    assert resp.status_code == 400, resp.text
    if "Name" not in body:
        assert resp.text.startswith("Missing service name")
    assert svc not in {
        s["Service"] for s in target.http("GET", "/v1/agent/services").json().values()
    }


def test_58_check_ids_and_names(target: Target, svc: str) -> None:
    """[#58] One check is ``service:<id>``; several are ``service:<id>:<n>``; explicit IDs
    are kept; the default name is ``Service '<name>' check``."""
    register(target, {"Name": svc, "ID": f"{svc}-a", "Checks": [{"TTL": "10s"}]})
    one = check_of(target, f"service:{svc}-a")
    assert one is not None
    assert one["Name"] == f"Service '{svc}' check"
    register(
        target,
        {"Name": svc, "ID": f"{svc}-b", "Check": {"TTL": "10s"}, "Checks": [{"TTL": "10s"}]},
    )
    assert check_of(target, f"service:{svc}-b:1") is not None
    assert check_of(target, f"service:{svc}-b:2") is not None
    register(
        target, {"Name": svc, "ID": f"{svc}-c", "Check": {"CheckID": f"{svc}-own", "TTL": "10s"}}
    )
    assert check_of(target, f"{svc}-own") is not None


def test_59_initial_status(target: Target, svc: str) -> None:
    """[#59] A TTL check starts critical (out of ?passing) unless Status says passing."""
    register(target, {"Name": svc, "ID": f"{svc}-1", "Port": 1, "Check": {"TTL": "10s"}})
    register(
        target,
        {"Name": svc, "ID": f"{svc}-2", "Port": 2, "Check": {"TTL": "10s", "Status": "passing"}},
    )
    assert ids(health(target, svc, passing="")) == [f"{svc}-2"]
    assert ids(health(target, svc)) == [f"{svc}-1", f"{svc}-2"]


def test_59_http_and_tcp_checks(target: Target, svc: str, status_server: _StatusServer) -> None:
    """[#59] HTTP checks: 2xx passing, 429 warning, 500 critical; TCP: connect passing,
    refusal critical (loopback targets)."""
    url = f"http://127.0.0.1:{status_server.server_address[1]}/health"
    register(target, {"Name": svc, "ID": f"{svc}-h", "Check": {"HTTP": url, "Interval": "1s"}})
    cid = f"service:{svc}-h"
    for code, status in ((200, "passing"), (429, "warning"), (500, "critical")):
        status_server.status = code
        wait_until(lambda s=status: (check_of(target, cid) or {}).get("Status") == s)  # type: ignore[misc]
    tcp_ok = f"127.0.0.1:{status_server.server_address[1]}"
    register(target, {"Name": svc, "ID": f"{svc}-t", "Check": {"TCP": tcp_ok, "Interval": "1s"}})
    wait_until(lambda: (check_of(target, f"service:{svc}-t") or {}).get("Status") == "passing")
    refused = f"127.0.0.1:{free_ports()[0]}"
    register(target, {"Name": svc, "ID": f"{svc}-r", "Check": {"TCP": refused, "Interval": "1s"}})
    wait_until(lambda: (check_of(target, f"service:{svc}-r") or {}).get("Output", "") != "")
    assert (check_of(target, f"service:{svc}-r") or {}).get("Status") == "critical"


def test_60_reregister_in_place(target: Target, svc: str) -> None:
    """[#60] Re-registering updates in place; a check keeps its status; a check left out
    survives unless ?replace-existing-checks."""
    sid, a, b = f"{svc}-1", f"{svc}-a", f"{svc}-b"
    register(target, {"Name": svc, "ID": sid, "Port": 1, "Checks": [
        {"CheckID": a, "TTL": "10s"}, {"CheckID": b, "TTL": "10s"}]})  # fmt: skip
    assert (
        target.http("PUT", f"/v1/agent/check/pass/{a}", params={"note": "fine"}).status_code == 200
    )
    register(target, {"Name": svc, "ID": sid, "Address": "127.0.0.9", "Port": 2, "Checks": [
        {"CheckID": a, "TTL": "10s", "Status": "critical"}]})  # fmt: skip
    got = target.http("GET", "/v1/agent/services").json()[sid]
    assert (got["Address"], got["Port"]) == ("127.0.0.9", 2)
    kept = check_of(target, a)
    assert kept is not None
    assert (kept["Status"], kept["Output"]) == ("passing", "fine")
    assert check_of(target, b) is not None
    register(
        target,
        {"Name": svc, "ID": sid, "Port": 2, "Checks": [{"CheckID": a, "TTL": "10s"}]},
        **{"replace-existing-checks": "true"},
    )
    assert check_of(target, b) is None
    assert check_of(target, a) is not None


def test_61_deregister(target: Target, svc: str) -> None:
    """[#61] Deregister removes the instance and its checks everywhere; unknown ID is 404."""
    sid = f"{svc}-1"
    register(target, {"Name": svc, "ID": sid, "Port": 1, "Check": {"TTL": "10s"}})
    resp = target.http("PUT", f"/v1/agent/service/deregister/{sid}")
    assert resp.status_code == 200
    assert sid not in target.http("GET", "/v1/agent/services").json()
    assert check_of(target, f"service:{sid}") is None
    assert health(target, svc).json() == []
    assert target.http("GET", f"/v1/catalog/service/{svc}").json() == []
    again = target.http("PUT", f"/v1/agent/service/deregister/{sid}")
    assert again.status_code == 404
    assert again.text.startswith('Unknown service ID "')


# ------------------------------------------------------------------------------ TTL checks


def test_62_ttl_updates(target: Target, svc: str) -> None:
    """[#62] pass/warn/fail set status and note; update takes a body; a bad status is 400."""
    register(target, {"Name": svc, "ID": f"{svc}-1", "Check": {"TTL": "30s"}})
    cid = f"service:{svc}-1"
    for verb, status in (("pass", "passing"), ("warn", "warning"), ("fail", "critical")):
        resp = target.http("PUT", f"/v1/agent/check/{verb}/{cid}", params={"note": verb})
        assert resp.status_code == 200
        assert resp.content == b""
        got = check_of(target, cid)
        assert got is not None
        assert (got["Status"], got["Output"]) == (status, verb)
    upd = target.http(
        "PUT", f"/v1/agent/check/update/{cid}", json_body={"Status": "warning", "Output": "x"}
    )
    assert upd.status_code == 200
    assert (check_of(target, cid) or {}).get("Status") == "warning"
    bad = target.http("PUT", f"/v1/agent/check/update/{cid}", json_body={"Status": "bogus"})
    assert bad.status_code == 400


def test_63_unknown_and_non_ttl_checks(
    target: Target, svc: str, status_server: _StatusServer
) -> None:
    """[#63] Pass on an unknown check is 404 ``Unknown check ID``; on an HTTP check 500."""
    unknown = target.http("PUT", f"/v1/agent/check/pass/nope-{svc}")
    assert unknown.status_code == 404
    assert unknown.text.startswith('Unknown check ID "')
    url = f"http://127.0.0.1:{status_server.server_address[1]}/"
    register(target, {"Name": svc, "ID": f"{svc}-h", "Check": {"HTTP": url, "Interval": "10s"}})
    resp = target.http("PUT", f"/v1/agent/check/pass/service:{svc}-h")
    assert resp.status_code == 500
    assert resp.text == f'CheckID "service:{svc}-h" does not have associated TTL'


def test_64_ttl_expiry(target: Target, svc: str) -> None:
    """[#64] A TTL check not updated turns critical after its TTL (not at 0.85 TTL) with the
    ``TTL expired`` output; every update restarts the timer."""
    ttl = 2.0
    register(target, {"Name": svc, "ID": f"{svc}-1", "Check": {"TTL": f"{ttl:g}s"}})
    cid = f"service:{svc}-1"
    before = time.monotonic()  # the pass reaches the server after this
    target.http("PUT", f"/v1/agent/check/pass/{cid}", params={"note": "last"})
    time.sleep(0.85 * ttl)
    status = (check_of(target, cid) or {}).get("Status")
    if time.monotonic() - before < ttl:  # the read happened less than a TTL after the pass
        assert status == "passing"
    wait_until(lambda: (check_of(target, cid) or {}).get("Status") == "critical")
    assert time.monotonic() - before >= ttl
    assert check_of(target, cid)["Output"] == (  # type: ignore[index]
        "TTL expired (last output before timeout follows): last"
    )


@pytest.mark.double_only
def test_64_ttl_expiry_manual_clock(svc: str) -> None:
    """[#64] With an injectable clock: critical exactly at TTL, ``TTL expired`` without a
    note, and each update restarts the timer."""
    clock = ManualClock()
    with make_double(clock=clock) as server, requests.Session() as http_:
        base = server.url
        body = {"Name": svc, "ID": "i", "Check": {"TTL": "10s", "Status": "passing"}}
        http_.put(f"{base}/v1/agent/service/register", json=body, timeout=5)
        clock.advance(9.9)
        server.run_timers()
        assert server.check_status("service:i") == "passing"
        http_.put(f"{base}/v1/agent/check/warn/service:i", timeout=5)
        clock.advance(9.9)
        server.run_timers()
        assert server.check_status("service:i") == "warning"
        http_.put(f"{base}/v1/agent/check/pass/service:i", timeout=5)
        clock.advance(10)
        server.run_timers()
        assert server.check_status("service:i") == "critical"
        checks = http_.get(f"{base}/v1/agent/checks", timeout=5).json()
        assert checks["service:i"]["Output"] == "TTL expired"


def test_65_output_only_pass_does_not_wake(target: Target, svc: str) -> None:
    """[#65] A pass keeping the status does not wake a health watcher; a fail does."""
    register(target, {"Name": svc, "ID": f"{svc}-1", "Check": {"TTL": "30s", "Status": "passing"}})
    cid = f"service:{svc}-1"
    first = health(target, svc)
    watcher = Call(lambda: health(target, svc, index=idx(first), wait="1s"))
    settle(target)
    target.http("PUT", f"/v1/agent/check/pass/{cid}", params={"note": "new note"})
    resp = watcher.join()
    assert watcher.elapsed >= 0.95
    assert idx(resp) == idx(first)
    waker = Call(lambda: health(target, svc, index=idx(first), wait="30s"))
    settle(target)
    target.http("PUT", f"/v1/agent/check/fail/{cid}")
    woke = waker.join()
    assert waker.elapsed < MAX_QUERY_TIME
    assert idx(woke) > idx(first)


@pytest.mark.double_only
def test_66_deregister_critical_after(ftarget: Target, svc: str) -> None:
    """[#66] A service whose check stays critical past DeregisterCriticalServiceAfter is
    reaped; without it, it stays (critical)."""
    dcsa = {"TTL": "10s", "Status": "critical", "DeregisterCriticalServiceAfter": "100ms"}
    register(ftarget, {"Name": svc, "ID": "reaped", "Check": dcsa})
    register(ftarget, {"Name": svc, "ID": "kept", "Check": {"TTL": "10s", "Status": "critical"}})
    wait_until(lambda: "reaped" not in ftarget.http("GET", "/v1/agent/services").json())
    assert "kept" in ftarget.http("GET", "/v1/agent/services").json()
    assert ids(health(ftarget, svc)) == ["kept"]


@pytest.mark.double_only
def test_66_reaper_floor_and_period(svc: str) -> None:
    """[#66] Real Consul's knobs with an injectable clock: a 30 s DCSA is raised to the 1 min
    floor and the reaper runs every 30 s, so removal comes 60-90 s after turning critical."""
    clock = ManualClock()
    with make_double(clock=clock) as server, requests.Session() as http_:
        body = {"Name": svc, "ID": "i", "Check": {
            "TTL": "1h", "Status": "passing", "DeregisterCriticalServiceAfter": "30s"}}  # fmt: skip
        http_.put(f"{server.url}/v1/agent/service/register", json=body, timeout=5)
        http_.put(f"{server.url}/v1/agent/check/fail/service:i", timeout=5)
        for _ in range(4):  # 0 .. 60 s: under the floor, whatever the reaper's phase
            clock.advance(15)
            server.run_timers()
            assert server.service_ids() == ["i"]
        clock.advance(30)  # 90 s: past the floor and a reaper period later
        server.run_timers()
        assert server.service_ids() == []


# ------------------------------------------------------------------ health and catalog


def test_67_health_shape(target: Target, svc: str) -> None:
    """[#67] Health entries hold Node, Service and Checks (serfHealth too) with the read
    headers; an unknown service is 200 []."""
    register(target, {"Name": svc, "ID": f"{svc}-1", "Port": 9, "Check": {"TTL": "10s"}})
    resp = health(target, svc)
    entry = resp.json()[0]
    assert set(entry) >= {"Node", "Service", "Checks"}
    assert {c["CheckID"] for c in entry["Checks"]} == {"serfHealth", f"service:{svc}-1"}
    assert entry["Service"]["Tags"] == []
    for header in (
        "X-Consul-Index",
        "X-Consul-KnownLeader",
        "X-Consul-LastContact",
        "X-Consul-Effective-Consistency",
    ):
        assert header in resp.headers
    unknown = health(target, f"{svc}-none")
    assert unknown.json() == []
    assert idx(unknown) >= 1


def test_68_passing_filter(target: Target, svc: str) -> None:
    """[#68] ?passing keeps only all-passing instances; =false keeps all; =x is 400."""
    for status in ("passing", "warning", "critical"):
        register(
            target,
            {"Name": svc, "ID": f"{svc}-{status}", "Check": {"TTL": "30s", "Status": status}},
        )
    for value in ("", "1", "true"):
        assert ids(health(target, svc, passing=value)) == [f"{svc}-passing"]
    assert len(health(target, svc, passing="false").json()) == 3
    bad = target.http("GET", f"/v1/health/service/{svc}", params={"passing": "x"})
    assert bad.status_code == 400
    assert bad.text == "Invalid value for ?passing"


def test_69_tag_and_filter(target: Target, svc: str) -> None:
    """[#69] ?tag (repeated: all) and ?filter select instances; a bad filter is 400."""
    x = f"{svc}-x"
    register(target, {"Name": svc, "ID": x, "Tags": ["a", "b"], "Meta": {"zone": "a"}})
    register(target, {"Name": svc, "ID": f"{svc}-2", "Tags": ["a"], "Meta": {"zone": "b"}})
    assert ids(health(target, svc, tag="a")) == sorted([x, f"{svc}-2"])
    resp = target.http("GET", f"/v1/health/service/{svc}", params=[("tag", "a"), ("tag", "b")])
    assert ids(resp) == [x]
    assert ids(health(target, svc, filter='Service.Meta.zone == "a"')) == [x]
    both = health(target, svc, filter=f'"a" in Service.Tags and Service.ID != "{x}"')
    assert ids(both) == [f"{svc}-2"]
    bad = target.http("GET", f"/v1/health/service/{svc}", params={"filter": "Service.ID =="})
    assert bad.status_code == 400


def test_70_health_blocking(target: Target, svc: str) -> None:
    """[#70] A health watch ignores other services and KV, wakes on its own status change,
    and a watch on a service with no instances wakes on its first registration."""
    register(target, {"Name": svc, "ID": f"{svc}-1", "Check": {"TTL": "30s", "Status": "passing"}})
    first = health(target, svc, passing="")
    watcher = Call(lambda: health(target, svc, passing="", index=idx(first), wait="1s"))
    settle(target)
    register(target, {"Name": f"{svc}-other", "Check": {"TTL": "30s"}})
    target.http("PUT", f"/v1/kv/{svc}/k", data=b"v")
    resp = watcher.join()
    assert watcher.elapsed >= 0.95
    assert idx(resp) == idx(first)
    waker = Call(lambda: health(target, svc, passing="", index=idx(first), wait="30s"))
    settle(target)
    target.http("PUT", f"/v1/agent/check/fail/service:{svc}-1")
    woke = waker.join()
    assert waker.elapsed < MAX_QUERY_TIME
    assert woke.json() == []
    empty = health(target, f"{svc}-new")
    newcomer = Call(lambda: health(target, f"{svc}-new", index=idx(empty), wait="30s"))
    settle(target)
    register(target, {"Name": f"{svc}-new", "Check": {"TTL": "30s"}})
    appeared = newcomer.join()
    assert newcomer.elapsed < MAX_QUERY_TIME
    assert len(appeared.json()) == 1


def test_71_extinction_index(target: Target, svc: str) -> None:
    """[#71] After a service's last instance goes, it and a never-registered service report
    the same extinction index, above an unchanged live service's."""
    register(target, {"Name": f"{svc}-live", "Check": {"TTL": "30s"}})
    register(target, {"Name": f"{svc}-dying", "Check": {"TTL": "30s"}})
    live = idx(health(target, f"{svc}-live"))
    target.http("PUT", f"/v1/agent/service/deregister/{svc}-dying")
    dead = idx(health(target, f"{svc}-dying"))
    never = idx(health(target, f"{svc}-never"))
    assert dead == never
    assert dead > live
    assert idx(health(target, f"{svc}-live")) == live


def test_72_catalog(target: Target, svc: str) -> None:
    """[#72] The catalog lists every instance whatever its health, flat; services map names
    to their tags."""
    register(target, {"Name": svc, "ID": f"{svc}-1", "Port": 7, "Tags": ["a"], "Meta": {"m": "1"},
                      "Check": {"TTL": "30s"}})  # fmt: skip
    register(target, {"Name": svc, "ID": f"{svc}-2", "Tags": ["b"], "Check": {"TTL": "30s"}})
    resp = target.http("GET", f"/v1/catalog/service/{svc}")
    assert resp.status_code == 200
    nodes = sorted(resp.json(), key=lambda n: n["ServiceID"])
    assert [n["ServiceID"] for n in nodes] == [f"{svc}-1", f"{svc}-2"]
    assert (nodes[0]["ServicePort"], nodes[0]["ServiceMeta"]) == (7, {"m": "1"})
    assert "Node" in nodes[0]
    assert idx(resp) >= 1
    services = target.http("GET", "/v1/catalog/services").json()
    assert "consul" in services
    assert sorted(services[svc]) == ["a", "b"]


@pytest.mark.double_only
def test_73_no_leader(dtarget: Target, double: ConsulTestServer, svc: str) -> None:
    """[#73] Without a leader health and catalog reads are 500 unless ?stale; a TTL pass
    still works (agent-local)."""
    register(dtarget, {"Name": svc, "ID": "i", "Check": {"TTL": "30s"}})
    double.set_leader(False)
    for path in (f"/v1/health/service/{svc}", f"/v1/catalog/service/{svc}"):
        resp = dtarget.http("GET", path)
        assert (resp.status_code, resp.text) == (500, "No cluster leader")
        stale = dtarget.http("GET", path, params={"stale": ""})
        assert stale.status_code == 200
        assert stale.headers["X-Consul-KnownLeader"] == "false"
    assert dtarget.http("PUT", "/v1/agent/check/pass/service:i").status_code == 200


# --------------------------------------------------------------- sessions, in depth


def test_74_session_defaults_and_ttl_errors(target: Target) -> None:
    """[#74] Session defaults (15 s lock-delay, release, serfHealth, no TTL), lock-delay
    forms, and TTL range / syntax errors."""
    sid = session(target, Name="x")
    info = target.http("GET", f"/v1/session/info/{sid}").json()[0]
    assert info["LockDelay"] == 15_000_000_000
    assert info["Behavior"] == "release"
    assert info["NodeChecks"] == ["serfHealth"]
    assert info["TTL"] == ""
    zero = session(target, lockdelay="0s")
    assert target.http("GET", f"/v1/session/info/{zero}").json()[0]["LockDelay"] == 0
    seven = session(target, LockDelay=7)
    assert target.http("GET", f"/v1/session/info/{seven}").json()[0]["LockDelay"] == 7_000_000_000
    big = target.http("PUT", "/v1/session/create", json_body={"TTL": "25h"})
    assert big.status_code == 500
    assert big.text.startswith("Invalid Session TTL '90000000000000', must be between [")
    assert big.text.endswith("=24h0m0s]")
    bad = target.http("PUT", "/v1/session/create", json_body={"TTL": "abc"})
    assert bad.status_code == 500
    assert bad.text.startswith("Session TTL 'abc' invalid")


@pytest.mark.double_only
def test_75_session_ttl_expiry(ftarget: Target, K: str) -> None:
    """[#75] A session with TTL T lives past 0.95 T, is gone by 2 T (its delete-behaviour key
    with it); renewing every T/2 keeps it; list and node list live sessions."""
    ttl = 1.0
    before = time.monotonic()  # the session is created after this
    sid = session(ftarget, TTL="1s", Behavior="delete", LockDelay="0s")
    kept = session(ftarget, TTL="1s", LockDelay="0s")
    assert ftarget.http("PUT", f"/v1/kv/{K}/k", params={"acquire": sid}).text == "true"
    start = time.monotonic()
    listed = {s["ID"] for s in ftarget.http("GET", "/v1/session/list").json()}
    assert {sid, kept} <= listed
    node = ftarget.http("GET", "/v1/agent/self").json()["Config"]["NodeName"]
    on_node = {s["ID"] for s in ftarget.http("GET", f"/v1/session/node/{node}").json()}
    assert {sid, kept} <= on_node
    while time.monotonic() - start < 2.5 * ttl:
        assert ftarget.http("PUT", f"/v1/session/renew/{kept}").status_code == 200
        info = ftarget.http("GET", f"/v1/session/info/{sid}").json()
        if time.monotonic() - before < 0.95 * ttl:  # read less than 0.95 TTL after create
            assert info != []
        time.sleep(ttl / 4)
    assert ftarget.http("GET", f"/v1/session/info/{sid}").json() == []
    assert ftarget.http("GET", f"/v1/kv/{K}/k").status_code == 404
    assert ftarget.http("GET", f"/v1/session/info/{kept}").json() != []
    gone = ftarget.http("PUT", f"/v1/session/renew/{sid}")
    assert (gone.status_code, gone.text) == (404, f"Session id '{sid}' not found")


def test_76_sessions_bound_to_checks(target: Target, svc: str, K: str) -> None:
    """[#76] ServiceChecks must exist and not be critical; a bound session is invalidated
    (its keys released) when the check turns critical and when its service goes."""
    register(target, {"Name": svc, "ID": f"{svc}-1", "Check": {"TTL": "30s", "Status": "passing"}})
    register(target, {"Name": svc, "ID": f"{svc}-2", "Check": {"TTL": "30s"}})
    cid1, cid2 = f"service:{svc}-1", f"service:{svc}-2"
    critical = target.http("PUT", "/v1/session/create", json_body={"ServiceChecks": [{"ID": cid2}]})
    assert (critical.status_code, critical.text) == (500, f"Check '{cid2}' is in critical state")
    missing = target.http(
        "PUT", "/v1/session/create", json_body={"ServiceChecks": [{"ID": f"nope-{svc}"}]}
    )
    assert missing.status_code == 500
    sid = session(target, ServiceChecks=[{"ID": cid1}], LockDelay="0s")
    assert target.http("PUT", f"/v1/kv/{K}/l", params={"acquire": sid}).text == "true"
    target.http("PUT", f"/v1/agent/check/fail/{cid1}")
    assert target.http("GET", f"/v1/session/info/{sid}").json() == []
    entry = target.entry(f"{K}/l")
    assert entry is not None
    assert "Session" not in entry
    assert entry["LockIndex"] == 1
    target.http("PUT", f"/v1/agent/check/pass/{cid1}")
    again = session(target, ServiceChecks=[{"ID": cid1}])
    target.http("PUT", f"/v1/agent/service/deregister/{svc}-1")
    assert target.http("GET", f"/v1/session/info/{again}").json() == []


def test_77_lock_delay(target: Target, K: str) -> None:
    """[#77] A voluntary release starts no lock-delay; a destroy does (1 s here); 90 s is
    stored as is."""
    s1, s2 = session(target, LockDelay="1s"), session(target, LockDelay="0s")
    key = f"{K}/ld"
    assert target.http("PUT", f"/v1/kv/{key}", params={"acquire": s1}).text == "true"
    assert target.http("PUT", f"/v1/kv/{key}", params={"release": s1}).text == "true"
    assert target.http("PUT", f"/v1/kv/{key}", params={"acquire": s2}).text == "true"
    assert target.http("PUT", f"/v1/kv/{key}", params={"release": s2}).text == "true"
    assert target.http("PUT", f"/v1/kv/{key}", params={"acquire": s1}).text == "true"
    before = time.monotonic()  # the lock-delay starts after this
    target.http("PUT", f"/v1/session/destroy/{s1}")
    assert target.http("PUT", f"/v1/kv/{key}", params={"acquire": s2}).text == "false"
    wait_until(lambda: target.http("PUT", f"/v1/kv/{key}", params={"acquire": s2}).text == "true")
    assert time.monotonic() - before >= 1.0
    long = session(target, LockDelay="90s")
    info = target.http("GET", f"/v1/session/info/{long}").json()[0]
    assert info["LockDelay"] == 90_000_000_000


@pytest.mark.double_only
def test_77_lock_delay_cap(K: str) -> None:
    """[#77] The enforced lock-delay is capped at 60 s (injectable clock)."""
    clock = ManualClock()
    with make_double(clock=clock) as server, requests.Session() as http_:
        base = server.url
        s1 = http_.put(f"{base}/v1/session/create", json={"LockDelay": "90s"}, timeout=5).json()[
            "ID"
        ]
        s2 = http_.put(f"{base}/v1/session/create", json={}, timeout=5).json()["ID"]
        assert http_.put(f"{base}/v1/kv/{K}", params={"acquire": s1}, timeout=5).text == "true"
        http_.put(f"{base}/v1/session/destroy/{s1}", timeout=5)
        clock.advance(59)
        assert http_.put(f"{base}/v1/kv/{K}", params={"acquire": s2}, timeout=5).text == "false"
        clock.advance(1.5)
        assert http_.put(f"{base}/v1/kv/{K}", params={"acquire": s2}, timeout=5).text == "true"


def test_78_lock_index_and_release_wakes(target: Target, K: str) -> None:
    """[#78] LockIndex is 1 then 2 with the next holder; a non-holder release is false; a
    blocked read wakes on the holder's release and shows no Session."""
    s1, s2 = session(target, LockDelay="0s"), session(target, LockDelay="0s")
    key = f"{K}/l"
    target.http("PUT", f"/v1/kv/{key}", params={"acquire": s1})
    held = target.entry(key)
    assert held is not None
    assert (held["Session"], held["LockIndex"]) == (s1, 1)
    assert target.http("PUT", f"/v1/kv/{key}", params={"release": s2}).text == "false"
    watcher = Call(
        lambda: target.http(
            "GET", f"/v1/kv/{key}", params={"index": held["ModifyIndex"], "wait": "30s"}
        )
    )
    settle(target)
    target.http("PUT", f"/v1/kv/{key}", params={"release": s1})
    resp = watcher.join()
    assert watcher.elapsed < MAX_QUERY_TIME
    assert "Session" not in resp.json()[0]
    target.http("PUT", f"/v1/kv/{key}", params={"acquire": s2})
    assert target.entry(key)["LockIndex"] == 2  # type: ignore[index]


def test_79_txn_lock_verbs(target: Target, K: str) -> None:
    """[#79] Txn ``lock`` on a held key is 409; ``check-session`` with the holder passes;
    ``unlock`` + ``lock`` hand over in one txn."""
    s1, s2 = session(target, LockDelay="0s"), session(target, LockDelay="0s")
    key = f"{K}/t"
    target.http("PUT", f"/v1/kv/{key}", params={"acquire": s1})
    lock2 = [{"KV": {"Verb": "lock", "Key": key, "Session": s2}}]
    resp = target.http("PUT", "/v1/txn", json_body=lock2)
    assert resp.status_code == 409
    assert resp.json()["Errors"][0]["What"] == f'failed to lock key "{key}", lock is already held'
    check = [{"KV": {"Verb": "check-session", "Key": key, "Session": s1}}]
    assert target.http("PUT", "/v1/txn", json_body=check).status_code == 200
    handover = [{"KV": {"Verb": "unlock", "Key": key, "Session": s1}}, *lock2]
    assert target.http("PUT", "/v1/txn", json_body=handover).status_code == 200
    assert target.entry(key)["Session"] == s2  # type: ignore[index]


# ------------------------------------------------------------ client end to end, faults


def test_80_py_consul_end_to_end(target: Target, svc: str, K: str) -> None:
    """[#80] py-consul's registry, health, catalog and session calls against the server."""
    c = target.py()
    sid = f"{svc}-1"
    check = {**Check.ttl("10s"), "DeregisterCriticalServiceAfter": "1m"}
    assert c.agent.service.register(svc, service_id=sid, address="127.0.0.1", port=80, check=check)
    assert c.health.service(svc, passing=True)[1] == []
    assert c.agent.check.ttl_pass(f"service:{sid}") is True
    index, passing = c.health.service(svc, passing=True)
    assert isinstance(index, str)
    assert [e["Service"]["ID"] for e in passing] == [sid]
    assert c.agent.check.ttl_warn(f"service:{sid}") is True
    assert c.agent.check.ttl_pass(f"service:{sid}") is True
    index = c.health.service(svc, passing=True)[0]
    watcher = Call(lambda: c.health.service(svc, passing=True, index=index, wait="5s"))
    settle(target)
    assert c.agent.check.ttl_fail(f"service:{sid}") is True
    result = watcher.join()
    assert watcher.elapsed < 5
    assert result[1] == []
    assert c.agent.check.ttl_pass(f"nope-{svc}") is False
    assert [n["ServiceID"] for n in c.catalog.service(svc)[1]] == [sid]
    assert svc in c.catalog.services()[1]
    assert c.agent.service.deregister(sid) is True
    assert c.agent.service.deregister(sid) is False
    s = c.session.create(ttl=10, behavior="delete", lock_delay=0)
    assert isinstance(s, str)
    assert c.session.info(s)[1]["ID"] == s
    assert c.session.renew(s)["ID"] == s
    other = c.session.create(lock_delay=0)
    assert c.kv.put(f"{K}/l", "v", acquire=s) is True
    assert c.kv.put(f"{K}/l", "v", acquire=other) is False
    entry = c.kv.get(f"{K}/l")[1]
    assert (entry["Session"], entry["LockIndex"]) == (s, 1)
    assert c.session.destroy(s) is True
    assert c.kv.get(f"{K}/l")[1] is None
    with pytest.raises(consul.NotFound):
        c.session.renew(s)
    with pytest.raises(consul.ConsulException, match="invalid session"):
        c.kv.put(f"{K}/m", "v", acquire="6f1e5b4c-0000-4000-8000-00000000dead")


@pytest.mark.double_only
def test_81_faults_reach_registry_endpoints(
    dtarget: Target, double: ConsulTestServer, svc: str
) -> None:
    """[#81] Injected 500s, dropped connections, hangs and index resets reach the health,
    agent and session endpoints as they reach KV."""
    c = dtarget.py(connections_timeout=1)
    register(dtarget, {"Name": svc, "ID": "i", "Check": {"TTL": "30s", "Status": "passing"}})
    double.inject_status(500, path_prefix="/v1/health/")
    with pytest.raises(consul.ConsulException, match="500"):
        c.health.service(svc)
    assert c.health.service(svc)[1] != []
    double.drop_connections(path_prefix="/v1/agent/check/")
    with pytest.raises(requests.exceptions.ConnectionError):
        c.agent.check.ttl_pass("service:i")
    assert c.agent.check.ttl_pass("service:i") is True
    hang = double.hang(path_prefix="/v1/session/")
    with pytest.raises(requests.exceptions.Timeout):
        c.session.list()
    hang.clear()
    first = health(dtarget, svc)
    watcher = Call(lambda: health(dtarget, svc, index=idx(first), wait="30s"))
    double.wait_for_blocked(1)
    double.reset_index(1)
    resp = watcher.join()
    assert watcher.elapsed < MAX_QUERY_TIME
    assert idx(resp) < idx(first)

"""The service registry on Consul: propagation, a large service, lock handover.

Against the in-repo ``ConsulTestServer`` in a child process (``server_process``: the server's
work is not this process's), loopback only (no consul binary here). Every row is a ratio
against a floor measured in the same run:

1. Register -> seen by discovery: ``registry.register(...)``, then a ``Discovery``
   subscriber's callback, against the floor of a raw blocking query on
   ``/v1/health/service/<s>`` (``http.client``, one socket, the same index rules) that waits
   for the same registration in the same process. Target: median <= 1.5x.
2. A service with 1,000 instances: ``registry.instances()`` (one health read, 1,000 parsed
   instances) against the floor of the same GET and ``json.loads``. Target <= 3x.
3. Lock handover: ``release()`` by the holder -> ``acquire()`` returns in a waiting thread
   (release, destroy the session; the waiter wakes from its blocking read, acquires, reads
   the key) against the floor of a raw KV PUT -> a blocked GET on that key returning.
   Target <= 6x: the handover is three round trips in a row (the release that wakes the
   waiter, its acquire, its read of the ``LockIndex``) and two thread hand-offs, where the
   floor is one round trip.

Run: ``.venv/bin/python -m benchmarks.bench_registry_consul [--quick]``.
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from confhub_consul.testing import server_process

import confhub

from ._table import Row, header, p99, parse_args, print_table, versions

PROPAGATION_TARGET = 1.5
LOAD_TARGET = 3.0
HANDOVER_TARGET = 6.0


class RawWatch:
    """A blocking-query loop on one path (index never below 1, reset when it goes back)
    that records when a predicate first holds on an answer."""

    def __init__(self, address: str, path: str) -> None:
        host, port = address.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.path = path
        self.index = self.get(0)[0]

    def get(self, index: int) -> tuple[int, object]:
        query = f"?index={max(index, 1)}&wait=10s" if index else ""
        self.conn.request("GET", self.path + query)
        resp = self.conn.getresponse()
        body = resp.read()
        return int(resp.getheader("X-Consul-Index") or "1"), json.loads(body or b"null")

    def wait_for(self, predicate: Callable[[Any], bool]) -> int:
        """Block until ``predicate(body)``; return the monotonic ns it was seen at."""
        while True:
            index, body = self.get(self.index)
            self.index = 0 if index < self.index else index
            if predicate(body):
                return time.monotonic_ns()

    def close(self) -> None:
        self.conn.close()


def _pair(
    name: str, floor_name: str, floor: list[int], lat: list[int], target: float, note: str
) -> list[Row]:
    floor_med, med = statistics.median(floor), statistics.median(lat)
    return [
        Row(f"{floor_name} (floor)", floor_med, p99_ns=p99(floor)),
        Row(
            name, med, floor="raw", ratio=med / floor_med, target=target, p99_ns=p99(lat), note=note
        ),
    ]


def bench_propagation(address: str, *, count: int) -> list[Row]:
    spec = f"consul://{address}/"
    floor: list[int] = []
    lat: list[int] = []
    with confhub.Registry(spec) as registry:
        discovery = registry.discover("bench", passing_only=False)
        seen: dict[str, int] = {}
        arrived = threading.Condition()

        def on_change(change: confhub.DiscoveryChange) -> None:
            with arrived:
                for instance in change.added:
                    seen[instance.instance_id] = time.monotonic_ns()
                arrived.notify_all()

        discovery.subscribe(on_change)
        raw = RawWatch(address, "/v1/health/service/bench")
        for i in range(count):
            iid = f"b-{i}"
            raw_seen: list[int] = []
            watcher = threading.Thread(
                target=lambda iid=iid, out=raw_seen: out.append(
                    raw.wait_for(lambda body: any(e["Service"]["ID"] == iid for e in body))
                )
            )
            watcher.start()
            time.sleep(0.005)  # let the raw query park
            t0 = time.monotonic_ns()
            registration = registry.register(
                "bench", address="127.0.0.1", port=1000 + i, instance_id=iid
            )
            with arrived:
                arrived.wait_for(lambda iid=iid: iid in seen, timeout=30)  # type: ignore[misc]
            watcher.join(30)
            floor.append(raw_seen[0] - t0)
            lat.append(seen[iid] - t0)
            registration.close()
        raw.close()
        discovery.close()
    return _pair(
        "Discovery subscriber, a new instance",
        "raw blocking health query",
        floor,
        lat,
        PROPAGATION_TARGET,
        "register = register + status push; both watchers wake on the first",
    )


def bench_large_service(address: str, *, instances: int, rounds: int) -> list[Row]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    for i in range(instances):
        body = {"Name": "big", "ID": f"big-{i}", "Address": "127.0.0.1", "Port": 1 + i,
                "Meta": {"zone": "a"}, "Check": {"TTL": "1h", "Status": "passing"}}  # fmt: skip
        conn.request("PUT", "/v1/agent/service/register", body=json.dumps(body))
        conn.getresponse().read()
    floor: list[int] = []
    lat: list[int] = []
    with confhub.Registry(f"consul://{address}/") as registry:
        for _ in range(rounds):
            t0 = time.perf_counter_ns()
            conn.request("GET", "/v1/health/service/big")
            entries = json.loads(conn.getresponse().read())
            floor.append(time.perf_counter_ns() - t0)
            t0 = time.perf_counter_ns()
            listing = registry.instances("big")
            lat.append(time.perf_counter_ns() - t0)
            assert len(listing.instances) == len(entries) == instances
    conn.close()
    return _pair(
        f"registry.instances(), {instances} instances",
        "GET /v1/health/service + json.loads",
        floor,
        lat,
        LOAD_TARGET,
        "parses and validates every instance",
    )


def bench_lock(address: str, *, rounds: int) -> list[Row]:
    host, port = address.rsplit(":", 1)
    floor: list[int] = []
    writer = http.client.HTTPConnection(host, int(port), timeout=30)
    for i in range(rounds):
        watch = RawWatch(address, "/v1/kv/bench-floor")  # parks on the key's current index
        got: list[int] = []
        thread = threading.Thread(target=lambda w=watch, out=got: out.append(w.wait_for(bool)))
        thread.start()
        time.sleep(0.005)  # let the raw query park
        t0 = time.monotonic_ns()
        writer.request("PUT", "/v1/kv/bench-floor", body=str(i).encode())
        writer.getresponse().read()
        thread.join(30)
        watch.close()
        floor.append(got[0] - t0)
    writer.close()
    lat: list[int] = []
    spec = f"consul://{address}/bench/"
    with confhub.Registry(spec) as a, confhub.Registry(spec) as b:
        first, second = a.lock("job", ttl=10, identity="a"), b.lock("job", ttl=10, identity="b")
        holder, waiter = first, second
        holder.acquire(timeout=10)
        for _ in range(rounds):
            done: list[int] = []
            thread = threading.Thread(
                target=lambda w=waiter, out=done: (
                    w.acquire(timeout=30),
                    out.append(time.monotonic_ns()),
                )
            )
            thread.start()
            time.sleep(0.05)  # let the waiter park on the key
            t0 = time.monotonic_ns()
            holder.release()
            thread.join(30)
            lat.append(done[0] - t0)
            holder, waiter = waiter, holder
        holder.release()
    return _pair(
        "lock handover after release()",
        "raw KV PUT -> blocked GET returns",
        floor,
        lat,
        HANDOVER_TARGET,
        "release + destroy, then the waiter's wake, acquire and read",
    )


def main() -> None:
    args = parse_args(__doc__ or "")
    header("bench_registry_consul: the service registry on Consul (test server)")
    print(versions(["confhub", "confhub-consul"]))
    print()
    quick = args.quick
    with server_process() as address:
        print_table(
            "Register -> seen by discovery",
            bench_propagation(address, count=10 if quick else 100),
            latency=True,
        )
        print_table(
            "A service with 1,000 instances",
            bench_large_service(
                address, instances=100 if quick else 1000, rounds=5 if quick else 30
            ),
            latency=True,
        )
        print_table("Lock handover", bench_lock(address, rounds=5 if quick else 50), latency=True)


if __name__ == "__main__":
    main()

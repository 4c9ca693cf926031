"""``confhub demo``'s registry part: a registration, a discovery and a leader failover.

It runs on the in-process ``memory:`` store, so it needs no set-up; ``etcd://`` and
``consul://`` registries behave the same (the contract suite checks it).
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Callable

from ._discovery import DiscoveryChange
from ._errors import LockLostError
from ._memregistry import memory_registry_store
from ._registry import Registry

WAIT = 10.0


def run_registry_demo(say: Callable[[str], None]) -> None:
    """Narrate a registration, a discovery and a leader failover to ``say``."""
    name = f"demo-{uuid.uuid4().hex[:6]}"
    store = memory_registry_store(name)
    with Registry(f"memory:{name}") as registry:
        say("== Service registry: Registry('memory:...'); etcd:// and consul:// work the same")
        one = registry.register("api", address="10.0.0.1", port=8080, instance_id="api-1", ttl=2)
        registry.register("api", address="10.0.0.2", port=8080, instance_id="api-2", ttl=2)
        discovery = registry.discover("api")
        changes: queue.Queue[DiscoveryChange] = queue.Queue()
        discovery.subscribe(changes.put)
        endpoints = ", ".join(i.endpoint for i in discovery.instances)
        say(f"   two instances registered (TTL 2 s, kept alive every 0.7 s): {endpoints}")
        picks = ", ".join(discovery.pick().instance_id for _ in range(3))
        say(f"   discovery.pick() x3, round robin -> {picks}")
        one.set_status("critical")
        change = changes.get(timeout=WAIT)
        gone = ", ".join(i.instance_id for i in change.removed)
        say(f"   api-1 reports itself critical -> removed from the passing list: {gone}")
        one.close()
        say("")
        say("== Leader election: two candidates, the leader loses its lease")
        lost: queue.Queue[LockLostError] = queue.Queue()
        first = registry.election("scheduler", identity="pod-a", ttl=2, on_lost=lost.put)
        second = registry.election("scheduler", identity="pod-b", ttl=2)
        leaders: queue.Queue[tuple[str, int] | None] = queue.Queue()
        second.subscribe(leaders.put)
        token = first.campaign()
        say(f"   pod-a leads with fencing token {token}")
        campaign = threading.Thread(target=second.campaign, kwargs={"timeout": WAIT})
        campaign.start()
        store.expire_lock("scheduler")  # as if pod-a's lease expired during a network cut
        lost.get(timeout=WAIT)
        say(f"   pod-a is told its lease is gone: is_leader={first.is_leader}")
        campaign.join(WAIT)
        say(
            f"   pod-b leads with token {second.token} (larger: a late write by pod-a "
            "carrying the old token can be refused)"
        )
        while (leader := leaders.get(timeout=WAIT)) is None or leader[0] != "pod-b":
            pass
        say(f"   an observer saw the new leader: {leader}")
    store.clear()

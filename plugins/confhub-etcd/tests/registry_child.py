"""A process that registers, holds a lock or leads until killed (the registry tests' child).

    registry_child.py register SPEC SERVICE TTL [sigterm]
    registry_child.py lock SPEC NAME TTL IDENTITY
    registry_child.py lead SPEC NAME TTL IDENTITY

It prints one JSON line once it holds what it was asked for, then sleeps.
"""

from __future__ import annotations

import json
import sys
import time

import confhub


def main(argv: list[str]) -> None:
    mode, spec, name, ttl = argv[0], argv[1], argv[2], float(argv[3])
    registry = confhub.Registry(spec)
    if mode == "register":
        registration = registry.register(name, address="127.0.0.1", port=4000, ttl=ttl)
        if argv[4:] == ["sigterm"]:
            confhub.close_on_signal(registry)
        report = {"instance_id": registration.instance_id}
    elif mode == "lock":
        lock = registry.lock(name, ttl=ttl, identity=argv[4])
        report = {"token": lock.acquire()}
    else:
        election = registry.election(name, ttl=ttl, identity=argv[4])
        report = {"token": election.campaign()}
    print(json.dumps(report), flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main(sys.argv[1:])

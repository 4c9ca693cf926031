"""A hub process for the host-sharing tests: ``python fleet_worker.py SPEC CACHE_DIR``.

It starts ``Hub([SPEC], cache_dir=CACHE_DIR, share="host")``, subscribes, and writes one
JSON object per line to stdout: ``{"ready": ...}`` once started, ``{"change": generation,
"set": {key: new}}`` per published change, and answers the commands it reads from stdin:
``health`` (``{"health": ...}``), ``write KEY VALUE`` (``{"wrote": revision}``), ``fork
SECONDS`` (a child that sleeps that long: ``{"forked": pid}``), ``quit``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import confhub

_out = threading.Lock()


def emit(obj: dict) -> None:
    with _out:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()


def main() -> None:
    spec, cache_dir = sys.argv[1], sys.argv[2]
    hub = confhub.Hub([spec], cache_dir=cache_dir, share="host", start_timeout=30.0)
    hub.start()
    hub.subscribe(
        lambda change: emit(
            {"change": change.generation, "set": {c.key: c.new for c in change.changes}}
        )
    )
    emit(
        {
            "ready": True,
            "pid": os.getpid(),
            "generation": hub.generation,
            "values": dict(hub.snapshot().flat().items()),
        }
    )
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "health":
            emit({"health": hub.health().to_dict()})
        elif words[0] == "write":
            emit({"wrote": hub.write(words[1], words[2])})
        elif words[0] == "fork":
            child = os.fork()
            if child == 0:  # the child holds copies of everything; it only sleeps
                time.sleep(float(words[1]))
                os._exit(0)
            emit({"forked": child})
        elif words[0] == "quit":
            break
    hub.close()
    emit({"closed": True})


if __name__ == "__main__":
    main()

"""The opt-in file copy of a discovery's last list (``Registry.discover(cache_path=...)``).

:class:`ListingCache` writes each list a discovery reads to one JSON file (atomically: a
temporary file renamed over it), and reads it back, with its age, when the discovery's first
read fails. Whether a list that old may be served is the discovery's decision
(:mod:`confhub._discovery`); this module only says how old it is and what it holds.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

from ._registry_types import Instance

log = logging.getLogger("confhub.registry")


class ListingCache:
    """The file at ``path`` holding the last list of ``service``'s instances."""

    def __init__(self, path: str | os.PathLike[str], service: str) -> None:
        self.path = Path(path)
        self.service = service

    def save(self, instances: Iterable[Instance]) -> None:
        """Write ``instances`` (a failure to write is logged, never raised)."""
        document = {
            "service": self.service,
            "saved_at": time.time(),
            "instances": [
                {
                    "id": i.instance_id,
                    "address": i.address,
                    "port": i.port,
                    "meta": dict(i.meta),
                    "status": i.status,
                    "origin": i.origin,
                }
                for i in instances
            ],
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(document, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("discovery of %s: cannot write its cache %s: %s", self.service, tmp, exc)

    def load(self) -> tuple[dict[str, Instance], float] | None:
        """The cached instances by id and their age in seconds; ``None`` (logged) when the
        file is missing, unreadable, or holds another service's list."""
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            age = max(0.0, time.time() - float(document["saved_at"]))
            if document["service"] != self.service:
                return None
            instances = {
                str(row["id"]): Instance(
                    service=self.service,
                    instance_id=str(row["id"]),
                    address=str(row["address"]),
                    port=int(row["port"]),
                    meta=row.get("meta") or {},
                    status=str(row.get("status", "passing")),
                    origin=str(row.get("origin", "")),
                )
                for row in document["instances"]
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("discovery of %s: cannot use its cache: %s", self.service, exc)
            return None
        return instances, age

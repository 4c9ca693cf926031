"""A lock (and an election seat) on Consul: a session with a TTL and KV ``acquire``.

One :class:`ConsulLock` is one name held by one identity (``shared/consul-api.md`` 2.15):

- the session is created with ``TTL`` = the lock's ttl, ``Behavior: release`` (so the key and
  its ``LockIndex`` survive a holder's death: with ``delete`` the next holder would start
  again at ``LockIndex`` 1 and fencing tokens would repeat) and ``LockDelay`` = the
  ``lock_delay`` option (0 by default: the core stops claiming a lock at its last renewal plus
  the ttl minus a margin, and Consul never invalidates a session before its TTL, so the old
  holder has let go before anyone can acquire; ``?lock_delay=15`` restores Consul's default);
- ``acquire`` is ``PUT /v1/kv/<key>?acquire=<session>`` with the identity as the value; the
  fencing token is the key's ``LockIndex``, which rises with every new holder;
- a waiter blocks on the key (``GET ?index=``): a release or an invalidation raises its
  ``ModifyIndex`` and wakes it; inside a lock-delay (the key free, ``acquire`` refused) it
  retries after a short pause; its own session is renewed every ttl/2 while it waits;
- ``keepalive`` renews the session and checks the key still names it
  (:class:`~confhub.LockLostError` otherwise), ``release`` releases the key and destroys the
  session.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import threading
import time
from typing import Any

from confhub import LockLostError, LockTimeoutError, RegistryError, SourceUnavailableError

from ._calls import Calls
from ._http import Response, kv_path
from ._index import query_index, response_index
from ._reader import body_text, duration
from ._watch import TokenBucket

log = logging.getLogger("confhub.registry.consul")
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_GO_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _ttl_floor(text: str) -> float | None:
    """The minimum of Consul's ``Invalid Session TTL '<ns>', must be between [10s=24h0m0s]``."""
    match = re.search(r"between \[([0-9.hms]+)=", text)
    if match is None:
        return None
    parts = _GO_PART.findall(match.group(1))
    return sum(float(n) * _GO_UNITS[u] for n, u in parts) or None


#: How long a waiter pauses before asking again when the key is free but ``acquire`` was
#: refused (a lock-delay is running): there is no change to block on.
LOCK_DELAY_POLL = 0.1


class ConsulLock:
    """One lock name held by one identity; see the module docstring."""

    def __init__(
        self,
        calls: Calls,
        *,
        name: str,
        key: str,
        ttl: float,
        identity: str,
        lock_delay: float,
        stop: threading.Event,
    ) -> None:
        self._calls = calls
        self._source = calls.source
        self.name = name
        self.key = key
        self.ttl = ttl
        self.identity = identity
        self.lock_delay = lock_delay
        self._stop = stop
        self._lock = threading.Lock()
        self._session: str | None = None
        self._raised = False  # logged that the session TTL was raised to Consul's floor

    def __repr__(self) -> str:
        return f"<ConsulLock {self.key} identity={self.identity!r}>"

    # -- sessions ------------------------------------------------------------------------------
    def _create_session(self) -> str:
        """A new session; a TTL under the agent's ``session_ttl_min`` is raised to it (safe:
        the core's validity deadline stays ``ttl``, the store just expires a dead holder
        later)."""
        resp = self._session_create(self.ttl)
        if resp.status == 500:
            floor = _ttl_floor(body_text(resp))
            if floor is not None and floor > self.ttl:
                if not self._raised:
                    self._raised = True
                    log.info(
                        "%s: lock %r: Consul takes session TTLs of %g s or more; its session "
                        "uses %g s (a dead holder is noticed later, never earlier)",
                        self._source,
                        self.key,
                        floor,
                        floor,
                    )
                resp = self._session_create(floor)
        if resp.status == 500:
            text = body_text(resp)
            if "Session TTL" in text:
                raise RegistryError(
                    f"{self._source}: Consul refuses a session TTL of {self.ttl:g} s for lock "
                    f"{self.key!r} ({text}); use a lock ttl within the agent's session TTL "
                    "range (10 s to 24 h by default)",
                    source=self._source,
                    name=self.key,
                )
            raise SourceUnavailableError(
                f"{self._source}: Consul answered 500 {text} while creating the session of "
                f"lock {self.key!r}; retrying",
                source=self._source,
            )
        return str(json.loads(resp.body)["ID"])

    def _session_create(self, ttl: float) -> Response:
        body = {
            "Name": f"confhub lock {self.key} ({self.identity})"[:256],
            "TTL": duration(ttl),
            "Behavior": "release",
            "LockDelay": duration(self.lock_delay) if self.lock_delay > 0 else "0s",
        }
        return self._calls.request(
            "PUT",
            "/v1/session/create",
            body=json.dumps(body).encode(),
            accept=(500,),
            what=f"creating the session of lock {self.key!r}",
        )

    def _renew(self, session: str) -> bool:
        """Renew ``session``; False when Consul no longer has it."""
        resp = self._calls.request(
            "PUT",
            f"/v1/session/renew/{session}",
            accept=(404,),
            what=f"renewing the session of lock {self.key!r}",
        )
        return resp.status != 404

    def _destroy(self, session: str) -> None:
        self._calls.request(
            "PUT",
            f"/v1/session/destroy/{session}",
            what=f"destroying the session of lock {self.key!r}",
        )

    # -- the key -------------------------------------------------------------------------------
    def _read(self, index: int = 0, wait: float = 0.0) -> tuple[int, str | None, str | None, int]:
        """``(index, session, identity, lock_index)`` of the key (session None: free;
        identity None: missing); blocking when ``index`` and ``wait`` are given."""
        query: list[tuple[str, str]] = []
        read_timeout = None
        if index > 0 and wait > 0:
            # Consul adds up to wait/16: ask for less so the answer comes within ``wait``.
            query = [("index", str(query_index(index))), ("wait", duration(wait * 16 / 17))]
            read_timeout = wait + self._calls.opts.timeout
        resp = self._calls.request(
            "GET",
            kv_path(self.key),
            query=query,
            read_timeout=read_timeout,
            accept=(404,),
            what=f"reading lock {self.key!r}",
        )
        at = response_index(resp, self._source)
        if resp.status == 404:
            return at, None, None, 0
        try:
            entry: dict[str, Any] = json.loads(resp.body)[0]
            value = base64.b64decode(entry.get("Value") or "").decode("utf-8", "replace")
            return at, entry.get("Session") or None, value, int(entry.get("LockIndex") or 0)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise SourceUnavailableError(
                f"{self._source}: Consul sent a malformed entry for lock {self.key!r} "
                f"({type(exc).__name__}); retrying",
                source=self._source,
            ) from exc

    def _try(self, session: str) -> bool | None:
        """One ``acquire``; None when Consul no longer knows ``session``."""
        resp = self._calls.request(
            "PUT",
            kv_path(self.key),
            query=[("acquire", session)],
            body=self.identity.encode("utf-8"),
            accept=(500,),
            what=f"acquiring lock {self.key!r}",
        )
        if resp.status == 500:
            if "invalid session" in body_text(resp):
                return None
            raise SourceUnavailableError(
                f"{self._source}: Consul answered 500 {body_text(resp)} while acquiring lock "
                f"{self.key!r}; retrying",
                source=self._source,
            )
        return resp.body.strip() == b"true"

    # -- LockBackend ---------------------------------------------------------------------------
    def acquire(self, timeout: float | None) -> int:
        """Hold the lock and return its fencing token (``LockIndex``); see the module
        docstring. :class:`~confhub.LockTimeoutError` when ``timeout`` runs out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            session = self._session
        if session is None:
            session = self._create_session()
        renewed = time.monotonic()
        bucket = TokenBucket(self._calls.opts.rate, self._calls.opts.burst)
        try:
            while True:
                bucket.take(self._stop)
                got = self._try(session)
                if got is None:  # the session expired while we waited
                    session, renewed = self._create_session(), time.monotonic()
                    continue
                index, holder, _, token = self._read()
                if got and holder == session:
                    with self._lock:
                        self._session = session
                    return token
                remaining = None if deadline is None else deadline - time.monotonic()
                if self._stop.is_set():
                    raise SourceUnavailableError(
                        f"{self._source}: the registry is closed", source=self._source
                    )
                if remaining is not None and remaining <= 0:
                    raise LockTimeoutError(
                        f"{self._source}: lock {self.name!r} (key {self.key!r}) is still held "
                        f"by another session after {timeout:g} s; wait longer, or see who "
                        "holds it with holder()",
                        source=self._source,
                        name=self.name,
                    )
                # Park no longer than ttl/2, so our own session is renewed in time.
                wait = self.ttl / 2 if remaining is None else min(remaining, self.ttl / 2)
                if holder is not None:
                    self._read(index, wait)
                elif self._stop.wait(min(wait, LOCK_DELAY_POLL)):
                    continue  # closing: the next round raises
                if time.monotonic() - renewed >= self.ttl / 2:
                    if not self._renew(session):
                        session = self._create_session()
                    renewed = time.monotonic()
        except BaseException:
            with self._lock:
                held = self._session == session
            if not held:
                self._forget(session)
            raise

    def _forget(self, session: str) -> None:
        """Destroy a session we will not use (best effort: it expires by itself anyway)."""
        with contextlib.suppress(SourceUnavailableError):
            self._destroy(session)

    def keepalive(self) -> None:
        """Renew the session once and check the key still names it; LockLostError if not."""
        with self._lock:
            session = self._session
        if session is None:
            raise LockLostError(
                f"{self._source}: lock {self.name!r} is not held",
                source=self._source,
                name=self.name,
            )
        alive = self._renew(session)
        holder = self._read()[1] if alive else None
        if holder != session:
            with self._lock:
                if self._session == session:
                    self._session = None
            if alive:  # the key was taken from us (deleted, released by hand): let it go
                self._forget(session)
            why = "its session expired" if not alive else "the key no longer names our session"
            raise LockLostError(
                f"{self._source}: lock {self.name!r} (key {self.key!r}) was lost ({why}); "
                "stop acting as its holder and acquire it again",
                source=self._source,
                name=self.name,
            )

    def release(self) -> None:
        """Release the key and destroy the session (no error when not held)."""
        with self._lock:
            session, self._session = self._session, None
        if session is None:
            return
        self._calls.request(
            "PUT",
            kv_path(self.key),
            query=[("release", session)],
            body=self.identity.encode("utf-8"),
            what=f"releasing lock {self.key!r}",
        )
        self._destroy(session)

    def holder(self) -> tuple[str, int] | None:
        """The current holder's identity and fencing token, or None when free."""
        _, session, identity, token = self._read()
        return None if session is None else (identity or "", token)

    def wait_holder(self, known: tuple[str, int] | None, timeout: float) -> tuple[str, int] | None:
        """Return when the holder differs from ``known``, or after ``timeout`` (the current
        holder then)."""
        deadline = time.monotonic() + timeout
        bucket = TokenBucket(self._calls.opts.rate, self._calls.opts.burst)
        index, session, identity, token = self._read()
        while True:
            current = None if session is None else (identity or "", token)
            remaining = deadline - time.monotonic()
            if current != known or remaining <= 0 or not bucket.take(self._stop):
                return current
            index, session, identity, token = self._read(index, deadline - time.monotonic())

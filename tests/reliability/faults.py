"""Fault toolkit: a loopback TCP proxy, etcd history read-back, and store writers that
record every commit in a :class:`history.History`.

etcd process faults (kill/stop/start/pause/resume, compaction) are the harness's own
(``confhub_etcd.testing``); the Consul test server's fault injection (``inject_status``,
``hang``, ``drop_connections``, ``reset_index``, request counts) is used as is. What this
module adds is what neither has: a proxy that can cut a *connection* while the member stays
healthy, and writers/readers that put the store's side of the history on record.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc
from confhub_etcd.testing import EtcdCluster
from history import History


class TcpProxy:
    """A loopback TCP proxy in front of ``upstream`` (``host:port``) with switchable modes.

    - ``pass``: bytes flow both ways;
    - ``blackhole``: connections are accepted and kept, every byte is read and dropped
      (a partition the peer cannot see: no RST, no FIN);
    - ``pause``: nothing is read (TCP back-pressure; a stopped peer);
    - ``delay``: each chunk waits ``delay`` seconds before it is forwarded;
    - ``refuse``: new connections are closed at once (a member that is down).

    :meth:`reset` closes every open connection with an RST. One thread accepts, one thread
    per connection pumps both directions; all have a stop event and are joined by
    :meth:`close`. At most ``max_connections`` are open at once (others are refused).
    """

    def __init__(self, upstream: str, *, max_connections: int = 32) -> None:
        host, _, port = upstream.rpartition(":")
        assert host in ("127.0.0.1", "localhost"), "traffic stays on loopback"
        self.upstream = ("127.0.0.1", int(port))
        self.mode = "pass"
        self.delay = 0.0
        self.max_connections = max_connections
        self.accepted = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[tuple[socket.socket, socket.socket, threading.Thread]] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="test-proxy-accept")
        self._acceptor.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set_mode(self, mode: str, delay: float = 0.0) -> None:
        assert mode in ("pass", "blackhole", "pause", "delay", "refuse"), mode
        self.delay = delay
        self.mode = mode

    def reset(self) -> None:
        """Close every open connection with an RST (SO_LINGER 0)."""
        with self._lock:
            conns = list(self._conns)
        for client, upstream, _ in conns:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.shutdown(socket.SHUT_RDWR)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for _, _, t in self._conns if t.is_alive())

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join(5)
        with contextlib.suppress(OSError):
            self._listener.close()
        self.reset()
        with self._lock:
            conns = list(self._conns)
        for _, _, thread in conns:
            thread.join(5)
        assert not self._acceptor.is_alive()
        assert not [t for _, _, t in conns if t.is_alive()], "a proxy thread did not stop"

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._conns = [c for c in self._conns if c[2].is_alive()]
                full = len(self._conns) >= self.max_connections
            if full or self.mode == "refuse":
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=2)
            except OSError:
                client.close()  # upstream down: the client sees the connection close
                continue
            self.accepted += 1
            thread = threading.Thread(
                target=self._pump, args=(client, upstream), name="test-proxy-pump"
            )
            with self._lock:
                self._conns.append((client, upstream, thread))
            thread.start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        try:
            while not self._stop.is_set():
                if self.mode == "pause":
                    self._stop.wait(0.05)
                    continue
                readable, _, _ = select.select([client, upstream], [], [], 0.05)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    mode = self.mode
                    if mode == "blackhole":
                        continue
                    if mode == "delay" and self.delay:
                        self._stop.wait(self.delay)
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


# -- etcd: the store's side of the history -------------------------------------------------


def etcd_key(prefix: str) -> Callable[[bytes], str | None]:
    """Map an etcd key under ``prefix`` to its confhub key (None: not in the source)."""
    raw = prefix.encode()

    def to_key(key: bytes) -> str | None:
        if not key.startswith(raw) or key == raw:
            return None
        try:
            return key[len(raw) :].decode().replace("/", ".")
        except UnicodeDecodeError:
            return None  # not a key confhub can publish (scenario 39): not on record

    return to_key


class EtcdHistory:
    """Reads the server's own history (a fresh watch from a revision) into a History.

    :meth:`sync` appends every revision since the last sync; call it before each
    compaction (the history it needs is about to go) and at the end of the scenario.
    """

    def __init__(self, cluster: EtcdCluster, prefix: str, history: History) -> None:
        self.cluster = cluster
        self.prefix = prefix.encode()
        self.to_key = etcd_key(prefix)
        self.history = history
        self.synced = 0

    def sync(self, timeout: float = 15.0) -> int:
        target = self.cluster.revision()
        if target <= self.synced:
            return self.synced
        events = read_etcd_events(self.cluster, self.synced + 1, target, timeout)
        by_rev: dict[int, dict[str, str | None]] = {}
        for rev, kind, key, value in events:
            conf = self.to_key(key)
            if conf is not None:
                by_rev.setdefault(rev, {})[conf] = None if kind == "delete" else value.decode()
        for rev in sorted(by_rev):
            self.history.commit(rev, by_rev[rev])
        self.synced = target
        return target

    def compact(self) -> int:
        """Sync the history, then compact up to the current revision."""
        rev = self.sync()
        self.cluster.compact(rev)
        return rev

    def final_state(self, page: int = 10_000) -> dict[str, str]:
        from confhub_etcd.testing import rpc_stubs

        prefix = self.prefix
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        resp = self.cluster.admin_call(
            "KVStub", "Range", rpc_stubs().RangeRequest(key=prefix, range_end=end, limit=page)
        )
        out = {}
        for kv in resp.kvs:
            k = self.to_key(kv.key)
            if k is not None:
                out[k] = kv.value.decode()
        return out


def read_etcd_events(
    cluster: EtcdCluster, start: int, target: int, timeout: float = 15.0
) -> list[tuple[int, str, bytes, bytes]]:
    """Every event of revisions ``start..target`` in commit order, from a fresh watch of the
    whole keyspace (``(revision, "put"|"delete", key, value)``)."""
    from confhub_etcd.testing import rpc_stubs

    rpc = rpc_stubs()
    member = next(m for m in cluster.members if m.running and not m.paused)
    requests: queue.Queue[Any] = queue.Queue()
    requests.put(
        rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(key=b"\0", range_end=b"\0", start_revision=start)
        )
    )
    done = threading.Event()

    def request_iter() -> Iterator[Any]:
        while not done.is_set():
            try:
                yield requests.get(timeout=0.1)
            except queue.Empty:
                continue

    stub = cluster.stub(member, "WatchStub")
    call = stub.Watch(request_iter(), timeout=timeout, metadata=cluster.call_metadata())
    out: list[tuple[int, str, bytes, bytes]] = []
    try:
        for resp in call:
            if resp.canceled or resp.compact_revision:
                raise AssertionError(
                    f"history from revision {start} is gone (compacted at "
                    f"{resp.compact_revision}): sync before compacting"
                )
            for ev in resp.events:
                kind = "delete" if ev.type == 1 else "put"
                out.append((ev.kv.mod_revision, kind, ev.kv.key, ev.kv.value))
            if out and out[-1][0] >= target:
                break
    except grpc.RpcError as exc:
        raise AssertionError(f"reading etcd's history failed: {exc.code()}") from exc
    finally:
        done.set()
        call.cancel()
    return [e for e in out if e[0] <= target]


class Writer:
    """A bounded background writer: ``write(i)`` for i = 1, 2, ... until stopped.

    Failures (an election, a dead member) are retried with the same ``i`` after a pause;
    ``done`` counts acknowledged writes. The store side of the history is read back from
    the server, so a write that failed but committed is still on record.
    """

    def __init__(self, write: Callable[[int], Any], *, period: float = 0.005, limit: int = 5000):
        self.write = write
        self.period = period
        self.limit = limit
        self.done = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-writer")

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(15)
        assert not self._thread.is_alive(), "the writer did not stop"

    def _run(self) -> None:
        i = 1
        while not self._stop.is_set() and i <= self.limit:
            try:
                self.write(i)
            except Exception:  # noqa: BLE001 - a fault in progress: retry after a pause
                self.failures += 1
                self._stop.wait(0.05)
                continue
            self.done = i
            i += 1
            self._stop.wait(self.period)

    def wait_done(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.done < count:
            assert time.monotonic() < deadline, f"only {self.done}/{count} writes in {timeout}s"
            time.sleep(0.01)


# -- Consul: the store's side of the history -------------------------------------------------


class ConsulRecorder:
    """Writes to a ConsulTestServer directly and records each commit with its index."""

    def __init__(self, server: Any, prefix: str, history: History) -> None:
        self.server = server
        self.prefix = prefix
        self.history = history
        self._lock = threading.Lock()

    def key(self, consul_key: str) -> str:
        return consul_key[len(self.prefix) :].replace("/", ".")

    def put(self, key: str, value: str) -> int:
        with self._lock:
            entry = self.server.put(self.prefix + key.replace(".", "/"), value)
            self.history.commit(entry.modify_index, {key: value})
            return int(entry.modify_index)

    def put_many(self, items: Mapping[str, str]) -> int:
        with self._lock:
            self.server.put_many({self.prefix + k.replace(".", "/"): v for k, v in items.items()})
            index = int(self.server.index)
            self.history.commit(index, dict(items))
            return index

    def delete(self, key: str) -> int:
        with self._lock:
            self.server.delete(self.prefix + key.replace(".", "/"))
            index = int(self.server.index)
            self.history.commit(index, {key: None})
            return index

    def final_state(self) -> dict[str, str]:
        out = {}
        for k in self.server.keys(self.prefix):
            entry = self.server.get(k)
            if entry is not None and not k.endswith("/"):
                out[self.key(k)] = entry.value.decode()
        return out


def cpu_seconds() -> float:
    """CPU time (user + system) of this process so far."""
    return time.process_time()

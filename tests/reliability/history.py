"""Record what a store committed and what confhub delivered, then check the history offline.

Modelled on etcd's robustness validator (``tests/robustness/validate/watch.go``). A scenario
feeds a :class:`History` from both sides:

- the **store**: :meth:`History.commit` once per store revision (etcd revision, Consul
  index) with every key it set or deleted, in commit order (for etcd read back from the
  server's own history, see ``faults.etcd_history``);
- **confhub**: :meth:`History.attach` subscribes to a hub and records every ``Change``
  (generation, key, old, new, source) and the snapshot it started from; reader threads
  (:meth:`History.start_readers`) sample ``hub.snapshot()``, ``hub.get`` and ``view.current``
  with the generation(s) they were read at.

:meth:`History.check` then validates, per subscriber (see ``docs/reliability.md`` for the
exact definitions): **ordered**, **no duplicates**, **atomic**, **no gap**, **reads**
(every served value belongs to one delivered snapshot; per-reader generations never go
back) and **convergence**. It raises ``HistoryViolation`` with a readable report.

Values are compared by a short SHA-256 of their text (``None`` = key absent). Scenarios
write a distinct value per write of a key, so a delivered value names one commit.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core_testlib import wait_for

from confhub import MISSING, Change, Hub

Hash = str | None  # None: the key is absent


def vhash(value: Any) -> Hash:
    """The short hash confhub-side and store-side values are compared by (None: absent)."""
    if value is None or value is MISSING:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    return hashlib.sha256(str(value).encode("utf-8", "surrogateescape")).hexdigest()[:12]


class HistoryViolation(AssertionError):
    """The recorded history breaks one or more properties; the message lists them."""


@dataclass(frozen=True)
class Commit:
    """One key written by one store revision (``value`` None: deleted)."""

    revision: int
    key: str
    value: Hash
    preview: str


@dataclass(frozen=True)
class Delivery:
    """One key of one ``Change`` a subscriber received."""

    generation: int
    key: str
    old: Hash
    new: Hash
    source: str


@dataclass(frozen=True)
class Sample:
    """Values a reader was served, read at some generation in ``[low, high]``."""

    reader: str
    low: int
    high: int
    values: Mapping[str, Hash]
    exact: bool  # one snapshot (low == high and all keys read from it)


@dataclass
class Subscriber:
    """What one subscription received: the snapshot it started from and every change."""

    name: str
    start_generation: int
    start: dict[str, Hash]
    changes: list[tuple[int, str, tuple[Delivery, ...]]] = field(default_factory=list)


class History:
    """A thread-safe log of one scenario; :meth:`check` validates it offline."""

    def __init__(self, name: str = "scenario", *, keys: Callable[[str], bool] | None = None):
        self.name = name
        #: Which confhub keys belong to the recorded store (others are ignored).
        self.owns = keys or (lambda _key: True)
        self._lock = threading.Lock()
        self.commits: list[Commit] = []
        self.subscribers: list[Subscriber] = []
        self.samples: list[Sample] = []
        self._subs_by_name: dict[str, Subscriber] = {}
        self.final_store: dict[str, Hash] | None = None
        self.final_hub: dict[str, Hash] | None = None

    # -- store side ------------------------------------------------------------------------
    def commit(self, revision: int, changes: Mapping[str, Any]) -> None:
        """Record that store ``revision`` set (or, with ``None``, deleted) these keys."""
        with self._lock:
            for key, value in changes.items():
                c = Commit(revision, key, vhash(value), _preview(value))
                if c not in self.commits[-len(changes) - 1 :]:
                    self.commits.append(c)

    def store_state(self, state: Mapping[str, Any]) -> None:
        """Record the store's final state (confhub keys to values)."""
        self.final_store = {k: vhash(v) for k, v in state.items()}

    # -- confhub side ----------------------------------------------------------------------
    def attach(self, hub: Hub, name: str = "main", prefix: str = "") -> Subscriber:
        """Subscribe to ``hub`` and record every change; call before the faults start."""
        holder: list[Subscriber] = []
        early: list[Change] = []

        def on_change(change: Change) -> None:
            deliveries = tuple(
                Delivery(change.generation, c.key, vhash(c.old), vhash(c.new), change.source)
                for c in change.changes
                if self.owns(c.key)
            )
            with self._lock:
                if not holder:
                    early.append(change)
                    return
                sub = holder[0]
                if change.generation > sub.start_generation or sub.changes:
                    sub.changes.append((change.generation, change.source, deliveries))

        hub.subscribe(on_change, prefix=prefix)
        snap = hub.snapshot()
        start = {k: vhash(v) for k, v in snap.flat().items() if self.owns(k)}
        sub = Subscriber(name, snap.generation, start)
        with self._lock:
            holder.append(sub)
            self.subscribers.append(sub)
            self._subs_by_name[name] = sub
            for change in early:  # delivered between subscribe() and snapshot()
                if change.generation > snap.generation:
                    sub.changes.append(
                        (
                            change.generation,
                            change.source,
                            tuple(
                                Delivery(
                                    change.generation,
                                    c.key,
                                    vhash(c.old),
                                    vhash(c.new),
                                    change.source,
                                )
                                for c in change.changes
                                if self.owns(c.key)
                            ),
                        )
                    )
        return sub

    def hub_state(self, hub: Hub) -> None:
        """Record the hub's final snapshot."""
        self.final_hub = {k: vhash(v) for k, v in hub.snapshot().flat().items() if self.owns(k)}

    def sample_snapshot(self, reader: str, hub: Hub, keys: Iterable[str]) -> None:
        """Read ``keys`` from one ``hub.snapshot()`` (an exact, atomic sample)."""
        snap = hub.snapshot()
        values = {k: vhash(snap.flat().get(k)) for k in keys}
        self._add(Sample(reader, snap.generation, snap.generation, values, True))

    def sample_get(self, reader: str, hub: Hub, key: str) -> None:
        """Read one key with ``hub.get`` between two reads of ``hub.generation``."""
        low = hub.generation
        value = hub.get(key, None)
        high = hub.generation
        self._add(Sample(reader, low, high, {key: vhash(value)}, False))

    def sample_view(self, reader: str, view: Any, fields: Mapping[str, str]) -> None:
        """Read ``view.current``; ``fields`` maps attribute names to confhub keys.

        The hub assigns ``current`` before ``generation`` and only when the view's fields
        change, so the instance belongs to some generation in
        ``[generation read before, generation read after + 1]``... or any later one in
        which the view's fields did not change: the checker allows both.
        """
        low = view.generation
        current = view.current
        high = view.generation
        values = {key: vhash(getattr(current, attr)) for attr, key in fields.items()}
        self._add(Sample(reader, low, high + 1, values, False))

    def _add(self, sample: Sample) -> None:
        with self._lock:
            self.samples.append(sample)

    def start_readers(
        self,
        count: int,
        read: Callable[[str], None],
        *,
        interval: float = 0.001,
        limit: int = 200_000,
    ) -> Callable[[], None]:
        """Start ``count`` reader threads calling ``read(reader_name)`` in a bounded loop.

        Returns ``stop()``, which stops and joins them (call it before ``check``).
        """
        stop = threading.Event()
        errors: list[BaseException] = []

        def loop(name: str) -> None:
            n = 0
            while not stop.is_set() and n < limit:
                try:
                    read(name)
                except Exception as exc:  # noqa: BLE001 - reported by stop()
                    errors.append(exc)
                    return
                n += 1
                stop.wait(interval)

        threads = [
            threading.Thread(target=loop, args=(f"reader-{i}",), name=f"test-reader-{i}")
            for i in range(count)
        ]
        for t in threads:
            t.start()

        def stop_all() -> None:
            stop.set()
            for t in threads:
                t.join(10)
            assert not [t for t in threads if t.is_alive()], "a reader thread did not stop"
            if errors:
                raise AssertionError(f"a reader failed: {errors[0]!r}") from errors[0]

        return stop_all

    # -- the check -------------------------------------------------------------------------
    def check(self) -> Report:
        """Validate the history; raise :class:`HistoryViolation` listing every violation."""
        report = check_history(self)
        if report.violations:
            raise HistoryViolation(report.render())
        return report


@dataclass
class Report:
    """The outcome of :func:`check_history`: violations by property, and some counts."""

    name: str
    violations: list[tuple[str, str]] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    def add(self, prop: str, message: str) -> None:
        self.violations.append((prop, message))

    def properties(self) -> set[str]:
        return {p for p, _ in self.violations}

    def render(self, limit: int = 12) -> str:
        lines = [f"history check of {self.name!r} failed ({len(self.violations)} violations):"]
        by_prop: dict[str, list[str]] = {}
        for prop, msg in self.violations:
            by_prop.setdefault(prop, []).append(msg)
        for prop, msgs in by_prop.items():
            lines.append(f"  [{prop}] {len(msgs)}:")
            lines += [f"    - {m}" for m in msgs[:limit]]
            if len(msgs) > limit:
                lines.append(f"    ... and {len(msgs) - limit} more")
        lines.append(f"  stats: {self.stats}")
        return "\n".join(lines)


def _preview(value: Any) -> str:
    if value is None or value is MISSING:
        return "<absent>"
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return repr(text[:24] + ("..." if len(text) > 24 else ""))


def check_history(history: History) -> Report:
    """Check every property; return the report (``History.check`` raises on violations)."""
    report = Report(history.name)
    commits = [c for c in history.commits if history.owns(c.key)]
    report.stats["commits"] = len(commits)
    report.stats["revisions"] = len({c.revision for c in commits})
    # Commit order must be by revision (the store side is recorded in commit order).
    for a, b in itertools.pairwise(commits):
        if b.revision < a.revision:
            report.add("store", f"commits recorded out of order: {a} then {b}")
            return report

    # The store's state after every revision, and per key its effective commits: those
    # that changed the key's value (a rewrite of the same value is no change to deliver).
    state: dict[str, Hash] = {}
    effective: dict[str, list[Commit]] = {}
    by_revision: dict[int, list[Commit]] = {}
    for c in commits:
        if state.get(c.key) != c.value:
            effective.setdefault(c.key, []).append(c)
            by_revision.setdefault(c.revision, []).append(c)
        if c.value is None:
            state.pop(c.key, None)
        else:
            state[c.key] = c.value
    final_store = history.final_store if history.final_store is not None else state
    if history.final_store is not None and history.final_store != state:
        report.add(
            "store",
            "the recorded commits do not add up to the store's final state: "
            + _diff(state, history.final_store, "commits", "store"),
        )

    for sub in history.subscribers:
        _check_subscriber(report, history, sub, effective, by_revision, final_store)
    if history.final_hub is not None and history.final_hub != final_store:
        report.add(
            "convergence",
            "the hub's final snapshot differs from the store: "
            + _diff(history.final_hub, final_store, "hub", "store"),
        )
    return report


def _check_subscriber(
    report: Report,
    history: History,
    sub: Subscriber,
    effective: dict[str, list[Commit]],
    by_revision: dict[int, list[Commit]],
    final_store: dict[str, Hash],
) -> None:
    tag = sub.name
    # The store revision the starting snapshot reflects: the first whose state equals it.
    start_rev = _state_revision(history, sub.start)
    if start_rev is None:
        report.add(
            "atomic",
            f"{tag}: the starting snapshot (generation {sub.start_generation}) matches the "
            "store's state at no revision (a torn load)",
        )
        start_rev = 0
    position: dict[str, int] = {
        key: _start_index(start_rev, commits) for key, commits in effective.items()
    }
    for key in sub.start:
        if key not in effective:
            report.add("ordered", f"{tag}: the starting snapshot holds {key}, never committed")

    position_at_start = dict(position)
    snapshot: dict[str, Hash] = dict(sub.start)
    snapshots: dict[int, dict[str, Hash]] = {sub.start_generation: dict(snapshot)}
    # For every key, the generation that first showed each effective commit (by index).
    shown_at: dict[tuple[str, int], int] = {}
    last_gen = sub.start_generation
    window_low = start_rev
    windows: list[tuple[int, int, int]] = []  # (generation, low exclusive, high inclusive)
    deliveries = 0
    for generation, source, changes in sub.changes:
        if generation <= last_gen:
            report.add(
                "ordered" if generation < last_gen else "duplicates",
                f"{tag}: generation {generation} ({source}) after generation {last_gen}",
            )
            continue
        last_gen = generation
        seen_keys: set[str] = set()
        high = window_low
        for d in changes:
            deliveries += 1
            if d.key in seen_keys:
                report.add("duplicates", f"{tag}: {d.key} twice in generation {generation}")
                continue
            seen_keys.add(d.key)
            if d.old != snapshot.get(d.key):
                report.add(
                    "ordered",
                    f"{tag}: generation {generation} says {d.key} was {d.old}, "
                    f"but the previous snapshot had {snapshot.get(d.key)}",
                )
            commits = effective.get(d.key, [])
            pos = position.get(d.key, -1)
            later = [i for i in range(pos + 1, len(commits)) if commits[i].value == d.new]
            if later:
                idx = later[0]
                position[d.key] = idx
                shown_at.setdefault((d.key, idx), generation)
                high = max(high, commits[idx].revision)
            else:
                earlier = [i for i in range(pos + 1) if commits[i].value == d.new]
                if pos >= 0 and commits[pos].value == d.new:
                    report.add(
                        "duplicates",
                        f"{tag}: generation {generation} delivers {d.key}={commits[pos].preview} "
                        f"again (revision {commits[pos].revision} was already delivered)",
                    )
                elif earlier:
                    c = commits[earlier[-1]]
                    report.add(
                        "ordered",
                        f"{tag}: generation {generation} delivers {d.key}={c.preview} of "
                        f"revision {c.revision} after revision "
                        f"{commits[pos].revision if pos >= 0 else '?'} (went back)",
                    )
                else:
                    report.add(
                        "ordered",
                        f"{tag}: generation {generation} delivers {d.key}={d.new}, a value "
                        "the store never committed",
                    )
            if d.new is None:
                snapshot.pop(d.key, None)
            else:
                snapshot[d.key] = d.new
        windows.append((generation, window_low, high))
        window_low = high
        snapshots[generation] = dict(snapshot)
    report.stats[f"{tag}.generations"] = len(sub.changes)
    report.stats[f"{tag}.deliveries"] = deliveries

    # Atomic: every key an effective revision changed first shows it (or a later value of
    # the key) in one generation. Revisions the starting snapshot already held are skipped.
    first_shown: dict[tuple[str, int], int] = {}
    for key, commits in effective.items():
        best: int | None = None
        for i in range(len(commits) - 1, -1, -1):
            g = shown_at.get((key, i))
            if g is not None and (best is None or g < best):
                best = g
            if best is not None:
                first_shown[(key, i)] = best
    for revision, commits in by_revision.items():
        pending = [c for c in commits if effective[c.key].index(c) > position_at_start[c.key]]
        if len(pending) < 2:
            continue
        gens = {c.key: first_shown.get((c.key, effective[c.key].index(c))) for c in pending}
        seen = set(gens.values())
        if len(seen) > 1:
            spread = ", ".join(f"{k}@{g}" for k, g in sorted(gens.items(), key=str)[:8])
            report.add(
                "atomic",
                f"{tag}: the {len(pending)} keys of revision {revision} first appear in "
                f"different generations: {spread}",
            )

    # No gap: an effective commit not shown may only be one a later commit of the same key
    # superseded inside the same window (the store revisions one generation covered).
    for key, commits in effective.items():
        start_pos = position_at_start[key]
        for i, c in enumerate(commits):
            if i <= start_pos or (key, i) in shown_at:
                continue
            window = next((w for w in windows if w[1] < c.revision <= w[2]), None)
            nxt = commits[i + 1] if i + 1 < len(commits) else None
            if window is not None and nxt is not None and nxt.revision <= window[2]:
                continue  # superseded inside the window that covered it
            if window is None and nxt is None:
                msg = "never delivered (the hub never reached its revision)"
            elif window is None:
                msg = "never delivered, and no generation covered its revision"
            else:
                msg = (
                    f"skipped by generation {window[0]}, which covered revisions "
                    f"{window[1] + 1}..{window[2]}"
                )
            report.add("gap", f"{tag}: {key}={c.preview} of revision {c.revision} {msg}")

    # Reads: every sampled value belongs to one delivered snapshot; generations per reader
    # never go back.
    last_by_reader: dict[str, int] = {}
    gens_sorted = sorted(snapshots)
    for s in history.samples:
        if s.exact:
            prev = last_by_reader.get(s.reader, -1)
            if s.low < prev:
                report.add(
                    "reads",
                    f"{s.reader} read generation {s.low} after generation {prev} (went back)",
                )
            last_by_reader[s.reader] = s.low
        if s.low < sub.start_generation:
            continue  # read before this subscriber started recording
        # The snapshot in force at ``low``, and every one published up to ``high``.
        at_low = max(g for g in gens_sorted if g <= s.low)
        candidates = [at_low] + [g for g in gens_sorted if s.low < g <= s.high]
        if not any(all(snapshots[g].get(k) == v for k, v in s.values.items()) for g in candidates):
            shown = dict(list(s.values.items())[:4])
            report.add(
                "reads",
                f"{s.reader} was served {shown} at generation(s) {s.low}..{s.high}, which "
                f"matches no delivered snapshot ({'torn read' if s.exact else 'stale or torn'})",
            )

    # Convergence: the last snapshot equals the store's final state.
    if snapshot != final_store:
        report.add(
            "convergence",
            f"{tag}: the last delivered snapshot (generation {last_gen}) differs from the "
            "store's final state: " + _diff(snapshot, final_store, "delivered", "store"),
        )


def _start_index(revision: int, commits: list[Commit]) -> int:
    """Index of the key's last effective commit at or before ``revision`` (-1: none)."""
    return max((i for i, c in enumerate(commits) if c.revision <= revision), default=-1)


def _state_revision(history: History, target: Mapping[str, Hash]) -> int | None:
    """The first store revision whose state equals ``target`` (0: the empty start)."""
    state: dict[str, Hash] = {}
    if state == target:
        return 0
    commits = [c for c in history.commits if history.owns(c.key)]
    for i, c in enumerate(commits):
        if c.value is None:
            state.pop(c.key, None)
        else:
            state[c.key] = c.value
        if (i + 1 == len(commits) or commits[i + 1].revision != c.revision) and state == target:
            return c.revision
    return None


def _diff(a: Mapping[str, Hash], b: Mapping[str, Hash], an: str, bn: str) -> str:
    keys = sorted(set(a) | set(b))
    diffs = [f"{k}: {an}={a.get(k)} {bn}={b.get(k)}" for k in keys if a.get(k) != b.get(k)]
    more = f" (+{len(diffs) - 6} more)" if len(diffs) > 6 else ""
    return "; ".join(diffs[:6]) + more


def wait_until(predicate: Callable[[], Any], timeout: float, what: str = "") -> Any:
    """Poll ``predicate`` (bounded); raise AssertionError naming ``what`` on timeout."""
    return wait_for(predicate, timeout, 0.01, what)

"""asyncio: start and close a hub off the event loop, and events as async iterators.

The hub's lifecycle calls block (``start()`` reads every source, ``close()`` joins threads):
:func:`run_start` and :func:`run_close` run them on a worker thread so the event loop keeps
serving. The notifier thread delivers events through plain callbacks (``hub.subscribe``);
:func:`stream` turns a subscription into an async iterator, handing each event to the
consumer's loop with ``call_soon_threadsafe``. With ``since`` (a snapshot the consumer
already has), the stream starts exactly after it: nothing published later is missed, nothing
the consumer has is repeated (see :func:`stream`).

This module takes the hub's callables (``subscribe``, ``snapshot``, ``start``, ``close``),
not the hub, so it sits below ``_hub`` in the layering; ``Hub.astart``/``Hub.aclose``/
``Hub.changes``/``Hub.events`` are one-line delegations.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from ._dispatch import Event, Subscription
from ._errors import HubStateError
from ._health import SourceHealth
from ._merge import MISSING
from ._snapshot import Change, ErrorEvent, KeyChange, Snapshot

T = TypeVar("T")

#: ``hub.subscribe``'s signature, as this module calls it.
Subscribe = Callable[..., Subscription]


async def _finish(future: asyncio.Future[T]) -> T:
    """Await ``future`` to its end even when the awaiting task is cancelled meanwhile (the
    thread behind it runs on anyway); re-raise the cancellation afterwards."""
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.done():
                raise
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result


async def run_start(start: Callable[[], T], close: Callable[[], None]) -> T:
    """Run ``start()`` on a worker thread and return its result.

    Cancelled while it runs (the server shuts down during start-up), it calls ``close()``
    (which makes a running start stop at its next step and close what it opened), waits for
    both threads to finish, and re-raises the cancellation: nothing is left running.
    """
    loop = asyncio.get_running_loop()
    started = loop.run_in_executor(None, start)
    try:
        return await asyncio.shield(started)
    except asyncio.CancelledError:
        # Also when start finished as the cancellation came: nobody will close it otherwise.
        closing = loop.run_in_executor(None, close)
        try:
            await _finish(closing)
        finally:
            with contextlib.suppress(Exception):  # start's error is moot: we were cancelled
                await _finish(started)
        raise


async def run_close(close: Callable[[], None]) -> None:
    """Run ``close()`` on a worker thread; a cancellation waits for it to finish first (close
    is bounded: it joins the hub's threads with timeouts), so shutdown never leaves threads."""
    await _finish(asyncio.get_running_loop().run_in_executor(None, close))


def catch_up(old: Snapshot, new: Snapshot, prefix: str) -> Change | None:
    """One :class:`Change` taking a consumer from ``old`` to ``new`` (keys at or below
    ``prefix``), or ``None`` when nothing differs there. Its ``source`` says it is a
    catch-up, and which generations it covers."""
    before, after = old.flat(), new.flat()
    changes = tuple(
        KeyChange(key, before.get(key, MISSING), after.get(key, MISSING))
        for key in sorted({*before, *after})
        if before.get(key, MISSING) != after.get(key, MISSING)
    )
    change = Change(
        new.generation,
        changes,
        f"catch-up from generation {old.generation} to {new.generation}",
    )
    return change.filtered(prefix) if changes else None


async def stream(
    subscribe: Subscribe,
    snapshot: Callable[[], Snapshot],
    *,
    prefix: str = "",
    since: Snapshot | None = None,
    changes: bool = True,
    errors: bool = False,
    states: bool = False,
) -> AsyncIterator[Any]:
    """The hub's events as an async iterator: :class:`Change` (if ``changes``), and
    :class:`ErrorEvent` (``errors``) and :class:`SourceHealth` (``states``), in the order the
    notifier delivers them, until the hub closes (at once on a closed hub). Queued without
    bound for a slow consumer, like the notifier's own backlog.

    ``since`` is a snapshot the consumer already has (an SSE endpoint sent it first). The
    subscription is registered *before* the current snapshot is read, so every change
    published after that read reaches this stream; changes up to that read are skipped, and
    if the hub moved past ``since`` meanwhile, one catch-up :class:`Change` (``since`` ->
    current, keys under ``prefix``) comes first. Nothing is missed and nothing repeated.
    """
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Event | None] = asyncio.Queue()

    def push(item: Event | None) -> None:
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, item)
        except RuntimeError:  # the consumer's loop is closed: nobody is listening
            pass

    def on_change(change: Change) -> None:
        push(change)

    def on_error(event: ErrorEvent) -> None:
        push(event)

    def on_state(health: SourceHealth) -> None:
        push(health)

    try:
        sub = subscribe(
            on_change if changes or since is not None else None,
            prefix=prefix,
            on_error=on_error if errors else None,
            on_state=on_state if states else None,
        )
    except HubStateError:
        return  # closed (before it started, or its start failed): nothing will come
    sub.on_close = lambda: push(None)
    try:
        if not sub.active:
            return  # closed between subscribe and on_close: the close did not see on_close
        seen = -1
        if since is not None:
            try:
                current = snapshot()
            except HubStateError:
                return
            seen = current.generation
            first = catch_up(since, current, prefix) if seen > since.generation else None
            if first is not None and changes:
                yield first
        while True:
            item = await inbox.get()
            if item is None:
                return
            if isinstance(item, Change) and (item.generation <= seen or not changes):
                continue
            yield item
    finally:
        sub.cancel()

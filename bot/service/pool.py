"""The bounded model pool: model work off the event loop, in two lanes, with the queue position told.

Every model call of the process (decoding and embedding a video, a turn's query and re-rank, an
excerpt or preview render, and, in `serve`, each track a catalog refresh analyses) runs on one of
`workers` threads. Requests wait on the event loop in two lanes:

- **interactive** (users' turns): first come, first served, and told how many requests are ahead;
- **catalog** (refresh work): served only when no interactive request waits, and at most
  `catalog_slots` at a time. A refresh is cut into calls of one track each, so a user's turn never
  waits behind more than the one catalog call that is running (DESIGN.md, "Scale").

A waiter that is cancelled leaves the queue; a slot handed to a request cancelled at that moment
is passed on, never lost.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import inspect
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from bot.service.contract import StatusEvent

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_WORKERS = 2  # model threads (one per core of the 2-core reference machine)
CATALOG_SLOTS = 1  # model threads a catalog refresh may hold at once
INTERACTIVE: Literal["interactive"] = "interactive"
CATALOG: Literal["catalog"] = "catalog"
Lane = Literal["interactive", "catalog"]

StatusCallback = Callable[[StatusEvent], Awaitable[None] | None]


async def notify(cb: StatusCallback | None, message: str, ahead: int | None = None) -> None:
    """Tell the caller how its request is going; a broken status channel never fails the request."""
    if cb is None:
        return
    try:
        result = cb(StatusEvent(message, ahead))
        if inspect.isawaitable(result):
            await result
    except Exception:  # noqa: BLE001 - a broken status channel must not fail the turn
        log.warning("status callback failed for %r", message, exc_info=True)


class ModelPool:
    """`workers` threads, handed out to the interactive lane first (module docstring)."""

    def __init__(self, workers: int = DEFAULT_WORKERS, *, catalog_slots: int = CATALOG_SLOTS) -> None:
        if workers < 1:
            raise ValueError(f"a model pool needs at least one worker, got {workers}")
        if not 1 <= catalog_slots <= workers:
            raise ValueError(f"catalog_slots must be between 1 and {workers}, got {catalog_slots}")
        self.workers = workers
        self.catalog_slots = catalog_slots
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="musechat-model")
        self._free = workers
        self._running = {INTERACTIVE: 0, CATALOG: 0}
        self._queues: dict[str, collections.deque[asyncio.Future[None]]] = {
            INTERACTIVE: collections.deque(),
            CATALOG: collections.deque(),
        }
        self.completed = {INTERACTIVE: 0, CATALOG: 0}  # calls finished per lane

    @property
    def waiting(self) -> int:
        """Interactive requests waiting for a thread."""
        return sum(1 for f in self._queues[INTERACTIVE] if not f.done())

    def _can_start(self, lane: str) -> bool:
        if self._free <= 0:
            return False
        if lane == CATALOG:
            return self._running[CATALOG] < self.catalog_slots and not self.waiting
        return True

    def _take(self, lane: str) -> None:
        self._free -= 1
        self._running[lane] += 1

    def _release(self, lane: str) -> None:
        self._free += 1
        self._running[lane] -= 1
        self._wake()

    def _wake(self) -> None:
        for lane in (INTERACTIVE, CATALOG):
            queue = self._queues[lane]
            while queue and self._can_start(lane):
                fut = queue.popleft()
                if fut.done():  # cancelled while waiting
                    continue
                self._take(lane)
                fut.set_result(None)

    async def _acquire(self, lane: Lane, on_status: StatusCallback | None) -> None:
        queue = self._queues[lane]
        if not any(not f.done() for f in queue) and self._can_start(lane):
            self._take(lane)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(fut)
        if lane == INTERACTIVE:
            ahead = sum(1 for f in queue if not f.done())  # the waiters before us, and one running call to finish
            await notify(on_status, f"{ahead} request{'s' if ahead != 1 else ''} ahead of you; yours is queued", ahead)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # the slot was ours already: pass it on
                self._release(lane)
            raise

    async def run(
        self, fn: Callable[..., T], /, *args: Any, on_status: StatusCallback | None = None, lane: Lane = INTERACTIVE, **kwargs: Any
    ) -> T:  # fmt: skip
        """Run `fn(*args, **kwargs)` on a model thread once its lane may; tell the caller if it waits."""
        await self._acquire(lane, on_status)
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        finally:
            self.completed[lane] += 1
            self._release(lane)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def settle_heap() -> None:
    """Move everything loaded so far (models, libraries) out of the garbage collector's sight.

    A full (generation 2) collection walks every tracked object; with torch and transformers
    loaded that took 40-200 ms here, on whichever thread triggered it: on the event loop's, every
    chat waits. After `gc.freeze()` those objects sit in a permanent generation that collections
    skip, so they stay short (the objects are long-lived anyway). Called once after start-up.
    """
    gc.collect()
    gc.freeze()
    log.debug("froze %d objects out of garbage collection", gc.get_freeze_count())

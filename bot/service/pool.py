"""The bounded model pool: model work off the event loop, in arrival order, with the queue position told.
"""


import asyncio
import functools
import gc
import inspect
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_WORKERS = 2  # model threads (one per core of the 2-core reference machine)

StatusCallback = Callable[[str], Awaitable[None] | None]


async def notify(cb: StatusCallback | None, message: str) -> None:
    if cb is None:
        return
    try:
        result = cb(message)
        if inspect.isawaitable(result):
            await result
    except Exception:  # noqa: BLE001 - a broken status channel must not fail the turn
        log.warning("status callback failed for %r", message, exc_info=True)


class ModelPool:
    """A thread pool of `workers` threads behind an asyncio semaphore of the same size.

    The semaphore queues requests in arrival order on the event loop (asyncio's semaphore is
    fair), so the number of requests ahead of a newcomer is known and can be told; the threads
    keep the event loop free while models run.
    """

    def __init__(self, workers: int = DEFAULT_WORKERS) -> None:
        if workers < 1:
            raise ValueError(f"a model pool needs at least one worker, got {workers}")
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="musechat-model")
        self._slots = asyncio.Semaphore(workers)
        self._waiting = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    async def run(self, fn: Callable[..., T], /, *args: Any, on_status: StatusCallback | None = None, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` on a worker thread once a slot is free; tell the caller if it waits."""
        if self._slots.locked() or self._waiting:
            ahead = self._waiting + 1  # the waiters before us, and one running request to finish
            self._waiting += 1
            try:
                await notify(on_status, f"{ahead} request{'s' if ahead != 1 else ''} ahead of you; yours is queued")
                await self._slots.acquire()
            finally:
                self._waiting -= 1
        else:
            await self._slots.acquire()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        finally:
            self._slots.release()

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

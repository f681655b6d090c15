"""bot/service/pool.py: model work off the event loop in two lanes, with the queue position told."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bot.service.contract import StatusEvent
from bot.service.pool import CATALOG, INTERACTIVE, ModelPool


async def test_pool_tells_waiting_requests_how_many_are_ahead() -> None:
    pool = ModelPool(workers=1)
    gate = threading.Event()
    heard: dict[str, list[StatusEvent]] = {"b": [], "c": []}
    try:
        first = asyncio.create_task(pool.run(gate.wait, 10))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(pool.run(lambda: "b", on_status=heard["b"].append))
        await asyncio.sleep(0.05)
        third = asyncio.create_task(pool.run(lambda: "c", on_status=heard["c"].append))
        await asyncio.sleep(0.05)
        assert heard == {
            "b": [StatusEvent("1 request ahead of you; yours is queued", 1)],
            "c": [StatusEvent("2 requests ahead of you; yours is queued", 2)],
        }
        assert pool.waiting == 2
        gate.set()
        assert await asyncio.gather(first, second, third) == [True, "b", "c"]
    finally:
        pool.shutdown()


async def test_interactive_requests_overtake_queued_catalog_work() -> None:
    """A refresh's queued calls wait while users' turns run: a turn waits for one catalog call at most."""
    pool = ModelPool(workers=1)
    order: list[str] = []
    gate = threading.Event()

    def step(name: str) -> str:
        order.append(name)
        return name

    try:
        running = asyncio.create_task(pool.run(lambda: gate.wait(10) and step("catalog-1"), lane=CATALOG))
        await asyncio.sleep(0.05)
        queued_catalog = [asyncio.create_task(pool.run(step, f"catalog-{i}", lane=CATALOG)) for i in (2, 3)]
        await asyncio.sleep(0.05)
        turn = asyncio.create_task(pool.run(step, "turn", lane=INTERACTIVE))
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(running, turn, *queued_catalog)
        assert order == ["catalog-1", "turn", "catalog-2", "catalog-3"]
        assert pool.completed == {INTERACTIVE: 1, CATALOG: 3}
    finally:
        pool.shutdown()


async def test_catalog_work_takes_at_most_its_slots() -> None:
    pool = ModelPool(workers=2, catalog_slots=1)
    gate = threading.Event()
    try:
        a = asyncio.create_task(pool.run(gate.wait, 10, lane=CATALOG))
        b = asyncio.create_task(pool.run(lambda: "b", lane=CATALOG))
        await asyncio.sleep(0.05)
        assert not b.done()  # the second catalog call waits although a thread is free...
        assert await asyncio.wait_for(pool.run(lambda: "turn"), 2) == "turn"  # ...which a user's turn gets at once
        gate.set()
        assert await asyncio.gather(a, b) == [True, "b"]
    finally:
        pool.shutdown()


async def test_a_cancelled_waiter_leaves_the_queue_and_loses_no_slot() -> None:
    pool = ModelPool(workers=1)
    gate = threading.Event()
    try:
        first = asyncio.create_task(pool.run(gate.wait, 10))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(pool.run(lambda: "gone"))
        await asyncio.sleep(0.05)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        gate.set()
        await first
        assert await asyncio.wait_for(pool.run(lambda: "next"), 2) == "next"
        assert pool.waiting == 0
    finally:
        pool.shutdown()

"""Tests of storage/locks.py: per-conversation locks on SQLite (in process) and PostgreSQL (advisory)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.conversation_store import ConversationStore, Recommendation
from storage.db import default_sqlite_url, make_engine
from storage.locks import CONVERSATION_LOCK_CLASS, ConversationBusyError, _fold_int4, conversation_lock

if TYPE_CHECKING:
    from tests.storage.conftest import SqlTarget

HOLD_S = 0.25  # seconds each holder keeps the lock


async def _hold(engine: AsyncEngine, cid: int, spans: list[tuple[float, float]], hold_s: float = HOLD_S) -> None:
    async with conversation_lock(engine, cid, timeout_s=10):
        start = time.monotonic()
        await asyncio.sleep(hold_s)
        spans.append((start, time.monotonic()))


def _overlaps(spans: list[tuple[float, float]]) -> bool:
    spans = sorted(spans)
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False))


async def _advisory_holders(engine: AsyncEngine, cid: int) -> int:
    query = sa.text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND classid = :cls AND objid = :obj AND objsubid = 2"
    )
    async with engine.connect() as conn:
        return int((await conn.execute(query, {"cls": CONVERSATION_LOCK_CLASS, "obj": _fold_int4(cid)})).scalar_one())


async def test_same_conversation_serialises_other_conversations_do_not(sql_engine: AsyncEngine) -> None:
    same: list[tuple[float, float]] = []
    await asyncio.gather(*(_hold(sql_engine, 7, same) for _ in range(3)))
    assert len(same) == 3 and not _overlaps(same)

    different: list[tuple[float, float]] = []
    await asyncio.gather(*(_hold(sql_engine, cid, different) for cid in (1, 2, 3)))
    # all three held at once: the last to start started before the first to end ended (no wall-clock bound,
    # which a loaded machine breaks)
    assert len(different) == 3 and max(s for s, _ in different) < min(e for _, e in different)


async def test_lock_is_released_when_the_body_raises(sql_engine: AsyncEngine) -> None:
    with pytest.raises(RuntimeError):
        async with conversation_lock(sql_engine, 5):
            raise RuntimeError("turn failed")
    started = time.monotonic()
    async with conversation_lock(sql_engine, 5, timeout_s=1):
        pass
    assert time.monotonic() - started < 0.5


async def test_waiting_longer_than_the_timeout_raises_busy(sql_engine: AsyncEngine) -> None:
    holder_in = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with conversation_lock(sql_engine, 9):
            holder_in.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await holder_in.wait()
    started = time.monotonic()
    with pytest.raises(ConversationBusyError):
        async with conversation_lock(sql_engine, 9, timeout_s=0.3):
            pytest.fail("acquired a held lock")
    assert 0.25 < time.monotonic() - started < 2.0
    release.set()
    await task
    async with conversation_lock(sql_engine, 9, timeout_s=1):
        pass


async def test_sqlite_engines_on_the_same_file_share_the_lock(tmp_path: Path) -> None:
    url = default_sqlite_url(tmp_path)
    a, b = make_engine(url), make_engine(url)
    try:
        spans: list[tuple[float, float]] = []
        await asyncio.gather(_hold(a, 3, spans), _hold(b, 3, spans))
        assert len(spans) == 2 and not _overlaps(spans)
    finally:
        await a.dispose()
        await b.dispose()


@pytest.mark.postgres
async def test_postgres_two_engines_serialise_like_two_processes(pg_target: SqlTarget) -> None:
    await pg_target.upgrade()
    a, b = pg_target.engine(), pg_target.engine()  # separate pools and in-process lock tables
    try:
        spans: list[tuple[float, float]] = []
        holder_in = asyncio.Event()

        async def hold_a() -> None:
            async with conversation_lock(a, 11, timeout_s=10):
                holder_in.set()
                assert await _advisory_holders(b, 11) == 1  # visible to the other "process"
                start = time.monotonic()
                await asyncio.sleep(HOLD_S)
                spans.append((start, time.monotonic()))

        task = asyncio.create_task(hold_a())
        await holder_in.wait()
        await _hold(b, 11, spans)
        await task
        assert len(spans) == 2 and not _overlaps(spans)
        assert await _advisory_holders(a, 11) == 0  # released

        # Writing turns to one conversation from both engines under the lock: contiguous, no repeats.
        store_a, store_b = ConversationStore(a), ConversationStore(b)
        conv = await store_a.get_or_create_conversation(
            platform="slack", channel_id="C", platform_user_id="U", profile="lite"
        )
        cid = conv.id

        async def turn(engine: AsyncEngine, store: ConversationStore) -> None:
            async with conversation_lock(engine, cid, timeout_s=30):
                shown = await store.shown_track_ids(conversation_id=cid)
                await asyncio.sleep(0.005)
                recs = [Recommendation(1, f"x{len(shown)}", 0.5)]
                await store.add_turn(conversation_id=cid, mode="zero-shot", recommendations=recs)

        await asyncio.gather(*(turn(a, store_a) if i % 2 else turn(b, store_b) for i in range(10)))
        listed = await store_a.list_turns(conversation_id=cid)
        assert [t.index for t in listed] == list(range(1, 11))
        assert [t.recommendations[0].track_id for t in listed] == [f"x{i}" for i in range(10)]
    finally:
        await a.dispose()
        await b.dispose()


@pytest.mark.postgres
async def test_postgres_busy_timeout_across_engines(pg_target: SqlTarget) -> None:
    a, b = pg_target.engine(), pg_target.engine()
    try:
        async with conversation_lock(a, 12):
            started = time.monotonic()
            with pytest.raises(ConversationBusyError):
                async with conversation_lock(b, 12, timeout_s=0.3):
                    pytest.fail("acquired a lock held by another engine")
            assert time.monotonic() - started < 2.0
        async with conversation_lock(b, 12, timeout_s=1):
            pass
    finally:
        await a.dispose()
        await b.dispose()


@pytest.mark.postgres
async def test_postgres_lock_of_a_dead_session_is_released(
    pg_target: SqlTarget, caplog: pytest.LogCaptureFixture
) -> None:
    """A crashed process's lock goes with its connection; the holder's exit only logs."""
    a, b = pg_target.engine(), pg_target.engine()
    try:
        holder_in, release = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with conversation_lock(a, 13):
                holder_in.set()
                await release.wait()

        task = asyncio.create_task(holder())
        await holder_in.wait()
        kill = sa.text(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND classid = :cls AND objid = 13 AND objsubid = 2"
        )
        async with b.connect() as conn:
            assert (await conn.execute(kill, {"cls": CONVERSATION_LOCK_CLASS})).scalars().all() == [True]
        async with conversation_lock(b, 13, timeout_s=5):
            pass
        with caplog.at_level(logging.WARNING, logger="storage.locks"):
            release.set()
            await task  # no exception from the failed unlock
        assert "unlock failed" in caplog.text
    finally:
        await a.dispose()
        await b.dispose()


@pytest.mark.postgres
async def test_postgres_locks_do_not_starve_the_engine_pool(pg_target: SqlTarget) -> None:
    """More held locks than the pool has connections, each doing a write: lock connections are separate."""
    await pg_target.upgrade()
    engine = pg_target.engine()
    try:
        store = ConversationStore(engine)
        convs = [
            await store.get_or_create_conversation(
                platform="discord", channel_id=f"c{i}", platform_user_id="u", profile="lite"
            )
            for i in range(25)
        ]
        cids = [c.id for c in convs]
        everyone_in = asyncio.Barrier(len(cids))

        async def turn(cid: int) -> None:
            async with conversation_lock(engine, cid, timeout_s=10):
                await everyone_in.wait()  # all 25 locks held at once
                await store.add_turn(conversation_id=cid, mode="zero-shot")

        await asyncio.wait_for(asyncio.gather(*(turn(cid) for cid in cids)), timeout=15)
        assert engine.pool.size() == 10 and engine.pool.checkedout() == 0
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("value", "folded"),
    [(0, 0), (7, 7), (2**31 - 1, 2**31 - 1), (2**31, -(2**31)), (2**32 + 5, 5), (-1, -1)],
)
def test_fold_int4(value: int, folded: int) -> None:
    assert _fold_int4(value) == folded


@pytest.mark.postgres
async def test_postgres_locks_held_at_once_share_one_connection(pg_target: SqlTarget) -> None:
    """A turn may hold its lock for a minute while it waits on workers: 40 turns in flight must not
    take 40 connections (the load run exhausted max_connections that way), and closing the lock
    session releases them all."""
    from storage.locks import close_lock_session

    engine, other = pg_target.engine(), pg_target.engine()
    try:
        cids = list(range(1000, 1040))
        everyone_in, done = asyncio.Barrier(len(cids) + 1), asyncio.Event()

        async def turn(cid: int) -> None:
            async with conversation_lock(engine, cid, timeout_s=10):
                await everyone_in.wait()
                await done.wait()

        tasks = [asyncio.create_task(turn(cid)) for cid in cids]
        await asyncio.wait_for(everyone_in.wait(), timeout=15)
        holders = sa.text(
            "SELECT count(DISTINCT pid), count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = :cls AND objid BETWEEN 1000 AND 1039 AND objsubid = 2"
        )
        async with other.connect() as conn:
            assert tuple((await conn.execute(holders, {"cls": CONVERSATION_LOCK_CLASS})).one()) == (1, 40)
        # another "process" still finds each of them locked
        with pytest.raises(ConversationBusyError):
            async with conversation_lock(other, 1007, timeout_s=0.2):
                pytest.fail("acquired a lock held by another engine")
        done.set()
        await asyncio.gather(*tasks)
        async with other.connect() as conn:
            assert tuple((await conn.execute(holders, {"cls": CONVERSATION_LOCK_CLASS})).one()) == (0, 0)
        async with conversation_lock(engine, 1000, timeout_s=1):  # closing the session (app shutdown) releases what it holds
            await close_lock_session(engine)
        async with other.connect() as conn:
            assert (await conn.execute(holders, {"cls": CONVERSATION_LOCK_CLASS})).one()[1] == 0
    finally:
        await engine.dispose()
        await other.dispose()

"""One turn at a time per conversation (DESIGN.md, "Data flow of one conversation").

A turn reads the conversation (the tracks already shown, the last candidate), runs the models for
seconds, then writes the next turn. Two messages of the same conversation handled at once would
both exclude the same shown tracks and could recommend the same track twice, so the bot wraps the
whole read-recommend-write cycle in :func:`conversation_lock`.

- PostgreSQL: a session-level advisory lock, which holds across every bot process on the
  database. Every lock a process (an engine, on one event loop) holds lives on ONE dedicated
  session, outside the engine's pool: a turn may hold its lock for a minute while it waits on the
  workers' jobs, and one connection per turn in flight would exhaust the server's
  ``max_connections`` under load. Taking a lock is ``pg_try_advisory_lock`` polled with backoff
  (never a blocking call, which would stall the shared session for every other turn) until the
  deadline. Closing that session releases its locks, so a crashed process cannot leave a
  conversation locked. Within one process, waiters first queue on an asyncio lock, so the server
  only sees a conversation's first waiter (session-level locks are re-entrant per session: this
  in-process lock is what excludes two turns of one process).
- SQLite: an in-process asyncio lock keyed by the database file and conversation id. SQLite
  deployments are one bot process by design (DESIGN.md, "Scale"); a second process on the same
  file would not be excluded.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.db import StorageError, make_engine

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT_S = 120.0  # seconds a turn waits for the previous turn of its conversation
# First key of pg_advisory_lock(int4, int4), naming this lock family ("MC"); the second is the
# conversation id folded into int4. Folding can only make two conversations share a lock.
CONVERSATION_LOCK_CLASS = 0x4D43
LOCK_POLL_FIRST_S = 0.02  # a busy conversation's lock is tried again after 20 ms, then 40, 80... up to:
LOCK_POLL_MAX_S = 0.25


class ConversationBusyError(StorageError):
    """The conversation stayed locked by another turn for longer than the timeout."""


class _KeyedLocks:
    """asyncio locks created on demand per key and dropped once nobody holds or awaits them."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: Hashable, deadline: float | None) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            try:
                async with asyncio.timeout(_remaining(deadline)):
                    await lock.acquire()
            except TimeoutError as exc:
                raise ConversationBusyError(f"conversation lock {key!r} not acquired in time") from exc
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


_sqlite_locks = _KeyedLocks()  # keyed by (database file, conversation id): shared by all engines
_pg_local_locks: weakref.WeakKeyDictionary[Engine, _KeyedLocks] = weakref.WeakKeyDictionary()
_pg_lock_engines: weakref.WeakKeyDictionary[Engine, AsyncEngine] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def conversation_lock(
    engine: AsyncEngine, conversation_id: int, *, timeout_s: float | None = DEFAULT_LOCK_TIMEOUT_S
) -> AsyncIterator[None]:
    """Hold the conversation's lock for the body; raise ConversationBusyError after ``timeout_s``."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    backend = engine.url.get_backend_name()
    if backend == "sqlite":
        async with _sqlite_locks.hold((engine.url.database, conversation_id), deadline):
            yield
        return
    if backend != "postgresql":
        raise ValueError(f"no conversation lock for {backend!r}")
    local = _pg_local_locks.setdefault(engine.sync_engine, _KeyedLocks())
    async with local.hold(conversation_id, deadline), _pg_advisory_lock(engine, conversation_id, deadline):
        yield


class _LockSession:
    """The one connection on which an engine's process holds its conversation locks (on one event loop)."""

    def __init__(self, lock_engine: AsyncEngine) -> None:
        self._engine = lock_engine
        self._conn: AsyncConnection | None = None
        self._mutex = asyncio.Lock()  # one statement at a time on the connection
        self._users = 0  # turns taking or holding a lock here: the connection is closed when none is left

    async def _connection(self) -> AsyncConnection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            conn = await self._engine.connect()
            self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")  # no idle transaction while held
        return self._conn

    async def _scalar(self, statement: sa.Select) -> object:
        async with self._mutex:
            conn = await self._connection()
            try:
                return (await conn.execute(statement)).scalar()
            except BaseException:
                # a broken session took its locks with it; the next statement opens a new one
                if self._conn is not None and (self._conn.invalidated or self._conn.closed):
                    self._conn = None
                raise

    async def acquire(self, conversation_id: int, objid: int, deadline: float | None) -> None:
        self._users += 1
        try:
            delay = LOCK_POLL_FIRST_S
            while True:
                if await self._scalar(sa.select(sa.func.pg_try_advisory_lock(CONVERSATION_LOCK_CLASS, objid))):
                    return
                remaining = _remaining(deadline)
                if remaining is not None and remaining <= 0:
                    raise ConversationBusyError(f"conversation {conversation_id} is busy")
                await asyncio.sleep(delay if remaining is None else min(delay, remaining))
                delay = min(delay * 2, LOCK_POLL_MAX_S)
        except BaseException:
            await self._leave()
            raise

    async def release(self, conversation_id: int, objid: int) -> None:
        try:
            # shielded: a turn cancelled while it unlocks must not leave its lock on the shared session
            released = await asyncio.shield(self._scalar(sa.select(sa.func.pg_advisory_unlock(CONVERSATION_LOCK_CLASS, objid))))
        except Exception:  # the session is gone: so is the lock
            log.warning("conversation %d: unlock failed (its lock session was lost)", conversation_id, exc_info=True)
            return
        finally:
            await self._leave()
        if not released:  # the session was replaced while the turn ran (a lost connection): the lock went with it
            log.warning("conversation %d: unlock failed: the lock was no longer held (its session was lost)", conversation_id)

    async def _leave(self) -> None:
        self._users -= 1
        if self._users == 0:  # nothing held: no idle connection left open (an engine disposed later finds none)
            await self.close(only_if_unused=True)

    async def close(self, *, only_if_unused: bool = False) -> None:
        async with self._mutex:
            if only_if_unused and self._users:  # a turn came in meanwhile and may hold a lock on it now
                return
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await conn.close()


_lock_sessions: weakref.WeakKeyDictionary[Engine, dict[asyncio.AbstractEventLoop, _LockSession]] = weakref.WeakKeyDictionary()


def _lock_session(engine: AsyncEngine) -> _LockSession:
    lock_engine = _pg_lock_engines.get(engine.sync_engine)
    if lock_engine is None:
        # NullPool: the connection is really closed on close, which releases its locks for sure.
        lock_engine = make_engine(engine.url, null_pool=True)
        _pg_lock_engines[engine.sync_engine] = lock_engine
    per_loop = _lock_sessions.setdefault(engine.sync_engine, {})
    loop = asyncio.get_running_loop()
    for other in [lp for lp in per_loop if lp.is_closed()]:  # (tests run one loop per test)
        del per_loop[other]
    session = per_loop.get(loop)
    if session is None:
        session = per_loop[loop] = _LockSession(lock_engine)
    return session


async def close_lock_session(engine: AsyncEngine) -> None:
    """Close this event loop's lock session of `engine` (releasing its locks): when the app shuts down."""
    per_loop = _lock_sessions.get(engine.sync_engine) or {}
    session = per_loop.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


@asynccontextmanager
async def _pg_advisory_lock(engine: AsyncEngine, conversation_id: int, deadline: float | None) -> AsyncIterator[None]:
    session = _lock_session(engine)
    objid = _fold_int4(conversation_id)
    await session.acquire(conversation_id, objid, deadline)
    log.debug("conversation %d locked", conversation_id)
    try:
        yield
    finally:
        await session.release(conversation_id, objid)
        log.debug("conversation %d unlocked", conversation_id)


def _fold_int4(value: int) -> int:
    """Map any integer onto PostgreSQL's int4 range (ids above 2**31 share keys, harmlessly)."""
    folded = value % 2**32
    return folded - 2**32 if folded >= 2**31 else folded


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(deadline - time.monotonic(), 0.0)

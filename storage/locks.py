"""One turn at a time per conversation (DESIGN.md, "Data flow of one conversation").

A turn reads the conversation (the tracks already shown, the last candidate), runs the models for
seconds, then writes the next turn. Two messages of the same conversation handled at once would
both exclude the same shown tracks and could recommend the same track twice, so the bot wraps the
whole read-recommend-write cycle in :func:`conversation_lock`.

- PostgreSQL: a session-level ``pg_advisory_lock`` on a dedicated connection (outside the
  engine's pool, so waiting locks never starve the pool the turn itself needs), which holds
  across every bot process on the database. Closing that connection releases the lock, so a
  crashed process cannot leave a conversation locked. Within one process, waiters first queue on
  an asyncio lock, so that only one connection per conversation waits on the server.
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
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import StorageError, make_engine

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT_S = 120.0  # seconds a turn waits for the previous turn of its conversation
# First key of pg_advisory_lock(int4, int4), naming this lock family ("MC"); the second is the
# conversation id folded into int4. Folding can only make two conversations share a lock.
CONVERSATION_LOCK_CLASS = 0x4D43
PG_LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE raised when lock_timeout expires


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


@asynccontextmanager
async def _pg_advisory_lock(engine: AsyncEngine, conversation_id: int, deadline: float | None) -> AsyncIterator[None]:
    lock_engine = _pg_lock_engines.get(engine.sync_engine)
    if lock_engine is None:
        # NullPool: the connection is really closed on exit, which releases the lock for sure.
        lock_engine = make_engine(engine.url, null_pool=True)
        _pg_lock_engines[engine.sync_engine] = lock_engine
    objid = _fold_int4(conversation_id)
    async with lock_engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")  # no idle transaction while held
        remaining = _remaining(deadline)
        if remaining is not None:
            # SET takes no bind parameters; the value is a formatted integer.
            await conn.execute(sa.text(f"SET lock_timeout = {max(int(remaining * 1000), 1)}"))
        try:
            await conn.execute(sa.select(sa.func.pg_advisory_lock(CONVERSATION_LOCK_CLASS, objid)))
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == PG_LOCK_NOT_AVAILABLE:
                raise ConversationBusyError(f"conversation {conversation_id} is busy") from exc
            raise
        log.debug("conversation %d locked", conversation_id)
        try:
            yield
        finally:
            try:
                await conn.execute(sa.select(sa.func.pg_advisory_unlock(CONVERSATION_LOCK_CLASS, objid)))
                log.debug("conversation %d unlocked", conversation_id)
            except Exception:  # closing the connection (next line) releases the lock anyway
                log.warning("conversation %d: unlock failed; closing its connection", conversation_id, exc_info=True)


def _fold_int4(value: int) -> int:
    """Map any integer onto PostgreSQL's int4 range (ids above 2**31 share keys, harmlessly)."""
    folded = value % 2**32
    return folded - 2**32 if folded >= 2**31 else folded


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(deadline - time.monotonic(), 0.0)

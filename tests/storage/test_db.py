"""Tests of storage/db.py: URLs, the connection policy, dead databases, ensure_schema."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import (
    DatabaseUnavailableError,
    SchemaOutOfDateError,
    check_connection,
    current_revision,
    default_sqlite_url,
    ensure_schema,
    head_revision,
    make_engine,
    normalize_url,
    read_only,
)
if TYPE_CHECKING:
    from tests.storage.conftest import SqlTarget

FAIL_FAST_S = 3.0  # a dead database must be reported within this many seconds


def test_default_sqlite_url_is_a_file_in_the_data_dir(tmp_path: Path) -> None:
    assert default_sqlite_url(tmp_path / "data") == f"sqlite+aiosqlite:///{tmp_path}/data/musechat.sqlite3"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://bot:pw@db:5432/musechat", "postgresql+asyncpg://bot:***@db:5432/musechat"),
        ("postgresql+asyncpg://db/musechat", "postgresql+asyncpg://db/musechat"),
        ("postgresql+psycopg2://db/musechat", "postgresql+asyncpg://db/musechat"),
        ("sqlite:////srv/musechat.sqlite3", "sqlite+aiosqlite:////srv/musechat.sqlite3"),
    ],
)
def test_normalize_url_picks_the_async_driver(url: str, expected: str) -> None:
    assert normalize_url(url).render_as_string(hide_password=True) == expected


def test_normalize_url_rejects_other_databases() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        normalize_url("mysql://db/musechat")


async def test_sqlite_connection_policy(tmp_path: Path) -> None:
    engine = make_engine(default_sqlite_url(tmp_path))
    try:
        async with engine.connect() as conn:
            pragmas = [
                (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar_one()
                for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
            ]
        assert pragmas == ["wal", 1, 15000, 1]  # synchronous NORMAL = 1
    finally:
        await engine.dispose()


@pytest.fixture
async def sqlite_counter(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(default_sqlite_url(tmp_path))
    async with engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE counter (n INTEGER PRIMARY KEY)")
    yield engine
    await engine.dispose()


async def test_sqlite_read_then_write_transactions_do_not_fail_busy(sqlite_counter: AsyncEngine) -> None:
    """Deferred transactions that read, then write, hit SQLITE_BUSY under WAL; BEGIN IMMEDIATE queues them."""

    async def next_number() -> int:
        async with sqlite_counter.begin() as conn:
            n = (await conn.exec_driver_sql("SELECT coalesce(max(n), 0) + 1 FROM counter")).scalar_one()
            await asyncio.sleep(0.001)
            await conn.exec_driver_sql(f"INSERT INTO counter (n) VALUES ({n})")
            return int(n)

    numbers = await asyncio.gather(*(next_number() for _ in range(20)))
    assert sorted(numbers) == list(range(1, 21))


async def test_sqlite_readers_do_not_wait_for_a_writer(sqlite_counter: AsyncEngine) -> None:
    async with sqlite_counter.begin() as writer:
        await writer.exec_driver_sql("INSERT INTO counter (n) VALUES (1)")  # uncommitted, holds the write lock
        async with read_only(sqlite_counter).connect() as reader:
            seen = await asyncio.wait_for(reader.exec_driver_sql("SELECT count(*) FROM counter"), timeout=2)
            assert seen.scalar_one() == 0


@pytest.mark.parametrize(
    ("make_url", "expect_in_message"),
    [
        (lambda tmp: "postgresql://musechat:s3cret@127.0.0.1:1/test", ["127.0.0.1:1", "PostgreSQL is running"]),
        (lambda tmp: default_sqlite_url(tmp / "no" / "such" / "dir"), ["no/such/dir", "data directory"]),
    ],
    ids=["postgres-closed-port", "sqlite-missing-dir"],
)
async def test_dead_database_fails_fast_with_a_clear_error(
    tmp_path: Path, make_url: Callable[[Path], str], expect_in_message: list[str]
) -> None:
    engine = make_engine(make_url(tmp_path))
    started = time.monotonic()
    try:
        with pytest.raises(DatabaseUnavailableError) as caught:
            await check_connection(engine)
    finally:
        await engine.dispose()
    assert time.monotonic() - started < FAIL_FAST_S
    message = caught.value.user_message
    assert message.startswith("Database ") and "is unavailable" in message
    for part in expect_in_message:
        assert part in message
    assert "s3cret" not in message


async def test_hung_postgres_server_times_out() -> None:
    """A server that accepts TCP but never answers: the connect timeout turns it into a clear error."""
    silent: list[asyncio.StreamWriter] = []

    async def accept_and_ignore(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)

    server = await asyncio.start_server(accept_and_ignore, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    engine = make_engine(f"postgresql://postgres@127.0.0.1:{port}/test", connect_timeout_s=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(DatabaseUnavailableError, match=r"no answer within 0\.5 s"):
            await check_connection(engine)
        assert time.monotonic() - started < FAIL_FAST_S
    finally:
        await engine.dispose()
        for writer in silent:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.postgres
async def test_missing_postgres_database_is_unavailable(pg_target: SqlTarget) -> None:
    url = sa.make_url(pg_target.url).set(database="musechat_no_such_db").render_as_string(hide_password=False)
    engine = make_engine(url)
    try:
        with pytest.raises(DatabaseUnavailableError, match='database "musechat_no_such_db" does not exist'):
            await check_connection(engine)
    finally:
        await engine.dispose()


async def test_store_call_on_a_dead_database_raises_unavailable() -> None:
    from storage.event_store import EventStore

    engine = make_engine("postgresql://postgres@127.0.0.1:1/test")
    try:
        with pytest.raises(DatabaseUnavailableError):
            await EventStore(engine).mark_processed(platform="slack", event_id="Ev1")
    finally:
        await engine.dispose()


async def test_ensure_schema_upgrades_the_embedded_sqlite_default(tmp_path: Path) -> None:
    url = default_sqlite_url(tmp_path / "fresh" / "data")  # the data directory does not exist yet
    await ensure_schema(url)
    assert await current_revision(url) == head_revision()
    await ensure_schema(url)  # a second start finds it current


@pytest.mark.postgres
async def test_ensure_schema_only_checks_postgres_unless_asked(pg_target: SqlTarget) -> None:
    with pytest.raises(SchemaOutOfDateError, match="musechat db upgrade"):
        await ensure_schema(pg_target.url, schema=pg_target.schema)
    assert await current_revision(pg_target.url, schema=pg_target.schema) is None
    await ensure_schema(pg_target.url, schema=pg_target.schema, auto_upgrade=True)
    assert await current_revision(pg_target.url, schema=pg_target.schema) == head_revision()
    await ensure_schema(pg_target.url, schema=pg_target.schema)


async def test_check_connection_on_a_live_database(sql_engine: AsyncEngine) -> None:
    await check_connection(sql_engine)


async def test_a_cancelled_query_is_a_cancellation_not_a_dead_database(pg_target) -> None:  # noqa: ANN001
    """A user who leaves cancels their turn mid-query: that must not read as "database unavailable".

    PostgreSQL only: asyncpg interrupts the query; SQLite's thread runs a query to its end."""
    import asyncio

    import sqlalchemy as sa

    engine = pg_target.engine()
    slow = "SELECT pg_sleep(5)"

    async def query() -> None:
        async with engine.connect() as conn:
            await conn.execute(sa.text(slow))

    try:
        task = asyncio.create_task(query())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with engine.connect() as conn:  # and the database still serves
            assert (await conn.execute(sa.text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()

"""SQL engine, connection policy and Alembic migrations (DESIGN.md, "Storage").

One SQLite file in the data directory by default (aiosqlite), PostgreSQL by URL (asyncpg).

- SQLite: WAL journal, a busy timeout, foreign keys on, and every write transaction opened with
  ``BEGIN IMMEDIATE``, so that a transaction that reads and then writes takes the single writer
  lock up front instead of failing with SQLITE_BUSY when another connection committed first.
  Read-only work can use :func:`read_only`, which opens a plain deferred ``BEGIN``.
- PostgreSQL: a bounded pool with pre-ping (a restarted server costs one reconnect, not an error),
  and a connect timeout, so that a dead or hung server fails within seconds.
- Either way, failing to reach the database raises :class:`DatabaseUnavailableError`, whose
  ``user_message`` says what is wrong without leaking a password.

Migrations are shipped inside the package (``storage/migrations``) and run programmatically;
there is no alembic.ini. To write a new revision::

    from alembic import command
    from storage.db import alembic_config
    command.revision(alembic_config(), message="add x", rev_id="0003")
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Table, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.engine.interfaces import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

SQLITE_FILENAME = "musechat.sqlite3"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

CONNECT_TIMEOUT_S = 5.0  # seconds: a dead PostgreSQL fails this fast instead of hanging
SQLITE_BUSY_TIMEOUT_S = 15.0  # seconds a SQLite writer waits for the write lock
POOL_SIZE = 10  # PostgreSQL connections kept open per engine
POOL_MAX_OVERFLOW = 10  # extra PostgreSQL connections under bursts
POOL_TIMEOUT_S = 30.0  # seconds to wait for a free pooled connection
POOL_RECYCLE_S = 1800.0  # seconds: reopen older connections (proxies drop idle ones)
SQLITE_POOL_SIZE = 5  # SQLite has one writer anyway; readers run in parallel under WAL
APPLICATION_NAME = "musechat"

# pg_advisory_xact_lock key (bigint space) held while migrating, so that several bot processes
# starting at once do not run the same migration twice. ASCII "MUSEMIGR".
MIGRATION_LOCK_KEY = 0x4D5553454D494752

READ_ONLY_OPTION = "musechat_read_only"  # execution option read by the SQLite BEGIN hook


class StorageError(Exception):
    """Base class of the storage layer's own errors."""


class DatabaseUnavailableError(StorageError):
    """The database cannot be reached or opened; ``user_message`` is safe to show an admin."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


class SchemaOutOfDateError(StorageError):
    """The database's schema revision is not the one this code expects."""


class NotFoundError(StorageError, LookupError):
    """A row addressed by id does not exist."""


# --------------------------------------------------------------------------------------------
# URLs and engines
# --------------------------------------------------------------------------------------------


def default_sqlite_url(data_dir: Path) -> str:
    """Return the URL of the embedded default database, a SQLite file inside ``data_dir``."""
    return f"sqlite+aiosqlite:///{(Path(data_dir) / SQLITE_FILENAME).resolve()}"


def normalize_url(url: str | URL) -> URL:
    """Parse ``url`` and pick the async driver: ``postgresql://`` → asyncpg, ``sqlite://`` → aiosqlite."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg")
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}: use sqlite:// or postgresql://")


def safe_url(url: str | URL) -> str:
    """Render ``url`` with the password hidden, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


def make_engine(
    url: str | URL,
    *,
    schema: str | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    null_pool: bool = False,
) -> AsyncEngine:
    """Create the async engine for ``url`` with this project's connection policy (module docstring).

    ``schema`` (PostgreSQL only) puts every table in that schema through the connection's
    ``search_path``: one database can hold several isolated installations (the tests use it).
    ``null_pool`` opens a fresh connection per checkout (used for lock connections, scripts).
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        if schema is not None:
            raise ValueError("schema= is a PostgreSQL option; SQLite has one schema per file")
        kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
        if null_pool:
            kwargs["poolclass"] = NullPool
        elif _sqlite_is_file(parsed):
            kwargs |= {"pool_size": SQLITE_POOL_SIZE, "max_overflow": 0, "pool_timeout": POOL_TIMEOUT_S}
        engine = create_async_engine(parsed, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
    else:
        server_settings = {"application_name": APPLICATION_NAME}
        if schema is not None:
            server_settings["search_path"] = schema
        connect_args = {"timeout": connect_timeout_s, "server_settings": server_settings}
        if null_pool:
            engine = create_async_engine(parsed, poolclass=NullPool, connect_args=connect_args)
        else:
            engine = create_async_engine(
                parsed,
                connect_args=connect_args,
                pool_size=POOL_SIZE,
                max_overflow=POOL_MAX_OVERFLOW,
                pool_timeout=POOL_TIMEOUT_S,
                pool_recycle=POOL_RECYCLE_S,
                pool_pre_ping=True,
            )
    _install_error_translation(engine, schema=schema, connect_timeout_s=connect_timeout_s)
    return engine


def read_only(engine: AsyncEngine) -> AsyncEngine:
    """Return a view of ``engine`` for read-only transactions (SQLite: deferred BEGIN)."""
    return engine.execution_options(**{READ_ONLY_OPTION: True})


async def check_connection(engine: AsyncEngine) -> None:
    """Run ``SELECT 1``; raise :class:`DatabaseUnavailableError` if the database does not answer."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


def _sqlite_is_file(url: URL) -> bool:
    return url.database not in (None, "", ":memory:") and "mode=memory" not in str(url)


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Take transaction control away from the sqlite3 module; _sqlite_on_begin emits BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe under WAL
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    read = conn.get_execution_options().get(READ_ONLY_OPTION, False)
    conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")


_UNREACHABLE = (OSError, TimeoutError, asyncio.TimeoutError)


def _install_error_translation(engine: AsyncEngine, *, schema: str | None, connect_timeout_s: float) -> None:
    """Turn "cannot reach / open the database" failures into DatabaseUnavailableError.

    Two paths: asyncpg raises plain OSError/TimeoutError from connect (not DBAPI errors, so
    SQLAlchemy's handle_error never sees them): caught in do_connect. DBAPI errors raised while
    connecting (SQLite "unable to open database file", PostgreSQL "database does not exist",
    authentication) or on a dropped connection reach handle_error.
    """
    sync_engine = engine.sync_engine
    where = safe_url(engine.url)
    backend = engine.url.get_backend_name()

    def describe(exc: BaseException) -> str:
        reason = str(exc).strip() or type(exc).__name__
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            reason = f"no answer within {connect_timeout_s:g} s"
        if backend == "sqlite":
            hint = "check that the data directory exists and is writable"
        else:
            hint = "check that PostgreSQL is running and that the database URL is right"
        return f"Database {where} is unavailable ({reason}); {hint}."

    sqlite_dir = None
    if backend == "sqlite" and _sqlite_is_file(engine.url) and "uri" not in engine.url.query:
        sqlite_dir = Path(str(engine.url.database)).parent

    @event.listens_for(sync_engine, "do_connect")
    def _connect(dialect: Any, conn_rec: Any, cargs: tuple[Any, ...], cparams: dict[str, Any]) -> Any:
        # Checked here rather than left to sqlite3: aiosqlite's failed connect leaves its worker
        # thread posting to the event loop after the fact.
        if sqlite_dir is not None and not sqlite_dir.is_dir():
            raise DatabaseUnavailableError(describe(FileNotFoundError(f"directory {sqlite_dir} does not exist")))
        try:
            return dialect.connect(*cargs, **cparams)
        except _UNREACHABLE as exc:
            raise DatabaseUnavailableError(describe(exc)) from exc

    @event.listens_for(sync_engine, "handle_error")
    def _error(ctx: ExceptionContext) -> None:
        exc = ctx.original_exception
        if isinstance(exc, DatabaseUnavailableError) or not isinstance(exc, Exception):
            return  # a cancelled task (CancelledError) or an interrupt is not a dead database: it propagates as is
        connecting = ctx.connection is None and ctx.execution_context is None
        if connecting or (ctx.is_disconnect and not ctx.is_pre_ping):
            raise DatabaseUnavailableError(describe(exc)) from exc
        if isinstance(exc, sqlite3.OperationalError) and "unable to open database file" in str(exc):
            raise DatabaseUnavailableError(describe(exc)) from exc


# --------------------------------------------------------------------------------------------
# Small helpers shared by the stores
# --------------------------------------------------------------------------------------------


def utcnow() -> datetime:
    """Timezone-aware now in UTC (every timestamp column is written in UTC)."""
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands DateTime columns back naive: they were written in UTC, so say so."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def upsert_insert(conn: AsyncConnection, table: Table) -> Any:
    """Dialect ``INSERT`` that supports ``on_conflict_do_nothing/do_update`` (SQLite and PostgreSQL)."""
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"unsupported dialect {name!r}")


# --------------------------------------------------------------------------------------------
# Migrations
# --------------------------------------------------------------------------------------------


def alembic_config(url: str | URL | None = None) -> Config:
    """Alembic configuration pointing at the migrations shipped in this package (no alembic.ini)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", str(normalize_url(url)).replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest revision shipped in this package."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "storage/migrations/versions holds no revision"
    return head


async def current_revision(url: str | URL, *, schema: str | None = None) -> str | None:
    """The revision the database at ``url`` is at (None: never migrated)."""
    engine = make_engine(url, schema=schema)
    try:
        async with read_only(engine).connect() as conn:
            return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
    finally:
        await engine.dispose()


async def upgrade(url: str | URL, *, revision: str = "head", schema: str | None = None) -> None:
    """Migrate the database at ``url`` to ``revision`` (what ``musechat db upgrade`` runs).

    All revisions run in one transaction (both backends have transactional DDL), so a failed
    migration leaves the previous schema. On PostgreSQL a transaction-level advisory lock makes
    concurrent upgrades from several processes run one after the other; the later ones find the
    schema at head and do nothing.
    """
    await _run_alembic(url, schema=schema, action=lambda cfg: command.upgrade(cfg, revision))


async def downgrade(url: str | URL, *, revision: str, schema: str | None = None) -> None:
    """Migrate the database at ``url`` down to ``revision`` ("base" drops every table)."""
    await _run_alembic(url, schema=schema, action=lambda cfg: command.downgrade(cfg, revision))


async def ensure_schema(url: str | URL, *, auto_upgrade: bool | None = None, schema: str | None = None) -> None:
    """Make sure the schema is current before the bot serves (called on start).

    ``auto_upgrade=None`` means: upgrade the embedded SQLite default in place (creating its data
    directory), but only *check* a PostgreSQL database, raising :class:`SchemaOutOfDateError`
    that tells the admin to run ``musechat db upgrade``: a shared production database is
    migrated on purpose, not by whichever bot process happens to start first.
    """
    parsed = normalize_url(url)
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if auto_upgrade is None:
        auto_upgrade = is_sqlite
    if is_sqlite and _sqlite_is_file(parsed):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
    if auto_upgrade:
        await upgrade(parsed, schema=schema)
        return
    current, head = await current_revision(parsed, schema=schema), head_revision()
    if current != head:
        raise SchemaOutOfDateError(
            f"database {safe_url(parsed)} is at schema revision {current or 'none'}, this code needs "
            f"{head}: run `musechat db upgrade`"
        )


async def _run_alembic(url: str | URL, *, schema: str | None, action: Callable[[Config], None]) -> None:
    engine = make_engine(url, schema=schema)
    cfg = alembic_config(url)
    try:
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})

            def run(sync_conn: Connection) -> None:
                cfg.attributes["connection"] = sync_conn
                action(cfg)

            await conn.run_sync(run)
        log.info("migrated %s to %s", safe_url(url), await _revision_of(engine))
    finally:
        await engine.dispose()


async def _revision_of(engine: AsyncEngine) -> str | None:
    async with read_only(engine).connect() as conn:
        return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())


__all__ = [
    "CONNECT_TIMEOUT_S",
    "DatabaseUnavailableError",
    "NotFoundError",
    "SchemaOutOfDateError",
    "StorageError",
    "alembic_config",
    "as_utc",
    "check_connection",
    "current_revision",
    "default_sqlite_url",
    "downgrade",
    "ensure_schema",
    "head_revision",
    "make_engine",
    "normalize_url",
    "read_only",
    "safe_url",
    "upgrade",
    "upsert_insert",
    "utcnow",
]

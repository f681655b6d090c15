"""SQL test targets: every SQL test runs on SQLite and on the real PostgreSQL (DESIGN.md, "The
machines the project is built on").

- SQLite: a fresh file per test, copied from a session-wide file migrated once to head.
- PostgreSQL: a fresh schema per test in the ``test`` database (the engine's ``search_path``
  points at it), dropped afterwards. Skipped, saying why, only when no server answers.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from alembic import command
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import alembic_config, default_sqlite_url, make_engine, upgrade

POSTGRES_URL = os.environ.get("MUSECHAT_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
PROBE_TIMEOUT_S = 3.0  # seconds to decide that no PostgreSQL server answers


@dataclass(frozen=True)
class SqlTarget:
    backend: str  # "sqlite" | "postgresql"
    url: str
    schema: str | None = None  # PostgreSQL schema holding this test's tables

    def engine(self, **kwargs: object) -> AsyncEngine:
        return make_engine(self.url, schema=self.schema, **kwargs)  # type: ignore[arg-type]

    async def upgrade(self, revision: str = "head") -> None:
        await upgrade(self.url, revision=revision, schema=self.schema)


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def pg_admin() -> asyncpg.Connection:
    """A plain asyncpg connection to the test database, for creating and dropping schemas."""
    return await asyncpg.connect(_asyncpg_dsn(POSTGRES_URL), timeout=PROBE_TIMEOUT_S)


_probe: dict[str, str | None] = {}


async def postgres_unavailable_reason() -> str | None:
    """None when the test PostgreSQL answers, else why not (probed once per session)."""
    if "reason" not in _probe:
        try:
            conn = await pg_admin()
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            _probe["reason"] = f"no PostgreSQL server answers at {make_url(POSTGRES_URL).render_as_string()}: {exc}"
        else:
            await conn.close()
            _probe["reason"] = None
    return _probe["reason"]


async def create_pg_schema(script: str | None = None) -> str:
    """Create a schema of its own; run ``script`` (SQL) inside it if given."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    conn = await pg_admin()
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
        if script is not None:
            await conn.execute(f'SET search_path TO "{name}"')
            await conn.execute(script)
    finally:
        await conn.close()
    return name


async def drop_pg_schema(name: str) -> None:
    conn = await pg_admin()
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_head_sql() -> str:
    """The migrations to head rendered as one SQL script (Alembic offline mode), run per test
    schema in one round trip: the stores' tests get the migrated schema in a fraction of the time
    of an online upgrade. test_migrations.py exercises the online path itself."""
    buffer = io.StringIO()
    cfg = alembic_config("postgresql://offline/render")
    cfg.output_buffer = buffer
    command.upgrade(cfg, "head", sql=True)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per session; tests get copies."""
    folder = tmp_path_factory.mktemp("sqlite-template")
    asyncio.run(upgrade(default_sqlite_url(folder)))
    return folder / Path(make_url(default_sqlite_url(folder)).database or "").name


@pytest.fixture
async def require_postgres() -> None:
    reason = await postgres_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
async def pg_target(require_postgres: None) -> AsyncIterator[SqlTarget]:
    """An empty PostgreSQL schema of its own (not migrated)."""
    schema = await create_pg_schema()
    try:
        yield SqlTarget("postgresql", POSTGRES_URL, schema)
    finally:
        await drop_pg_schema(schema)


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
async def empty_target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlTarget]:
    """An empty database on each backend (nothing migrated)."""
    if request.param == "sqlite":
        yield SqlTarget("sqlite", default_sqlite_url(tmp_path))
        return
    reason = await postgres_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    schema = await create_pg_schema()
    try:
        yield SqlTarget("postgresql", POSTGRES_URL, schema)
    finally:
        await drop_pg_schema(schema)


@pytest.fixture(params=BACKENDS)
async def sql_target(
    request: pytest.FixtureRequest, tmp_path: Path, migrated_sqlite_template: Path, postgres_head_sql: str
) -> AsyncIterator[SqlTarget]:
    """A database migrated to head on each backend."""
    if request.param == "sqlite":
        url = default_sqlite_url(tmp_path)
        shutil.copyfile(migrated_sqlite_template, make_url(url).database or "")
        yield SqlTarget("sqlite", url)
        return
    reason = await postgres_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    schema = await create_pg_schema(postgres_head_sql)
    try:
        yield SqlTarget("postgresql", POSTGRES_URL, schema)
    finally:
        await drop_pg_schema(schema)


@pytest.fixture
async def sql_engine(sql_target: SqlTarget) -> AsyncIterator[AsyncEngine]:
    """An engine on a migrated database of each backend, disposed after the test."""
    engine = sql_target.engine()
    try:
        yield engine
    finally:
        await engine.dispose()


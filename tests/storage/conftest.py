"""SQL test targets: every SQL test runs on SQLite and on the real PostgreSQL (DESIGN.md, "The
machines the project is built on").

- SQLite: a fresh file per test, copied from a session-wide file migrated once to head.
- PostgreSQL: a fresh schema per test in the ``test`` database (the engine's ``search_path``
  points at it), dropped afterwards. A dead server fails the test, saying why (tests/helpers/sql.py).
"""

from __future__ import annotations

import asyncio
import io
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import alembic_config, default_sqlite_url, upgrade
from tests.helpers.sql import (  # noqa: F401 - re-exported to the storage tests
    POSTGRES_URL,
    SqlTarget,
    create_pg_schema,
    drop_pg_schema,
    pg_admin,
    postgres_unavailable_reason,
    require_postgres_or_fail,
)


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
    await require_postgres_or_fail()


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
    await require_postgres_or_fail()
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
    await require_postgres_or_fail()
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


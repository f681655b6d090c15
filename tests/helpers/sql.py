"""Real SQL targets for tests: a SQLite file, or a PostgreSQL schema of its own in the `test` database.

PostgreSQL (127.0.0.1:5432, trust auth, database `test`) and Redis (127.0.0.1:6379) run on every
developer and CI machine (DESIGN.md): a test that needs one and finds it dead FAILS, saying why; it
never skips (tests/conftest.py also checks both once, before the run).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import make_engine, upgrade

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




async def require_postgres_or_fail() -> None:
    reason = await postgres_unavailable_reason()
    if reason is not None:
        pytest.fail(f"{reason} (PostgreSQL must run for the tests: bash scripts/services.sh)", pytrace=False)


_head_sql: list[str] = []


def head_sql() -> str:
    """The migrations to head rendered as one SQL script (Alembic offline mode), rendered once per session."""
    if not _head_sql:
        import io

        from alembic import command

        from storage.db import alembic_config

        buffer = io.StringIO()
        cfg = alembic_config("postgresql://offline/render")
        cfg.output_buffer = buffer
        command.upgrade(cfg, "head", sql=True)
        _head_sql.append(buffer.getvalue())
    return _head_sql[0]

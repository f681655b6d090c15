"""Tests of storage/migrations: empty database, upgrade with data present, drift, packaging."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import IntegrityError

from storage.conversation_store import ConversationStore, Recommendation
from storage.db import MIGRATIONS_DIR, alembic_config, current_revision, downgrade, head_revision
from storage.models import CatalogStatus, catalog_versions, metadata
from storage.track_store import CatalogVersionStore

if TYPE_CHECKING:
    from tests.storage.conftest import SqlTarget

TABLES = {
    "users", "conversations", "turns", "recommendations", "feedback", "tracks", "catalog_versions",
    "catalog_version_tracks", "jobs", "job_schedules", "processed_events", "rate_limits", "catalog_sources",
}  # fmt: skip
REVISIONS = ["0001", "0002", "0003"]


def test_revisions_ship_inside_the_package() -> None:
    """Shipped as package modules: storage/migrations and its versions folder are packages."""
    assert (MIGRATIONS_DIR / "__init__.py").is_file() and (MIGRATIONS_DIR / "versions" / "__init__.py").is_file()
    assert (MIGRATIONS_DIR / "env.py").is_file() and (MIGRATIONS_DIR / "script.py.mako").is_file()
    script = ScriptDirectory.from_config(alembic_config())
    assert [rev.revision for rev in script.walk_revisions("base", "heads")] == REVISIONS[::-1]
    assert head_revision() == REVISIONS[-1]


async def _tables_and_indexes(target: SqlTarget) -> tuple[set[str], set[str]]:
    engine = target.engine()
    try:
        async with engine.connect() as conn:

            def inspect(sync: sa.Connection) -> tuple[set[str], set[str]]:
                insp = sa.inspect(sync)
                tables = set(insp.get_table_names()) - {"alembic_version"}
                indexes = {ix["name"] for t in tables for ix in insp.get_indexes(t) if ix["name"]}
                return tables, indexes

            return await conn.run_sync(inspect)
    finally:
        await engine.dispose()


async def test_upgrade_an_empty_database_to_head(empty_target: SqlTarget) -> None:
    assert await current_revision(empty_target.url, schema=empty_target.schema) is None
    await empty_target.upgrade()
    assert await current_revision(empty_target.url, schema=empty_target.schema) == head_revision()
    tables, indexes = await _tables_and_indexes(empty_target)
    assert tables == TABLES
    assert {"ix_turns_video_sha256", "uq_catalog_versions_one_live", "ix_conversations_user_id"} <= indexes
    await empty_target.upgrade()  # at head already: nothing to do


async def test_models_match_the_migrated_schema(sql_target: SqlTarget) -> None:
    """storage/models.py and the migrations describe the same schema (no autogenerate diff)."""
    engine = sql_target.engine()
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"compare_type": True}), metadata)
            )
    finally:
        await engine.dispose()
    assert diff == []


async def test_upgrade_from_the_first_revision_keeps_the_data(empty_target: SqlTarget) -> None:
    await empty_target.upgrade("0001")
    engine = empty_target.engine()
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    try:
        async with engine.begin() as conn:  # rows as revision 0001 code wrote them
            await conn.execute(
                sa.text(
                    "INSERT INTO users (id, platform, platform_user_id, name, created_at, updated_at) "
                    "VALUES (1, 'discord', '42', 'Ada', :now, :now)"
                ),
                {"now": now},
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO conversations (id, platform, workspace_id, channel_id, thread_id, user_id, status, "
                    "profile, model_version, turn_count, created_at, updated_at) "
                    "VALUES (1, 'discord', 'g', 'c', 't', 1, 'active', 'lite', 'zs-1', 1, :now, :now)"
                ),
                {"now": now},
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO turns (id, conversation_id, turn_index, user_text, video_sha256, mode, timings, "
                    "created_at) VALUES (1, 1, 1, 'calm', :sha, 'zero-shot', :timings, :now)"
                ),
                {"sha": "b" * 64, "timings": '{"search_s": 0.5}', "now": now},
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO recommendations (turn_id, rank, track_id, score, reason) "
                    "VALUES (1, 1, 'h1', 0.5, 'strings')"
                )
            )
            for vid, status in [(1, "live"), (2, "live"), (3, "failed")]:  # two live: the 0002 data fix
                await conn.execute(
                    sa.text(
                        "INSERT INTO catalog_versions (id, collection, status, track_count, failed_count, started_at) "
                        "VALUES (:id, :c, :s, 10, 0, :now)"
                    ),
                    {"id": vid, "c": f"music_v{vid}", "s": status, "now": now},
                )
            if empty_target.backend == "postgresql":  # explicit ids: move the sequences past them
                for table in ("users", "conversations", "turns", "catalog_versions"):
                    await conn.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 10)"))

        await empty_target.upgrade()
        assert await current_revision(empty_target.url, schema=empty_target.schema) == head_revision()

        store = ConversationStore(engine)
        [turn] = await store.list_turns(conversation_id=1)
        assert (turn.index, turn.user_text, turn.video_sha256) == (1, "calm", "b" * 64)
        assert turn.timings == {"search_s": 0.5}
        assert turn.created_at == now
        assert turn.recommendations == (Recommendation(1, "h1", 0.5, "strings"),)
        nxt = await store.add_turn(conversation_id=1, mode="zero-shot", video_sha256="b" * 64)
        assert nxt.index == 2

        versions = CatalogVersionStore(engine)
        live = await versions.live()
        assert live is not None and live.id == 2
        assert [(v.id, v.status) for v in await versions.list_versions()] == [
            (3, CatalogStatus.FAILED), (2, CatalogStatus.LIVE), (1, CatalogStatus.RETIRED)
        ]  # fmt: skip
        with pytest.raises(IntegrityError):  # the new partial unique index holds
            async with engine.begin() as conn:
                await conn.execute(sa.update(catalog_versions).where(catalog_versions.c.id == 3).values(status="live"))
    finally:
        await engine.dispose()


async def test_downgrade_to_base_and_back(sql_target: SqlTarget) -> None:
    await downgrade(sql_target.url, revision="0001", schema=sql_target.schema)
    _, indexes = await _tables_and_indexes(sql_target)
    assert "ix_turns_video_sha256" not in indexes and "uq_catalog_versions_one_live" not in indexes
    await downgrade(sql_target.url, revision="base", schema=sql_target.schema)
    assert await _tables_and_indexes(sql_target) == (set(), set())
    await sql_target.upgrade()
    assert (await _tables_and_indexes(sql_target))[0] == TABLES


@pytest.mark.postgres
async def test_concurrent_upgrades_on_postgres_run_one_after_the_other(pg_target: SqlTarget) -> None:
    """Several bot processes starting at once: the advisory lock makes all but one find head."""
    await asyncio.wait_for(asyncio.gather(*(pg_target.upgrade() for _ in range(4))), timeout=30)
    assert await current_revision(pg_target.url, schema=pg_target.schema) == head_revision()
    assert (await _tables_and_indexes(pg_target))[0] == TABLES

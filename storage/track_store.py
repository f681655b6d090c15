"""Track metadata and catalog versions in SQL (DESIGN.md, "Storage" and "Catalog tags").

The vectors live in Qdrant (``storage.catalog``); SQL keeps what admins list and audit: each
track's metadata keyed by its content hash, and each catalog refresh as a version that is
building, live, retired or failed. A refresh builds a new version while the old one serves;
:meth:`CatalogVersionStore.finish` swaps "live" in one transaction, and a partial unique index
guarantees that at most one version is live.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.db import NotFoundError, as_utc, read_only, upsert_insert, utcnow
from storage.models import CatalogStatus, catalog_version_tracks, catalog_versions, tracks

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key (bigint space) serialising catalog version status changes. "MUSECATV".
CATALOG_LOCK_KEY = 0x4D55534543415456

UPSERT_BATCH = 500  # rows per INSERT statement: 10 columns x 500 stays far below SQLite's 32766 variables


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """A track's metadata as the indexer found it (file tags, manifest, musicnn auto-tags)."""

    content_hash: str  # sha256 hex of the audio file: the track's identity everywhere
    title: str
    duration_s: float
    source_path: str
    artist: str = ""
    tags: tuple[str, ...] = ()
    licence: str = ""
    attributes: Mapping[str, Any] = field(default_factory=dict)  # tempo_bpm, loudness_db, ...


@dataclass(frozen=True, slots=True)
class Track:
    id: int
    content_hash: str
    title: str
    artist: str
    duration_s: float
    tags: tuple[str, ...]
    licence: str
    source_path: str
    attributes: Mapping[str, Any]
    catalog_version_id: int | None  # the latest version that indexed it
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class CatalogVersion:
    id: int
    collection: str
    status: CatalogStatus
    track_count: int
    failed_count: int
    started_at: datetime
    finished_at: datetime | None
    error: str | None


class TrackStore:
    """Track metadata keyed by content hash, with each catalog version's membership."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reader = read_only(engine)

    async def upsert(self, infos: Sequence[TrackInfo], *, catalog_version_id: int) -> int:
        """Insert or update tracks by content hash and add them to a catalog version (one transaction).

        Returns the number of tracks written. A track already known (same audio, perhaps moved or
        re-tagged) keeps its id and gets the new metadata.
        """
        if not infos:
            return 0
        by_hash = {info.content_hash: info for info in infos}  # last wins within one call
        now = utcnow()
        rows = [
            {
                "content_hash": i.content_hash,
                "title": i.title,
                "artist": i.artist,
                "duration_s": float(i.duration_s),
                "tags": list(i.tags),
                "licence": i.licence,
                "source_path": i.source_path,
                "attributes": dict(i.attributes),
                "catalog_version_id": catalog_version_id,
                "created_at": now,
                "updated_at": now,
            }
            for i in by_hash.values()
        ]
        async with self._engine.begin() as conn:
            exists = sa.select(catalog_versions.c.id).where(catalog_versions.c.id == catalog_version_id)
            if (await conn.execute(exists)).scalar_one_or_none() is None:
                raise NotFoundError(f"catalog version {catalog_version_id} does not exist")
            track_ids: list[int] = []
            for start in range(0, len(rows), UPSERT_BATCH):
                insert = upsert_insert(conn, tracks).values(rows[start : start + UPSERT_BATCH])
                insert = insert.on_conflict_do_update(
                    index_elements=["content_hash"],
                    set_={
                        name: insert.excluded[name]
                        for name in (
                            "title",
                            "artist",
                            "duration_s",
                            "tags",
                            "licence",
                            "source_path",
                            "attributes",
                            "catalog_version_id",
                            "updated_at",
                        )
                    },
                )
                track_ids += (await conn.execute(insert.returning(tracks.c.id))).scalars().all()
            for start in range(0, len(track_ids), UPSERT_BATCH):
                members = [
                    {"catalog_version_id": catalog_version_id, "track_id": tid}
                    for tid in track_ids[start : start + UPSERT_BATCH]
                ]
                link = upsert_insert(conn, catalog_version_tracks).values(members).on_conflict_do_nothing()
                await conn.execute(link)
        log.info("catalog version %d: upserted %d tracks", catalog_version_id, len(rows))
        return len(rows)

    async def get_by_hash(self, *, content_hash: str) -> Track | None:
        async with self._reader.connect() as conn:
            query = sa.select(tracks).where(tracks.c.content_hash == content_hash)
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else _track(row)

    async def get_many(self, *, content_hashes: Sequence[str]) -> dict[str, Track]:
        """Tracks by content hash (absent hashes are left out)."""
        if not content_hashes:
            return {}
        async with self._reader.connect() as conn:
            query = sa.select(tracks).where(tracks.c.content_hash.in_(list(content_hashes)))
            rows = (await conn.execute(query)).mappings().all()
        return {row["content_hash"]: _track(row) for row in rows}

    async def list_tracks(
        self, *, catalog_version_id: int | None = None, limit: int | None = None, offset: int = 0
    ) -> list[Track]:
        """Tracks ordered by id; with ``catalog_version_id``, only that version's members."""
        query = sa.select(tracks).order_by(tracks.c.id).offset(offset)
        if catalog_version_id is not None:
            query = query.join(catalog_version_tracks, catalog_version_tracks.c.track_id == tracks.c.id).where(
                catalog_version_tracks.c.catalog_version_id == catalog_version_id
            )
        if limit is not None:
            query = query.limit(limit)
        async with self._reader.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_track(row) for row in rows]

    async def count(self, *, catalog_version_id: int | None = None) -> int:
        if catalog_version_id is None:
            query = sa.select(sa.func.count()).select_from(tracks)
        else:
            query = sa.select(sa.func.count()).where(catalog_version_tracks.c.catalog_version_id == catalog_version_id)
        async with self._reader.connect() as conn:
            return int((await conn.execute(query)).scalar_one())


class CatalogVersionStore:
    """Catalog refreshes: start a version, finish it (it goes live), or fail it."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reader = read_only(engine)

    async def start(self, *, collection: str) -> CatalogVersion:
        """Record a new version being built into ``collection`` (Qdrant collection or shard name)."""
        insert = (
            sa.insert(catalog_versions)
            .values(collection=collection, status=CatalogStatus.BUILDING.value, started_at=utcnow())
            .returning(*catalog_versions.c)
        )
        async with self._engine.begin() as conn:
            row = (await conn.execute(insert)).mappings().one()
        log.info("catalog version %d started into %s", row["id"], collection)
        return _version(row)

    async def finish(self, *, version_id: int, track_count: int, failed_count: int = 0) -> CatalogVersion:
        """Make a building version live and retire the previous live one, in one transaction."""
        now = utcnow()
        async with self._engine.begin() as conn:
            current = await self._require(conn, version_id)
            if current["status"] != CatalogStatus.BUILDING.value:
                raise ValueError(f"catalog version {version_id} is {current['status']}, not building")
            await conn.execute(
                sa.update(catalog_versions)
                .where(catalog_versions.c.status == CatalogStatus.LIVE.value)
                .values(status=CatalogStatus.RETIRED.value)
            )
            update = (
                sa.update(catalog_versions)
                .where(catalog_versions.c.id == version_id)
                .values(
                    status=CatalogStatus.LIVE.value, track_count=track_count, failed_count=failed_count, finished_at=now
                )
                .returning(*catalog_versions.c)
            )
            row = (await conn.execute(update)).mappings().one()
        log.info("catalog version %d is live: %d tracks, %d failed", version_id, track_count, failed_count)
        return _version(row)

    async def fail(self, *, version_id: int, error: str, failed_count: int = 0) -> CatalogVersion:
        """Mark a building version failed; the live version (if any) keeps serving."""
        async with self._engine.begin() as conn:
            await self._require(conn, version_id)
            update = (
                sa.update(catalog_versions)
                .where(catalog_versions.c.id == version_id)
                .values(status=CatalogStatus.FAILED.value, error=error, failed_count=failed_count, finished_at=utcnow())
                .returning(*catalog_versions.c)
            )
            row = (await conn.execute(update)).mappings().one()
        log.warning("catalog version %d failed: %s", version_id, error)
        return _version(row)

    async def live(self) -> CatalogVersion | None:
        """The version serving queries, or None before the first successful refresh."""
        query = sa.select(catalog_versions).where(catalog_versions.c.status == CatalogStatus.LIVE.value)
        async with self._reader.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else _version(row)

    async def get(self, *, version_id: int) -> CatalogVersion | None:
        async with self._reader.connect() as conn:
            query = sa.select(catalog_versions).where(catalog_versions.c.id == version_id)
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else _version(row)

    async def list_versions(self, *, limit: int = 20) -> list[CatalogVersion]:
        """The newest versions first."""
        query = sa.select(catalog_versions).order_by(catalog_versions.c.id.desc()).limit(limit)
        async with self._reader.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_version(row) for row in rows]

    @staticmethod
    async def _require(conn: AsyncConnection, version_id: int) -> RowMapping:
        # Serialise status changes: on PostgreSQL a transaction-level advisory lock (released at
        # commit), so that a second finish() reads the first one's committed result; SQLite write
        # transactions are already serialised by BEGIN IMMEDIATE.
        if conn.dialect.name == "postgresql":
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(CATALOG_LOCK_KEY)))
        query = sa.select(catalog_versions).where(catalog_versions.c.id == version_id)
        row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise NotFoundError(f"catalog version {version_id} does not exist")
        return row


def _track(row: RowMapping) -> Track:
    updated = as_utc(row["updated_at"])
    assert updated is not None
    return Track(
        id=row["id"],
        content_hash=row["content_hash"],
        title=row["title"],
        artist=row["artist"],
        duration_s=row["duration_s"],
        tags=tuple(row["tags"]),
        licence=row["licence"],
        source_path=row["source_path"],
        attributes=dict(row["attributes"]),
        catalog_version_id=row["catalog_version_id"],
        updated_at=updated,
    )


def _version(row: RowMapping) -> CatalogVersion:
    started = as_utc(row["started_at"])
    assert started is not None
    return CatalogVersion(
        id=row["id"],
        collection=row["collection"],
        status=CatalogStatus(row["status"]),
        track_count=row["track_count"],
        failed_count=row["failed_count"],
        started_at=started,
        finished_at=as_utc(row["finished_at"]),
        error=row["error"],
    )

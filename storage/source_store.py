"""Registered music folders (SQL table `catalog_sources`): what a catalog refresh scans."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import as_utc, read_only, upsert_insert, utcnow
from storage.models import catalog_sources


@dataclass(frozen=True)
class CatalogSource:
    """A registered music folder."""

    id: int
    path: Path
    manifest_path: Path | None
    licence: str
    added_at: datetime


class SourceStore:
    """Registered music folders (table `catalog_sources`)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reader = read_only(engine)

    async def upsert(self, *, path: Path, manifest_path: Path | None, licence: str) -> CatalogSource:
        values = {"path": str(path), "manifest_path": None if manifest_path is None else str(manifest_path), "licence": licence}
        async with self._engine.begin() as conn:
            insert = upsert_insert(conn, catalog_sources).values(**values, added_at=utcnow())
            insert = insert.on_conflict_do_update(
                index_elements=["path"], set_={"manifest_path": values["manifest_path"], "licence": licence}
            )
            row = (await conn.execute(insert.returning(*catalog_sources.c))).mappings().one()
        return _source(row)

    async def delete(self, *, path: Path) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(sa.delete(catalog_sources).where(catalog_sources.c.path == str(path)))
        return result.rowcount > 0

    async def list(self) -> list[CatalogSource]:
        async with self._reader.connect() as conn:
            rows = (await conn.execute(sa.select(catalog_sources).order_by(catalog_sources.c.id))).mappings().all()
        return [_source(r) for r in rows]


def _source(row: RowMapping) -> CatalogSource:
    added = as_utc(row["added_at"])
    assert added is not None
    return CatalogSource(
        id=row["id"],
        path=Path(row["path"]),
        manifest_path=Path(row["manifest_path"]) if row["manifest_path"] else None,
        licence=row["licence"],
        added_at=added,
    )


__all__ = ["CatalogSource", "SourceStore"]

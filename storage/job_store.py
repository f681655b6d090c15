"""Background job runs and schedules (DESIGN.md, "Who uses it": admins refresh the catalog now
or on a schedule).

A run is recorded when it starts and closed when it ends, so ``musechat status`` can show what
is running, what failed and why. A run left "running" by a crashed process is closed by
:meth:`JobStore.abandon_stale`, which the scheduler calls on start.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import NotFoundError, as_utc, read_only, upsert_insert, utcnow
from storage.models import JobStatus, job_schedules, jobs

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobRun:
    id: int
    kind: str  # e.g. "catalog_refresh"
    status: JobStatus
    started_at: datetime
    finished_at: datetime | None
    detail: Mapping[str, Any]  # counts, the catalog version built, who asked...
    error: str | None


@dataclass(frozen=True, slots=True)
class JobSchedule:
    kind: str
    cron: str  # crontab expression, interpreted by the scheduler
    enabled: bool
    updated_at: datetime


class JobStore:
    """Job runs (start, finish) and one schedule per job kind."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reader = read_only(engine)

    async def start_run(self, *, kind: str, detail: Mapping[str, Any] | None = None) -> JobRun:
        insert = (
            sa.insert(jobs)
            .values(kind=kind, status=JobStatus.RUNNING.value, started_at=utcnow(), detail=dict(detail or {}))
            .returning(*jobs.c)
        )
        async with self._engine.begin() as conn:
            row = (await conn.execute(insert)).mappings().one()
        log.info("job %d (%s) started", row["id"], kind)
        return _run(row)

    async def finish_run(
        self,
        *,
        job_id: int,
        status: JobStatus | str = JobStatus.SUCCEEDED,
        detail: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> JobRun:
        """Close a run as succeeded or failed; ``detail`` is merged into the stored detail."""
        status = JobStatus(status)
        if status is JobStatus.RUNNING:
            raise ValueError("finish_run needs a final status: succeeded or failed")
        async with self._engine.begin() as conn:
            # Write first (takes the row lock on PostgreSQL), then read-modify-write the detail.
            touched = await conn.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id)
                .values(status=status.value, finished_at=utcnow(), error=error)
            )
            if touched.rowcount == 0:
                raise NotFoundError(f"job {job_id} does not exist")
            if detail:
                stored = (await conn.execute(sa.select(jobs.c.detail).where(jobs.c.id == job_id))).scalar_one()
                await conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(detail={**stored, **detail}))
            row = (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).mappings().one()
        log.info("job %d (%s) %s", job_id, row["kind"], status.value)
        return _run(row)

    async def abandon_stale(self, *, kind: str | None = None, reason: str = "process ended while running") -> int:
        """Mark every run still "running" as failed (call before starting new runs); return how many."""
        update = sa.update(jobs).where(jobs.c.status == JobStatus.RUNNING.value)
        if kind is not None:
            update = update.where(jobs.c.kind == kind)
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update.values(status=JobStatus.FAILED.value, finished_at=utcnow(), error=reason)
            )
        return int(result.rowcount)

    async def get_run(self, *, job_id: int) -> JobRun | None:
        async with self._reader.connect() as conn:
            row = (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).mappings().first()
        return None if row is None else _run(row)

    async def list_runs(self, *, kind: str | None = None, limit: int = 20) -> list[JobRun]:
        """The newest runs first."""
        query = sa.select(jobs).order_by(jobs.c.started_at.desc(), jobs.c.id.desc()).limit(limit)
        if kind is not None:
            query = query.where(jobs.c.kind == kind)
        async with self._reader.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_run(row) for row in rows]

    async def set_schedule(self, *, kind: str, cron: str, enabled: bool = True) -> JobSchedule:
        """Create or replace the schedule of a job kind."""
        now = utcnow()
        async with self._engine.begin() as conn:
            insert = upsert_insert(conn, job_schedules).values(kind=kind, cron=cron, enabled=enabled, updated_at=now)
            insert = insert.on_conflict_do_update(
                index_elements=["kind"], set_={"cron": cron, "enabled": enabled, "updated_at": now}
            )
            row = (await conn.execute(insert.returning(*job_schedules.c))).mappings().one()
        log.info("schedule of %s set to %r (%s)", kind, cron, "enabled" if enabled else "disabled")
        return _schedule(row)

    async def get_schedule(self, *, kind: str) -> JobSchedule | None:
        async with self._reader.connect() as conn:
            row = (await conn.execute(sa.select(job_schedules).where(job_schedules.c.kind == kind))).mappings().first()
        return None if row is None else _schedule(row)

    async def list_schedules(self) -> list[JobSchedule]:
        async with self._reader.connect() as conn:
            rows = (await conn.execute(sa.select(job_schedules).order_by(job_schedules.c.kind))).mappings().all()
        return [_schedule(row) for row in rows]

    async def delete_schedule(self, *, kind: str) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(sa.delete(job_schedules).where(job_schedules.c.kind == kind))
        return result.rowcount > 0


def _run(row: RowMapping) -> JobRun:
    started = as_utc(row["started_at"])
    assert started is not None
    return JobRun(
        id=row["id"],
        kind=row["kind"],
        status=JobStatus(row["status"]),
        started_at=started,
        finished_at=as_utc(row["finished_at"]),
        detail=dict(row["detail"]),
        error=row["error"],
    )


def _schedule(row: RowMapping) -> JobSchedule:
    updated = as_utc(row["updated_at"])
    assert updated is not None
    return JobSchedule(kind=row["kind"], cron=row["cron"], enabled=bool(row["enabled"]), updated_at=updated)

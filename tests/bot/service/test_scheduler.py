"""Tests for bot/service/scheduler.py: cron parsing, firing, run records, skipped overlaps.

The firing tests use a 6-field (seconds-first) expression that fires every second, so each one
waits a second or two of wall-clock time.
"""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.service.catalog_admin import REFRESH_JOB, CatalogAdmin, catalog_schema
from bot.service.scheduler import RefreshScheduler, crontab_weekdays, parse_cron, save_refresh_schedule, start_catalog_scheduler
from engine.profiles import load_encoders
from storage.catalog.edge import EdgeCatalog
from storage.db import default_sqlite_url, make_engine, upgrade
from storage.job_store import JobStore
from storage.media_store import MediaStore
from storage.models import JobStatus

EVERY_SECOND = "* * * * * *"
WAIT_S = 5.0  # seconds a test waits for a firing at most


async def _wait_for(predicate, timeout: float = WAIT_S) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.05)


# =================================================================================================
# cron expressions
# =================================================================================================

WEEKDAYS = [
    ("*", "*"),
    ("0", "sun"),
    ("7", "sun"),
    ("1-5", "mon,tue,wed,thu,fri"),
    ("mon-fri", "mon,tue,wed,thu,fri"),
    ("0,6", "sun,sat"),
    ("*/2", "sun,tue,thu,sat"),
    ("1-7", "sun,mon,tue,wed,thu,fri,sat"),
]


@pytest.mark.parametrize(("field", "expected"), WEEKDAYS)
def test_crontab_weekdays_count_sunday_as_zero(field: str, expected: str) -> None:
    assert crontab_weekdays(field) == expected


NEXT_FIRES = [
    ("0 3 * * *", datetime(2025, 1, 1, 3, 0, tzinfo=UTC)),  # every night at 03:00
    ("0 3 * * 0", datetime(2025, 1, 5, 3, 0, tzinfo=UTC)),  # Sunday (crontab's 0), not Monday the 6th
    ("30 */6 * * 1-5", datetime(2025, 1, 1, 0, 30, tzinfo=UTC)),  # a Wednesday
    ("*/15 * * * * *", datetime(2025, 1, 1, 0, 0, 15, tzinfo=UTC)),  # seconds first
]


@pytest.mark.parametrize(("expr", "expected"), NEXT_FIRES)
def test_next_fire_time(expr: str, expected: datetime) -> None:
    now = datetime(2025, 1, 1, 0, 0, 1, tzinfo=UTC)  # a Wednesday
    assert parse_cron(expr).get_next_fire_time(None, now) == expected


BAD = [("0 3 * *", "5 fields"), ("61 * * * *", "bad cron expression"), ("0 3 * * 8", "outside 0-7"), ("0 3 * * 5-1", "descending")]


@pytest.mark.parametrize(("expr", "message"), BAD)
def test_bad_expressions_are_refused(expr: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_cron(expr)


# =================================================================================================
# firing
# =================================================================================================


async def test_a_cron_job_fires_and_survives_its_failures() -> None:
    runs: list[float] = []

    async def job() -> None:
        runs.append(asyncio.get_running_loop().time())
        raise RuntimeError("this run failed")  # logged; the schedule goes on

    sched = RefreshScheduler(job, cron=EVERY_SECOND)
    sched.start()
    try:
        assert sched.next_run_time is not None

        async def two_runs() -> bool:
            return len(runs) >= 2

        await _wait_for(two_runs)
    finally:
        sched.shutdown()
    assert sched.started_runs >= 2 and runs[1] - runs[0] == pytest.approx(1.0, abs=0.3)


async def test_overlapping_runs_are_skipped() -> None:
    running = 0
    most = 0
    finished = asyncio.Event()

    async def slow_job() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(2.2)  # longer than the schedule's period
        running -= 1
        finished.set()

    sched = RefreshScheduler(slow_job, cron=EVERY_SECOND)
    sched.start()
    try:
        await asyncio.wait_for(finished.wait(), timeout=WAIT_S)
    finally:
        sched.shutdown()
    assert most == 1  # never two at once
    assert sched.skipped_runs >= 1  # the firings due during the run were dropped


async def test_run_now_refuses_while_a_run_is_going() -> None:
    gate = asyncio.Event()

    async def job() -> None:
        await gate.wait()

    sched = RefreshScheduler(job, cron="0 3 * * *")
    first = asyncio.create_task(sched.run_now())
    await asyncio.sleep(0)
    assert sched.running
    assert await sched.run_now() is False and sched.skipped_runs == 1
    gate.set()
    assert await first is True and not sched.running and sched.started_runs == 1


def test_start_needs_a_running_loop() -> None:
    sched = RefreshScheduler(lambda: asyncio.sleep(0), cron="0 3 * * *")
    with pytest.raises(RuntimeError, match="no running event loop"):
        sched.start()


# =================================================================================================
# the catalog refresh schedule
# =================================================================================================


@pytest.fixture
async def admin(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "music").mkdir()
    url = default_sqlite_url(data)
    await upgrade(url)
    engine = make_engine(url)
    tiny = load_encoders("tiny")
    catalog = EdgeCatalog(data / "catalog", catalog_schema(tiny.profile, fusion=False))
    adm = CatalogAdmin(engine=engine, catalog=catalog, media_store=MediaStore(data / "media"), data_dir=data, encoders=tiny)
    await adm.add_folder(tmp_path / "music")
    try:
        yield adm
    finally:
        catalog.close()
        await engine.dispose()
        shutil.rmtree(data, ignore_errors=True)


async def test_scheduled_refresh_runs_from_the_stored_schedule_and_is_recorded(admin: CatalogAdmin) -> None:
    jobs: JobStore = admin.jobs
    assert await start_catalog_scheduler(admin) is None  # no schedule stored
    stale = await jobs.start_run(kind=REFRESH_JOB, detail={"trigger": "cli"})  # a crashed process's run
    await save_refresh_schedule(jobs, EVERY_SECOND)
    sched = await start_catalog_scheduler(admin)
    assert sched is not None and sched.cron == EVERY_SECOND
    try:

        async def a_scheduled_run_succeeded() -> bool:
            runs = await jobs.list_runs(kind=REFRESH_JOB)
            return any(r.detail.get("trigger") == "schedule" and r.status is JobStatus.SUCCEEDED for r in runs)

        await _wait_for(a_scheduled_run_succeeded)
    finally:
        sched.shutdown()
    closed = await jobs.get_run(job_id=stale.id)
    assert closed is not None and closed.status is JobStatus.FAILED and closed.error == "process ended while running"
    run = next(r for r in await jobs.list_runs(kind=REFRESH_JOB) if r.detail.get("trigger") == "schedule")
    assert run.detail["tracks"] == 0 and run.detail["version_name"]  # an empty folder: an empty version


async def test_disabled_or_invalid_schedules(admin: CatalogAdmin) -> None:
    with pytest.raises(ValueError, match="5 fields"):
        await save_refresh_schedule(admin.jobs, "every night")
    assert await admin.jobs.get_schedule(kind=REFRESH_JOB) is None
    stored = await save_refresh_schedule(admin.jobs, "  0   3 * * *  ", enabled=False)
    assert stored.cron == "0 3 * * *" and not stored.enabled
    assert await start_catalog_scheduler(admin) is None
    sched = await start_catalog_scheduler(admin, cron="0 3 * * *")  # given explicitly: runs anyway
    assert sched is not None
    sched.shutdown()

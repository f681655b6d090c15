"""Scheduled catalog refreshes inside the running bot (DESIGN.md, "Who uses it": admins refresh the
catalog now or on a schedule).

APScheduler 3.x's `AsyncIOScheduler` runs the refresh coroutine on the service's own event loop
(the refresh moves its heavy work to threads, so the bot keeps answering). The schedule is a
cron expression, stored per job kind in SQL (`JobStore.set_schedule`, `musechat catalog
schedule`) and read when the service starts (`start_catalog_scheduler`):

- 5 fields, crontab's "minute hour day month weekday" ("0 3 * * *": every night at 03:00), with
  crontab's weekday numbers (0 or 7 = Sunday). APScheduler 3's own `from_crontab` counts 0 as
  Monday (its issue 286), so the weekday field is translated here to day names first;
- 6 fields: a seconds field in front ("*/30 * * * * *"), for tests and impatient admins.

Runs are recorded in the `jobs` table by the refresh itself (`CatalogAdmin.refresh(trigger=
"schedule")`). Overlapping runs are skipped, never queued: the job has max_instances=1 and
coalesce=True (a refresh still running when the next one is due makes APScheduler drop that
firing; missed firings collapse into one), and `run_now` refuses while one runs. Runs left
"running" by a crashed process are closed when the scheduler starts (`JobStore.abandon_stale`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from bot.service.catalog_admin import REFRESH_JOB, CatalogAdmin, RefreshInProgressError
from storage.job_store import JobSchedule, JobStore

log = logging.getLogger(__name__)

DEFAULT_TIMEZONE = "UTC"
MISFIRE_GRACE_S = 15 * 60  # seconds: a firing missed by less (the loop was busy) still runs
CRONTAB_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab numbering: 0 = Sunday
_DOW_PART = re.compile(r"^(?P<range>\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/(?P<step>\d+))?$")


def _crontab_day(token: str) -> int:
    token = token.lower()
    if token.isdigit():
        n = int(token)
        if not 0 <= n <= 7:
            raise ValueError(f"weekday {n} is outside 0-7")
        return n  # 7 is Sunday too; kept as 7 so that "1-7" ascends
    if token[:3] in CRONTAB_DAYS:
        return CRONTAB_DAYS.index(token[:3])
    raise ValueError(f"unknown weekday {token!r}")


def crontab_weekdays(field: str) -> str:
    """A crontab weekday field ("1-5", "0,6", "*/2", "sun") as APScheduler day names ("mon,tue,...")."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.lower().split(","):
        m = _DOW_PART.match(part)
        if not m:
            raise ValueError(f"bad weekday field {field!r}")
        spec, step = m.group("range"), int(m.group("step") or 1)
        if step < 1:
            raise ValueError(f"bad step in weekday field {field!r}")
        if spec == "*":
            lo, hi = 0, 6
        elif "-" in spec:
            a, b = spec.split("-")
            lo, hi = _crontab_day(a), _crontab_day(b)
            if hi < lo:
                raise ValueError(f"descending weekday range {part!r}")
        else:
            lo = hi = _crontab_day(spec)
            if m.group("step"):  # "1/2": from Monday to the end of the week, every other day
                hi = 7
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return ",".join(CRONTAB_DAYS[d] for d in sorted(days))


class CronError(ValueError):
    """A cron expression that cannot be read; `str(e)` says what is wrong."""


def parse_cron(expr: str, *, timezone: str = DEFAULT_TIMEZONE) -> CronTrigger:
    """A cron expression (module docstring: 5 crontab fields, or 6 with seconds first) -> CronTrigger.

    Raises CronError (a ValueError) with what is wrong.
    """
    fields = expr.split()
    if len(fields) == 5:
        minute, hour, day, month, dow = fields
        second = "0"
    elif len(fields) == 6:
        second, minute, hour, day, month, dow = fields
    else:
        raise CronError(
            f"a cron expression has 5 fields (minute hour day month weekday) or 6 (seconds first), got {expr!r}"
        )
    try:
        return CronTrigger(
            second=second, minute=minute, hour=hour, day=day, month=month,
            day_of_week=crontab_weekdays(dow), timezone=timezone,
        )  # fmt: skip
    except ValueError as exc:
        raise CronError(f"bad cron expression {expr!r}: {exc}") from None


async def save_refresh_schedule(jobs: JobStore, cron: str, *, enabled: bool = True, timezone: str = DEFAULT_TIMEZONE) -> JobSchedule:
    """Validate and store the catalog refresh schedule (read by the service when it starts)."""
    parse_cron(cron, timezone=timezone)
    return await jobs.set_schedule(kind=REFRESH_JOB, cron=" ".join(cron.split()), enabled=enabled)


class RefreshScheduler:
    """Runs `job` (a coroutine function, e.g. a catalog refresh) on a cron schedule, one at a time."""

    def __init__(
        self,
        job: Callable[[], Awaitable[Any]],
        *,
        cron: str,
        timezone: str = DEFAULT_TIMEZONE,
        name: str = REFRESH_JOB,
        misfire_grace_s: int = MISFIRE_GRACE_S,
    ) -> None:
        self.cron = cron
        self.name = name
        self.trigger = parse_cron(cron, timezone=timezone)
        self._job = job
        self._misfire_grace_s = misfire_grace_s
        self._scheduler = AsyncIOScheduler(timezone=timezone)
        self._scheduler.add_listener(self._on_skipped, EVENT_JOB_MAX_INSTANCES)
        self._running = False
        self._task: asyncio.Task[Any] | None = None  # the run in progress
        self.started_runs = 0  # runs begun by the schedule or run_now
        self.skipped_runs = 0  # firings dropped because a run was still going

    def start(self) -> None:
        """Start firing; call from inside the running event loop of the service."""
        asyncio.get_running_loop()  # fail here, clearly, outside a loop
        self._scheduler.add_job(
            self._fire, self.trigger, id=self.name, name=self.name, max_instances=1, coalesce=True,
            misfire_grace_time=self._misfire_grace_s, replace_existing=True,
        )  # fmt: skip
        self._scheduler.start()
        log.info("scheduled %s with %r; next run at %s", self.name, self.cron, self.next_run_time)

    def shutdown(self) -> None:
        """Stop firing (a run in progress finishes on the loop)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    @property
    def next_run_time(self) -> datetime | None:
        job = self._scheduler.get_job(self.name)
        return None if job is None else job.next_run_time

    @property
    def running(self) -> bool:
        return self._running

    async def run_now(self) -> bool:
        """Run the job now (an admin's "refresh now"); False, doing nothing, if a run is going on."""
        if self._running:
            log.info("%s requested but a run is in progress: skipped", self.name)
            self.skipped_runs += 1
            return False
        await self._run()
        return True

    async def _fire(self) -> None:
        if self._running:  # run_now is going on: the scheduler cannot see it
            log.warning("%s is due but the previous run is still going: skipped", self.name)
            self.skipped_runs += 1
            return
        await self._run()

    async def aclose(self) -> None:
        """Stop firing and cancel a run in progress (a cancelled refresh leaves the live version serving)."""
        self.shutdown()
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        self._running = True
        self.started_runs += 1
        self._task = asyncio.current_task()
        try:
            await self._job()
        except RefreshInProgressError:
            self.skipped_runs += 1
            log.warning("%s skipped: a refresh started elsewhere in this process is running", self.name)
        except Exception:  # noqa: BLE001 - the job recorded its failure; the schedule goes on
            log.exception("scheduled %s failed", self.name)
        finally:
            self._running = False
            self._task = None

    def _on_skipped(self, event: JobExecutionEvent) -> None:
        self.skipped_runs += 1
        log.warning("%s is due but the previous run is still going: skipped", self.name)


async def start_catalog_scheduler(
    admin: CatalogAdmin, *, cron: str | None = None, timezone: str = DEFAULT_TIMEZONE, queue: Any = None
) -> RefreshScheduler | None:
    """Start scheduled refreshes inside the running service (`musechat serve`).

    `cron` overrides the stored schedule; without either (or with the stored one disabled)
    nothing is scheduled and None is returned. Runs a crashed process left "running" are closed
    first.

    `queue`: a `bot.jobs.saq_runner.SaqRunner`: each run is then the `catalog_refresh` job of the
    catalog queue, done by a model worker (several front-ends firing at once join one job), and
    runs left "running" are not closed here: they may be a worker's, still going.
    """
    if cron is None:
        stored = await admin.jobs.get_schedule(kind=REFRESH_JOB)
        if stored is None or not stored.enabled:
            log.info("no catalog refresh schedule is set")
            return None
        cron = stored.cron
    if queue is not None:
        log.info("scheduled catalog refreshes (%s) go to the workers' catalog queue", cron)
        scheduler = RefreshScheduler(lambda: queue.catalog_refresh(trigger="schedule"), cron=cron, timezone=timezone)
        scheduler.start()
        return scheduler
    abandoned = await admin.jobs.abandon_stale(kind=REFRESH_JOB)
    if abandoned:
        log.warning("closed %d catalog refresh run(s) left running by an earlier process", abandoned)
    scheduler = RefreshScheduler(lambda: admin.refresh(trigger="schedule"), cron=cron, timezone=timezone)
    scheduler.start()
    return scheduler

"""The long-running host behind `musechat serve`: platform adapters, scheduled jobs, health, drain.

One process hosts, over one application (bot/app.py, so one catalog and one model pool):

- the platform adapters whose credentials are set (Discord, Slack), each running until closed;
- the scheduled catalog refresh (the stored cron, or `--cron`), run on the catalog lane of the
  model pool beside the chats (bot/service/pool.py), and the scheduled media retention;
- an HTTP endpoint: `/healthz` (the process is alive) and `/readyz` (the database answers, the
  catalog is open and holds tracks, the models are loaded, every adapter is connected), 503 with
  the failing checks otherwise;
- on SIGTERM or SIGINT: stop taking new turns (they are answered "restarting, send that again"),
  let those in flight finish within a grace period, then close the adapters, the jobs and the app.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa
from aiohttp import web

log = logging.getLogger(__name__)

DRAIN_GRACE_S = 20.0  # seconds turns in flight get to finish on shutdown (compose: stop_grace_period 30s)
RETENTION_EVERY_S = 3600.0  # seconds between media-store clean-ups
EVENT_MEMORY_S = 3600.0  # seconds a platform event id is remembered (Slack retries within ~5 minutes)
READY_TIMEOUT_S = 3.0  # seconds a readiness check may take


class Adapter(Protocol):
    """What `serve` needs of a platform adapter (bot/adapters/discord.py, slack.py)."""

    name: str

    @property
    def ready(self) -> bool: ...  # connected and handling events

    async def run(self) -> None: ...  # until close()

    async def close(self) -> None: ...


@dataclass
class HostStatus:
    started_at: float = field(default_factory=time.time)
    scheduler: Any = None  # RefreshScheduler | None
    retention_runs: int = 0
    stopping: bool = False


class Host:
    """Adapters + scheduled jobs + health over one app, until `stop` is set (module docstring)."""

    def __init__(
        self,
        app: Any,  # bot.app.App
        *,
        adapters: Sequence[Adapter] | Callable[[Any], Sequence[Adapter]] = (),
        cron: str | None = None,
        health_host: str = "127.0.0.1",
        health_port: int | None = 8081,
        grace_s: float = DRAIN_GRACE_S,
        retention_every_s: float | None = RETENTION_EVERY_S,
    ) -> None:
        self.app = app
        # adapters, or a function building them from the loaded conversation service
        self._make_adapters = adapters if callable(adapters) else (lambda _service, a=list(adapters): a)
        self.adapters: list[Adapter] = []
        self.cron = cron
        self.health_host = health_host
        self.health_port = health_port
        self.grace_s = grace_s
        self.retention_every_s = retention_every_s
        self.status = HostStatus()
        self.service: Any = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.bound_port: int | None = None

    # --- health -----------------------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "stopping" if self.status.stopping else "alive", "uptime_s": round(time.time() - self.status.started_at, 1)})

    async def readiness(self) -> dict[str, str]:
        """Each check's state: "ok", or what is wrong."""
        checks: dict[str, str] = {}
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                async with self.app.sql.connect() as conn:
                    await conn.execute(sa.text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            checks["database"] = f"unavailable: {type(exc).__name__}"
        try:
            n = await asyncio.wait_for(asyncio.to_thread(self.app.catalog.count), READY_TIMEOUT_S)
            checks["catalog"] = "ok" if n > 0 else "empty: run musechat catalog refresh"
        except Exception as exc:  # noqa: BLE001
            checks["catalog"] = f"unavailable: {type(exc).__name__}"
        checks["models"] = "ok" if self.service is not None else "loading"
        for adapter in self.adapters:
            checks[f"adapter:{adapter.name}"] = "ok" if adapter.ready else "not connected"
        if self.status.stopping:
            checks["process"] = "stopping"
        return checks

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = await self.readiness()
        ok = all(v == "ok" for v in checks.values())
        return _json({"ready": ok, "checks": checks}, status=200 if ok else 503)

    async def _start_health(self) -> None:
        if self.health_port is None:
            return
        web_app = web.Application()
        web_app.router.add_get("/healthz", self._healthz)
        web_app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(web_app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.health_host, self.health_port)
        await site.start()
        sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.health_port
        log.info("health endpoint on http://%s:%d/healthz and /readyz", self.health_host, self.bound_port)

    # --- jobs -------------------------------------------------------------------------------------

    async def retention(self) -> None:
        """One clean-up: media past the retention policy, platform event ids older than their retry window."""
        from storage.db import utcnow
        from storage.event_store import EventStore

        report = await asyncio.to_thread(self.app.media.cleanup)
        pruned = await EventStore(self.app.sql).prune(older_than=utcnow() - datetime.timedelta(seconds=EVENT_MEMORY_S))
        self.status.retention_runs += 1
        log.info(
            "retention: removed %d media file(s), freed %.1f MiB; forgot %d platform event id(s)",
            len(report.removed), report.freed_bytes / 2**20, pruned,
        )  # fmt: skip

    async def _retention_loop(self) -> None:
        assert self.retention_every_s is not None
        while True:
            await asyncio.sleep(self.retention_every_s)
            try:
                await self.retention()
            except Exception:  # noqa: BLE001 - the next run tries again
                log.exception("retention failed")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    # --- the whole lifetime -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, on_started: Any = None) -> None:
        """Serve until `stop` is set, then drain and close everything this host started."""
        from bot.service.scheduler import start_catalog_scheduler

        await self._start_health()  # /healthz answers while the models load; /readyz says "loading"
        try:
            self.service = await self.app.service()
            self.adapters = list(self._make_adapters(self.service))
            self.status.scheduler = await start_catalog_scheduler(self.app.admin(), cron=self.cron, queue=self.app.refresh_queue())
            if self.retention_every_s:
                self._spawn(self._retention_loop(), "media-retention")
            for adapter in self.adapters:
                self._spawn(adapter.run(), f"adapter-{adapter.name}")
            if on_started is not None:
                on_started(self)
            await stop.wait()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop taking turns, let those in flight finish (grace period), then close in reverse order."""
        self.status.stopping = True
        if self.service is not None:
            done = await self.service.drain(self.grace_s)
            log.info("drain %s", "complete" if done else f"gave up after {self.grace_s:.0f} s")
        for adapter in self.adapters:
            try:
                await adapter.close()
            except Exception:  # noqa: BLE001 - close the rest
                log.exception("closing the %s adapter failed", adapter.name)
        if self.status.scheduler is not None:
            await self.status.scheduler.aclose()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _json(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json")


__all__ = ["Adapter", "DRAIN_GRACE_S", "Host"]

"""`musechat worker`: serve the model jobs of the SAQ queues (bot/jobs/worker.py); `--check`: is one alive?"""

from __future__ import annotations

import asyncio
import logging

import typer

from bot.cli.common import EXIT_UNAVAILABLE, EXIT_USER_ERROR, CliExit, cli_errors, out
from bot.settings import Settings, get_settings

log = logging.getLogger(__name__)


async def _work(settings: Settings) -> None:
    from bot.app import App
    from bot.jobs.worker import serve_jobs

    app = await App.open(settings, catalog=False)  # a worker needs no catalog (nor its lock)
    try:
        runner = await app.worker_runner(progress=lambda m: log.info("%s", m))
        await serve_jobs(
            settings, runner,
            ready=lambda: out.print(f"worker ready: queues {settings.queue_interactive}, {settings.queue_catalog}"),
        )  # fmt: skip
    finally:
        await app.close()


def worker(
    check: bool = typer.Option(False, "--check", help="Exit 0 when a worker is alive on both queues, 3 when none is."),
    log_json: bool = typer.Option(None, "--log-json/--log-text", help="JSON log lines (default: MUSECHAT_LOG_JSON)."),
) -> None:
    """Serve model jobs (video features, query + re-rank, excerpts, previews, reasons, catalog refreshes) from the Redis job queue."""
    from bot.cli.serve import configure_logging

    settings = get_settings()
    configure_logging(settings, as_json=settings.log_json if log_json is None else log_json,
                      level=logging.WARNING if check else logging.INFO)  # fmt: skip
    with cli_errors():
        if not settings.redis_url:
            raise CliExit("the worker needs MUSECHAT_REDIS_URL (the job queue's Redis)", EXIT_USER_ERROR)
        if check:
            from bot.jobs.worker import check_health

            try:
                status = asyncio.run(check_health(settings))
            except OSError as exc:  # Redis unreachable
                raise CliExit(f"the job queue's Redis is unreachable: {exc}", EXIT_UNAVAILABLE) from None
            if status:
                raise CliExit("no live worker on the job queues", EXIT_UNAVAILABLE)
            out.print("a worker is alive on each queue")
            return
        asyncio.run(_work(settings))


def register_worker_command(app: typer.Typer) -> None:
    app.command("worker")(worker)


__all__ = ["register_worker_command", "worker"]

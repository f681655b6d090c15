"""`musechat catalog ...`: catalog administration from the terminal."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import typer
from rich.table import Table

from bot.adapters.terminal import print_skipped, refresh_with_progress
from bot.cli.common import EXIT_USER_ERROR, cli_errors, console, open_app, out
from bot.settings import Settings, get_settings

log = logging.getLogger(__name__)

catalog_app = typer.Typer(help="The music catalog: folders, refreshes, status.", no_args_is_help=True)



def _consoles():
    return console, out


@asynccontextmanager
async def open_admin(settings: Settings) -> AsyncIterator:
    """The catalog admin of the application (bot/app.py): models load only when a refresh has work."""
    async with open_app(settings) as app:
        yield app.admin()


def _run(coro_fn):
    with cli_errors():
        return asyncio.run(coro_fn())


@catalog_app.command("add")
def catalog_add(
    folder: Path = typer.Argument(..., help="A folder of music files (searched recursively)."),
    manifest: Path = typer.Option(None, help="CSV or JSON: file -> title, artist, licence, tags."),
    licence: str = typer.Option(None, help="Licence of every track in the folder (e.g. CC-BY-4.0)."),
    refresh: bool = typer.Option(False, "--refresh", help="Refresh the catalog right after adding."),
) -> None:
    """Register a music folder; its tracks are indexed by the next refresh."""
    _, out = _consoles()
    if not folder.is_dir():
        _consoles()[0].print(f"[red]error:[/red] not a folder: {folder}")
        raise typer.Exit(EXIT_USER_ERROR)
    if manifest is not None and not manifest.is_file():
        _consoles()[0].print(f"[red]error:[/red] manifest not found: {manifest}")
        raise typer.Exit(EXIT_USER_ERROR)

    async def go():
        async with open_admin(get_settings()) as admin:
            src = await admin.add_folder(folder, manifest=manifest, licence=licence)
            out.print(f"added {src.path}" + (f" (licence {src.licence})" if src.licence else ""))
            if refresh:
                await refresh_with_progress(admin)

    _run(go)


@catalog_app.command("refresh")
def catalog_refresh(
    queue: bool = typer.Option(
        None, "--queue/--local",
        help="Refresh on a model worker (the catalog queue) or in this process. Default: on a worker when "
        "MUSECHAT_MODEL_RUNNER=saq (the models and the GPU are the workers'), else here.",
    ),
) -> None:  # fmt: skip
    """Index new or changed files of every folder and swap the new catalog version in atomically."""
    settings = get_settings()
    queued = settings.model_runner == "saq" if queue is None else queue

    async def go():
        if queued:
            await queued_refresh(settings)
            return
        async with open_admin(settings) as admin:
            await refresh_with_progress(admin)

    _run(go)


async def queued_refresh(settings: Settings) -> dict:
    """Send the refresh to the workers' catalog queue and wait for its report (this process opens no catalog:
    an embedded one must stay free for the worker)."""
    from bot.cli.common import CliExit
    from bot.jobs.saq_runner import SaqRunner
    from storage.media_store import MediaStore

    if not settings.redis_url:
        raise CliExit("--queue needs MUSECHAT_REDIS_URL (the job queue's Redis)", EXIT_USER_ERROR)
    runner = await SaqRunner.open(settings, media=MediaStore(settings.media_dir), features_tag="")
    try:
        out.print(f"refresh sent to the catalog queue {settings.queue_catalog}; waiting for a worker to finish it")
        report = await runner.catalog_refresh(trigger="cli", on_status=lambda e: out.print(e.message))
    finally:
        await runner.close()
    out.print(
        f"catalog version {report['version_name']}: {report['tracks']} tracks "
        f"({report['added']} added, {report['changed']} changed, {report['removed']} removed; "
        f"{report['analysed']} embedded, {report['reused']} reused) in {report['seconds']:.1f} s, on a worker"
    )
    if report.get("tower_tracks"):
        out.print(f"trained AST towers: {report['tower_tracks']} tracks decoded again for g_mt's vectors and their candidate clips")
    for f in report.get("failures", []):
        console.print(f"[yellow]skipped[/yellow] {f}")
    return report


@catalog_app.command("remove")
def catalog_remove(folder: Path = typer.Argument(..., help="A folder registered with `catalog add`.")) -> None:
    """Unregister a folder; its tracks leave the catalog at the next refresh."""
    console, out = _consoles()

    async def go():
        async with open_admin(get_settings()) as admin:
            if not await admin.remove_folder(folder):
                console.print(f"[red]error:[/red] {folder} is not a catalog folder")
                raise typer.Exit(EXIT_USER_ERROR)
            out.print(f"removed {folder}; run `musechat catalog refresh` to drop its tracks")

    _run(go)


@catalog_app.command("schedule")
def catalog_schedule(
    cron: str = typer.Argument(..., help='Crontab expression, e.g. "0 3 * * *" (daily at 03:00).'),
    disable: bool = typer.Option(False, "--disable", help="Keep the expression but stop scheduled refreshes."),
) -> None:
    """Set when `musechat serve` refreshes the catalog."""
    from bot.service.scheduler import save_refresh_schedule

    _, out = _consoles()

    async def go():
        async with open_admin(get_settings()) as admin:
            sched = await save_refresh_schedule(admin.jobs, cron, enabled=not disable)
            out.print(f"catalog refresh schedule: {sched.cron} ({'enabled' if sched.enabled else 'disabled'})")

    _run(go)


@catalog_app.command("status")
def catalog_status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Show the live catalog version, folders, recent refreshes and failures."""
    _, out = _consoles()

    async def go():
        async with open_admin(get_settings()) as admin:
            return await admin.status()

    st = _run(go)
    from bot.service.catalog_admin import reason_counts

    ckpt = get_settings().fusion_checkpoint
    mode = "fusion" if ckpt else "zero-shot"
    from engine.music_towers import has_towers

    towers = has_towers(ckpt)  # the catalog's fusion vectors come from the checkpoint's trained g_mt
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "mode": mode,
                    "trained_towers": towers,
                    "live_version": st.live_version_name,
                    "tracks": st.live_points,
                    "folders": [str(f.path) for f in st.folders],
                    "running": st.running is not None,
                    "schedule": None if st.schedule is None else st.schedule.cron,
                    "skipped": [{"path": f.path, "reason": f.reason or f.error} for f in st.failures if f.stage == "analyse"]
                    + [{"path": path, "reason": f"duplicate of {kept}"} for path, kept in st.duplicates],
                    "skipped_reasons": reason_counts(st.failures) | ({"duplicate": len(st.duplicates)} if st.duplicates else {}),
                    "failures": [f.to_json() for f in st.failures],
                    "schema": st.schema,
                }
            )
        )
        return
    how = " (no fusion checkpoint configured)" if mode != "fusion" else " (trained AST towers: g_mt's vectors, g_mc on the candidate clip)" if towers else ""
    out.print(f"recommender mode: [bold]{mode}[/bold]" + how)
    out.print(f"live catalog: {st.live_version_name or 'none'}, {st.live_points} tracks")
    out.print("folders: " + (", ".join(str(f.path) for f in st.folders) or "none (add one with `musechat catalog add`)"))
    if st.schedule is not None:
        out.print(f"schedule: {st.schedule.cron} ({'enabled' if st.schedule.enabled else 'disabled'})")
    if st.running is not None:
        out.print("a refresh is running now")
    if st.last_runs:
        t = Table(title="recent refreshes")
        for col in ("started", "status", "trigger / detail"):
            t.add_column(col)
        for run in st.last_runs[:5]:
            detail = run.detail or {}
            t.add_row(
                str(run.started_at)[:19],
                str(run.status),
                f"{detail.get('tracks', '?')} tracks, {detail.get('analysed', 0)} embedded, {detail.get('failed', 0)} failed",
            )
        out.print(t)
    print_skipped(st.failures, st.duplicates, to=out)


def register_catalog_commands(app: typer.Typer) -> None:
    app.add_typer(catalog_app, name="catalog")

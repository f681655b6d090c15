"""`musechat catalog ...` and `musechat serve`: catalog administration from the terminal."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bot.cli.common import EXIT_UNAVAILABLE, EXIT_USER_ERROR, console, out, storage_errors
from bot.settings import Settings, get_settings

log = logging.getLogger(__name__)

catalog_app = typer.Typer(help="The music catalog: folders, refreshes, status.", no_args_is_help=True)

STAGE_LABELS = {"scan": "scanning", "analyse": "embedding", "excerpt": "cutting excerpts", "write": "writing catalog"}


def _consoles():
    return console, out


@contextmanager
def admin_errors() -> Iterator[None]:
    """Storage, catalog and admin errors as one line and an exit code (no tracebacks)."""
    from bot.service.catalog_admin import CatalogAdminError
    from storage.catalog import CatalogError

    console, _ = _consoles()
    try:
        with storage_errors():  # a dead or outdated database: exit 3, as every command
            yield
    except CatalogError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    except (CatalogAdminError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(EXIT_USER_ERROR) from None


@asynccontextmanager
async def open_admin(settings: Settings) -> AsyncIterator:
    """A CatalogAdmin over the configured database, catalog and media store (models load lazily)."""
    from bot.service.catalog_admin import CatalogAdmin, catalog_schema, load_fusion
    from engine.profiles import load_encoders, resolve_profile
    from storage.catalog import open_catalog
    from storage.db import ensure_schema, make_engine
    from storage.media_store import MediaStore, RetentionPolicy

    await ensure_schema(settings.sql_url)
    sql = make_engine(settings.sql_url)
    catalog = None
    try:
        profile = resolve_profile(settings.profile, settings.backbone_overrides)
        ckpt = settings.fusion_checkpoint
        catalog = await asyncio.to_thread(
            open_catalog,
            url=settings.qdrant_url,
            api_key=settings.qdrant_api_key,
            path=settings.catalog_dir,
            schema=catalog_schema(profile, fusion=ckpt is not None),
        )
        media = MediaStore(
            settings.media_dir,
            retention=RetentionPolicy(
                max_age_s=settings.media_max_age_days * 86400.0, max_total_bytes=int(settings.media_max_total_mb * 2**20)
            ),
        )
        fusion = load_fusion(ckpt, profile, device=settings.device) if ckpt is not None else None
        yield CatalogAdmin(
            engine=sql,
            catalog=catalog,
            media_store=media,
            data_dir=settings.data_dir,
            encoders=lambda: load_encoders(profile, device=settings.device),
            profile=profile,
            fusion=fusion,
            ffmpeg=settings.ffmpeg_binary,
        )
    finally:
        if catalog is not None:
            catalog.close()
        await sql.dispose()


def _run(coro_fn):
    with admin_errors():
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


async def refresh_with_progress(admin) -> None:
    console, out = _consoles()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[name]}"), console=console, transient=True,
    ) as bar:  # fmt: skip
        tasks: dict[str, int] = {}

        def progress(p) -> None:
            if p.stage not in tasks:
                tasks[p.stage] = bar.add_task(STAGE_LABELS.get(p.stage, p.stage), total=max(p.total, 1), name="")
            bar.update(tasks[p.stage], completed=p.done, total=max(p.total, 1), name=Path(p.path).name if p.path else "")

        report = await admin.refresh(progress=progress)
    out.print(
        f"catalog version {report.version_name}: {report.tracks} tracks "
        f"({report.added} added, {report.changed} changed, {report.removed} removed; "
        f"{report.analysed} embedded, {report.reused} reused) in {report.seconds:.1f} s"
    )
    if report.analysed:
        out.print(f"embedding speed: {report.tracks_per_minute:.1f} tracks/min, {report.x_realtime:.0f}x real time")
    for f in report.failures:
        console.print(f"[yellow]skipped[/yellow] {f.path} ({f.stage}): {f.error}")
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")


@catalog_app.command("refresh")
def catalog_refresh() -> None:
    """Index new or changed files of every folder and swap the new catalog version in atomically."""

    async def go():
        async with open_admin(get_settings()) as admin:
            await refresh_with_progress(admin)

    _run(go)


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
    mode = "fusion" if get_settings().fusion_checkpoint else "zero-shot"
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "mode": mode,
                    "live_version": st.live_version_name,
                    "tracks": st.live_points,
                    "folders": [str(f.path) for f in st.folders],
                    "running": st.running is not None,
                    "schedule": None if st.schedule is None else st.schedule.cron,
                    "failures": [f.to_json() for f in st.failures],
                    "schema": st.schema,
                }
            )
        )
        return
    out.print(f"recommender mode: [bold]{mode}[/bold]" + ("" if mode == "fusion" else " (no fusion checkpoint configured)"))
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
    for f in st.failures:
        out.print(f"[yellow]failed[/yellow] {f.path} ({f.stage}): {f.error}")


def serve(
    cron: str = typer.Option(None, help="Override the stored refresh schedule (crontab expression)."),
) -> None:
    """Run the long-lived service: scheduled catalog refreshes (platform adapters join here later)."""
    from bot.service.scheduler import start_catalog_scheduler

    console, out = _consoles()

    async def go():
        async with open_admin(get_settings()) as admin:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):  # before anything is announced
                loop.add_signal_handler(sig, stop.set)
            scheduler = await start_catalog_scheduler(admin, cron=cron)
            if scheduler is None:
                out.print("no refresh schedule (set one with `musechat catalog schedule CRON`); serving without it")
            else:
                out.print(f"catalog refresh scheduled; next run at {scheduler.next_run_time}")
            try:
                await stop.wait()
            finally:
                if scheduler is not None:
                    scheduler.shutdown()
            out.print("stopped")

    _run(go)


def register_catalog_commands(app: typer.Typer) -> None:
    app.add_typer(catalog_app, name="catalog")
    app.command("serve")(serve)

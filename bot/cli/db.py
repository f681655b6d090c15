"""`musechat db ...` and `musechat media ...`: the SQL database and the media store."""

from __future__ import annotations

import typer

from bot.cli.common import cli_errors, out
from bot.settings import get_settings

db_app = typer.Typer(help="The SQL database (SQLite by default, PostgreSQL by MUSECHAT_DATABASE_URL).", no_args_is_help=True)
media_app = typer.Typer(help="The media store (uploads, excerpts, previews).", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Option("head", help="Alembic revision to migrate to.")) -> None:
    """Apply the database migrations (run once per release on PostgreSQL)."""
    import asyncio

    from storage.db import current_revision, safe_url, upgrade

    url = get_settings().sql_url
    with cli_errors():
        if url.startswith("sqlite"):
            get_settings().data_dir.mkdir(parents=True, exist_ok=True)
        asyncio.run(upgrade(url, revision=revision))
        rev = asyncio.run(current_revision(url))
    out.print(f"database {safe_url(url)} is at revision {rev}")


@db_app.command("status")
def db_status() -> None:
    """Show the database URL (password hidden) and its migration revision."""
    import asyncio

    from storage.db import current_revision, head_revision, safe_url

    url = get_settings().sql_url
    with cli_errors():
        rev = asyncio.run(current_revision(url))
    head = head_revision()
    state = "up to date" if rev == head else f"behind (head is {head}): run `musechat db upgrade`"
    out.print(f"database {safe_url(url)}: revision {rev or 'none'}, {state}")


@media_app.command("cleanup")
def media_cleanup() -> None:
    """Remove stored media past the retention policy (age, total size), least recently used first."""
    from storage.media_store import MediaStore, RetentionPolicy

    s = get_settings()
    store = MediaStore(
        s.media_dir,
        retention=RetentionPolicy(
            max_age_s=s.media_max_age_days * 86400.0, max_total_bytes=int(s.media_max_total_mb * 2**20)
        ),
    )
    r = store.cleanup()
    out.print(
        f"removed {len(r.removed)} file(s), freed {r.freed_bytes / 2**20:.1f} MiB; "
        f"kept {r.kept_files} file(s), {r.kept_bytes / 2**20:.1f} MiB"
    )




def register_db_commands(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
    app.add_typer(media_app, name="media")

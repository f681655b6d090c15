"""/music-admin refresh | status: catalog administration from Discord.

Only for members with Manage Server or one of the configured admin roles (Discord also hides the
group from others: `default_permissions(manage_guild=True)`, adjustable per server in Integrations).
The refresh reports its progress by editing its (ephemeral) response, at most once per interval.
The work itself is the catalog admin's (bot/service/catalog_admin.py); this module only talks.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from bot.adapters.discord import render
from bot.adapters.discord.live import InteractionTarget, LiveMessage

if TYPE_CHECKING:
    from bot.adapters.discord.adapter import DiscordAdapter

log = logging.getLogger(__name__)

NOT_ADMIN = "Only members with the Manage Server permission (or a bot admin role) can do that."
NO_ADMIN = "Catalog administration is not enabled in this bot process."
STAGES = {"scan": "looking for tracks", "analyse": "analysing", "excerpt": "cutting excerpts", "write": "writing the new version"}


async def _refresh(interaction: discord.Interaction) -> None:
    """Refresh the music catalog from its folders."""
    await on_refresh(interaction.client.adapter, interaction)  # type: ignore[attr-defined]


async def _status(interaction: discord.Interaction) -> None:
    """Show the catalog's status."""
    await on_status(interaction.client.adapter, interaction)  # type: ignore[attr-defined]


def admin_group() -> app_commands.Group:
    """A fresh /music-admin group (one per client: a command belongs to one tree)."""
    group = app_commands.Group(
        name="music-admin",
        description="Music catalog administration",
        guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )
    group.add_command(app_commands.Command(name="refresh", description="Refresh the music catalog from its folders", callback=_refresh))
    group.add_command(app_commands.Command(name="status", description="Show the music catalog's status", callback=_status))
    return group


def is_admin(adapter: DiscordAdapter, interaction: discord.Interaction) -> bool:
    if interaction.guild_id is None:
        return False
    if interaction.permissions.manage_guild:
        return True
    user = interaction.user
    # role ids as Discord sent them (Member.roles drops roles discord.py has not cached)
    role_ids = {r.id for r in getattr(user, "roles", ())} | set(getattr(user, "_roles", ()))
    return bool(role_ids & adapter.admin_role_ids)


async def _refuse(adapter: DiscordAdapter, interaction: discord.Interaction) -> bool:
    if not is_admin(adapter, interaction):
        log.info("discord: user %s was refused /music-admin", interaction.user.id)
        await interaction.response.send_message(NOT_ADMIN, ephemeral=True)
        return True
    if adapter.catalog_admin is None:
        await interaction.response.send_message(NO_ADMIN, ephemeral=True)
        return True
    return False


def progress_text(p: Any) -> str:
    stage = STAGES.get(p.stage, p.stage)
    return render.status_text(f"Refreshing the catalog: {stage} ({p.done}/{p.total})")


def report_text(report: Any) -> str:
    lines = [
        f"✅ Catalog refreshed: {report.tracks} tracks live (version {report.version_name or '?'}).",
        (
            f"Added {report.added}, changed {report.changed}, removed {report.removed}; "
            f"analysed {report.analysed}, reused {report.reused}; {report.seconds:.0f} s."
        ),
    ]
    if report.failures:
        first = report.failures[0]
        lines.append(f"⚠️ {len(report.failures)} file(s) skipped or without an excerpt, e.g. {first.path}: {first.reason or first.error}")
    lines += [f"Note: {n}" for n in report.notes[:3]]
    return render.clip("\n".join(lines), render.MAX_CONTENT_CHARS)


def status_text(status: Any) -> str:
    lines = [
        f"**Live catalog:** {status.live_version_name or 'none'} · {status.live_points} tracks",
        f"**Folders:** {', '.join(f'{f.path} ({f.licence})' for f in status.folders) or 'none registered'}",
        f"**Refresh:** {'running since ' + str(status.running.started_at) if status.running else 'not running'}"
        + (f" · schedule `{status.schedule.cron}`{'' if status.schedule.enabled else ' (off)'}" if status.schedule else " · no schedule"),
    ]
    if status.last_runs:
        run = status.last_runs[0]
        lines.append(f"**Last run:** {run.status.value if hasattr(run.status, 'value') else run.status} at {run.started_at}")
    if status.failures:
        lines.append(f"**Failures in the last run:** {len(status.failures)}")
    return render.clip("\n".join(lines), render.MAX_CONTENT_CHARS)


async def on_refresh(adapter: DiscordAdapter, interaction: discord.Interaction) -> None:
    """Run a refresh, editing the response with its progress and its report."""
    if await _refuse(adapter, interaction):
        return
    await interaction.response.defer(thinking=True, ephemeral=True)
    live = LiveMessage(InteractionTarget(interaction), min_interval_s=adapter.edit_interval_s)
    loop = asyncio.get_running_loop()

    def progress(p: Any) -> None:  # may be called from a worker thread
        loop.call_soon_threadsafe(lambda: live.show(content=progress_text(p)))

    from bot.service.catalog_admin import CatalogAdminError

    log.info("discord: user %s started a catalog refresh", interaction.user.id)
    try:
        report = await adapter.catalog_admin.refresh(progress=progress, trigger=f"discord user {interaction.user.id}")
        live.show(content=report_text(report))
    except CatalogAdminError as exc:
        live.show(content=f"The refresh did not run: {exc}")
    except Exception:
        log.exception("discord: catalog refresh failed")
        live.show(content="The refresh failed (the previous catalog is still live); the bot's log has the details.")
    try:
        await live.flush()
    except discord.HTTPException as exc:  # e.g. the interaction's token expired (15 min) on a long refresh
        log.warning("discord: could not show the refresh report: %s", exc)
    finally:
        await live.close()


async def on_status(adapter: DiscordAdapter, interaction: discord.Interaction) -> None:
    if await _refuse(adapter, interaction):
        return
    await interaction.response.defer(thinking=True, ephemeral=True)
    try:
        text = status_text(await adapter.catalog_admin.status())
    except Exception:
        log.exception("discord: catalog status failed")
        text = "I could not read the catalog's status; the bot's log has the details."
    await interaction.edit_original_response(content=text)

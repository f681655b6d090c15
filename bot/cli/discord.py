"""`musechat discord ...`: one-off Discord administration (registering the bot's commands).

Registering `/music`, `/music-admin` and the "Find music for this video" context menu is rate
limited by Discord, and global commands take a while to spread, so it is a command of its own
(run once per release), never done on every start of `serve`. `--guild ID` registers them in one
server at once, for development.
"""

from __future__ import annotations

import asyncio

import typer

from bot.cli.common import EXIT_USER_ERROR, CliExit, cli_errors, out
from bot.settings import get_settings

discord_app = typer.Typer(help="Discord administration: register the slash and context-menu commands.", no_args_is_help=True)


async def _sync(guild: int | None) -> list[str]:
    from bot.adapters.discord import DiscordAdapter

    adapter = DiscordAdapter(None, get_settings())
    try:
        await adapter.login()
        return await adapter.sync_commands(guild_id=guild)
    finally:
        await adapter.close()


@discord_app.command("sync-commands")
def sync_commands(
    guild: int = typer.Option(None, "--guild", help="Register in this server only (instant; for development)."),
) -> None:
    """Register the bot's commands with Discord (globally, or in one guild)."""
    with cli_errors():
        if get_settings().discord_token is None:
            raise CliExit("set MUSECHAT_DISCORD_TOKEN (the bot token from the Developer Portal)", EXIT_USER_ERROR)
        names = asyncio.run(_sync(guild))
    where = f"guild {guild}" if guild is not None else "every server (global commands can take up to an hour to appear)"
    out.print(f"registered {', '.join(names) or 'no commands'} in {where}", soft_wrap=True)


def register_discord_commands(app: typer.Typer) -> None:
    app.add_typer(discord_app, name="discord")

"""The `musechat` command line: the typer app and the registration of every command group."""

from __future__ import annotations

import logging
import sys

import typer

from bot.cli.catalog import register_catalog_commands
from bot.cli.chat import register_chat_commands
from bot.cli.common import EXIT_UNAVAILABLE, EXIT_USER_ERROR, console
from bot.cli.db import register_db_commands
from bot.cli.demo import demo
from bot.cli.discord import register_discord_commands
from bot.cli.models import register_model_commands
from bot.cli.reasoner import register_reasoner_commands
from bot.cli.serve import register_serve_command
from bot.cli.training import register_training_commands
from bot.cli.worker import register_worker_command

log = logging.getLogger(__name__)

app = typer.Typer(
    name="musechat",
    help="MuseChat: conversational background-music recommendation for videos.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


register_model_commands(app)  # version, embed, tag
register_db_commands(app)  # db upgrade|status, media cleanup
register_chat_commands(app)  # chat, recommend
register_catalog_commands(app)  # catalog ...
register_serve_command(app)  # serve
register_worker_command(app)  # worker [--check]
register_discord_commands(app)  # discord sync-commands
register_training_commands(app)  # data, train, eval
register_reasoner_commands(app)  # reasoner ...
app.command("demo")(demo)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


__all__ = ["EXIT_UNAVAILABLE", "EXIT_USER_ERROR", "app", "main"]

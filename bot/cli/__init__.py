"""The `musechat` command line (typer): one module per command group; `common.py` holds what they share."""

from bot.cli.main import app, main

__all__ = ["app", "main"]

"""The `musechat` command line."""

from __future__ import annotations

import logging

import typer

app = typer.Typer(
    name="musechat",
    help="MuseChat: conversational background-music recommendation for videos.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as _v

    typer.echo(_v("musechat-bot"))


def main() -> None:
    app()


if __name__ == "__main__":
    main()

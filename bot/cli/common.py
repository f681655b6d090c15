"""What every `musechat` command shares: the consoles, the exit codes, the one error mapper, the app.

Imports no command module (bot/cli/main.py registers them), so no command imports another.

Exit codes (`cli_errors`):
- 0: done;
- 2 (`EXIT_USER_ERROR`): something the user can fix in what they typed or gave: not a video,
  truncated, too long, a missing file, an unknown conversation, nothing asked, a bad cron
  expression or manifest, an unknown profile name, a folder that is not there, a setting with a
  value the bot cannot run with (`SettingsError`, naming the variable);
- 3 (`EXIT_UNAVAILABLE`): a dependency is missing or down: the database, the catalog (empty,
  locked, built for another profile), model weights, a checkpoint that does not fit;
- 1: anything else is a bug: logged with its traceback, reported as one, never disguised as a
  user error.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import click
import typer

from bot.adapters.terminal import console, out, print_error  # noqa: F401 - out: the results console every command prints to
from bot.settings import Settings, get_settings

log = logging.getLogger(__name__)

EXIT_BUG = 1  # an unexpected error: a bug, with its traceback in the log
EXIT_USER_ERROR = 2  # bad input: a message, never a traceback
EXIT_UNAVAILABLE = 3  # a dependency (database, weights) is missing or down


class CliExit(Exception):
    """Leave with a one-line message and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _classify(e: BaseException) -> tuple[int, str] | None:
    """(exit code, message) of a typed error; None for anything else (a bug)."""
    from bot.adapters.download import DownloadError
    from bot.app import RandomWeightsError
    from bot.jobs.runner import JobFailedError, JobTimeoutError, QueueFullError
    from bot.service.catalog_admin import CatalogAdminError
    from bot.service.errors import (
        CatalogMismatchError,
        ConversationError,
        EmptyCatalogError,
        SettingsError,
    )
    from bot.service.scheduler import CronError
    from engine.checkpoint import CheckpointMismatchError
    from engine.encoders.hf import BackboneUnavailable
    from engine.media import MediaError
    from engine.profiles import UnknownProfileError
    from storage.catalog import CatalogError
    from storage.db import StorageError

    if isinstance(e, CliExit):
        return e.code, str(e)
    if isinstance(e, JobFailedError):  # a bug on a worker (logged there): not the user's doing
        return EXIT_BUG, e.user_message
    if isinstance(e, (EmptyCatalogError, CatalogMismatchError, RandomWeightsError, QueueFullError, JobTimeoutError)):
        return EXIT_UNAVAILABLE, e.user_message
    if isinstance(e, (MediaError, ConversationError, DownloadError)):
        return EXIT_USER_ERROR, e.user_message
    if isinstance(e, FileNotFoundError):
        return EXIT_USER_ERROR, f"file not found: {e.filename or e}"
    if isinstance(e, (CatalogAdminError, CronError, UnknownProfileError, SettingsError)):
        return EXIT_USER_ERROR, str(e)
    if isinstance(e, (StorageError, CatalogError, CheckpointMismatchError, BackboneUnavailable)):
        return EXIT_UNAVAILABLE, getattr(e, "user_message", None) or str(e)
    if isinstance(e, PermissionError):  # an unwritable data directory: the machine's set-up, not a bug
        return EXIT_UNAVAILABLE, f"permission denied: {e.filename or e}"
    return None


@contextmanager
def cli_errors() -> Iterator[None]:
    """Map every failure to one line and an exit code (module docstring); bugs keep their traceback in the log."""
    try:
        yield
    except (typer.Exit, click.exceptions.ClickException, click.exceptions.Abort, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - classified below; a bug is re-reported as one
        typed = _classify(e)
        if typed is None:
            log.error("unexpected error (a bug)", exc_info=e)
            console.print_exception(show_locals=False) if log.isEnabledFor(logging.DEBUG) else None
            print_error(f"internal error (a bug, please report it): {type(e).__name__}: {e}")
            raise typer.Exit(EXIT_BUG) from None
        code, message = typed
        print_error(message)
        raise typer.Exit(code) from None


def load_encoders_with_status(profile: str | None):
    from engine.profiles import load_encoders

    s = get_settings()
    with console.status(f"loading the '{profile or s.profile}' models..."):
        return load_encoders(profile or s.profile, overrides=s.backbone_overrides, device=s.device)


@asynccontextmanager
async def open_app(settings: Settings | None = None, *, profile: str | None = None) -> AsyncIterator[Any]:
    """The application (bot/app.py) from the settings: storage opened once, models when asked for."""
    from bot.app import App

    s = settings or get_settings()
    with console.status("starting…") as status:
        app = await App.open(s, profile=profile, progress=lambda m: status.update(f"{m}…"))
    try:
        yield app
    finally:
        await app.close()


@asynccontextmanager
async def open_service(profile: str | None, settings: Settings | None = None) -> AsyncIterator[Any]:
    """The conversation service from the settings, with a progress line while it loads."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the rich status line says what loads; no tqdm bars under it
    async with open_app(settings, profile=profile) as app:
        yield await load_service(app)


async def load_service(app: Any) -> Any:
    """The app's conversation service, loading its models under a status line."""
    with console.status("starting…") as status:
        try:
            return await app.service(progress=lambda m: status.update(f"{m}…"))
        except FileNotFoundError as e:  # model weights missing: the installation, not the user's input
            raise CliExit(str(e), EXIT_UNAVAILABLE) from None


def check_video(video: Path | None) -> None:
    """Refuse a missing or unreadable video before the models load (seconds) rather than after."""
    if video is None:
        return
    if not video.is_file():
        raise FileNotFoundError(2, "no such file", str(video))
    from engine.media import probe

    s = get_settings()
    probe(video, limits=s.engine_config().limits, require_video=True, ffmpeg=s.ffmpeg_binary)

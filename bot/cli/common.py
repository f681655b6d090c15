"""What every `musechat` command shares: the consoles, the exit codes, the error mappers.

Imports no command module (bot/cli/main.py registers them), so no command imports another.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import typer

from bot.adapters.terminal import console, out, print_error  # noqa: F401 - out: the results console every command prints to
from bot.settings import get_settings

log = logging.getLogger(__name__)

EXIT_USER_ERROR = 2  # bad input: a message, never a traceback
EXIT_UNAVAILABLE = 3  # a dependency (database, weights) is missing or down


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the engine's typed errors into a one-line message and an exit code."""
    from engine.encoders.hf import BackboneUnavailable
    from engine.media import MediaError

    try:
        yield
    except BackboneUnavailable as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    except MediaError as e:
        console.print(f"[red]error:[/red] {e.user_message}")
        raise typer.Exit(EXIT_USER_ERROR) from None
    except FileNotFoundError as e:
        console.print(f"[red]error:[/red] file not found: {e.filename or e}")
        raise typer.Exit(EXIT_USER_ERROR) from None


@contextmanager
def storage_errors() -> Iterator[None]:
    """A dead or outdated database is a message and exit code 3, not a traceback."""
    from storage.db import StorageError

    try:
        yield
    except StorageError as e:
        console.print(f"[red]error:[/red] {getattr(e, 'user_message', None) or e}")
        raise typer.Exit(EXIT_UNAVAILABLE) from None


def load_encoders_with_status(profile: str | None):
    from engine.profiles import load_encoders

    s = get_settings()
    with console.status(f"loading the '{profile or s.profile}' models..."):
        return load_encoders(profile or s.profile, overrides=s.backbone_overrides, device=s.device)




class CliExit(Exception):
    """Leave with a one-line message and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@contextmanager
def cli_errors() -> Iterator[None]:
    """Map every user-facing failure to one line and an exit code (module docstring)."""
    from bot.service.catalog_admin import CatalogAdminError
    from bot.service.conversation import (
        CatalogMismatchError,
        ConversationError,
        EmptyCatalogError,
        NothingToAskError,
        UnknownConversationError,
    )
    from engine.checkpoint import CheckpointMismatchError
    from engine.encoders.hf import BackboneUnavailable
    from engine.media import MediaError
    from storage.catalog import CatalogError
    from storage.db import StorageError

    try:
        yield
    except CliExit as e:
        print_error(str(e))
        raise typer.Exit(e.code) from None
    except MediaError as e:
        print_error(e.user_message)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except FileNotFoundError as e:
        print_error(f"file not found: {e.filename or e}")
        raise typer.Exit(EXIT_USER_ERROR) from None
    except (EmptyCatalogError, CatalogMismatchError) as e:
        print_error(e.user_message)
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    except (UnknownConversationError, NothingToAskError) as e:
        print_error(e.user_message)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except ConversationError as e:
        print_error(e.user_message)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except (StorageError, CatalogError, CatalogAdminError, CheckpointMismatchError, BackboneUnavailable) as e:
        print_error(getattr(e, "user_message", None) or str(e))
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    except (OSError, ValueError) as e:  # e.g. an unknown profile name, an unwritable data directory
        print_error(str(e))
        raise typer.Exit(EXIT_UNAVAILABLE if isinstance(e, OSError) else EXIT_USER_ERROR) from None


@asynccontextmanager
async def open_service(profile: str | None) -> AsyncIterator[Any]:
    """The conversation service from the settings, with a progress line while it loads."""
    from bot.service.conversation import ConversationService

    from transformers.utils import logging as hf_logging

    from engine.encoders.hf import BackboneUnavailable

    hf_logging.disable_progress_bar()  # the rich status line says what loads; no tqdm bars under it
    s = get_settings()
    with console.status("starting…") as status:
        try:
            svc = await ConversationService.open(s, profile=profile, progress=lambda m: status.update(f"{m}…"))
        except (FileNotFoundError, BackboneUnavailable) as e:  # model weights missing: not the user's video
            raise CliExit(str(e), EXIT_UNAVAILABLE) from None
    try:
        yield svc
    finally:
        await svc.close()


def check_video(video: Path | None) -> None:
    """Refuse a missing or unreadable video before the models load (seconds) rather than after."""
    if video is None:
        return
    if not video.is_file():
        raise FileNotFoundError(2, "no such file", str(video))
    from engine.media import probe

    s = get_settings()
    probe(video, limits=s.engine_config().limits, require_video=True, ffmpeg=s.ffmpeg_binary)



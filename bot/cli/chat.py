"""`musechat chat` (a conversation at the prompt, bot/adapters/terminal.py) and `musechat recommend` (scripts).

Every user error is
one line on stderr and an exit code, never a traceback:

- 2 (`EXIT_USER_ERROR`): not a video, truncated, too long, audio only, missing file, unknown
  conversation, nothing asked;
- 3 (`EXIT_UNAVAILABLE`): the database, the catalog or the models are unavailable, or the
  catalog is empty ("the catalog is empty: run musechat catalog add/refresh").

Inside a chat, an error in one message (a filter that matches nothing, a busy conversation) is
printed and the chat goes on.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import typer

from bot.adapters.terminal import out, print_reply, reply_json, run_chat, with_status
from bot.cli.common import (
    EXIT_USER_ERROR,
    CliExit,
    check_video,
    cli_errors,
    open_service,
)

log = logging.getLogger(__name__)


def chat(
    video: Path = typer.Argument(None, help="The video to find music for (mp4, mov, webm, mkv...). Optional with --text."),
    text: str = typer.Option(None, "--text", "-t", help="Words about the music (\"calm piano for a wedding video\"); alone: a text-only start."),
    resume: int = typer.Option(None, "--resume", help="Continue the conversation with this id."),
    profile: str = typer.Option(None, help="Model profile: paper | lite | tiny (default: MUSECHAT_PROFILE)."),
    out_dir: Path = typer.Option(Path("."), "--out-dir", help="Where /use writes the preview video."),
) -> None:
    """Chat about background music for a video: feedback, /another, /use (writes the preview), /quit."""
    with cli_errors():
        if video is None and not text and resume is None:
            raise CliExit("give a video, --text \"what you want\", or --resume ID", EXIT_USER_ERROR)
        if resume is not None and video is not None:
            raise CliExit("--resume continues a conversation with its own video; leave the video out", EXIT_USER_ERROR)
        check_video(video)
        asyncio.run(_chat(video, text, profile, resume, out_dir))


# =================================================================================================
# one-shot recommendations for scripts
# =================================================================================================


async def _chat(video: Path | None, text: str | None, profile: str | None, resume: int | None, out_dir: Path) -> None:
    async with open_service(profile) as svc:
        await run_chat(svc, video, text, resume, out_dir)


async def _recommend(video: Path | None, text: str | None, profile: str | None, k: int) -> Any:
    async with open_service(profile) as svc:
        return await with_status(
            lambda cb: svc.start(
                video=video, text=text or "", platform="cli", channel_id=f"recommend-{uuid.uuid4().hex[:12]}",
                user_id=getpass.getuser(), k=k, on_status=cb,
            ),
            "searching…",
        )  # fmt: skip


def recommend(
    video: Path = typer.Argument(None, help="The video to find music for. Optional with --text."),
    text: str = typer.Option(None, "--text", "-t", help="Words about the music, filters included (\"under 2 minutes\")."),
    k: int = typer.Option(1, "--k", min=1, max=50, help="How many tracks to return, best first."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON on stdout."),
    profile: str = typer.Option(None, help="Model profile: paper | lite | tiny (default: MUSECHAT_PROFILE)."),
) -> None:
    """Recommend k tracks for a video (and/or words) in one shot; --json for scripts."""
    with cli_errors():
        if video is None and not text:
            raise CliExit("give a video and/or --text \"what you want\"", EXIT_USER_ERROR)
        check_video(video)
        reply = asyncio.run(_recommend(video, text, profile, k))
    if as_json:
        out.print_json(json.dumps(reply_json(reply)))
    else:
        print_reply(reply)


def register_chat_commands(app: typer.Typer) -> None:
    """Add `chat` and `recommend` to the `musechat` command line (bot/cli/main.py)."""
    app.command("chat")(chat)
    app.command("recommend")(recommend)


__all__ = ["chat", "recommend", "register_chat_commands"]

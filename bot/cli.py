"""The `musechat` command line."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console
from rich.table import Table

from bot.settings import get_settings

log = logging.getLogger(__name__)

app = typer.Typer(
    name="musechat",
    help="MuseChat: conversational background-music recommendation for videos.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()

EXIT_USER_ERROR = 2  # bad input: a message, never a traceback
EXIT_UNAVAILABLE = 3  # a dependency (database, weights) is missing or down


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


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


def _load_encoders(profile: str | None):
    from engine.profiles import load_encoders

    s = get_settings()
    with console.status(f"loading the '{profile or s.profile}' models..."):
        return load_encoders(profile or s.profile, overrides=s.backbone_overrides, device=s.device)


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as _v

    out.print(_v("musechat-bot"))


@app.command()
def embed(
    video: Path = typer.Argument(..., help="A video file (mp4, mov, webm, mkv...)."),
    fps: float = typer.Option(None, help="Frames per second per segment (default: MUSECHAT_QUERY_FPS; the paper uses 5)."),
    profile: str = typer.Option(None, help="Model profile: paper | lite | tiny (default: MUSECHAT_PROFILE)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Embed a video and print what the engine sees: segments, image labels, pace."""
    from engine.media import MediaLimits
    from engine.video import video_features

    s = get_settings()
    with user_errors():
        if not video.is_file():
            raise FileNotFoundError(2, "no such file", str(video))
        enc = _load_encoders(profile)
        limits = MediaLimits(max_seconds=s.max_video_seconds, max_bytes=s.max_upload_bytes, timeout_s=s.ffmpeg_timeout_s)
        with console.status(f"decoding and embedding {video.name}..."):
            vf = video_features(
                video, enc.image, profile=enc.profile.name, fps=fps or s.query_fps, limits=limits, ffmpeg=s.ffmpeg_binary
            )
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "video": str(video),
                    "content_hash": vf.content_hash,
                    "duration_s": vf.duration_s,
                    "fps": vf.fps,
                    "profile": vf.profile,
                    "segments": [[sg.start_s, sg.end_s] for sg in vf.segments],
                    "labels": vf.labels,
                    "motion": vf.motion.round(4).tolist(),
                    "cut_rate": vf.cut_rate.round(4).tolist(),
                    "vector_dim": int(vf.segment_vectors.shape[1]),
                    "timings_s": {k: round(v, 3) for k, v in vf.timings.items()},
                }
            )
        )
        return
    _print_video(video, vf)


def _print_video(video: Path, vf) -> None:
    out.print(f"[bold]{video.name}[/bold]  {vf.duration_s:.1f} s, sha256 {vf.content_hash[:12]}…, profile {vf.profile}")
    out.print("What the engine sees: " + ", ".join(f"{name} ({p:.0%})" for name, p in vf.labels))
    t = Table(title=f"{len(vf.segments)} segment(s) at {vf.fps:g} fps, {vf.segment_vectors.shape[1]}-d image features")
    for col in ("segment", "from–to (s)", "motion", "cuts/s"):
        t.add_column(col, justify="right")
    for sg, m, c in zip(vf.segments, vf.motion, vf.cut_rate):
        t.add_row(str(sg.index), f"{sg.start_s:.1f}–{sg.end_s:.1f}", f"{m:.3f}", f"{c:.2f}")
    out.print(t)
    out.print("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in vf.timings.items()))


@app.command()
def tag(
    audio: list[Path] = typer.Argument(..., help="Music files (ogg, mp3, flac, wav...)."),
    seconds: float = typer.Option(30.0, help="Seconds taken from the middle of each track."),
    profile: str = typer.Option(None, help="Model profile (default: MUSECHAT_PROFILE)."),
) -> None:
    """Tag music with the profile's music encoder (top-5 MTT + top-5 MSD for lite)."""
    from engine.media import MediaLimits, decode_audio, probe

    s = get_settings()
    with user_errors():
        enc = _load_encoders(profile)
        limits = MediaLimits(max_seconds=24 * 3600.0, max_bytes=2**31, timeout_s=s.ffmpeg_timeout_s)
        for path in audio:
            if not path.is_file():
                raise FileNotFoundError(2, "no such file", str(path))
            info = probe(path, limits=limits, require_audio=True)
            start = max(0.0, (info.duration_s - seconds) / 2)
            with console.status(f"tagging {path.name}..."):
                wav = decode_audio(path, sample_rate=enc.music.sample_rate, start=start, duration=seconds, ffmpeg=s.ffmpeg_binary)
                emb = enc.music.encode(wav)
            tags = sorted((emb.tags or {}).items(), key=lambda kv: -kv[1])
            groups: dict[str, list[str]] = {}
            for name, p in tags:
                ns, _, short = name.rpartition(":")
                if len(groups.setdefault(ns or "tags", [])) < 5:
                    groups[ns or "tags"].append(f"{short} {p:.2f}")
            out.print(f"[bold]{path.name}[/bold] ({info.duration_s:.0f} s): " + "; ".join(f"{ns}: {', '.join(v)}" for ns, v in groups.items()))


db_app = typer.Typer(help="The SQL database (SQLite by default, PostgreSQL by MUSECHAT_DATABASE_URL).", no_args_is_help=True)
media_app = typer.Typer(help="The media store (uploads, excerpts, previews).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(media_app, name="media")


@contextmanager
def storage_errors() -> Iterator[None]:
    """A dead or outdated database is a message and exit code 3, not a traceback."""
    from storage.db import StorageError

    try:
        yield
    except StorageError as e:
        console.print(f"[red]error:[/red] {getattr(e, 'user_message', None) or e}")
        raise typer.Exit(EXIT_UNAVAILABLE) from None


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Option("head", help="Alembic revision to migrate to.")) -> None:
    """Apply the database migrations (run once per release on PostgreSQL)."""
    import asyncio

    from storage.db import current_revision, safe_url, upgrade

    url = get_settings().sql_url
    with storage_errors():
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
    with storage_errors():
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


# The terminal chat and one-shot recommendations (bot/chat_cli.py imports the helpers above).
from bot.chat_cli import register_chat_commands  # noqa: E402

register_chat_commands(app)

# Catalog administration and the long-lived service (bot/catalog_cli.py).
from bot.catalog_cli import register_catalog_commands  # noqa: E402

register_catalog_commands(app)

# Training data, fusion training and evaluation (bot/training_cli.py); the reasoner (bot/reasoner_cli.py).
from bot.reasoner_cli import register_reasoner_commands  # noqa: E402
from bot.training_cli import register_training_commands  # noqa: E402

register_training_commands(app)
register_reasoner_commands(app)

# The first-run demo (bot/demo.py).
from bot.demo import demo  # noqa: E402

app.command("demo")(demo)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


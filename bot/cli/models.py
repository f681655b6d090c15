"""`musechat version | embed | tag`: what the models see in a video or a track."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from bot.cli.common import cli_errors, console, load_encoders_with_status, out
from bot.settings import get_settings


def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as _v

    out.print(_v("musechat-bot"))



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
    with cli_errors():
        if not video.is_file():
            raise FileNotFoundError(2, "no such file", str(video))
        enc = load_encoders_with_status(profile)
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



def tag(
    audio: list[Path] = typer.Argument(..., help="Music files (ogg, mp3, flac, wav...)."),
    seconds: float = typer.Option(30.0, help="Seconds taken from the middle of each track."),
    profile: str = typer.Option(None, help="Model profile (default: MUSECHAT_PROFILE)."),
) -> None:
    """Tag music with the profile's tagger (top-5 MTT + top-5 MSD of musicnn for lite and paper)."""
    from engine.media import MediaLimits, decode_audio, probe

    s = get_settings()
    with cli_errors():
        enc = load_encoders_with_status(profile)
        limits = MediaLimits(max_seconds=24 * 3600.0, max_bytes=2**31, timeout_s=s.ffmpeg_timeout_s)
        for path in audio:
            if not path.is_file():
                raise FileNotFoundError(2, "no such file", str(path))
            info = probe(path, limits=limits, require_audio=True)
            start = max(0.0, (info.duration_s - seconds) / 2)
            with console.status(f"tagging {path.name}..."):
                wav = decode_audio(path, sample_rate=enc.tag_encoder.sample_rate, start=start, duration=seconds, ffmpeg=s.ffmpeg_binary)
                emb = enc.tag_encoder.encode(wav)
            tags = sorted((emb.tags or {}).items(), key=lambda kv: -kv[1])
            groups: dict[str, list[str]] = {}
            for name, p in tags:
                ns, _, short = name.rpartition(":")
                if len(groups.setdefault(ns or "tags", [])) < 5:
                    groups[ns or "tags"].append(f"{short} {p:.2f}")
            out.print(f"[bold]{path.name}[/bold] ({info.duration_s:.0f} s): " + "; ".join(f"{ns}: {', '.join(v)}" for ns, v in groups.items()))




def register_model_commands(app: typer.Typer) -> None:
    app.command("version")(version)
    app.command("embed")(embed)
    app.command("tag")(tag)

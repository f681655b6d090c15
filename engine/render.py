"""Files the bot sends back: a track's listening excerpt and the user's video with the track under it.

DESIGN.md, "Data flow of one conversation", step 5: a reply carries a short excerpt of the
recommended track that the chat client plays inline, and on "use this" a preview, the user's
video re-muxed with the track. Both are made with the same ffmpeg executable as the decoders
(`engine.media.ffmpeg_binary`), through the same guarded runner: inputs as `file:` URLs with
the file protocol only, every call under a wall-clock limit (`MediaLimits.timeout_s`, the
process is killed on expiry -> `MediaTimeoutError`), and a failed render -> `RenderError`, a
`MediaError` whose `user_message` is fit for a chat. Outputs are written to a temporary name
beside `out` and renamed, so a reader never sees half a file.

- `cut_excerpt`: `duration_s` seconds from `start_s`, faded in and out, mono or stereo, as
  Ogg/Opus (Discord plays it inline; 96 kb/s is transparent enough for a preview), MP3 or M4A/AAC
  (Slack's inline player takes MP3 and M4A). Excerpts are cut at indexing time
  (bot/service/catalog_admin.py), so no audio is decoded during a conversation.
- `make_preview`: the video stream is copied untouched when mp4 can hold it (h264, hevc, av1,
  vp9, mpeg4: no re-encode, no quality loss, fast), otherwise re-encoded with libx264. The track
  starts at `track_start_s`, is faded in (when it starts mid-track) and out (at the video's end or
  the track's, whichever is first), padded with silence to the video's length, encoded as AAC,
  optionally mixed over the original sound lowered by `original_gain_db`; mp4 with +faststart
  (the index in front, so chat clients start playing before the download ends).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.media import (
    MediaError,
    MediaInfo,
    MediaLimits,
    _base_cmd,
    _input_args,
    _run,
    probe,
)

log = logging.getLogger(__name__)

ExcerptFormat = Literal["ogg", "mp3", "m4a"]

EXCERPT_S = 25.0  # seconds, default listening excerpt length
EXCERPT_FADE_S = 1.5  # seconds of fade-in and fade-out on an excerpt
PREVIEW_FADE_S = 2.0  # seconds of fade-out of the music at the end of a preview
PREVIEW_ORIGINAL_GAIN_DB = -12.0  # dB applied to the video's own sound when mixed under the track
MAX_FADE_SHARE = 0.25  # a fade never takes more than this share of the audio it shapes
MIN_AUDIO_S = 0.1  # seconds: less than this is not an excerpt
OPUS_RATE = 48_000  # Hz: Opus always runs at 48 kHz
PREVIEW_AUDIO_RATE = 48_000  # Hz
PREVIEW_AUDIO_BITRATE = "192k"
X264_PRESET = "veryfast"  # re-encode only happens for codecs mp4 cannot hold; speed matters more
X264_CRF = 23

# (muxer, encoder, bitrate) per excerpt format
EXCERPT_CODECS: dict[str, tuple[str, str, str]] = {
    "ogg": ("ogg", "libopus", "96k"),
    "mp3": ("mp3", "libmp3lame", "128k"),
    "m4a": ("ipod", "aac", "128k"),  # "ipod" is ffmpeg's mp4 muxer for .m4a
}
# Video codecs the mp4 muxer stores as they are (ffmpeg's names, as `probe` reports them).
MP4_COPY_CODECS = frozenset({"h264", "hevc", "av1", "vp9", "mpeg4"})


class RenderError(MediaError):
    """ffmpeg could not produce the excerpt or preview (the inputs were readable)."""

    default_user_message = "Sorry, I could not make that file."


@dataclass(frozen=True)
class Excerpt:
    path: Path
    start_s: float  # where in the track the excerpt starts, seconds
    duration_s: float  # its length, seconds (shorter than asked when the track ends first)
    fmt: str


@dataclass(frozen=True)
class Preview:
    path: Path
    duration_s: float  # the video's duration: the preview's length
    music_s: float  # seconds of the track heard before the silence pad (if the track is shorter)
    video_copied: bool  # True: the video stream was copied, not re-encoded
    mixed_original: bool  # True: the video's own sound plays under the track


def _fade(requested: float, length: float) -> float:
    return max(0.0, min(requested, MAX_FADE_SHARE * length))


def _tmp_beside(out: Path) -> Path:
    return out.with_name(f".{out.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")


def _render(cmd: list[str], out: Path, limits: MediaLimits, *, what: str) -> None:
    """Run ffmpeg writing to a temporary file beside `out`, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(out)
    try:
        rc, _, err = _run([*cmd, "-y", str(tmp)], limits.timeout_s, what=what)
        if rc != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
            tail = " | ".join(err.strip().splitlines()[-3:])
            raise RenderError(f"ffmpeg {what} failed (rc={rc}): {tail}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def cut_excerpt(
    src: str | Path,
    out: str | Path,
    *,
    start_s: float,
    duration_s: float = EXCERPT_S,
    fade_s: float = EXCERPT_FADE_S,
    fmt: ExcerptFormat = "ogg",
    info: MediaInfo | None = None,
    limits: MediaLimits = MediaLimits(),
    ffmpeg: str | None = None,
) -> Excerpt:
    """Cut `duration_s` seconds of `src` from `start_s` into a small `fmt` file at `out`.

    The window is clamped to the track (a start past the end moves back so the excerpt keeps its
    length where the track allows). Fades take at most a quarter of the excerpt each. Mono stays
    mono, anything wider becomes stereo. `info`: the source's `probe` result, if the caller has it.
    """
    src, out = Path(src), Path(out)
    if fmt not in EXCERPT_CODECS:
        raise ValueError(f"unknown excerpt format {fmt!r}: choose one of {', '.join(EXCERPT_CODECS)}")
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    info = info or probe(src, limits=limits, require_audio=True, ffmpeg=ffmpeg)
    if info.audio is None:
        raise RenderError(f"{src}: no audio stream to cut an excerpt from")
    length = min(duration_s, info.duration_s)
    start = min(max(0.0, start_s), max(0.0, info.duration_s - length))
    if length < MIN_AUDIO_S:
        raise RenderError(f"{src}: {info.duration_s:.2f}s of audio is too short for an excerpt")
    fade = _fade(fade_s, length)
    muxer, encoder, bitrate = EXCERPT_CODECS[fmt]
    channels = 1 if info.audio.channels == 1 else 2
    filters = [f"afade=t=in:st=0:d={fade:.3f}", f"afade=t=out:st={length - fade:.3f}:d={fade:.3f}"] if fade else []
    cmd = _base_cmd(ffmpeg, loglevel="error")
    cmd += ["-ss", f"{start:.3f}", "-t", f"{length:.3f}", *_input_args(src)]
    cmd += ["-map", "0:a:0", "-vn", "-sn", "-dn", "-map_metadata", "-1", "-ac", str(channels)]
    if filters:
        cmd += ["-af", ",".join(filters)]
    if encoder == "libopus":
        cmd += ["-ar", str(OPUS_RATE)]
    # bitexact: no random Ogg serial number, no encoder tag: the same cut gives the same bytes,
    # so a re-cut excerpt has the same content hash in the media store
    cmd += ["-c:a", encoder, "-b:a", bitrate, "-t", f"{length:.3f}", "-fflags", "+bitexact", "-flags:a", "+bitexact", "-f", muxer]
    t0 = time.perf_counter()
    _render(cmd, out, limits, what="excerpt")
    log.debug("cut %.1fs excerpt of %s at %.1fs into %s in %.2fs", length, src.name, start, out.name, time.perf_counter() - t0)
    return Excerpt(path=out, start_s=start, duration_s=length, fmt=fmt)


def _preview_cmd(
    video: Path,
    track: Path,
    *,
    duration: float,
    track_start: float,
    music_s: float,
    fade_in: float,
    fade_out: float,
    mix: bool,
    original_gain_db: float,
    copy_video: bool,
    ffmpeg: str | None,
) -> list[str]:
    fmt = f"aresample={PREVIEW_AUDIO_RATE},aformat=sample_fmts=fltp:channel_layouts=stereo"
    music = [f"atrim=0:{music_s:.3f}", "asetpts=PTS-STARTPTS", fmt]
    if fade_in:
        music.append(f"afade=t=in:st=0:d={fade_in:.3f}")
    if fade_out:
        music.append(f"afade=t=out:st={music_s - fade_out:.3f}:d={fade_out:.3f}")
    music.append(f"apad=whole_dur={duration:.3f}")
    graph = f"[1:a:0]{','.join(music)}[music]"
    if mix:
        graph += f";[0:a:0]{fmt},volume={original_gain_db:g}dB[orig]"
        graph += ";[music][orig]amix=inputs=2:duration=first:dropout_transition=0:normalize=0[aout]"
    else:
        graph += ";[music]anull[aout]"
    cmd = _base_cmd(ffmpeg, loglevel="error")
    cmd += _input_args(video)
    cmd += ["-ss", f"{track_start:.3f}", *_input_args(track)]
    cmd += ["-filter_complex", graph, "-map", "0:v:0", "-map", "[aout]", "-sn", "-dn", "-map_metadata", "-1"]
    if copy_video:
        cmd += ["-c:v", "copy"]
    else:
        cmd += ["-c:v", "libx264", "-preset", X264_PRESET, "-crf", str(X264_CRF), "-pix_fmt", "yuv420p"]
    cmd += ["-c:a", "aac", "-b:a", PREVIEW_AUDIO_BITRATE, "-t", f"{duration:.3f}", "-movflags", "+faststart", "-f", "mp4"]
    return cmd


def make_preview(
    video: str | Path,
    track: str | Path,
    out: str | Path,
    *,
    track_start_s: float = 0.0,
    mix_original: bool = False,
    original_gain_db: float = PREVIEW_ORIGINAL_GAIN_DB,
    fade_s: float = PREVIEW_FADE_S,
    limits: MediaLimits = MediaLimits(),
    ffmpeg: str | None = None,
) -> Preview:
    """The user's video with `track` under it, as an mp4 of the video's length (module docstring).

    `mix_original` keeps the video's own sound under the music at `original_gain_db` (ignored
    for a video without sound). Raises the inputs' `MediaError`s (from `probe`), `RenderError`
    if ffmpeg fails, `MediaTimeoutError` past `limits.timeout_s`.
    """
    video, track, out = Path(video), Path(track), Path(out)
    vinfo = probe(video, limits=limits, require_video=True, ffmpeg=ffmpeg)
    tinfo = probe(track, limits=limits, require_audio=True, ffmpeg=ffmpeg)
    duration = vinfo.duration_s
    start = max(0.0, track_start_s)
    music_s = min(duration, tinfo.duration_s - start)
    if music_s < MIN_AUDIO_S:
        raise ValueError(f"track_start_s={track_start_s} leaves no music in {track.name} ({tinfo.duration_s:.1f}s)")
    fade_out = _fade(fade_s, music_s)
    fade_in = _fade(fade_s, music_s) if start > 0 else 0.0  # a track's own beginning needs no fade
    mix = mix_original and vinfo.audio is not None
    copy_video = vinfo.video is not None and vinfo.video.codec in MP4_COPY_CODECS
    kwargs = dict(
        duration=duration, track_start=start, music_s=music_s, fade_in=fade_in, fade_out=fade_out,
        mix=mix, original_gain_db=original_gain_db, ffmpeg=ffmpeg,
    )  # fmt: skip
    t0 = time.perf_counter()
    try:
        _render(_preview_cmd(video, track, copy_video=copy_video, **kwargs), out, limits, what="preview")
    except RenderError:
        if not copy_video:
            raise
        # A stream mp4 refuses despite its codec name (odd profiles, broken timestamps): re-encode.
        log.warning("copying the video stream of %s into mp4 failed; re-encoding it", video.name)
        copy_video = False
        _render(_preview_cmd(video, track, copy_video=False, **kwargs), out, limits, what="preview")
    log.info(
        "rendered preview %s: %.1fs video (%s) + %s from %.1fs%s in %.2fs",
        out.name, duration, "copied" if copy_video else "re-encoded", track.name, start,
        ", mixed with the original sound" if mix else "", time.perf_counter() - t0,
    )  # fmt: skip
    return Preview(path=out, duration_s=duration, music_s=music_s, video_copied=copy_video, mixed_original=mix)


# --- fitting a preview into a platform's upload limit ----------------------------------------------

FIT_MARGIN = 0.92  # share of the byte budget the streams may use (mp4 overhead, rate-control slack)
FIT_AUDIO_KBPS = 96  # kbit/s of AAC in a re-encoded preview
MIN_FIT_VIDEO_KBPS = 80  # kbit/s: below this a preview is not worth watching; say so instead
FIT_HEIGHTS = ((1500, 720), (600, 480), (0, 360))  # (video kbit/s at least, largest height) pairs
FIT_ATTEMPTS = 2  # encodes tried before giving up (each at 85 % of the previous bitrate)


def human_bytes(n: int) -> str:
    """A byte count as people read it: "10 MiB", "1.5 MiB", "500 KiB", "900 bytes"."""
    if n >= 2**20:
        mib = n / 2**20
        return f"{mib:.0f} MiB" if mib >= 10 or mib == int(mib) else f"{mib:.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.0f} KiB"
    return f"{n} bytes"


class PreviewTooLargeError(RenderError):
    """A preview cannot fit the byte budget at a watchable bitrate."""


@dataclass(frozen=True)
class FittedPreview:
    path: Path
    bytes: int
    video_kbps: int  # the bitrate asked of the encoder
    height: int  # the largest height the picture was scaled to


def fit_preview(
    src: str | Path,
    out: str | Path,
    *,
    max_bytes: int,
    duration_s: float,
    limits: MediaLimits = MediaLimits(),
    ffmpeg: str | None = None,
) -> FittedPreview:
    """Re-encode a preview mp4 to at most `max_bytes`: the video bitrate comes from the duration.

    H.264 at a bitrate of (budget * FIT_MARGIN / duration - audio), scaled down when that bitrate
    is low; checked on the file written and retried once at a lower bitrate. Raises
    `PreviewTooLargeError` (with a chat sentence) when the bitrate would fall under
    MIN_FIT_VIDEO_KBPS: a shorter clip is the honest answer then.
    """
    src, out = Path(src), Path(out)
    if duration_s <= 0:
        raise ValueError(f"duration must be positive, got {duration_s}")
    video_kbps = int(max_bytes * 8 * FIT_MARGIN / duration_s / 1000) - FIT_AUDIO_KBPS
    for _ in range(FIT_ATTEMPTS):
        if video_kbps < MIN_FIT_VIDEO_KBPS:
            limit = human_bytes(max_bytes)
            raise PreviewTooLargeError(
                f"your {duration_s:.0f} s video cannot fit this platform's {limit} upload limit at a watchable "
                f"quality; send a clip shorter than {max(1, int(duration_s * video_kbps / MIN_FIT_VIDEO_KBPS))} s "
                "for a preview",
                user_message=(
                    f"The preview of your {duration_s:.0f} s video would not fit the {limit} upload limit here "
                    "at a watchable quality. Send a shorter clip, or use the excerpt above."
                ),
            )
        height = next(h for kbps, h in FIT_HEIGHTS if video_kbps >= kbps)
        cmd = _base_cmd(ffmpeg, loglevel="error")
        cmd += _input_args(src)
        cmd += [
            "-map", "0:v:0", "-map", "0:a:0?", "-sn", "-dn", "-map_metadata", "-1",
            "-vf", f"scale=-2:'min({height},ih)'",
            "-c:v", "libx264", "-preset", X264_PRESET, "-pix_fmt", "yuv420p",
            "-b:v", f"{video_kbps}k", "-maxrate", f"{video_kbps}k", "-bufsize", f"{2 * video_kbps}k",
            "-c:a", "aac", "-b:a", f"{FIT_AUDIO_KBPS}k", "-movflags", "+faststart", "-f", "mp4",
        ]  # fmt: skip
        _render(cmd, out, limits, what="preview re-encode")
        size = out.stat().st_size
        if size <= max_bytes:
            return FittedPreview(out, size, video_kbps, height)
        log.info("re-encoded preview is %d bytes, over %d: trying a lower bitrate", size, max_bytes)
        video_kbps = int(video_kbps * 0.85 * max_bytes / size)
    out.unlink(missing_ok=True)
    raise PreviewTooLargeError(
        f"re-encoded preview stays over {max_bytes} bytes",
        user_message="I could not make the preview small enough for the upload limit here. Send a shorter clip.",
    )

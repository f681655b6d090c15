"""Excerpts and previews the service hands out, as named `MediaFile`s (bot/service/contract.py).

Excerpts: the indexer cut one per track (ogg/opus) so no audio is decoded during a conversation;
a platform that plays another format inline (mp3 on Slack) gets a conversion of it, cached per
process. Previews: the user's video with the track under it, re-encoded to fit the platform's
byte budget when the adapter passes one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

from bot.service.assets import TrackAssets, TrackExtras
from bot.service.contract import MediaFile, safe_filename
from bot.service.errors import ConversationError
from bot.service.pool import ModelPool, StatusCallback
from engine.media import MediaError, MediaLimits, NotMediaError, UnopenableMediaError, probe
from engine.render import EXCERPT_S, cut_excerpt, fit_preview, make_preview
from engine.sndfile import DECODER as SNDFILE_DECODER
from engine.sndfile import sndfile_to_wav
from engine.tracks import probe_track
from storage.media_store import MediaNotFoundError, MediaStore

log = logging.getLogger(__name__)


EXCERPT_BUDGET_S = 0.3  # seconds a reply waits for an excerpt cut on the spot
CONVERT_BUDGET_S = 5.0  # seconds a reply waits for the indexer's excerpt in another format (ogg -> mp3: ~0.2 s)


class MediaRenderer:
    """Listening excerpts (the indexer's, else cut now within a budget) and previews (the video with the track)."""

    def __init__(
        self, *, media: MediaStore, assets: TrackAssets, pool: ModelPool, limits: MediaLimits, ffmpeg: str | None,
        excerpt_budget_s: float = EXCERPT_BUDGET_S, excerpt_format: str = "ogg", mix_original_sound: bool = False,
        convert_budget_s: float = CONVERT_BUDGET_S,
    ) -> None:  # fmt: skip
        self.media = media
        self.assets = assets
        self.pool = pool
        self.limits = limits
        self.ffmpeg = ffmpeg
        self.excerpt_budget_s = excerpt_budget_s
        self.excerpt_format = excerpt_format
        self.mix_original_sound = mix_original_sound
        self.convert_budget_s = convert_budget_s
        self._background: set[asyncio.Future[Path]] = set()
        self.runner: Any = None  # bot/jobs/runner.py ModelRunner, set by the service: cuts excerpts here or on a worker

    async def excerpt(
        self, sha: str, source: str, ex: TrackExtras | None, on_status: StatusCallback | None, *,
        fmt: str | None = None, title: str = "",
    ) -> tuple[MediaFile | None, str]:  # fmt: skip
        """A listening excerpt in `fmt` (module docstring), as a named `MediaFile`; else None and why not.

        The indexer's excerpt when its format is the one asked for; else this process's earlier cut
        or conversion; else a conversion of the indexer's excerpt (a second or less) or a cut from
        the track, whichever is possible, if it is ready within the budget.
        """
        fmt = fmt or self.excerpt_format
        name = f"{safe_filename(title or sha[:12])}-excerpt.{fmt}"
        stored_fmt = (ex.excerpt_format or "ogg") if ex else None
        refs = [self.assets.cut_sha(sha, fmt)]
        if ex and ex.excerpt_sha256 and stored_fmt == fmt:
            refs.insert(0, ex.excerpt_sha256)
        for ref in refs:
            if ref:
                try:
                    return MediaFile.of(self.media.path_for(ref), name), ""
                except (MediaNotFoundError, ValueError, OSError):
                    continue
        convert_from = None
        if ex and ex.excerpt_sha256 and stored_fmt != fmt:
            try:
                convert_from = self.media.path_for(ex.excerpt_sha256)
            except (MediaNotFoundError, ValueError):
                convert_from = None
        if convert_from is not None:
            job, budget = self._excerpt_job(sha, fmt, convert_from=convert_from.name), self.convert_budget_s
        elif source and Path(source).is_file():
            start = ex.excerpt_start_s if ex and ex.excerpt_start_s is not None else None
            job, budget = self._excerpt_job(sha, fmt, source=source, start_s=start), self.excerpt_budget_s
        else:
            return None, "excerpt unavailable: the track's audio file is not reachable from here"
        task = asyncio.ensure_future(job)
        try:
            path = await asyncio.wait_for(asyncio.shield(task), timeout=budget)
        except TimeoutError:
            # the cut goes on in the background (tracked: `close` waits for it or cancels it);
            # the next reply that shows this track will have it
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            task.add_done_callback(_log_task_failure)
            return None, "excerpt unavailable right now (still being cut); ask again in a moment"
        except (MediaError, OSError, ConversationError) as exc:
            log.warning("no excerpt for track %s: %s", sha[:12], exc)
            return None, "excerpt unavailable: the track's audio could not be cut"
        return MediaFile.of(path, name), ""

    async def _excerpt_job(self, sha: str, fmt: str, **job: Any) -> Path:
        """The runner's excerpt (a cut or a conversion, here or on a worker), remembered for the next reply."""
        key = await self.runner.excerpt(sha, fmt=fmt, **job)
        self.assets.remember_cut(sha, key, fmt)
        return self.media.path_for(key)

    def _convert_excerpt(self, sha: str, excerpt: Path, fmt: str) -> Path:
        """The indexer's excerpt in another format (same window, no second fade)."""
        out = self.media.tmp_dir / f"excerpt-{sha}-{os.getpid()}-{threading.get_ident()}.{fmt}"
        try:
            info = probe(excerpt, limits=self.limits, require_audio=True, ffmpeg=self.ffmpeg)
            made = cut_excerpt(
                excerpt, out, start_s=0.0, duration_s=info.duration_s, fade_s=0.0, fmt=fmt, info=info,  # type: ignore[arg-type]
                limits=self.limits, ffmpeg=self.ffmpeg,
            )  # fmt: skip
            ref = self.media.put_file(made.path, move=True)
        finally:
            out.unlink(missing_ok=True)
        self.assets.remember_cut(sha, ref.sha256, fmt)
        return ref.path

    def _cut_excerpt(self, sha: str, source: Path, start_s: float | None, fmt: str) -> Path:
        """Cut an excerpt now; a track ffmpeg cannot open (decoded by libsndfile) is cut from a WAV of the window."""
        out = self.media.tmp_dir / f"excerpt-{sha}-{os.getpid()}-{threading.get_ident()}.{fmt}"
        wav = out.with_suffix(".wav")
        try:
            try:
                info, decoder = probe(source, limits=self.limits, require_audio=True, ffmpeg=self.ffmpeg), "ffmpeg"
            except (UnopenableMediaError, NotMediaError):
                info, decoder = probe_track(source, limits=self.limits, ffmpeg=self.ffmpeg)  # ffmpeg's error if libsndfile fails too
            if start_s is None:  # centred window (the indexer's choice needs the analysis)
                start_s = max(0.0, (info.duration_s - EXCERPT_S) / 2)
            if decoder == SNDFILE_DECODER:
                sndfile_to_wav(source, wav, start_s=start_s, duration_s=EXCERPT_S, limits=self.limits)
                excerpt = cut_excerpt(wav, out, start_s=0.0, fmt=fmt, limits=self.limits, ffmpeg=self.ffmpeg)  # type: ignore[arg-type]
            else:
                excerpt = cut_excerpt(source, out, start_s=start_s, fmt=fmt, info=info, limits=self.limits, ffmpeg=self.ffmpeg)  # type: ignore[arg-type]
            ref = self.media.put_file(excerpt.path, move=True)
        finally:
            out.unlink(missing_ok=True)
            wav.unlink(missing_ok=True)
        self.assets.remember_cut(sha, ref.sha256, fmt)
        return ref.path

    def render_preview(self, video: Path, track: Path, start_s: float) -> Path:
        """The user's video with the track under it (the video stream copied when mp4 can hold it).

        A track ffmpeg cannot open (the catalog decoded it with libsndfile, engine/sndfile.py) goes
        in as a WAV of the window the preview uses.
        """
        stem = f"preview-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
        out, wav = self.media.tmp_dir / f"{stem}.mp4", self.media.tmp_dir / f"{stem}.wav"
        render = partial(make_preview, video, out=out, mix_original=self.mix_original_sound, limits=self.limits, ffmpeg=self.ffmpeg)
        try:
            try:
                render(track=track, track_start_s=start_s)
            except (UnopenableMediaError, NotMediaError):
                if probe_track(track, limits=self.limits, ffmpeg=self.ffmpeg)[1] != SNDFILE_DECODER:
                    raise
                length = probe(video, limits=self.limits, require_video=True, ffmpeg=self.ffmpeg).duration_s
                sndfile_to_wav(track, wav, start_s=start_s, duration_s=length, limits=self.limits)
                render(track=wav, track_start_s=0.0)
            ref = self.media.put_file(out, move=True)
        finally:
            out.unlink(missing_ok=True)
            wav.unlink(missing_ok=True)
        return ref.path

    def fit_preview(self, preview: Path, max_bytes: int) -> Path:
        """The preview re-encoded to at most `max_bytes` (engine/render.py `fit_preview`); PreviewTooLargeError if it cannot."""
        info = probe(preview, limits=self.limits, require_video=True, ffmpeg=self.ffmpeg)
        out = self.media.tmp_dir / f"preview-fit-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}.mp4"
        try:
            fit_preview(preview, out, max_bytes=max_bytes, duration_s=info.duration_s, limits=self.limits, ffmpeg=self.ffmpeg)
            ref = self.media.put_file(out, move=True)
        finally:
            out.unlink(missing_ok=True)
        return ref.path

    async def close(self) -> None:
        """Cancel the excerpt cuts still running in the background and wait for them to end."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _log_task_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("background excerpt cut failed: %s", task.exception())

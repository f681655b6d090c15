"""Excerpts and previews the service hands out.
"""


import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, TypeVar

from bot.service.assets import TrackAssets, TrackExtras
from bot.service.pool import ModelPool, StatusCallback
from engine.media import MediaError, MediaLimits
from engine.render import EXCERPT_S, cut_excerpt, make_preview
from storage.media_store import MediaNotFoundError, MediaStore

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

T = TypeVar("T")

EXCERPT_BUDGET_S = 0.3  # seconds a reply waits for an excerpt cut on the spot


class MediaRenderer:
    """Listening excerpts (the indexer's, else cut now within a budget) and previews (the video with the track)."""

    def __init__(
        self, *, media: MediaStore, assets: TrackAssets, pool: ModelPool, limits: MediaLimits, ffmpeg: str | None,
        excerpt_budget_s: float = EXCERPT_BUDGET_S, excerpt_format: str = "ogg", mix_original_sound: bool = False,
    ) -> None:  # fmt: skip
        self.media = media
        self.assets = assets
        self.pool = pool
        self.limits = limits
        self.ffmpeg = ffmpeg
        self.excerpt_budget_s = excerpt_budget_s
        self.excerpt_format = excerpt_format
        self.mix_original_sound = mix_original_sound

    async def excerpt(
        self, sha: str, source: str, ex: TrackExtras | None, on_status: StatusCallback | None
    ) -> tuple[Path | None, str]:
        """The indexer's excerpt; else one cut now if it is ready within the budget (module docstring)."""
        for ref in (ex.excerpt_sha256 if ex else None, self.assets.cut_sha(sha)):
            if ref:
                try:
                    return self.media.path_for(ref), ""
                except (MediaNotFoundError, ValueError):
                    continue
        if not source or not Path(source).is_file():
            return None, "excerpt unavailable: the track's audio file is not reachable from here"
        start = ex.excerpt_start_s if ex and ex.excerpt_start_s is not None else None
        task = asyncio.ensure_future(self.pool.run(self._cut_excerpt, sha, Path(source), start, on_status=None))
        try:
            path = await asyncio.wait_for(asyncio.shield(task), timeout=self.excerpt_budget_s)
        except TimeoutError:
            # the cut goes on in the background; the next reply that shows this track will have it
            task.add_done_callback(_log_task_failure)
            return None, "excerpt unavailable right now (still being cut); ask again in a moment"
        except (MediaError, OSError) as exc:
            log.warning("no excerpt for track %s: %s", sha[:12], exc)
            return None, "excerpt unavailable: the track's audio could not be cut"
        return path, ""

    def _cut_excerpt(self, sha: str, source: Path, start_s: float | None) -> Path:
        fmt = self.excerpt_format
        out = self.media.tmp_dir / f"excerpt-{sha}-{os.getpid()}-{threading.get_ident()}.{fmt}"
        try:
            if start_s is None:  # centred window (the indexer's choice needs the analysis)
                from engine.media import probe

                info = probe(source, limits=self.limits, require_audio=True, ffmpeg=self.ffmpeg)
                start_s = max(0.0, (info.duration_s - EXCERPT_S) / 2)
                excerpt = cut_excerpt(source, out, start_s=start_s, fmt=fmt, info=info, limits=self.limits, ffmpeg=self.ffmpeg)  # type: ignore[arg-type]
            else:
                excerpt = cut_excerpt(source, out, start_s=start_s, fmt=fmt, limits=self.limits, ffmpeg=self.ffmpeg)  # type: ignore[arg-type]
            ref = self.media.put_file(excerpt.path, move=True)
        finally:
            out.unlink(missing_ok=True)
        self.assets.remember_cut(sha, ref.sha256)
        return ref.path

    def render_preview(self, video: Path, track: Path, start_s: float) -> Path:
        out = self.media.tmp_dir / f"preview-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}.mp4"
        try:
            make_preview(
                video, track, out, track_start_s=start_s, mix_original=self.mix_original_sound,
                limits=self.limits, ffmpeg=self.ffmpeg,
            )  # fmt: skip
            ref = self.media.put_file(out, move=True)
        finally:
            out.unlink(missing_ok=True)
        return ref.path



def _log_task_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("background excerpt cut failed: %s", task.exception())

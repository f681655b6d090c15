"""The in-process model runner: the named model jobs on this process's `ModelPool` (the embedded default).

A thin wrapper: each job is the pool call the service made before (same lane, same queue-position
`StatusEvent`s, bot/service/pool.py). `musechat worker` serves the SAQ queue with one of these too,
so a job runs the same code whether a front-end or a worker runs it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bot.jobs.runner import PreviewResult, QueryRequest, ReasonRequest, TokenCallback
from bot.service.pool import ModelPool, StatusCallback, notify
from bot.service.turns import encode_query
from engine.engine import CandidateRow, Query, Ranking
from engine.render import PreviewTooLargeError
from engine.video import VideoFeatures

if TYPE_CHECKING:
    from bot.service.media import MediaRenderer
    from bot.service.reasons import ReasonWriter
    from engine.engine import Engine
    from storage.media_store import MediaStore

log = logging.getLogger(__name__)


class InProcessRunner:
    """`ModelRunner` on a `ModelPool` (module docstring)."""

    local = True

    def __init__(
        self, pool: ModelPool, *, engine: Engine, media: MediaStore, renderer: MediaRenderer, reasons: ReasonWriter
    ) -> None:  # fmt: skip
        self.pool = pool
        self.engine = engine
        self.media = media
        self.renderer = renderer
        self.reasons = reasons
        self.batchers: dict[str, Any] = {}  # name -> bot/jobs/batching.py MicroBatcher (a worker's; its batch sizes)

    async def video_features(self, video_sha: str, path: Path | None = None, *, on_status: StatusCallback | None = None) -> VideoFeatures:
        if path is None:
            path = self.media.path_for(video_sha)  # MediaNotFoundError: the video was cleaned up
        # looked up at call time: tests count the decodes by wrapping engine.video_features
        return await self.pool.run(self.engine.video_features, path, on_status=on_status)

    async def excerpt(
        self, track_sha: str, *, fmt: str, source: str | None = None, start_s: float | None = None,
        convert_from: str | None = None,
    ) -> str:  # fmt: skip
        if convert_from is not None:
            path = await self.pool.run(self.renderer._convert_excerpt, track_sha, self.media.path_for(convert_from), fmt)
        elif source:
            path = await self.pool.run(self.renderer._cut_excerpt, track_sha, Path(source), start_s, fmt)
        else:
            raise ValueError("an excerpt needs the track's source file or an excerpt to convert")
        return path.name  # the media store names objects by their sha256

    async def preview(
        self, video_sha: str, track_source: str, start_s: float, *, max_bytes: int | None, job_key: str,
        on_status: StatusCallback | None = None,
    ) -> PreviewResult:  # fmt: skip
        video = self.media.path_for(video_sha)
        path = await self.pool.run(self.renderer.render_preview, video, Path(track_source), start_s, on_status=on_status)
        if max_bytes is None or path.stat().st_size <= max_bytes:
            return PreviewResult(path.name)
        await notify(on_status, "making the preview small enough to upload here")
        try:
            path = await self.pool.run(self.renderer.fit_preview, path, max_bytes, on_status=on_status)
        except PreviewTooLargeError as exc:
            return PreviewResult(None, too_large=exc.user_message)
        return PreviewResult(path.name, fitted=True)

    async def reason(self, request: ReasonRequest, *, job_key: str, on_token: TokenCallback | None = None) -> tuple[str, str]:
        return await self.reasons.write_request(request, on_token)

    async def query(
        self, request: QueryRequest, *, job_key: str, on_status: StatusCallback | None = None
    ) -> tuple[Query, np.ndarray | None]:  # fmt: skip
        return await self.pool.run(
            encode_query, self.engine, video=request.video, text=request.text, anchor_text=request.anchor_text,
            candidate=request.candidate, negatives=request.negatives, on_status=on_status,
        )  # fmt: skip

    async def rerank(
        self, request: QueryRequest, mode: str, rows: list[CandidateRow], *, job_key: str, on_status: StatusCallback | None = None
    ) -> Ranking:  # fmt: skip
        def rank() -> Ranking:
            ranker = self.engine.ranker(
                mode=mode, video=request.video, text=request.text, candidate=request.candidate, negatives=request.negatives
            )  # fmt: skip
            return ranker.rerank(rows)

        return await self.pool.run(rank, on_status=on_status)

    async def ping(self, *, job_key: str | None = None) -> dict[str, Any]:
        await self.pool.run(int)
        return {"worker": "in-process", "pid": os.getpid()}

    async def close(self) -> None:
        """Nothing of its own: the pool and the reason writer belong to the application (bot/app.py) or the service."""


__all__ = ["InProcessRunner"]

"""The video-feature cache of the conversation service."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from bot.service.errors import ConversationError, VideoGoneError
from bot.service.pool import StatusCallback, notify
from engine.engine import Engine
from engine.video import VideoFeatures, content_hash
from storage.media_store import MediaNotFoundError, MediaStore, MediaTooLargeError

if TYPE_CHECKING:
    from bot.jobs.runner import ModelRunner

log = logging.getLogger(__name__)


VIDEO_CACHE_SIZE = 64  # VideoFeatures kept in memory (a few hundred KB each)
KEYS_DIR = "keys"  # under the media store root: key files naming stored objects
VIDEO_FEATURES_KEYS = "video-features"


class VideoFeatureStore:
    """Each video's features, computed once per content (memory, then the media store, else decoded).

    The serialised `VideoFeatures` live in the media store, found through a small key file
    `<media root>/keys/video-features/...` (the store itself is addressed by content); the uploaded
    video is in the media store too, so a new process decodes it again only if its features were
    cleaned up.
    """

    def __init__(self, *, engine: Engine, media: MediaStore, runner: ModelRunner, max_upload_bytes: int | None) -> None:
        self.engine = engine  # its config names the cache entries (profile, frame rate)
        self.media = media
        self.runner = runner  # runs the decode + embed (bot/jobs/runner.py): this process's pool or a worker
        self.max_upload_bytes = max_upload_bytes
        self._videos: OrderedDict[str, VideoFeatures] = OrderedDict()
        self._video_lock = threading.Lock()
        self._inflight: dict[str, asyncio.Task[VideoFeatures]] = {}
        self._keys_dir = media.root / KEYS_DIR / VIDEO_FEATURES_KEYS
        self._keys_dir.mkdir(parents=True, exist_ok=True)

    def _features_key_file(self, video_sha: str) -> Path:
        cfg = self.engine.config
        return self._keys_dir / video_sha[:2] / f"{video_sha}-{cfg.profile}-{cfg.query_fps:g}fps"

    def _cache_key(self, video_sha: str) -> str:
        return f"{video_sha}:{self.engine.config.profile}:{self.engine.config.query_fps:g}"

    def _remember(self, vf: VideoFeatures) -> None:
        with self._video_lock:
            key = self._cache_key(vf.content_hash)
            self._videos[key] = vf
            self._videos.move_to_end(key)
            while len(self._videos) > VIDEO_CACHE_SIZE:
                self._videos.popitem(last=False)

    def _stored_features(self, video_sha: str) -> VideoFeatures | None:
        """The features cached in the media store for this video, profile and frame rate, if any."""
        key_file = self._features_key_file(video_sha)
        try:
            ref = key_file.read_text(encoding="utf-8").strip()
            vf = VideoFeatures.from_bytes(self.media.path_for(ref).read_bytes())
        except (FileNotFoundError, MediaNotFoundError, ValueError):
            return None
        except Exception as exc:  # noqa: BLE001 - a damaged cache entry is recomputed
            log.warning("cached features of video %s are unreadable (%s): recomputing", video_sha[:12], exc)
            return None
        return vf if vf.content_hash == video_sha else None

    def _store_features(self, vf: VideoFeatures) -> None:
        ref = self.media.put_bytes(vf.to_bytes())
        key_file = self._features_key_file(vf.content_hash)
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=key_file.parent, prefix=".key-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(ref.sha256)
        os.replace(tmp, key_file)

    def _cached_video(self, video_sha: str) -> VideoFeatures | None:
        with self._video_lock:
            vf = self._videos.get(self._cache_key(video_sha))
        if vf is not None:
            return vf
        vf = self._stored_features(video_sha)
        if vf is not None:
            self._remember(vf)
        return vf

    async def video_for(self, video_sha: str, on_status: StatusCallback | None) -> VideoFeatures:
        """The conversation's video features: memory, then the media store, else decoded again from the stored video."""
        vf = await asyncio.to_thread(self._cached_video, video_sha)
        if vf is not None:
            return vf
        try:
            path = self.media.path_for(video_sha)
        except MediaNotFoundError:
            raise VideoGoneError(
                "Your video is no longer stored here (old files are cleaned up); please start again with it."
            ) from None
        await notify(on_status, "decoding your video again (its cached features were cleaned up)")
        return await self._compute_once(video_sha, path, on_status)

    async def _compute_once(self, video_sha: str, path: Path, on_status: StatusCallback | None) -> VideoFeatures:
        """Decode and embed a video, once even when several requests ask for it at the same time.

        The work runs in a task of its own: a waiter that is cancelled (a user who left) does not
        cancel it, so the other waiters still get their features; `close` cancels what is left.
        """
        key = self._cache_key(video_sha)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._compute(video_sha, path, on_status), name=f"video-{video_sha[:12]}")
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._finished, key))
        return await asyncio.shield(task)

    def _finished(self, key: str, task: asyncio.Task[VideoFeatures]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter re-raises it

    async def _compute(self, video_sha: str, path: Path, on_status: StatusCallback | None) -> VideoFeatures:
        vf = await self.runner.video_features(video_sha, path, on_status=on_status)
        await asyncio.to_thread(self._store_features, vf)
        self._remember(vf)
        return vf

    async def ingest(self, video: Path | str | bytes, on_status: StatusCallback | None) -> tuple[VideoFeatures, str]:
        """Validate and embed an upload (features once per content), then keep it in the media store."""
        limit = self.max_upload_bytes
        tmp: Path | None = None
        if isinstance(video, bytes):
            path = tmp = await asyncio.to_thread(self._write_upload, video)  # large uploads: not on the loop
        else:
            path = Path(video)
            if not path.is_file():
                raise FileNotFoundError(2, "no such file", str(path))
        key = None
        try:
            sha = await asyncio.to_thread(content_hash, path)
            key = self._cache_key(sha)
            vf = await asyncio.to_thread(self._cached_video, sha)
            if vf is None:
                vf = await self._compute_once(sha, path, on_status)  # raises the MediaErrors of a bad upload
            try:
                ref = await asyncio.to_thread(self.media.put_file, path, max_bytes=limit, move=tmp is not None)
            except MediaTooLargeError as exc:
                raise ConversationError("That video is too large for me to keep.", str(exc)) from exc
            return vf, ref.sha256
        finally:
            if tmp is not None:
                running = self._inflight.get(key) if key is not None else None
                if running is not None and not running.done():  # still reading it for the other waiters
                    running.add_done_callback(lambda _t, p=tmp: p.unlink(missing_ok=True))
                else:
                    tmp.unlink(missing_ok=True)

    def _write_upload(self, data: bytes) -> Path:
        fd, name = tempfile.mkstemp(dir=self.media.tmp_dir, prefix="upload-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return Path(name)

    async def close(self) -> None:
        """Cancel the computations still running (shutdown) and wait for them to end."""
        tasks = [t for t in self._inflight.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

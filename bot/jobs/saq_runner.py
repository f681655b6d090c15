"""The SAQ model runner: named model jobs on a Redis job queue, served by `musechat worker` processes.

A front-end (`serve`, `chat`) with `MUSECHAT_MODEL_RUNNER=saq` and `MUSECHAT_REDIS_URL` sends its
model jobs (bot/jobs/runner.py) to the `interactive` queue; `musechat worker` processes
(bot/jobs/worker.py) serve them, and the `catalog` queue (long jobs with heartbeats) beside it, so
a catalog refresh never starves users (research/platforms.md §3.3).

Every job is sent with an explicit policy (`JobPolicy`): timeout, retries with exponential backoff,
a heartbeat (a worker killed mid-job stops beating: another worker's sweep re-queues the job after
`heartbeat_s`), and a result TTL. Its key is unique per (conversation, turn, kind) or per content
(a video's features, a track's excerpt): SAQ refuses a second enqueue of a key still in flight, so
a double click attaches to the job already queued, and a finished job's result is reused.

The user is told the queue position ("2 requests ahead of you") from the job's place in the queue's
Redis list, told again whenever it changes while the job waits (looked at every `POSITION_POLL_S`),
and gets a typed error with a chat sentence when the queue holds more than `queue_limit` waiting jobs (`QueueFullError`) or a job does not finish in time (`JobTimeoutError`).
Errors the user can act on (a file that is not a video) come back typed, as the in-process runner
raises them. Reason tokens come back through a Redis stream per job (`XADD` by the worker,
`XREAD BLOCK` here), in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import importlib
import inspect
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from redis import asyncio as aioredis
from saq import Job, Queue
from saq.job import TERMINAL_STATUSES, Status

from bot.jobs.runner import (
    CATALOG_REFRESH,
    EXCERPT,
    PING,
    PREVIEW,
    QUERY,
    REASON,
    RERANK,
    VIDEO_FEATURES,
    JobFailedError,
    JobTimeoutError,
    PreviewResult,
    QueryRequest,
    QueueFullError,
    ReasonRequest,
    TokenCallback,
)
from bot.jobs.wire import (
    array_from_json,
    context_to_json,
    pack_rows,
    preference_from_json,
    ranking_from_json,
)
from bot.service.errors import ConversationError, SettingsError
from bot.service.pool import StatusCallback, notify
from engine.engine import CandidateRow, Query, Ranking
from engine.media import MediaError
from engine.video import VideoFeatures
from storage.media_store import MediaNotFoundError, MediaStore

log = logging.getLogger(__name__)

POSITION_POLL_S = 1.0  # seconds between two looks at a waiting job's place in the queue
WAIT_STEP_S = 2.0  # seconds between two looks at a job's status while waiting on its pub/sub updates
STREAM_BLOCK_MS = 1000  # XREAD BLOCK of the reason-token stream, ms
STREAM_MAXLEN = 2000  # entries kept in a reason-token stream
STREAM_TTL_S = 600  # seconds a reason-token stream lives after its last entry
ABORT_MARK_S = 6.0  # seconds SAQ refuses a key after aborting a job under it (its abort mark lives 5 s)
FEATURES_KEYS_KEPT = 4096  # video sha -> features key entries a front-end remembers (~150 bytes each)
REASON_MARGIN_S = 2  # seconds a reason job may run past the reasoner's own limit (it falls back by itself then)
REASON_SOURCE_TAGS = "tag summary"  # bot/service/reasons.py (not imported: that module loads the engine's reasoner deps lazily anyway)


@dataclass(frozen=True)
class JobPolicy:
    """How one queue's jobs run: explicit, never SAQ's defaults (a 10 s timeout, no retry)."""

    timeout_s: int  # one attempt's limit (SAQ `timeout`)
    retries: int  # attempts in all (SAQ counts the first one)
    retry_delay_s: float  # first retry delay; doubled each time, with jitter (SAQ `retry_backoff`)
    heartbeat_s: int  # a job whose worker stops beating this long is swept and retried
    ttl_s: int  # how long a finished job (its result) is kept

    @property
    def backoff_max_s(self) -> float:
        return max(self.retry_delay_s * 8, self.retry_delay_s)

    def deadline_s(self, sweep_s: float) -> float:
        """How long a front-end waits for a job in all: every attempt may run its timeout, or die and be
        found by a sweep one heartbeat later, then wait its backoff."""
        per_attempt = self.timeout_s + self.heartbeat_s + sweep_s
        return self.retries * per_attempt + (self.retries - 1) * self.backoff_max_s + 1.0

    def job_fields(self) -> dict[str, Any]:
        return {
            "timeout": self.timeout_s,
            "retries": self.retries,
            "retry_delay": self.retry_delay_s,
            "retry_backoff": self.backoff_max_s,
            "heartbeat": self.heartbeat_s,
            "ttl": self.ttl_s,
        }


def keyed(job_key: str, payload: dict[str, Any]) -> str:
    """`job_key` (conversation, turn, kind) with a digest of the payload: a double click (the same
    request) finds the same job; a conversation id that comes back after a database was reset
    (Redis keeps finished jobs for `job_ttl_s`) never finds another conversation's result."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{job_key}:{digest}"


def rows_key(queue_name: str, digest: str) -> str:
    """The Redis key of a re-rank's candidates (bot/jobs/wire.py `pack_rows`), named by their content."""
    return f"musechat:{queue_name}:rows:{digest}"


def stream_key(queue_name: str, job_key: str) -> str:
    """The Redis stream of a reason job's tokens."""
    return f"musechat:{queue_name}:tokens:{job_key}"


# --- errors across processes --------------------------------------------------------------------

RAISABLE = (MediaError, ConversationError, MediaNotFoundError)


def error_payload(exc: BaseException) -> dict[str, Any]:
    """A typed error as JSON (the worker's side): its class, its log detail and its chat sentence."""
    cls = type(exc)
    return {
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "detail": str(exc),
        "user_message": getattr(exc, "user_message", None),
    }


def raise_error(payload: dict[str, Any]) -> None:
    """Raise a worker's typed error here, as the in-process runner would have (the front-end's side).

    Only subclasses of the user-facing error types are rebuilt (never an arbitrary class); anything
    else becomes a `JobFailedError`."""
    module, _, qualname = str(payload.get("class", "")).partition(":")
    cls: Any = None
    try:
        cls = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError, ValueError):
        cls = None
    detail, user = payload.get("detail") or "", payload.get("user_message")
    if inspect.isclass(cls) and issubclass(cls, MediaError):
        raise cls(detail, user)
    if inspect.isclass(cls) and issubclass(cls, ConversationError):
        raise cls(user or detail, detail)
    if inspect.isclass(cls) and issubclass(cls, MediaNotFoundError):
        raise cls(detail)
    raise JobFailedError("Something went wrong on my side; please try again.", f"{payload.get('class')}: {detail}")


# --- the runner ---------------------------------------------------------------------------------


class SaqRunner:
    """`ModelRunner` over SAQ queues on Redis (module docstring). Open with `await SaqRunner.open(...)`."""

    local = False

    def __init__(
        self, *, redis_url: str, media: MediaStore, interactive: str, catalog: str, policy: JobPolicy,
        catalog_policy: JobPolicy, queue_limit: int, sweep_s: float, features_tag: str,
    ) -> None:  # fmt: skip
        self.redis_url = redis_url
        self.media = media
        self.policy = policy
        self.catalog_policy = catalog_policy
        self.queue_limit = queue_limit
        self.sweep_s = sweep_s
        self.features_tag = features_tag  # "<profile>:<fps>[:<fusion_id>]" (runner.features_tag): the worker checks it
        self.interactive: Queue = Queue.from_url(redis_url, name=interactive)
        self.catalog: Queue = Queue.from_url(redis_url, name=catalog)
        self.redis = aioredis.from_url(redis_url)  # streams (XREAD BLOCK holds a connection of its own)
        self._features_keys: dict[str, str] = {}  # video sha -> media key of its features (the query jobs name it)
        self.enqueued = 0  # jobs this runner put on a queue (tests, benchmarks)
        self.reused = 0  # jobs found in flight or finished under the same key

    @classmethod
    async def open(cls, settings: Any, *, media: MediaStore, features_tag: str) -> SaqRunner:
        """A runner from the settings (bot/settings.py: redis_url, queue names, policies, limit)."""
        if not settings.redis_url:
            raise SettingsError("MUSECHAT_MODEL_RUNNER=saq needs MUSECHAT_REDIS_URL")
        runner = cls(
            redis_url=settings.redis_url, media=media, interactive=settings.queue_interactive, catalog=settings.queue_catalog,
            policy=settings.interactive_policy(), catalog_policy=settings.catalog_policy(), queue_limit=settings.queue_limit,
            sweep_s=settings.queue_sweep_s, features_tag=features_tag,
        )  # fmt: skip
        await runner.interactive.connect()
        await runner.catalog.connect()
        return runner

    async def close(self) -> None:
        await self.interactive.disconnect()
        await self.catalog.disconnect()
        await self.redis.aclose()

    # --- the named jobs -------------------------------------------------------------------------

    async def video_features(self, video_sha: str, path: Path | None = None, *, on_status: StatusCallback | None = None) -> VideoFeatures:
        if not self.media.exists(video_sha):  # claim check: the worker reads the video from the shared store
            if path is None:
                raise MediaNotFoundError(f"no stored media {video_sha}")
            await asyncio.to_thread(self.media.put_file, path)
        key = f"{VIDEO_FEATURES}:{video_sha}:{self.features_tag}"
        result = await self._run(VIDEO_FEATURES, {"video_sha": video_sha, "features_tag": self.features_tag}, key=key, on_status=on_status)
        data = await asyncio.to_thread(lambda: self.media.path_for(result["features"]).read_bytes())
        self._features_keys[video_sha] = result["features"]
        return VideoFeatures.from_bytes(data)

    async def query(
        self, request: QueryRequest, *, job_key: str, on_status: StatusCallback | None = None
    ) -> tuple[Query, np.ndarray | None]:  # fmt: skip
        """The worker's query; a `Query` to search with here (its `rerank` is the `rerank` job, not a method call)."""
        payload = await self._query_payload(request)
        r = await self._run(QUERY, {"request": payload}, key=keyed(job_key, payload), on_status=on_status)
        query = Query(
            r["mode"], r["vector_name"], array_from_json(r["vector"]), tuple(r["positive_ids"]), tuple(r["negative_ids"]),
            preference_from_json(r["preference"]), None, request.video, request.text, request.candidate,  # type: ignore[arg-type]
            tuple(request.negatives),
        )  # fmt: skip
        return query, array_from_json(r["anchor"])

    async def rerank(
        self, request: QueryRequest, mode: str, rows: list[CandidateRow], *, job_key: str, on_status: StatusCallback | None = None
    ) -> Ranking:  # fmt: skip
        """The worker's ranking; the candidates go through a Redis key of their own (bot/jobs/wire.py), named by content."""
        if request.candidate is not None and request.candidate.clip_mels is not None:  # the re-rank reads no g_mc input
            request = dataclasses.replace(request, candidate=dataclasses.replace(request.candidate, clip_mels=None))
        payload = await self._query_payload(request)
        data = await asyncio.to_thread(pack_rows, rows)
        key = rows_key(self.interactive.name, hashlib.sha256(data).hexdigest())
        # it lives as long as the job may wait (every retry included), then Redis drops it
        await self.redis.set(key, data, ex=math.ceil(self.policy.deadline_s(self.sweep_s)) + 60)
        kwargs = {"request": payload, "mode": mode, "rows": key}
        r = await self._run(RERANK, kwargs, key=keyed(job_key, kwargs), on_status=on_status)
        return ranking_from_json(r, preference_from_json(r["preference"]))

    async def _query_payload(self, request: QueryRequest) -> dict[str, Any]:
        """A query request as small JSON: the video's features by their media key (claim check), the tracks' vectors inline."""
        features = None
        if request.video is not None:
            features = self._features_keys.get(request.video.content_hash)
            if features is None or not self.media.exists(features):
                ref = await asyncio.to_thread(self.media.put_bytes, request.video.to_bytes())
                features = self._features_keys[request.video.content_hash] = ref.sha256
                while len(self._features_keys) > FEATURES_KEYS_KEPT:
                    self._features_keys.pop(next(iter(self._features_keys)))
        return {
            "video": features, "text": request.text, "anchor_text": request.anchor_text,
            "candidate": None if request.candidate is None else context_to_json(request.candidate),
            "negatives": [context_to_json(c) for c in request.negatives], "features_tag": self.features_tag,
        }  # fmt: skip

    async def excerpt(
        self, track_sha: str, *, fmt: str, source: str | None = None, start_s: float | None = None,
        convert_from: str | None = None,
    ) -> str:  # fmt: skip
        kwargs = {"track_sha": track_sha, "fmt": fmt, "source": source, "start_s": start_s, "convert_from": convert_from}
        result = await self._run(EXCERPT, kwargs, key=f"{EXCERPT}:{track_sha}:{fmt}:{convert_from or 'cut'}")
        return str(result["key"])

    async def preview(
        self, video_sha: str, track_source: str, start_s: float, *, max_bytes: int | None, job_key: str,
        on_status: StatusCallback | None = None,
    ) -> PreviewResult:  # fmt: skip
        kwargs = {"video_sha": video_sha, "track_source": track_source, "start_s": start_s, "max_bytes": max_bytes}
        result = await self._run(PREVIEW, kwargs, key=keyed(job_key, kwargs), on_status=on_status)
        return PreviewResult(result.get("key"), fitted=bool(result.get("fitted")), too_large=result.get("too_large") or "")

    async def reason(self, request: ReasonRequest, *, job_key: str, on_token: TokenCallback | None = None) -> tuple[str, str]:
        """The worker's reason; its tokens come through the job's stream while it writes (in order, one attempt's)."""
        job_key = keyed(job_key, request.to_json())
        stream = stream_key(self.interactive.name, job_key)
        budget = request.timeout_s if request.timeout_s is not None else None
        policy = self.policy
        if budget is not None and budget + REASON_MARGIN_S > policy.timeout_s:  # the worker falls back to the tag summary itself
            policy = JobPolicy(math.ceil(budget) + REASON_MARGIN_S, policy.retries, policy.retry_delay_s, policy.heartbeat_s, policy.ttl_s)
        job_task = asyncio.ensure_future(
            self._run(REASON, {"request": request.to_json(), "stream": stream}, key=job_key, policy=policy)
        )
        reader = asyncio.ensure_future(self._read_tokens(stream, on_token, job_task)) if on_token is not None else None
        try:
            result = await job_task
        except ConversationError as exc:  # the card is out already: the reply keeps the tag summary, saying why
            log.warning("reason job %s: %s", job_key, exc)
            return f"{request.fallback} (The model's reason is unavailable: {exc.user_message.rstrip('.')}.)", REASON_SOURCE_TAGS
        finally:
            if reader is not None:
                try:
                    await asyncio.wait_for(reader, STREAM_BLOCK_MS / 1000 * 3)
                except TimeoutError:
                    log.warning("reason job %s: its token stream did not end", job_key)
        return str(result["reason"]), str(result["source"])

    async def catalog_refresh(
        self, *, trigger: str = "queue", job_key: str = CATALOG_REFRESH, on_status: StatusCallback | None = None
    ) -> dict[str, Any]:  # fmt: skip
        """A catalog refresh on a worker, through the `catalog` queue (long, heartbeats): what it did.

        One key for every refresh: a second request while one is queued or running joins it."""
        return await self._run(CATALOG_REFRESH, {"trigger": trigger}, key=job_key, queue=self.catalog, reuse=False, on_status=on_status)

    async def ping(self, *, job_key: str | None = None) -> dict[str, Any]:
        return await self._run(PING, {}, key=job_key or f"{PING}:{uuid.uuid4().hex}")

    async def _read_tokens(self, stream: str, on_token: TokenCallback, job: asyncio.Future[Any]) -> None:
        """Hand the stream's pieces to `on_token` in order until the attempt that wrote them ends.

        A retried job (its worker died) writes its pieces again under a new attempt number: only the
        first attempt's pieces are shown, so none is shown twice (the reply carries the whole reason)."""
        last, attempt = "0-0", None
        while True:
            entries = await self.redis.xread({stream: last}, block=STREAM_BLOCK_MS, count=100)
            if not entries:
                if job.done():
                    return
                continue
            for entry_id, fields in entries[0][1]:
                last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                a = fields.get(b"a")
                if attempt is None:
                    attempt = a
                if a != attempt:
                    continue
                if b"end" in fields:
                    return
                piece = fields.get(b"t", b"").decode("utf-8")
                try:
                    result = on_token(piece)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.warning("the reason-token callback failed; no more pieces go to it", exc_info=True)
                    on_token = _ignore

    # --- queue mechanics ------------------------------------------------------------------------

    async def _run(
        self, kind: str, kwargs: dict[str, Any], *, key: str, on_status: StatusCallback | None = None,
        queue: Queue | None = None, policy: JobPolicy | None = None, reuse: bool = True,
    ) -> dict[str, Any]:  # fmt: skip
        """Enqueue (or find) the job under `key`, tell its position, wait for its result; typed errors.

        `reuse`: a finished job's result under the same key answers again (content-addressed work)."""
        queue = queue or self.interactive
        policy = policy or (self.catalog_policy if queue is self.catalog else self.policy)
        job = await queue.job(key)
        if reuse and job is not None and job.status == Status.COMPLETE and not _is_error(job.result):
            self.reused += 1
            return job.result
        if job is None or job.status in TERMINAL_STATUSES:
            waiting = await queue.count("queued")
            if waiting >= self.queue_limit:
                raise QueueFullError(
                    f"I have too many requests right now ({waiting} waiting); please try again in a minute.",
                    f"queue {queue.name} holds {waiting} jobs, limit {self.queue_limit}",
                )
            job = await self._enqueue(queue, Job(function=kind, kwargs=kwargs, key=key, **policy.job_fields()))
        else:
            self.reused += 1
        teller = asyncio.ensure_future(self._tell_position(queue, job, on_status)) if on_status is not None else None
        try:
            await self._wait(job, policy)
        finally:
            if teller is not None:
                teller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await teller
        if job.status != Status.COMPLETE:
            if job.error and "TimeoutError" in job.error or job.status == Status.ABORTED:
                raise JobTimeoutError(
                    "That took too long on my side; please try again.", f"job {key} {job.status}: {(job.error or '')[-200:]}"
                )
            raise JobFailedError("Something went wrong on my side; please try again.", f"job {key} failed: {(job.error or '')[-500:]}")
        result = job.result or {}
        if _is_error(result):
            raise_error(result["error"])
        return result

    async def _enqueue(self, queue: Queue, new: Job) -> Job:
        """Enqueue `new`, or the job already queued under its key (a double click).

        SAQ also refuses a key for a few seconds after a job under it was aborted (its abort mark,
        e.g. a sweep of a timed-out attempt): then this tries again until the mark expires."""
        deadline = time.monotonic() + ABORT_MARK_S
        while True:
            if await queue.enqueue(new) is not None:
                self.enqueued += 1
                return new
            job = await queue.job(new.key)
            if job is not None and job.status not in TERMINAL_STATUSES:
                self.reused += 1
                return job
            if time.monotonic() > deadline:
                raise JobFailedError("Something went wrong on my side; please try again.", f"job {new.key} cannot be queued")
            await asyncio.sleep(0.2)

    async def _tell_position(self, queue: Queue, job: Job, on_status: StatusCallback | None) -> None:
        """Tell the job's place in the queue, and again each time it changes (looked at every
        POSITION_POLL_S), until a worker takes it (or it leaves the queue)."""
        if on_status is None:
            return
        told = None
        while True:
            try:
                pos = await self.redis.lpos(queue.namespace("queued"), job.id)
            except Exception:  # noqa: BLE001 - only a status line: the wait for the result goes on
                log.warning("could not read the queue position of job %s", job.key, exc_info=True)
                return
            if pos is None:  # a worker has it (or it ended)
                return
            ahead = int(pos) + 1  # the jobs before it, and one running job to finish (as ModelPool counts)
            if ahead != told:
                await notify(on_status, f"{ahead} request{'s' if ahead != 1 else ''} ahead of you; yours is queued", ahead)
                told = ahead
            await asyncio.sleep(POSITION_POLL_S)

    async def _wait(self, job: Job, policy: JobPolicy) -> None:
        """Wait for the job's end (pub/sub, looked at again every WAIT_STEP_S); JobTimeoutError past the deadline."""
        deadline = time.monotonic() + policy.deadline_s(self.sweep_s)
        while True:
            await job.refresh()
            if job.status in TERMINAL_STATUSES:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobTimeoutError(
                    "That took too long on my side (no model worker answered); please try again.",
                    f"job {job.key} still {job.status} after {policy.deadline_s(self.sweep_s):.0f} s",
                )
            try:
                await asyncio.wait_for(job.refresh(until_complete=0), min(WAIT_STEP_S, remaining))
            except TimeoutError:
                pass


def _is_error(result: Any) -> bool:
    return isinstance(result, dict) and "error" in result


def _ignore(_piece: str) -> None:
    return None


__all__ = ["JobPolicy", "SaqRunner", "error_payload", "raise_error", "rows_key", "stream_key"]

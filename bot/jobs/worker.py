"""`musechat worker`: load the models once, serve the model jobs of the SAQ queues, report health.

One process serves both queues (bot/jobs/saq_runner.py): `interactive` with `worker_concurrency`
jobs at a time, and `catalog` with one, so long catalog jobs never take a user's slot. Each job runs
on the process's in-process runner (bot/jobs/local.py): the same code as an embedded front-end,
on a `ModelPool` whose threads do the model work. A job beats its heartbeat every third of
`heartbeat_s` while it runs; a worker killed mid-job stops beating, and another worker's sweep
re-queues the job (its retries allow it).

Job functions take and return small JSON: media-store keys, never video bytes. Errors the user can
act on (a file that is not a video) are returned typed (`{"error": ...}`), not retried: the
front-end raises them as the in-process runner would. Anything else fails the attempt and SAQ
retries it with backoff.

`musechat worker --check` exits non-zero when no worker is alive on the queues (SAQ's health
check: the live workers' stats in Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from saq import Queue, Worker
from saq.types import Context

from bot.jobs.local import InProcessRunner
from bot.jobs.runner import (
    CATALOG_REFRESH,
    EXCERPT,
    PING,
    PREVIEW,
    QUERY,
    REASON,
    RERANK,
    VIDEO_FEATURES,
    CatalogBusyError,
    QueryRequest,
    ReasonRequest,
    features_tag,
)
from bot.jobs.saq_runner import RAISABLE, STREAM_MAXLEN, STREAM_TTL_S, error_payload
from bot.jobs.wire import (
    array_to_json,
    context_from_json,
    preference_to_json,
    ranking_to_json,
    unpack_rows,
)
from engine.video import VideoFeatures
from storage.catalog import CatalogLockedError

log = logging.getLogger(__name__)

WORKER_INFO_S = 2  # seconds between two worker-info writes (what `--check` reads; they live one second more)
DEQUEUE_WAIT_S = 1.0  # an idle job slot looks up from its blocking dequeue this often (so a stop does not wait on it)


# --- the job functions --------------------------------------------------------------------------


def _runner(ctx: Context) -> InProcessRunner:
    return ctx["worker"].context["runner"]


async def _heartbeat(ctx: Context) -> None:
    """Touch the job every third of its heartbeat while it runs (SAQ sweeps a job that stops beating)."""
    job = ctx["job"]
    if not job.heartbeat:
        return
    while True:
        await asyncio.sleep(max(job.heartbeat / 3, 0.2))
        try:
            await job.update()
        except Exception:
            log.warning("heartbeat of job %s failed", job.key, exc_info=True)


async def _guarded(ctx: Context, work: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    beat = asyncio.create_task(_heartbeat(ctx))
    try:
        return await work()
    except RAISABLE as exc:  # the user's problem, not the worker's: returned typed, never retried
        log.info("job %s: %s: %s", ctx["job"].key, type(exc).__name__, exc)
        return {"error": error_payload(exc)}
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat


async def video_features(ctx: Context, *, video_sha: str, features_tag: str) -> dict[str, Any]:
    """Decode and embed a stored video; store the serialised features; their media key."""
    runner = _runner(ctx)

    async def work() -> dict[str, Any]:
        mine = _features_tag(runner)
        if features_tag != mine:
            raise RuntimeError(f"this worker embeds videos as {mine}, the front-end asked for {features_tag}")
        vf = await runner.video_features(video_sha)
        ref = await asyncio.to_thread(runner.media.put_bytes, vf.to_bytes())
        return {"features": ref.sha256}

    return await _guarded(ctx, work)


async def excerpt(ctx: Context, *, track_sha: str, fmt: str, source: str | None, start_s: float | None, convert_from: str | None) -> dict[str, Any]:
    """Cut (or convert) a listening excerpt; its media key."""
    runner = _runner(ctx)

    async def work() -> dict[str, Any]:
        key = await runner.excerpt(track_sha, fmt=fmt, source=source, start_s=start_s, convert_from=convert_from)
        return {"key": key}

    return await _guarded(ctx, work)


async def preview(ctx: Context, *, video_sha: str, track_source: str, start_s: float, max_bytes: int | None) -> dict[str, Any]:
    """Render the preview (re-encoded to fit `max_bytes`); its media key, or why there is none."""
    runner = _runner(ctx)

    async def work() -> dict[str, Any]:
        r = await runner.preview(video_sha, track_source, start_s, max_bytes=max_bytes, job_key=ctx["job"].key)
        return {"key": r.media_key, "fitted": r.fitted, "too_large": r.too_large}

    return await _guarded(ctx, work)


async def reason(ctx: Context, *, request: dict[str, Any], stream: str) -> dict[str, Any]:
    """Write a track's reason; each piece goes to the job's Redis stream as it comes, then an end mark."""
    runner = _runner(ctx)
    redis = ctx["job"].queue.redis
    attempt = str(ctx["job"].attempts)

    async def on_token(piece: str) -> None:
        await redis.xadd(stream, {"a": attempt, "t": piece}, maxlen=STREAM_MAXLEN, approximate=True)

    async def work() -> dict[str, Any]:
        text, source = await runner.reason(ReasonRequest.from_json(request), job_key=ctx["job"].key, on_token=on_token)
        await redis.xadd(stream, {"a": attempt, "end": "1"}, maxlen=STREAM_MAXLEN, approximate=True)
        await redis.expire(stream, STREAM_TTL_S)
        return {"reason": text, "source": source}

    return await _guarded(ctx, work)


async def catalog_refresh(ctx: Context, *, trigger: str = "queue") -> dict[str, Any]:
    """Refresh the catalog (the `catalog` queue: long, with heartbeats); what the refresh did.

    Opens the catalog for the length of the job (bot/app.py), with this worker's loaded encoders.
    With a Qdrant server (the stack) any worker can; with the embedded catalog only a worker on a
    machine where no front-end holds the catalog's lock can."""
    import dataclasses

    from bot.app import App

    runner = _runner(ctx)
    settings = ctx["worker"].context["settings"]

    async def work() -> dict[str, Any]:
        try:
            app = await App.open(settings, encoders=runner.engine.encoders)
        except CatalogLockedError as exc:  # not retried: the admin has to act
            raise CatalogBusyError(
                "A worker cannot refresh the catalog: it is open in another process (an embedded catalog belongs to one "
                "process). Stop that process, or use a Qdrant server (MUSECHAT_QDRANT_URL), or refresh with --local there.",
                str(exc),
            ) from exc
        own, app.pool = app.pool, runner.pool  # its model calls take the worker pool's catalog lane: users' jobs first
        try:
            report = await app.admin().refresh(trigger=trigger)
        finally:
            app.pool = own
            await app.close()
        fields = ("job_id", "version_name", "files", "tracks", "analysed", "reused", "added", "changed", "removed", "tower_tracks", "seconds")
        d = dataclasses.asdict(report)
        return {k: d[k] for k in fields} | {"failures": [str(f) for f in report.failures]}

    return await _guarded(ctx, work)


def _features_tag(runner: InProcessRunner) -> str:
    return features_tag(runner.engine)


async def _query_request(runner: InProcessRunner, request: dict[str, Any]) -> QueryRequest:
    """A query request from its JSON (bot/jobs/saq_runner.py `_query_payload`): the video's features read from the media store."""
    if request.get("features_tag") != _features_tag(runner):
        raise RuntimeError(f"this worker's models are {_features_tag(runner)}, the front-end asked for {request.get('features_tag')}")
    video = None
    if request.get("video"):
        key = str(request["video"])
        data = await asyncio.to_thread(lambda: runner.media.path_for(key).read_bytes())
        video = VideoFeatures.from_bytes(data)
    candidate = request.get("candidate")
    return QueryRequest(
        video=video, text=request.get("text"), anchor_text=request.get("anchor_text") or "",
        candidate=None if candidate is None else context_from_json(candidate),
        negatives=tuple(context_from_json(c) for c in request.get("negatives") or ()),
    )  # fmt: skip


async def query(ctx: Context, *, request: dict[str, Any]) -> dict[str, Any]:
    """A turn's query (paper 4.1): the search vector, the examples, what the words were understood as."""
    runner = _runner(ctx)

    async def work() -> dict[str, Any]:
        q, anchor = await runner.query(await _query_request(runner, request), job_key=ctx["job"].key)
        return {
            "mode": q.mode, "vector_name": q.vector_name, "vector": array_to_json(q.vector),
            "positive_ids": list(q.positive_ids), "negative_ids": list(q.negative_ids),
            "preference": preference_to_json(q.preference), "anchor": array_to_json(anchor),
        }  # fmt: skip

    return await _guarded(ctx, work)


async def rerank(ctx: Context, *, request: dict[str, Any], mode: str, rows: str) -> dict[str, Any]:
    """Re-rank a turn's candidates (read from the Redis key `rows`) for its query request."""
    runner = _runner(ctx)
    redis = ctx["job"].queue.redis

    async def work() -> dict[str, Any]:
        data = await redis.get(rows)
        if data is None:
            raise RuntimeError(f"the candidates {rows} are gone from Redis (expired before the job ran)")
        req = await _query_request(runner, request)
        candidates = await asyncio.to_thread(unpack_rows, data)
        ranking = await runner.rerank(req, mode, candidates, job_key=ctx["job"].key)
        return ranking_to_json(ranking) | {"preference": preference_to_json(ranking.preference)}

    return await _guarded(ctx, work)


async def ping(ctx: Context) -> dict[str, Any]:
    """A round trip through the queue and the model pool (no model work): which worker answered, and the
    batch sizes its micro-batchers ran so far ({"image embedding": {"1": 12, "3": 2}}: size -> batches)."""
    runner = _runner(ctx)
    await runner.pool.run(int)
    return {"worker": str(ctx["worker"].id), "pid": os.getpid(), "batches": {name: b.stats() for name, b in runner.batchers.items()}}


FUNCTIONS = [
    (VIDEO_FEATURES, video_features), (EXCERPT, excerpt), (PREVIEW, preview), (REASON, reason), (QUERY, query),
    (RERANK, rerank), (PING, ping), (CATALOG_REFRESH, catalog_refresh),
]  # fmt: skip


# --- the process --------------------------------------------------------------------------------


def make_workers(settings: Any, runner: InProcessRunner) -> list[Worker]:
    """The SAQ workers of one process: `interactive` (worker_concurrency at a time) and `catalog` (one)."""
    timers = {"sweep": max(1, int(settings.queue_sweep_s)), "worker_info": WORKER_INFO_S, "abort": 1}
    workers = []
    for name, concurrency in ((settings.queue_interactive, settings.worker_concurrency), (settings.queue_catalog, 1)):
        w = Worker(
            Queue.from_url(settings.redis_url, name=name), functions=FUNCTIONS, concurrency=concurrency, timers=timers,
            shutdown_grace_period_s=int(settings.worker_drain_s), dequeue_timeout=DEQUEUE_WAIT_S,
            metadata={"pid": os.getpid(), "host": socket.gethostname()},
        )  # fmt: skip
        w.SIGNALS = []  # this process handles the signals (it stops both workers)
        w.context["runner"] = runner
        w.context["settings"] = settings
        workers.append(w)
    return workers


async def serve_jobs(
    settings: Any, runner: InProcessRunner, *, ready: Callable[[], None] | None = None, stop: asyncio.Event | None = None
) -> None:  # fmt: skip
    """Serve both queues until SIGTERM/SIGINT (or `stop` is set); in-flight jobs get `worker_drain_s` to finish."""
    workers = make_workers(settings, runner)
    loop = asyncio.get_running_loop()
    signals = stop is None
    stop = stop or asyncio.Event()
    if signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[None]] = []
    try:
        for w in workers:
            await w.queue.connect()
        await warn_unless_noeviction(workers[0].queue)
        tasks = [asyncio.create_task(w.start(), name=f"saq-{w.queue.name}") for w in workers]
        log.info("worker %s serving queues %s", workers[0].id, ", ".join(w.queue.name for w in workers))
        if ready is not None:
            ready()
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        log.info("worker stopping: draining up to %.0f s", settings.worker_drain_s)
    finally:
        for w in workers:
            await w.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        if signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        for w in workers:
            await w.queue.disconnect()


async def warn_unless_noeviction(queue: Queue) -> str | None:
    """Log a warning unless Redis runs with `maxmemory-policy noeviction`: any other policy may drop
    queued jobs under memory pressure (research/platforms.md §3.3). Returns the policy (None: unknown)."""
    try:
        policy = (await queue.redis.config_get("maxmemory-policy")).get("maxmemory-policy")
    except Exception:  # noqa: BLE001 - a managed Redis may refuse CONFIG
        log.info("could not read Redis's maxmemory-policy; it must be noeviction")
        return None
    policy = policy.decode() if isinstance(policy, bytes) else policy
    if policy != "noeviction":
        log.warning("Redis maxmemory-policy is %r: set noeviction, or queued jobs may be evicted", policy)
    return policy


async def check_health(settings: Any) -> int:
    """0 when every queue has a live worker, 1 otherwise (SAQ's `async_check_health`, on both queues)."""
    from saq.worker import async_check_health

    status = 0
    for name in (settings.queue_interactive, settings.queue_catalog):
        status |= await async_check_health(Queue.from_url(settings.redis_url, name=name))
    return status


__all__ = ["FUNCTIONS", "check_health", "make_workers", "serve_jobs"]

"""bot/jobs/saq_runner.py + bot/jobs/worker.py on the real Redis: a front-end's model jobs served by a SAQ worker.

The workers here run in the test's process (their own `App`, no catalog) to keep these tests fast;
tests/bot/jobs/test_worker_processes.py runs `musechat worker` subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from redis.asyncio import Redis

from bot.app import App
from bot.jobs.runner import (
    CATALOG_REFRESH,
    CatalogBusyError,
    JobTimeoutError,
    QueueFullError,
    ReasonRequest,
)
from bot.jobs.saq_runner import SaqRunner, stream_key
from bot.jobs.worker import serve_jobs
from bot.service.contract import StatusEvent
from bot.service.conversation import ReplyKind, ServiceConfig
from engine.grounding import ReasonFacts
from engine.media import MediaError
from engine.profiles import Encoders
from engine.video import content_hash
from tests.bot.jobs.conftest import (  # noqa: F401
    REDIS_URL,
    Queues,
    data_copy,
    front_end,
    inproc_worker,
    job_settings,
    queues,
)
from tests.conftest import lavfi, melody
from tests.helpers.service import CLIPS, built, make_clips, tiny  # noqa: F401 - fixtures

LOCAL_REASONS = ServiceConfig(reasoner="local", reasoner_timeout_s=60.0, reasoner_grounded=False)  # the random tiny LM: raw pieces (it never writes a checked sentence)


async def _conversation(svc, video: Path) -> list:
    """A whole conversation: a video, words, "another", "use this" (the preview)."""
    r1 = await svc.start(video=video, channel_id="c1", user_id="u1")
    r2 = await svc.message(r1.conversation_id, "more drums, less sad")
    r3 = await svc.another(r1.conversation_id)
    r4 = await svc.use_this(r1.conversation_id)
    return [r1, r2, r3, r4]


async def _text_conversation(svc) -> list:
    """A text-only conversation (the opening words stand in for the video), with a filter and a rejection."""
    r1 = await svc.start(text="calm piano for a wedding video", channel_id="c2", user_id="u2")
    r2 = await svc.message(r1.conversation_id, "more drums, under 5 minutes")
    r3 = await svc.another(r1.conversation_id)
    return [r1, r2, r3]


def _summary(replies: list) -> list:
    """What the user sees of each reply (tracks, reasons, excerpt files, preview), without timings."""
    out = []
    for r in replies:
        tracks = [(t.track_id, t.score, t.reason, t.reason_source, _bytes(t.excerpt)) for t in r.tracks]
        preview = (r.preview.filename, r.preview.mime_type, r.preview.size) if r.preview else None
        out.append((r.kind, r.turn_index, tracks, preview, r.message))
    return out


def _bytes(f) -> bytes | None:
    return None if f is None else f.path.read_bytes()


async def test_a_conversation_through_the_queue_answers_as_the_in_process_runner(
    built: Path, tmp_path: Path, tiny: Encoders, queues: Queues, bikes_mp4: Path  # noqa: F811
) -> None:
    local_data, saq_data = tmp_path / "local", tmp_path / "saq"
    shutil.copytree(built / "data", local_data)
    shutil.copytree(built / "data", saq_data)
    async with front_end(job_settings(local_data, queues, runner="local"), tiny) as app:
        expected = await _conversation(await app.service(), bikes_mp4) + await _text_conversation(await app.service())
    settings = job_settings(saq_data, queues)
    async with inproc_worker(settings, tiny) as worker, front_end(settings, None) as app:  # the front-end has no models
        svc = await app.service()
        got = await _conversation(svc, bikes_mp4) + await _text_conversation(svc)
        runner = svc.runner
        assert isinstance(runner, SaqRunner)
        # the video's features, a query and a re-rank per turn (3 + 3), the preview (the indexer cut every excerpt)
        assert runner.enqueued == 1 + 6 * 2 + 1
        assert svc.engine._encoders is None  # the front-end loaded no model: the worker decoded, encoded, re-ranked
        # the worker did every model job (a heartbeat missed on a starved machine may run one twice: SAQ
        # sweeps and retries it; what the user got is checked below, and each job was enqueued once, above)
        assert worker.pool.completed["interactive"] >= 1 + 6 * 2 + 1
    assert [r.kind for r in got] == [ReplyKind.RECOMMENDATION] * 3 + [ReplyKind.PREVIEW] + [ReplyKind.RECOMMENDATION] * 3
    assert got[5].understood == expected[5].understood and got[5].filters == expected[5].filters  # "more drums", "under 5 minutes"
    assert got[5].understood and got[5].filters
    assert [r.ranking for r in got] == [r.ranking for r in expected]  # every candidate's score and parts, not only the best
    assert _summary(got) == _summary(expected)


async def test_trained_towers_through_the_queue_answer_as_the_in_process_runner(
    built: Path, tmp_path: Path, tiny: Encoders, queues: Queues, bikes_mp4: Path, tiny_towers: Path  # noqa: F811
) -> None:
    """A checkpoint with trained AST towers: a worker's refresh makes the catalog's vectors with g_mt; the
    query jobs carry the previous track's candidate clip (g_mc's input) and answer as the in-process turn."""
    from bot.jobs.runner import QUERY, RERANK
    from engine.music_towers import fusion_id

    data = tmp_path / "towers"
    shutil.copytree(built / "data", data)
    settings = job_settings(data, queues, fusion_checkpoint=tiny_towers)
    async with inproc_worker(settings, tiny) as worker:
        runner = await SaqRunner.open(settings, media=worker.media, features_tag=f"tiny:1:{fusion_id(tiny_towers)}")
        try:
            report = await runner.catalog_refresh()
        finally:
            await runner.close()
    assert report["tower_tracks"] == len(CLIPS) and report["analysed"] == 0 and report["failures"] == []
    local_data, saq_data = tmp_path / "local", tmp_path / "saq"
    shutil.copytree(data, local_data)
    shutil.copytree(data, saq_data)
    async with front_end(job_settings(local_data, queues, runner="local", fusion_checkpoint=tiny_towers), tiny) as app:
        expected = await _conversation(await app.service(), bikes_mp4)
    settings = job_settings(saq_data, queues, fusion_checkpoint=tiny_towers)
    sent: list[tuple[str, dict]] = []
    async with inproc_worker(settings, tiny), front_end(settings, None) as app:  # the front-end has no models
        svc = await app.service()
        assert svc.engine._fusion is None and svc.engine.fusion_towers  # it reads the candidate clips, loads no model
        run = svc.runner._run

        async def spy(kind, kwargs, **kw):  # noqa: ANN001, ANN003, ANN202
            sent.append((kind, kwargs))
            return await run(kind, kwargs, **kw)

        svc.runner._run = spy  # type: ignore[method-assign]
        got = await _conversation(svc, bikes_mp4)
    assert [r.mode for r in got[:3]] == ["fusion"] * 3
    assert [r.ranking for r in got] == [r.ranking for r in expected]
    assert _summary(got) == _summary(expected)
    queries = [kw["request"] for kind, kw in sent if kind == QUERY]
    reranks = [kw["request"] for kind, kw in sent if kind == RERANK]
    assert len(queries) == len(reranks) == 3 and queries[0]["candidate"] is None
    for q in queries[1:]:  # turns 2 and 3: the previous track's 10 s clip, as float16 log-mels (64 x 16 on tiny)
        clip = q["candidate"]["clip_mels"]
        assert clip["dtype"] == "<f2" and clip["shape"] == [64, 16] and q["candidate"]["segment_music"] is None
    assert all(r["candidate"] is None or r["candidate"]["clip_mels"] is None for r in reranks)  # the re-rank reads none


async def test_the_same_job_enqueued_twice_runs_once(data_copy: Path, tiny: Encoders, queues: Queues, bikes_mp4: Path) -> None:  # noqa: F811
    settings = job_settings(data_copy, queues)
    async with inproc_worker(settings, tiny) as worker, front_end(settings, tiny) as app:
        svc = await app.service()
        r = await svc.start(video=bikes_mp4, channel_id="c1", user_id="u1")
        runner = svc.runner
        before_enqueued, before_runs = runner.enqueued, worker.pool.completed["interactive"]
        source = r.track.source
        video_sha = (await svc.state(r.conversation_id)).video_sha256
        twice = [
            runner.preview(video_sha, source, 0.0, max_bytes=None, job_key="preview:double-click")
            for _ in range(2)
        ]  # a double click: the same (conversation, turn, kind) key twice at once
        a, b = await asyncio.gather(*twice)
        again = await runner.preview(video_sha, source, 0.0, max_bytes=None, job_key="preview:double-click")
        assert a == b == again and a.media_key is not None
        assert runner.enqueued - before_enqueued == 1  # queued once
        assert worker.pool.completed["interactive"] - before_runs == 1  # rendered once
        assert app.media.exists(a.media_key)


async def test_a_job_past_its_time_gives_the_user_a_clear_message(data_copy: Path, tiny: Encoders, queues: Queues, bikes_mp4: Path) -> None:  # noqa: F811
    settings = job_settings(data_copy, queues, job_timeout_s=1, job_retries=2, model_workers=1)
    async with inproc_worker(settings, tiny) as worker, front_end(settings, tiny) as app:
        svc = await app.service()
        busy = asyncio.ensure_future(worker.pool.run(time.sleep, 3.0))  # the worker's only model thread is taken
        await asyncio.sleep(0.1)
        with pytest.raises(JobTimeoutError) as err:
            await svc.start(video=bikes_mp4, channel_id="c1", user_id="u1")
        assert err.value.user_message == "That took too long on my side; please try again."
        assert await svc.find(platform="terminal", channel_id="c1") is None  # nothing was stored
        await busy


async def test_no_worker_alive_times_out_with_a_clear_message(data_copy: Path, tiny: Encoders, queues: Queues, bikes_mp4: Path) -> None:  # noqa: F811
    settings = job_settings(data_copy, queues, job_timeout_s=1, job_retries=1, job_heartbeat_s=1)
    async with front_end(settings, tiny) as app:
        svc = await app.service()
        with pytest.raises(JobTimeoutError) as err:
            await svc.start(video=bikes_mp4, channel_id="c1", user_id="u1")
        assert err.value.user_message == "That took too long on my side (no model worker answered); please try again."


async def test_the_queue_position_is_told_and_a_full_queue_refuses_with_a_clear_message(
    data_copy: Path, tiny: Encoders, queues: Queues, bikes_mp4: Path, bunny_mp4: Path, tmp_path: Path  # noqa: F811
) -> None:
    settings = job_settings(data_copy, queues, queue_limit=2)
    third = lavfi(tmp_path / "third.mp4", "testsrc2=d=3:s=160x120:r=10", args=("-pix_fmt", "yuv420p"))
    async with front_end(settings, tiny) as app:
        svc = await app.service()
        seen: list[list] = [[], []]
        waiting = []
        for i, video in enumerate([bikes_mp4, bunny_mp4]):  # no worker yet: both jobs wait in the queue
            waiting.append(asyncio.ensure_future(svc.start(video=video, channel_id=f"c{i}", user_id="u", events=seen[i].append)))
            while await svc.runner.interactive.count("queued") < i + 1:
                await asyncio.sleep(0.02)
        with pytest.raises(QueueFullError) as err:
            await svc.start(video=third, channel_id="c2", user_id="u")
        assert err.value.user_message == "I have too many requests right now (2 waiting); please try again in a minute."
        async with inproc_worker(settings, tiny):  # a worker comes: both queued turns are answered
            replies = await asyncio.gather(*waiting)
    assert [r.kind for r in replies] == [ReplyKind.RECOMMENDATION] * 2
    ahead = [_ahead(events) for events in seen]
    assert ahead[0] == [1] and ahead[1] in ([2], [2, 1])  # "1 request ahead of you", "2 requests ahead of you" (then 1, if seen)
    assert [e.message for e in seen[1] if isinstance(e, StatusEvent) and e.ahead][0] == "2 requests ahead of you; yours is queued"


def _ahead(events: list) -> list[int]:
    return [e.ahead for e in events if isinstance(e, StatusEvent) and e.ahead is not None]


async def _until(check, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_the_queue_position_is_told_again_each_time_it_moves_while_the_job_waits(
    data_copy: Path, tiny: Encoders, queues: Queues, bikes_mp4: Path, bunny_mp4: Path, tmp_path: Path  # noqa: F811
) -> None:
    settings = job_settings(data_copy, queues, worker_concurrency=1, model_workers=1)
    third = lavfi(tmp_path / "third.mp4", "testsrc2=d=3:s=160x120:r=10", args=("-pix_fmt", "yuv420p"))
    videos = [bikes_mp4, bunny_mp4, third]
    seen: list[list] = [[], [], []]
    async with front_end(settings, None) as app:
        runner = (await app.service()).runner
        waiting = []
        for i, video in enumerate(videos):  # no worker yet: all three wait in the queue
            waiting.append(asyncio.ensure_future(runner.video_features(content_hash(video), video, on_status=seen[i].append)))
            await _until(lambda: len(_ahead(seen[i])) == 1)  # noqa: B023
        assert [_ahead(s) for s in seen] == [[1], [2], [3]]
        # a stalled worker: one job at a time, its only model thread busy until `stall` is set
        worker = await App.open(settings, encoders=tiny, catalog=False)
        stall, stop = threading.Event(), asyncio.Event()
        serving = None
        try:
            blocked = asyncio.ensure_future(worker.pool.run(stall.wait))
            serving = asyncio.create_task(serve_jobs(settings, await worker.worker_runner(), stop=stop))
            # it takes the first job (which waits for the model thread): the two others move up one, and are told so
            await _until(lambda: _ahead(seen[2]) == [3, 2])
            assert _ahead(seen[1]) == [2, 1]
            await asyncio.sleep(2.5)  # nothing moves while the worker is stalled: nothing new is told
            assert [_ahead(s) for s in seen] == [[1], [2, 1], [3, 2]]
            stall.set()
            results = await asyncio.gather(*waiting)
            await blocked
        finally:
            stall.set()
            stop.set()
            if serving is not None:
                await serving
            await worker.close()
    assert [vf.content_hash for vf in results] == [content_hash(v) for v in videos]
    for events in seen:  # told only when it changed, always closer to the front
        assert _ahead(events) == sorted(set(_ahead(events)), reverse=True)
    assert _ahead(seen[2])[:2] == [3, 2]


async def test_a_file_that_is_not_a_video_is_refused_as_the_in_process_runner_refuses_it(
    data_copy: Path, tiny: Encoders, queues: Queues, orchestral_track: Path, tmp_path: Path  # noqa: F811
) -> None:
    errors = []
    for runner in ("local", "saq"):
        settings = job_settings(data_copy, queues, runner=runner)
        async with inproc_worker(settings, tiny), front_end(settings, tiny) as app:
            with pytest.raises(MediaError) as err:
                await (await app.service()).start(video=orchestral_track, channel_id=f"bad-{runner}", user_id="u")
            errors.append((type(err.value), err.value.user_message))
    assert errors[0] == errors[1]


async def test_reason_tokens_arrive_in_order_through_the_stream(data_copy: Path, tiny: Encoders, queues: Queues) -> None:  # noqa: F811
    settings = job_settings(data_copy, queues)
    async with inproc_worker(settings, tiny, LOCAL_REASONS), front_end(settings, tiny, LOCAL_REASONS) as app:
        svc = await app.service()
        pieces: list[str] = []
        r = await svc.start(text="happy tune", channel_id="c1", user_id="u", on_reason_token=pieces.append)
        assert r.track.reason_source != "tag summary", r.track.reason
        assert len(pieces) >= 2 and "".join(pieces).strip() == r.track.reason
        redis = Redis.from_url(REDIS_URL)
        try:
            streams = [k async for k in redis.scan_iter(stream_key(queues.interactive, f"reason:{r.conversation_id}:1:*"))]
            assert len(streams) == 1  # one reason job for this (conversation, turn)
            entries = await redis.xrange(streams[0])
        finally:
            await redis.aclose()
        written = [f[b"t"].decode() for _, f in entries if b"t" in f]
        assert written == pieces  # the worker's order is the order the user saw
        assert b"end" in entries[-1][1]


async def test_a_reason_job_that_fails_leaves_the_labelled_tag_summary(data_copy: Path, tiny: Encoders, queues: Queues) -> None:  # noqa: F811
    settings = job_settings(data_copy, queues, job_timeout_s=1, job_retries=1, job_heartbeat_s=1)
    async with front_end(settings, tiny, LOCAL_REASONS) as app:  # no worker: the reason job times out
        runner = (await app.service()).runner
        request = ReasonRequest(ReasonFacts("Battle", tags=("epic",)), "0" * 64, video_words="", fallback="Battle: epic.", timeout_s=0.5)
        text, source = await runner.reason(request, job_key="reason:x:1", on_token=lambda p: None)
    assert source == "tag summary"
    assert text == "Battle: epic. (The model's reason is unavailable: That took too long on my side (no model worker answered); please try again.)"


async def test_a_reason_job_in_the_old_format_fails_on_the_worker_saying_why(data_copy: Path, tiny: Encoders, queues: Queues) -> None:  # noqa: F811
    """A job queued by a front-end of an older version (the facts at the top level) fails with a sentence that names it."""
    from saq import Queue
    from saq.job import Status

    settings = job_settings(data_copy, queues)
    old = {"title": "Battle", "track_sha": "0" * 64, "tags": ["epic"], "feedback": "", "video_words": "", "fallback": "Battle: epic."}
    queue = Queue.from_url(REDIS_URL, name=queues.interactive)
    try:
        async with inproc_worker(settings, tiny, LOCAL_REASONS):
            job = await queue.enqueue("reason", request=old, stream="musechat:test:old-reason", retries=1, timeout=30)
            assert job is not None
            await job.refresh(until_complete=30)
    finally:
        await queue.disconnect()
    assert job.status == Status.FAILED
    assert "ValueError: a reason job without 'facts'" in job.error and "older version" in job.error


async def test_a_catalog_refresh_runs_on_the_catalog_queue_beside_users_jobs(
    data_copy: Path, tiny: Encoders, queues: Queues, music_dir: Path, tmp_path: Path  # noqa: F811
) -> None:
    more = make_clips(music_dir, tmp_path / "more", [("hedgewars-data/Jungle.ogg", 20, "new"), ("supertux-data/forest.ogg", 20, "new")])
    settings = job_settings(data_copy, queues, catalog_job_heartbeat_s=2)
    admin_app = await App.open(settings.model_copy(update={"model_runner": "local"}), encoders=tiny)
    try:
        await admin_app.admin().add_folder(more["new"], licence="CC0-1.0")
    finally:
        await admin_app.close()
    async with inproc_worker(settings, tiny) as worker:
        runner = await SaqRunner.open(settings, media=worker.media, features_tag="tiny:1")
        try:
            refresh = asyncio.ensure_future(runner.catalog_refresh())
            again = asyncio.ensure_future(runner.catalog_refresh())  # a second request joins the first
            while not worker.pool.completed["catalog"]:
                await asyncio.sleep(0.02)
            pong = await asyncio.wait_for(runner.ping(), 10)  # a user's job is not stuck behind the refresh
            report, joined = await asyncio.gather(refresh, again)
            job = await runner.catalog.job(CATALOG_REFRESH)
        finally:
            await runner.close()
    assert pong["pid"] == os.getpid()
    assert report == joined and report["tracks"] == len(CLIPS) + 2 and report["failures"] == []
    assert report["analysed"] == 2  # the new clips; the others came from the feature cache
    assert runner.enqueued == 2  # the refresh (once) and the ping
    assert job.heartbeat == 2 and job.timeout == settings.catalog_job_timeout_s and job.retries == settings.job_retries


async def test_the_worker_reads_the_redis_eviction_policy(queues: Queues) -> None:  # noqa: F811
    from saq import Queue

    from bot.jobs.worker import warn_unless_noeviction

    queue = Queue.from_url(REDIS_URL, name=queues.interactive)
    await queue.connect()
    try:
        assert await warn_unless_noeviction(queue) == "noeviction"  # the test Redis runs as the stack's does
    finally:
        await queue.disconnect()


async def test_musechat_catalog_refresh_with_the_saq_runner_refreshes_on_a_worker(
    data_copy: Path, tiny: Encoders, queues: Queues, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    from typer.testing import CliRunner

    from bot.cli.main import app as cli
    from bot.settings import get_settings

    folder = tmp_path / "new"
    folder.mkdir()
    lavfi(folder / "low.ogg", melody(220, 12), args=("-c:a", "libvorbis"))  # music, not a constant tone (engine/screening.py)
    env = {
        "MUSECHAT_DATA_DIR": str(data_copy), "MUSECHAT_PROFILE": "tiny", "MUSECHAT_ALLOW_RANDOM_WEIGHTS": "1",
        "MUSECHAT_REDIS_URL": REDIS_URL, "MUSECHAT_MODEL_RUNNER": "saq",
    } | queues.env()  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MUSECHAT_QDRANT_URL", raising=False)
    get_settings.cache_clear()
    try:
        added = await asyncio.to_thread(CliRunner().invoke, cli, ["catalog", "add", str(folder), "--licence", "CC0-1.0"])
        assert added.exit_code == 0, added.output
        async with inproc_worker(job_settings(data_copy, queues), tiny) as worker:
            result = await asyncio.to_thread(CliRunner().invoke, cli, ["catalog", "refresh"])
            catalog_runs = worker.pool.completed["catalog"]
        status = await asyncio.to_thread(CliRunner().invoke, cli, ["catalog", "status", "--json"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the console wraps long lines
    assert f"refresh sent to the catalog queue {queues.catalog}" in said
    assert f"{len(CLIPS) + 1} tracks (1 added, 0 changed, 0 removed; 1 embedded, {len(CLIPS)} reused)" in said
    assert said.endswith("on a worker")
    assert catalog_runs > 0  # the worker's models embedded the new track (its pool's catalog lane)
    assert json.loads(status.stdout)["tracks"] == len(CLIPS) + 1


async def test_musechat_catalog_refresh_says_clearly_when_no_worker_can_open_the_catalog(
    data_copy: Path, tiny: Encoders, queues: Queues  # noqa: F811
) -> None:
    settings = job_settings(data_copy, queues)
    async with inproc_worker(settings, tiny) as worker, front_end(settings, None) as holder:  # holds the embedded catalog
        from bot.cli.catalog import queued_refresh

        with pytest.raises(CatalogBusyError) as err:
            await queued_refresh(settings)
        assert holder.refresh_queue() is None  # so `serve` refreshes in its own process (embedded catalog)
        assert worker.pool.completed["catalog"] == 0
    assert "it is open in another process" in err.value.user_message


async def test_scheduled_refreshes_go_to_the_catalog_queue(data_copy: Path, tiny: Encoders, queues: Queues) -> None:  # noqa: F811
    from bot.service.scheduler import start_catalog_scheduler
    from storage.job_store import JobStatus

    settings = job_settings(data_copy, queues)
    front = await App.open(settings, catalog=False)  # a front-end of the stack: the catalog is not its to open
    try:
        admin = front.admin()
        stale = (await admin.jobs.start_run(kind="catalog_refresh", detail={"trigger": "schedule"})).id  # a worker's run, going on
        async with inproc_worker(settings, tiny) as worker:
            runner = await SaqRunner.open(settings, media=worker.media, features_tag="tiny:1")
            try:
                scheduler = await start_catalog_scheduler(admin, cron="0 3 * * *", queue=runner)
                assert await scheduler.run_now()  # as the cron would fire it: the run waits for the worker's report
                await scheduler.aclose()
                job = await runner.catalog.job(CATALOG_REFRESH)
            finally:
                await runner.close()
        runs = await admin.jobs.list_runs(kind="catalog_refresh")
    finally:
        await front.close()
    assert job.status.value == "complete" and job.result["tracks"] == len(CLIPS)
    assert runs[0].status is JobStatus.SUCCEEDED and runs[0].detail.get("trigger") == "schedule"
    assert [r.status for r in runs if r.id == stale] == [JobStatus.RUNNING]  # not closed by the front-end's start


async def test_a_worker_embeds_videos_sent_together_in_one_batch_and_reports_it(
    data_copy: Path, tiny: Encoders, queues: Queues, tmp_path: Path  # noqa: F811
) -> None:
    from engine.engine import Engine, EngineConfig

    videos = [
        lavfi(tmp_path / f"v{i}.mp4", f"testsrc2=d={d}:s=160x120:r=10", args=("-pix_fmt", "yuv420p")) for i, d in enumerate((2, 3, 4))
    ]
    settings = job_settings(data_copy, queues, worker_batch_size=3, worker_batch_wait_ms=5000, worker_concurrency=3, model_workers=3)
    async with inproc_worker(settings, tiny), front_end(settings, None) as app:
        runner = (await app.service()).runner
        got = await asyncio.gather(*(runner.video_features(content_hash(v), v) for v in videos))
        pong = await runner.ping()
    assert pong["batches"]["image embedding"] == {"3": 1}  # three videos, one forward pass
    alone = Engine(EngineConfig(profile="tiny"), encoders=tiny)
    for vf, video in zip(got, videos, strict=True):
        want = alone.video_features(video)
        assert vf.content_hash == want.content_hash and [n for n, _ in vf.labels] == [n for n, _ in want.labels]
        np.testing.assert_allclose(vf.segment_vectors, want.segment_vectors, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(vf.motion, want.motion)


async def test_a_cpu_worker_batches_only_when_asked(data_copy: Path, tiny: Encoders, queues: Queues, tmp_path: Path) -> None:  # noqa: F811
    """MUSECHAT_WORKER_BATCH_SIZE unset: 8 on a GPU, off on the CPU (one pass of several videos measured
    no faster there): concurrent videos each run their own pass."""
    videos = [lavfi(tmp_path / f"v{i}.mp4", f"testsrc2=d={d}:s=160x120:r=10", args=("-pix_fmt", "yuv420p")) for i, d in enumerate((2, 3))]
    settings = job_settings(data_copy, queues, worker_batch_wait_ms=5000, worker_concurrency=2, model_workers=2)
    assert settings.worker_batch_size is None and settings.device == "cpu"
    async with inproc_worker(settings, tiny), front_end(settings, None) as app:
        runner = (await app.service()).runner
        await asyncio.gather(*(runner.video_features(content_hash(v), v) for v in videos))
        pong = await runner.ping()
    assert pong["batches"] == {}  # no batcher ran: each video had its own pass


async def test_a_worker_encodes_the_queries_of_jobs_running_together_in_shared_batches(
    data_copy: Path, tiny: Encoders, queues: Queues  # noqa: F811
) -> None:
    from bot.jobs.runner import QueryRequest
    from bot.service.turns import encode_query
    from engine.engine import Engine, EngineConfig

    words = ["calm piano, no vocals", "epic orchestral battle, more drums", "happy upbeat pop, much faster"]
    settings = job_settings(data_copy, queues, worker_batch_size=3, worker_batch_wait_ms=1000, worker_concurrency=3, model_workers=3)
    async with inproc_worker(settings, tiny), front_end(settings, None) as app:
        runner = (await app.service()).runner
        requests = [QueryRequest(video=None, text=w, anchor_text=w, candidate=None) for w in words]
        got = await asyncio.gather(*(runner.query(r, job_key=f"q{i}") for i, r in enumerate(requests)))
        pong = await runner.ping()
    sizes = {int(k): n for k, n in pong["batches"]["query encoding"].items()}
    assert max(sizes) >= 2  # sentences of different jobs shared a forward pass
    alone = Engine(EngineConfig(profile="tiny"), encoders=tiny)
    for (query, anchor), w in zip(got, words, strict=True):
        want, want_anchor = encode_query(alone, video=None, text=w, anchor_text=w, candidate=None, negatives=())
        assert query.preference.describe() == want.preference.describe() and query.vector_name == want.vector_name
        np.testing.assert_allclose(query.vector, want.vector, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(anchor, want_anchor, rtol=1e-4, atol=1e-5)

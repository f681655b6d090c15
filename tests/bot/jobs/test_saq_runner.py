"""bot/jobs/saq_runner.py + bot/jobs/worker.py on the real Redis: a front-end's model jobs served by a SAQ worker.

The workers here run in the test's process (their own `App`, no catalog) to keep these tests fast;
tests/bot/jobs/test_worker_processes.py runs `musechat worker` subprocesses.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bot.app import App
from bot.jobs.runner import (
    CATALOG_REFRESH,
    JobTimeoutError,
    QueueFullError,
    ReasonRequest,
)
from bot.jobs.saq_runner import SaqRunner, stream_key
from bot.service.contract import StatusEvent
from bot.service.conversation import ReplyKind, ServiceConfig
from engine.media import MediaError
from engine.profiles import Encoders
from tests.bot.jobs.conftest import (  # noqa: F401
    REDIS_URL,
    Queues,
    data_copy,
    front_end,
    inproc_worker,
    job_settings,
    queues,
)
from tests.conftest import lavfi
from tests.helpers.service import CLIPS, built, make_clips, tiny  # noqa: F401 - fixtures

LOCAL_REASONS = ServiceConfig(reasoner="local", reasoner_timeout_s=60.0, reasoner_grounded=False)  # the random tiny LM: raw pieces (it never writes a checked sentence)


async def _conversation(svc, video: Path) -> list:
    """A whole conversation: a video, words, "another", "use this" (the preview)."""
    r1 = await svc.start(video=video, channel_id="c1", user_id="u1")
    r2 = await svc.message(r1.conversation_id, "more drums, less sad")
    r3 = await svc.another(r1.conversation_id)
    r4 = await svc.use_this(r1.conversation_id)
    return [r1, r2, r3, r4]


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
        expected = await _conversation(await app.service(), bikes_mp4)
    settings = job_settings(saq_data, queues)
    async with inproc_worker(settings, tiny) as worker, front_end(settings, tiny) as app:
        svc = await app.service()
        decoded = []
        svc.engine.video_features = lambda *a, **k: decoded.append(a)  # type: ignore[method-assign] - must not be called here
        got = await _conversation(svc, bikes_mp4)
        runner = svc.runner
        assert isinstance(runner, SaqRunner)
        assert runner.enqueued == 2  # the video's features and the preview (the indexer cut every excerpt)
        assert decoded == []  # the front-end decoded nothing: the worker did
        assert worker.pool.completed["interactive"] == 2
    assert [r.kind for r in got] == [ReplyKind.RECOMMENDATION] * 3 + [ReplyKind.PREVIEW]
    assert _summary(got) == _summary(expected)


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
    ahead = [[e.ahead for e in events if isinstance(e, StatusEvent) and e.ahead is not None] for events in seen]
    assert ahead == [[1], [2]]  # "1 request ahead of you", "2 requests ahead of you"
    assert [e.message for e in seen[1] if isinstance(e, StatusEvent) and e.ahead] == ["2 requests ahead of you; yours is queued"]


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
        request = ReasonRequest("Battle", "0" * 64, ("epic",), feedback="", video_words="", fallback="Battle: epic.", timeout_s=0.5)
        text, source = await runner.reason(request, job_key="reason:x:1", on_token=lambda p: None)
    assert source == "tag summary"
    assert text == "Battle: epic. (The model's reason is unavailable: That took too long on my side (no model worker answered); please try again.)"


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

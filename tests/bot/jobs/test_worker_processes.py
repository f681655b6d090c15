"""`musechat worker` subprocesses on the real Redis: front-end processes, a worker killed mid-job, `--check`.

Slow (each worker process loads torch and the tiny models): marked `slow`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from saq import Queue
from saq.job import Status

from bot.service.conversation import ReplyKind
from engine.profiles import Encoders
from tests.bot.jobs import frontend
from tests.bot.jobs.conftest import (  # noqa: F401
    REDIS_URL,
    ROOT,
    Queues,
    WorkerProcess,
    front_end,
    job_settings,
    queues,
)
from tests.conftest import lavfi
from tests.helpers.service import LICENCES, built, index, postgres_target, tiny  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow

CONVERSATIONS = 2  # per front-end: one starts with the video, one with words
TURNS = 3


def _check(names: Queues) -> int:
    """`musechat worker --check`'s exit status."""
    env = os.environ | {"MUSECHAT_REDIS_URL": REDIS_URL, "PYTHONPATH": str(ROOT)} | names.env()
    cmd = [sys.executable, "-m", "bot", "worker", "--check"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=120, check=False).returncode


def _seen(lines: list[dict]) -> dict:
    """(conversation, turn) -> what the user saw (the ids of conversations differ between runs)."""
    return {(x["conv"].split("-")[-1], x["turn"]): (x.get("kind"), x.get("index"), x.get("track"), x.get("reason"), x.get("error"))
            for x in lines if "conv" in x}  # fmt: skip


async def test_two_front_ends_and_two_workers_answer_as_the_in_process_runner(
    built: Path, tmp_path: Path, tiny: Encoders, queues: Queues, bikes_mp4: Path  # noqa: F811
) -> None:
    # the in-process runner's answers on the same inputs
    local = tmp_path / "local"
    shutil.copytree(built / "data", local)
    expected: list[dict] = []
    args = frontend_args("ref", bikes_mp4)
    async with front_end(job_settings(local, queues, runner="local"), tiny) as app:
        svc = await app.service()
        await asyncio.gather(*(frontend.conversation(svc, i, args, expected.append) for i in range(CONVERSATIONS)))

    async with postgres_target() as target:  # the front-ends share one database, as in the stack
        shared = tmp_path / "a"
        shutil.copytree(built / "data", shared)
        folders = {f.name: (f, LICENCES[f.name]) for f in sorted((built / "music").iterdir()) if f.is_dir()}
        await index(shared, tiny, folders, sql=target)
        other = tmp_path / "b"  # a second front-end: its own embedded catalog (a copy), the shared media volume
        shutil.copytree(shared, other, ignore=shutil.ignore_patterns("media"))
        (other / "media").symlink_to(shared / "media")
        workers = [WorkerProcess(shared, queues, tmp_path / f"worker{i}.log") for i in range(2)]
        try:
            for w in workers:
                w.wait_ready()
            env = os.environ | {
                "MUSECHAT_PROFILE": "tiny", "MUSECHAT_ALLOW_RANDOM_WEIGHTS": "1", "MUSECHAT_REDIS_URL": REDIS_URL,
                "MUSECHAT_MODEL_RUNNER": "saq", "MUSECHAT_DATABASE_URL": target.url, "PYTHONPATH": str(ROOT),
                "OMP_NUM_THREADS": "1",
            } | queues.env()  # fmt: skip
            go = tmp_path / "go"
            procs = [
                subprocess.Popen(
                    [sys.executable, "-m", "tests.bot.jobs.frontend", "--prefix", f"fe{n}", "--conversations", str(CONVERSATIONS),
                     "--turns", str(TURNS), "--video", str(bikes_mp4), "--video-every", "2", "--schema", target.schema,
                     "--go-file", str(go)],
                    cwd=ROOT, env=env | {"MUSECHAT_DATA_DIR": str(data)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                )  # fmt: skip
                for n, data in ((1, shared), (2, other))
            ]
            go.touch()
            outputs = [p.communicate(timeout=300) for p in procs]
        finally:
            for w in workers:
                w.stop()
        for p, (out, err) in zip(procs, outputs, strict=True):
            assert p.returncode == 0, err.decode()[-3000:]
        runs = [[json.loads(x) for x in out.decode().splitlines() if x.startswith("{")] for out, _ in outputs]
    want = _seen(expected)
    assert len(want) == CONVERSATIONS * TURNS and not any(v[-1] for v in want.values())
    for lines in runs:
        assert _seen(lines) == want
    served = [w.log.read_text() for w in workers]
    assert all("worker ready" in s for s in served)


def frontend_args(prefix: str, video: Path):
    import argparse

    return argparse.Namespace(prefix=prefix, turns=TURNS, video=video, video_every=2, video_dir=None)


async def test_a_worker_killed_mid_job_leaves_the_job_to_the_other_and_the_turn_is_answered_once(
    built: Path, tmp_path: Path, tiny: Encoders, queues: Queues  # noqa: F811
) -> None:
    data = tmp_path / "data"
    shutil.copytree(built / "data", data)
    long_video = lavfi(tmp_path / "long.mp4", "testsrc2=d=240:s=320x240:r=5", args=("-pix_fmt", "yuv420p", "-preset", "ultrafast"))
    assert _check(queues) != 0  # no worker alive yet
    workers = [WorkerProcess(data, queues, tmp_path / f"worker{i}.log") for i in range(2)]
    try:
        for w in workers:
            w.wait_ready()
        assert _check(queues) == 0
        settings = job_settings(data, queues)
        async with front_end(settings, tiny) as app:
            svc = await app.service()
            turn = asyncio.ensure_future(svc.start(video=long_video, channel_id="c1", user_id="u1"))
            queue = Queue.from_url(REDIS_URL, name=queues.interactive)
            await queue.connect()
            try:
                job = await _active_job(queue)
                pids = {wid: info["metadata"]["pid"] for wid, info in (await queue.info())["workers"].items()}
                victim = next(w for w in workers if w.proc.pid == pids[job.worker_id])
                victim.kill()  # SIGKILL in the middle of the decode
                reply = await asyncio.wait_for(turn, 120)
                done = await _finished_job(queue, job.key)
            finally:
                await queue.disconnect()
            state = await svc.state(reply.conversation_id)
        assert reply.kind is ReplyKind.RECOMMENDATION and reply.turn_index == 1
        # retried after the kill and finished by the surviving worker (a heartbeat missed on a starved 2-core
        # machine may sweep it once more and run it again: the job is idempotent), and the turn answered once
        assert done.status is Status.COMPLETE and 2 <= done.attempts <= 4 and done.worker_id != job.worker_id
        assert len(state.turns) == 1 and len(state.turns[0].recommendations) == 1  # persisted once
    finally:
        for w in workers:
            w.stop()


async def _finished_job(queue: Queue, key: str, timeout_s: float = 90.0):
    """The job once it is complete or failed (a sweep after the answer may have queued it once more)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        job = await queue.job(key)
        if job is not None and job.status in (Status.COMPLETE, Status.FAILED, Status.ABORTED):
            return job
        if loop.time() > deadline:
            raise AssertionError(f"job {key} did not finish: {job}")
        await asyncio.sleep(0.1)


async def _active_job(queue: Queue, timeout_s: float = 60.0):
    """The first job a worker is running on the queue."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        info = await queue.info(jobs=True)
        for j in info["jobs"]:
            if j["status"] == "active" and j.get("worker_id"):
                job = await queue.job(j["key"])
                if job is not None and job.status is Status.ACTIVE:
                    return job
        await asyncio.sleep(0.05)
    raise AssertionError("no job became active")

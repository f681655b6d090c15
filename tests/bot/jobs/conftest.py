"""Real Redis, real SAQ workers (in this process or as `musechat worker` subprocesses), real services.

Each test gets queue names of its own (`queues`), so tests never see each other's jobs; their keys
are deleted afterwards. Front-ends are `App`s (bot/app.py) over a copy of the built catalog with
`model_runner="saq"`; in-process workers serve the queues with `serve_jobs` on their own `App`
(no catalog), as `musechat worker` does.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis

from bot.app import App
from bot.jobs.worker import serve_jobs
from bot.service.conversation import ServiceConfig
from bot.settings import Settings
from engine.profiles import Encoders
from tests.helpers.service import built, tiny  # noqa: F401 - fixtures

REDIS_URL = os.environ.get("MUSECHAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[3]  # the repository root (the worker subprocess runs there)
WORKER_START_S = 120.0  # seconds a worker subprocess may take to load the tiny models


@dataclass(frozen=True)
class Queues:
    interactive: str
    catalog: str

    def env(self) -> dict[str, str]:
        return {"MUSECHAT_QUEUE_INTERACTIVE": self.interactive, "MUSECHAT_QUEUE_CATALOG": self.catalog}


def _delete_keys(queues: Queues) -> None:
    r = Redis.from_url(REDIS_URL)
    try:
        for name in (queues.interactive, queues.catalog):
            for pattern in (f"saq:{name}:*", f"musechat:{name}:*", f"saq:job:{name}:*"):
                keys = list(r.scan_iter(pattern, count=1000))
                if keys:
                    r.delete(*keys)
    finally:
        r.close()


@pytest.fixture
def queues() -> Iterator[Queues]:
    tag = uuid.uuid4().hex[:10]
    q = Queues(f"test-{tag}-interactive", f"test-{tag}-catalog")
    try:
        yield q
    finally:
        _delete_keys(q)


def job_settings(data: Path, queues: Queues, *, runner: str = "saq", **extra: object) -> Settings:
    """Settings of a front-end or worker over `data` on the test's queues (tiny profile, fast sweeps)."""
    fields: dict = {
        "data_dir": data, "profile": "tiny", "allow_random_weights": True, "redis_url": REDIS_URL,
        "model_runner": runner, "queue_interactive": queues.interactive, "queue_catalog": queues.catalog,
        "queue_sweep_s": 1.0, "job_heartbeat_s": 3, "job_retry_delay_s": 0.2, "job_timeout_s": 60,
    }  # fmt: skip
    return Settings(_env_file=None, **(fields | extra))


@pytest.fixture
def data_copy(built: Path, tmp_path: Path) -> Path:  # noqa: F811
    shutil.copytree(built / "data", tmp_path / "data")
    return tmp_path / "data"


@asynccontextmanager
async def front_end(settings: Settings, encoders: Encoders, config: ServiceConfig | None = None) -> AsyncIterator[App]:
    app = await App.open(settings, encoders=encoders, config=config)
    try:
        await app.service()
        yield app
    finally:
        await app.close()


@asynccontextmanager
async def inproc_worker(settings: Settings, encoders: Encoders, config: ServiceConfig | None = None) -> AsyncIterator[App]:
    """A worker in this process (its own App without the catalog): serves both queues until the block ends."""
    app = await App.open(settings, encoders=encoders, config=config, catalog=False)
    ready, stop = asyncio.Event(), asyncio.Event()
    task = None
    try:
        runner = await app.worker_runner()
        task = asyncio.create_task(serve_jobs(settings, runner, ready=ready.set, stop=stop))
        await asyncio.wait_for(ready.wait(), 30)
        yield app
    finally:
        stop.set()
        if task is not None:
            await task
        await app.close()


# --- worker subprocesses ------------------------------------------------------------------------


class WorkerProcess:
    """`python -m bot worker` on the test's queues and data directory."""

    def __init__(self, data: Path, queues: Queues, log: Path, **env: str) -> None:
        self.log = log
        full = os.environ | {
            "MUSECHAT_DATA_DIR": str(data), "MUSECHAT_PROFILE": "tiny", "MUSECHAT_ALLOW_RANDOM_WEIGHTS": "1",
            "MUSECHAT_REDIS_URL": REDIS_URL, "MUSECHAT_QUEUE_SWEEP_S": "1", "MUSECHAT_JOB_HEARTBEAT_S": "3",
            "MUSECHAT_MODEL_WORKERS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
        } | queues.env() | env  # fmt: skip
        self._file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "worker"], cwd=ROOT, env=full, stdout=self._file, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout_s: float = WORKER_START_S) -> None:
        deadline = time.monotonic() + timeout_s
        while b"worker ready" not in self.log.read_bytes():
            assert self.proc.poll() is None, f"worker exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"worker not ready:\n{self.log.read_text()[-3000:]}"
            time.sleep(0.2)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._file.close()

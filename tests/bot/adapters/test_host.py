"""bot/adapters/host.py: one process answers chats while a scheduled refresh runs; SIGTERM drains."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from bot.adapters.host import Host
from bot.app import App
from bot.service.contract import PlatformKeys, ReplyOptions
from bot.service.errors import ShuttingDownError
from bot.service.replies import ReplyKind
from bot.settings import Settings
from storage.models import JobStatus
from tests.helpers.service import CLIPS, built, make_clips, tiny  # noqa: F401 - fixtures

REFRESH_JOB = "catalog_refresh"


def settings_for(data: Path) -> Settings:
    return Settings(_env_file=None, data_dir=data, profile="tiny", allow_random_weights=True, model_workers=2)


async def _wait_for(predicate, timeout_s: float = 90.0, every_s: float = 0.1) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(every_s)


async def test_one_process_answers_chats_while_a_scheduled_refresh_runs(
    built: Path, tmp_path: Path, music_dir: Path, bunny_mp4: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(built / "data", data)
    more = make_clips(music_dir, tmp_path / "more", [("hedgewars-data/Jungle.ogg", 20, "new"), ("supertux-data/forest.ogg", 20, "new")])
    app = await App.open(settings_for(data))
    stop = asyncio.Event()
    host = Host(app, cron="*/1 * * * * *", health_port=None, retention_every_s=None)
    runner = asyncio.create_task(host.run(stop))
    try:
        await _wait_for(lambda: _true(host.service is not None and host.status.scheduler is not None))
        admin = app.admin()
        await admin.add_folder(more["new"], licence="CC0-1.0")  # the next scheduled refresh has work to do
        before = {r.id for r in await admin.jobs.list_runs(kind=REFRESH_JOB)}
        svc = host.service
        replies = []
        for i in range(3):  # chats go on while the refresh indexes the new folder
            keys = PlatformKeys("terminal", f"host-{i}", "u1")
            r1 = await svc.start(keys, video=bunny_mp4 if i == 0 else None, text="" if i == 0 else "calm piano")
            r2 = await svc.message(r1.conversation_id, "more drums")
            replies += [r1, r2]

        async def refreshed() -> bool:
            runs = [r for r in await admin.jobs.list_runs(kind=REFRESH_JOB) if r.id not in before]
            return any(r.status is JobStatus.SUCCEEDED for r in runs)

        await _wait_for(refreshed)
        assert all(r.kind is ReplyKind.RECOMMENDATION for r in replies)
        runs = [r for r in await admin.jobs.list_runs(kind=REFRESH_JOB) if r.id not in before]
        assert not [r for r in runs if r.status is JobStatus.FAILED], [r.error for r in runs]
        assert app.catalog.count() == len(CLIPS) + 2  # the new tracks are live, in the catalog the chats use
        assert app.pool.completed["catalog"] >= 2  # the refresh's model calls went through the shared pool's catalog lane
    finally:
        stop.set()
        await runner
        await app.close()


async def _true(value: bool) -> bool:
    return value


async def test_sigterm_lets_turns_in_flight_finish_and_refuses_new_ones(built: Path, tmp_path: Path, bunny_mp4: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(built / "data", data)
    app = await App.open(settings_for(data))
    stop = asyncio.Event()
    host = Host(app, health_port=None, retention_every_s=None, grace_s=60.0)
    runner = asyncio.create_task(host.run(stop))
    try:
        await _wait_for(lambda: _true(host.service is not None))
        svc = host.service
        in_flight = asyncio.create_task(svc.start(PlatformKeys("terminal", "drain", "u1"), video=bunny_mp4, options=ReplyOptions()))
        await _wait_for(lambda: _true(svc.active_requests == 1), every_s=0.01)
        stop.set()  # what SIGTERM does in `serve`
        await _wait_for(lambda: _true(host.status.stopping), every_s=0.01)
        with pytest.raises(ShuttingDownError) as refused:
            await svc.start(PlatformKeys("terminal", "late", "u2"), text="calm piano")
        assert "restarting" in refused.value.user_message
        reply = await in_flight  # the turn in flight was not cut off
        assert reply.kind is ReplyKind.RECOMMENDATION and reply.track is not None
        await runner
        assert svc.active_requests == 0
    finally:
        stop.set()
        if not runner.done():
            await runner
        await app.close()


async def test_retention_cleans_old_media_and_forgets_old_platform_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bot.adapters.host as host_mod
    from storage.event_store import EventStore

    settings = Settings(_env_file=None, data_dir=tmp_path / "data", profile="tiny", allow_random_weights=True, media_max_age_days=0.0)
    app = await App.open(settings)
    try:
        kept_before = app.media.put_bytes(b"an old excerpt")
        events = EventStore(app.sql)
        assert await events.mark_processed(platform="slack", event_id="Ev1")
        monkeypatch.setattr(host_mod, "EVENT_MEMORY_S", -60.0)  # every event is past its retry window
        host = Host(app, health_port=None)
        await asyncio.sleep(0.01)
        await host.retention()
        assert not app.media.exists(kept_before.sha256)
        assert not await events.was_processed(platform="slack", event_id="Ev1")
        assert await events.mark_processed(platform="slack", event_id="Ev1")  # a fresh delivery would be handled again
        assert host.status.retention_runs == 1
    finally:
        await app.close()

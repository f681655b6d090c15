"""Tests of the SQL stores (storage/*_store.py) on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.conversation_store import ConversationStore, Recommendation
from storage.db import NotFoundError, utcnow
from storage.event_store import EventStore
from storage.job_store import JobStore
from storage.locks import conversation_lock
from storage.models import (
    CatalogStatus,
    ConversationStatus,
    FeedbackKind,
    JobStatus,
    catalog_versions,
    conversations,
    recommendations,
    turns,
)
from storage.rate_limit_store import RateLimitStore
from storage import track_store
from storage.track_store import CatalogVersionStore, TrackInfo, TrackStore


REC = Recommendation(1, "h1", 0.5)


async def _open(store: ConversationStore, thread: str = "t1", user: str = "u1") -> int:
    conv = await store.get_or_create_conversation(
        platform="discord", workspace_id="g1", channel_id="c1", thread_id=thread, platform_user_id=user,
        user_name="Ada", profile="lite", model_version="zs-1",
    )  # fmt: skip
    return conv.id


async def _count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


# --- conversations ---------------------------------------------------------------------------


async def test_get_or_create_conversation_is_idempotent_and_keyed_by_thread(sql_engine: AsyncEngine) -> None:
    store = ConversationStore(sql_engine)
    first = await store.get_or_create_conversation(
        platform="slack", workspace_id="T1", channel_id="C1", thread_id="1700.1", platform_user_id="U1",
        user_name="Bo", profile="lite", model_version="zs-1",
    )  # fmt: skip
    again = await store.get_or_create_conversation(
        platform="slack", workspace_id="T1", channel_id="C1", thread_id="1700.1", platform_user_id="U2",
        profile="paper", model_version="fusion-9",
    )  # fmt: skip
    other_thread = await store.get_or_create_conversation(
        platform="slack", channel_id="C1", thread_id="1700.2", platform_user_id="U1", profile="lite"
    )
    assert again == first  # kept as started: same user, profile, model version
    assert (first.platform, first.workspace_id, first.channel_id, first.thread_id) == ("slack", "T1", "C1", "1700.1")
    assert (first.status, first.profile, first.model_version, first.turn_count) == ("active", "lite", "zs-1", 0)
    assert first.created_at.tzinfo is not None
    assert other_thread.id != first.id and other_thread.user_id == first.user_id
    assert await store.get_conversation(platform="slack", channel_id="C1", thread_id="1700.1") == first
    assert await store.get_conversation(platform="discord", channel_id="C1", thread_id="1700.1") is None
    assert await store.get_conversation_by_id(conversation_id=first.id) == first
    assert await _count(sql_engine, conversations) == 2


async def test_user_name_is_updated_only_by_a_non_empty_name(sql_engine: AsyncEngine) -> None:
    store = ConversationStore(sql_engine)
    created = await store.get_or_create_user(platform="discord", platform_user_id="42", name="Ada")
    assert (await store.get_or_create_user(platform="discord", platform_user_id="42")).name == "Ada"
    renamed = await store.get_or_create_user(platform="discord", platform_user_id="42", name="Ada L.")
    assert (renamed.id, renamed.name) == (created.id, "Ada L.")
    other = await store.get_or_create_user(platform="slack", platform_user_id="42", name="Ada")
    assert other.id != created.id


async def test_concurrent_get_or_create_makes_one_conversation(sql_engine: AsyncEngine) -> None:
    store = ConversationStore(sql_engine)
    ids = await asyncio.gather(*(_open(store) for _ in range(12)))
    assert len(set(ids)) == 1
    assert await _count(sql_engine, conversations) == 1


async def test_add_turn_list_turns_shown_tracks_feedback_and_status(sql_engine: AsyncEngine) -> None:
    store = ConversationStore(sql_engine)
    cid = await _open(store)
    t1 = await store.add_turn(
        conversation_id=cid, mode="zero-shot", user_text="calm please", video_sha256="a" * 64,
        video_ref="media/aa/aaaa.mp4", timings={"decode_s": 1.5, "search_s": 0.01},
        recommendations=[Recommendation(2, "h2", 0.5, "also calm"), Recommendation(1, "h1", 0.75, "strings")],
    )  # fmt: skip
    t2 = await store.add_turn(
        conversation_id=cid, mode="zero-shot", user_text="more drums", video_sha256="a" * 64, candidate_track_id="h1",
        recommendations=[Recommendation(1, "h3", 0.625, "drums"), Recommendation(2, "h1", 0.25)],
    )  # fmt: skip
    assert (t1.index, t2.index) == (1, 2)
    assert [r.track_id for r in t1.recommendations] == ["h1", "h2"]  # by rank

    listed = await store.list_turns(conversation_id=cid)
    assert listed == [t1, t2]
    assert listed[0].timings == {"decode_s": 1.5, "search_s": 0.01}
    assert listed[1].candidate_track_id == "h1" and listed[1].video_ref is None
    assert await store.shown_track_ids(conversation_id=cid) == ("h1", "h2", "h3")

    fb = await store.record_feedback(turn_id=t2.id, kind="refine", text="slower", track_id="h3")
    accepted = await store.record_feedback(turn_id=t2.id, kind=FeedbackKind.ACCEPT, track_id="h3")
    assert (fb.conversation_id, fb.kind, fb.text) == (cid, FeedbackKind.REFINE, "slower")
    assert await store.list_feedback(conversation_id=cid) == [fb, accepted]

    closed = await store.set_status(conversation_id=cid, status=ConversationStatus.CLOSED)
    assert closed.status is ConversationStatus.CLOSED and closed.turn_count == 2
    with pytest.raises(ValueError):
        await store.record_feedback(turn_id=t2.id, kind="love it")


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.add_turn(conversation_id=999, mode="zero-shot"),
        lambda s: s.set_status(conversation_id=999, status="closed"),
        lambda s: s.record_feedback(turn_id=999, kind="another"),
    ],
    ids=["add_turn", "set_status", "record_feedback"],
)
async def test_missing_rows_raise_not_found(sql_engine: AsyncEngine, call) -> None:  # noqa: ANN001
    with pytest.raises(NotFoundError):
        await call(ConversationStore(sql_engine))


async def _assert_no_half_turn(engine: AsyncEngine, store: ConversationStore, cid: int) -> None:
    assert await _count(engine, turns) == 0
    assert await _count(engine, recommendations) == 0
    conv = await store.get_conversation_by_id(conversation_id=cid)
    assert conv is not None and conv.turn_count == 0
    retried = await store.add_turn(conversation_id=cid, mode="zero-shot", recommendations=[REC])
    assert retried.index == 1  # the failed turn did not use up an index


async def test_failure_after_turn_insert_leaves_no_half_written_turn(
    sql_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ConversationStore(sql_engine)
    cid = await _open(store)
    seen_inside: list[int] = []

    async def explode(conn, turn_id, recs):  # noqa: ANN001
        # The turn row exists inside the transaction when the failure happens.
        seen_inside.append((await conn.execute(sa.select(sa.func.count()).where(turns.c.id == turn_id))).scalar_one())
        raise RuntimeError("reasoner crashed mid-turn")

    monkeypatch.setattr(store, "_insert_recommendations", explode)
    with pytest.raises(RuntimeError, match="mid-turn"):
        await store.add_turn(conversation_id=cid, mode="zero-shot", recommendations=[Recommendation(1, "h1", 0.5)])
    assert seen_inside == [1]
    monkeypatch.undo()
    await _assert_no_half_turn(sql_engine, store, cid)


async def test_constraint_violation_in_recommendations_rolls_back_the_turn(sql_engine: AsyncEngine) -> None:
    store = ConversationStore(sql_engine)
    cid = await _open(store)
    with pytest.raises(IntegrityError):  # two recommendations with rank 1
        await store.add_turn(
            conversation_id=cid, mode="zero-shot", recommendations=[REC, Recommendation(1, "h2", 0.4)]
        )
    await _assert_no_half_turn(sql_engine, store, cid)


async def test_many_conversations_written_concurrently(sql_engine: AsyncEngine) -> None:
    store = ConversationStore(sql_engine)
    n_conversations, n_turns = 20, 4
    cids = [await _open(store, thread=f"t{i}") for i in range(n_conversations)]

    async def talk(cid: int) -> None:
        for k in range(n_turns):
            recs = [Recommendation(1, f"{cid}-{k}", 0.5)]
            await store.add_turn(conversation_id=cid, mode="zero-shot", recommendations=recs)

    await asyncio.gather(*(talk(cid) for cid in cids))
    for cid in cids:
        listed = await store.list_turns(conversation_id=cid)
        assert [t.index for t in listed] == [1, 2, 3, 4]
        assert [t.recommendations[0].track_id for t in listed] == [f"{cid}-{k}" for k in range(n_turns)]


async def test_same_conversation_from_concurrent_tasks_under_the_lock(sql_engine: AsyncEngine) -> None:
    store = ConversationStore(sql_engine)
    cid = await _open(store)
    n_tasks = 12

    async def turn() -> None:
        async with conversation_lock(sql_engine, cid, timeout_s=30):
            shown = await store.shown_track_ids(conversation_id=cid)
            await asyncio.sleep(0.005)  # model work between the read and the write
            pick = next(f"track-{i}" for i in range(100) if f"track-{i}" not in shown)
            await store.add_turn(conversation_id=cid, mode="zero-shot", recommendations=[Recommendation(1, pick, 0.5)])

    await asyncio.gather(*(turn() for _ in range(n_tasks)))
    listed = await store.list_turns(conversation_id=cid)
    assert [t.index for t in listed] == list(range(1, n_tasks + 1))
    # Under the lock every turn saw the previous turn's pick, so no track was recommended twice.
    assert [t.recommendations[0].track_id for t in listed] == [f"track-{i}" for i in range(n_tasks)]


async def test_turn_indexes_unique_and_contiguous_even_without_the_lock(sql_engine: AsyncEngine) -> None:
    store = ConversationStore(sql_engine)
    cid = await _open(store)
    made = await asyncio.gather(*(store.add_turn(conversation_id=cid, mode="zero-shot") for _ in range(20)))
    assert sorted(t.index for t in made) == list(range(1, 21))
    assert [t.index for t in await store.list_turns(conversation_id=cid)] == list(range(1, 21))


# --- tracks and catalog versions --------------------------------------------------------------


def _info(i: int, **overrides: object) -> TrackInfo:
    fields: dict[str, object] = {
        "content_hash": f"{i:064x}", "title": f"Song {i}", "duration_s": 120.0 + i, "source_path": f"/music/{i}.ogg",
        "artist": "Wesnoth", "tags": ("orchestral", "epic"), "licence": "GPL-2.0", "attributes": {"tempo_bpm": 90 + i},
    }  # fmt: skip
    fields.update(overrides)
    return TrackInfo(**fields)  # type: ignore[arg-type]


async def test_track_upsert_by_content_hash_and_version_membership(sql_engine: AsyncEngine) -> None:
    versions, tracks = CatalogVersionStore(sql_engine), TrackStore(sql_engine)
    v1 = await versions.start(collection="music_v1")
    assert await tracks.upsert([_info(1), _info(2)], catalog_version_id=v1.id) == 2
    first = await tracks.get_by_hash(content_hash=_info(1).content_hash)
    assert first is not None
    assert (first.title, first.artist, first.duration_s, first.tags, first.licence) == (
        "Song 1", "Wesnoth", 121.0, ("orchestral", "epic"), "GPL-2.0"
    )  # fmt: skip
    assert (first.source_path, first.attributes, first.catalog_version_id) == ("/music/1.ogg", {"tempo_bpm": 91}, v1.id)

    before = await tracks.get_by_hash(content_hash=_info(2).content_hash)
    v2 = await versions.start(collection="music_v2")
    await tracks.upsert([_info(2, title="Song 2 (remaster)", tags=("piano",)), _info(3)], catalog_version_id=v2.id)
    moved = await tracks.get_by_hash(content_hash=_info(2).content_hash)
    assert moved is not None and before is not None and moved.id == before.id  # same audio, same row
    assert (moved.title, moved.tags, moved.catalog_version_id) == ("Song 2 (remaster)", ("piano",), v2.id)
    in_v1 = await tracks.list_tracks(catalog_version_id=v1.id)
    assert [t.content_hash for t in in_v1] == [_info(1).content_hash, _info(2).content_hash]
    assert [t.title for t in await tracks.list_tracks(catalog_version_id=v2.id)] == ["Song 2 (remaster)", "Song 3"]
    assert [t.title for t in await tracks.list_tracks(limit=2, offset=1)] == ["Song 2 (remaster)", "Song 3"]
    assert (await tracks.count(), await tracks.count(catalog_version_id=v1.id)) == (3, 2)
    assert set(await tracks.get_many(content_hashes=[_info(1).content_hash, "f" * 64])) == {_info(1).content_hash}
    with pytest.raises(NotFoundError):
        await tracks.upsert([_info(9)], catalog_version_id=999)


async def test_track_upsert_in_batches(sql_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(track_store, "UPSERT_BATCH", 7)
    versions, tracks = CatalogVersionStore(sql_engine), TrackStore(sql_engine)
    v = await versions.start(collection="big")
    n = 7 * 3 + 2
    assert await tracks.upsert([_info(i) for i in range(n)], catalog_version_id=v.id) == n
    assert await tracks.count(catalog_version_id=v.id) == n
    assert await tracks.upsert([_info(i, title="again") for i in range(n)], catalog_version_id=v.id) == n
    assert await tracks.count() == n
    assert {t.title for t in await tracks.list_tracks()} == {"again"}


async def test_catalog_version_lifecycle(sql_engine: AsyncEngine) -> None:
    store = CatalogVersionStore(sql_engine)
    assert await store.live() is None
    v1 = await store.start(collection="music_v1")
    assert (v1.status, v1.track_count, v1.finished_at) == (CatalogStatus.BUILDING, 0, None)
    live1 = await store.finish(version_id=v1.id, track_count=40, failed_count=2)
    assert (live1.status, live1.track_count, live1.failed_count) == (CatalogStatus.LIVE, 40, 2)
    assert live1.finished_at is not None and live1.finished_at >= live1.started_at

    v2 = await store.start(collection="music_v2")
    failed = await store.fail(version_id=v2.id, error="disk full")
    assert (failed.status, failed.error) == (CatalogStatus.FAILED, "disk full")
    assert await store.live() == live1  # the failed refresh left the old catalog serving

    v3 = await store.start(collection="music_v3")
    live3 = await store.finish(version_id=v3.id, track_count=41)
    assert await store.live() == live3
    assert [(v.collection, v.status) for v in await store.list_versions()] == [
        ("music_v3", CatalogStatus.LIVE), ("music_v2", CatalogStatus.FAILED), ("music_v1", CatalogStatus.RETIRED)
    ]  # fmt: skip
    with pytest.raises(ValueError, match="not building"):
        await store.finish(version_id=v3.id, track_count=1)
    with pytest.raises(NotFoundError):
        await store.fail(version_id=999, error="x")


async def test_concurrent_finishes_leave_exactly_one_live_version(sql_engine: AsyncEngine) -> None:
    store = CatalogVersionStore(sql_engine)
    started = [await store.start(collection=f"c{i}") for i in range(6)]
    finished = await asyncio.gather(*(store.finish(version_id=v.id, track_count=1) for v in started))
    assert all(v.status is CatalogStatus.LIVE for v in finished)  # each was live when it committed
    async with sql_engine.connect() as conn:
        statuses = (await conn.execute(sa.select(catalog_versions.c.status))).scalars().all()
    assert sorted(statuses) == ["live"] + ["retired"] * 5


# --- jobs -------------------------------------------------------------------------------------


async def test_job_runs_and_schedules(sql_engine: AsyncEngine) -> None:
    store = JobStore(sql_engine)
    run = await store.start_run(kind="catalog_refresh", detail={"requested_by": "admin"})
    assert (run.status, run.finished_at, dict(run.detail)) == (JobStatus.RUNNING, None, {"requested_by": "admin"})
    done = await store.finish_run(job_id=run.id, detail={"tracks": 40})
    assert (done.status, done.error) == (JobStatus.SUCCEEDED, None)
    assert done.detail == {"requested_by": "admin", "tracks": 40}
    assert done.finished_at is not None

    bad = await store.start_run(kind="catalog_refresh")
    failed = await store.finish_run(job_id=bad.id, status="failed", error="qdrant down")
    stale = await store.start_run(kind="catalog_refresh")
    other = await store.start_run(kind="cleanup")
    assert await store.abandon_stale(kind="catalog_refresh") == 1
    abandoned = await store.get_run(job_id=stale.id)
    assert abandoned is not None
    assert (abandoned.status, abandoned.error) == (JobStatus.FAILED, "process ended while running")
    assert [r.id for r in await store.list_runs(kind="catalog_refresh")] == [stale.id, failed.id, run.id]
    assert [r.id for r in await store.list_runs(limit=1)] == [other.id]
    with pytest.raises(ValueError):
        await store.finish_run(job_id=run.id, status=JobStatus.RUNNING)
    with pytest.raises(NotFoundError):
        await store.finish_run(job_id=999)

    await store.set_schedule(kind="catalog_refresh", cron="0 3 * * *")
    updated = await store.set_schedule(kind="catalog_refresh", cron="30 4 * * 1", enabled=False)
    assert (updated.cron, updated.enabled) == ("30 4 * * 1", False)
    assert await store.get_schedule(kind="catalog_refresh") == updated
    assert [s.kind for s in await store.list_schedules()] == ["catalog_refresh"]
    assert await store.delete_schedule(kind="catalog_refresh") is True
    assert await store.delete_schedule(kind="catalog_refresh") is False
    assert await store.get_schedule(kind="catalog_refresh") is None


# --- processed events ------------------------------------------------------------------------


async def test_mark_processed_is_true_only_the_first_time(sql_engine: AsyncEngine) -> None:
    store = EventStore(sql_engine)
    assert await store.mark_processed(platform="slack", event_id="Ev1") is True
    assert await store.mark_processed(platform="slack", event_id="Ev1") is False
    assert await store.mark_processed(platform="discord", event_id="Ev1") is True  # another platform
    assert await store.was_processed(platform="slack", event_id="Ev1") is True
    assert await store.was_processed(platform="slack", event_id="Ev2") is False
    assert await store.prune(older_than=utcnow() - timedelta(hours=1)) == 0
    assert await store.prune(older_than=utcnow() + timedelta(seconds=1)) == 2
    assert await store.mark_processed(platform="slack", event_id="Ev1") is True


async def test_mark_processed_under_concurrency(sql_engine: AsyncEngine) -> None:
    stores = [EventStore(sql_engine) for _ in range(3)]
    events = [f"Ev{i}" for i in range(5)]
    calls = [s.mark_processed(platform="slack", event_id=e) for e in events for s in stores for _ in range(4)]
    results = await asyncio.gather(*calls)
    # 12 retries of each event at once: exactly one of them is handled.
    per_event = [sum(results[i * 12 : (i + 1) * 12]) for i in range(len(events))]
    assert per_event == [1] * len(events)


# --- rate limits ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_token_bucket_refills_over_time(sql_engine: AsyncEngine) -> None:
    clock = FakeClock()
    store = RateLimitStore(sql_engine, capacity=3, refill_per_s=0.5, clock=clock)  # one token per 2 s
    decisions = [await store.acquire(platform="discord", user_key="42") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2.0, 1.0, 0.0, 0.0]
    assert decisions[3].retry_after_s == pytest.approx(2.0)
    assert (await store.acquire(platform="discord", user_key="43")).allowed  # per user

    clock.now += 1.0
    half = await store.acquire(platform="discord", user_key="42")
    assert (half.allowed, half.remaining, half.retry_after_s) == (False, 0.5, pytest.approx(1.0))
    clock.now += 1.0
    assert (await store.acquire(platform="discord", user_key="42")).allowed
    clock.now += 3600.0
    full = await store.acquire(platform="discord", user_key="42")
    assert full.remaining == pytest.approx(2.0)  # capped at capacity, minus this request

    clock.now -= 100.0  # another process's clock is behind: no refill, no crash
    assert (await store.acquire(platform="discord", user_key="42")).remaining == pytest.approx(1.0)
    await store.reset(platform="discord", user_key="42")
    assert (await store.acquire(platform="discord", user_key="42")).remaining == pytest.approx(2.0)
    with pytest.raises(ValueError):
        await store.acquire(platform="discord", user_key="42", cost=4)


async def test_token_bucket_is_atomic_under_concurrency(sql_engine: AsyncEngine) -> None:
    clock = FakeClock()
    stores = [RateLimitStore(sql_engine, capacity=5, refill_per_s=0.001, clock=clock) for _ in range(2)]
    decisions = await asyncio.gather(*(stores[i % 2].acquire(platform="slack", user_key="U1") for i in range(24)))
    assert sum(d.allowed for d in decisions) == 5

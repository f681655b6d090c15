"""The adapter contract (bot/service/contract.py) end to end, on SQLite and on PostgreSQL.

A whole conversation driven only through what an adapter sees: `start` with bytes and platform
keys, the events in order (status -> card -> reason tokens -> final), a message, buttons
(`Action`s: another, use this with a byte budget, start over), the typed errors of the button
rules, and the typed media files. The SQL rows the conversation left are checked at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.service.contract import (
    Action,
    ActionKind,
    CardEvent,
    FinalEvent,
    MediaFile,
    PlatformKeys,
    ReasonTokenEvent,
    ReplyOptions,
    StatusEvent,
    safe_filename,
)
from bot.service.conversation import ServiceConfig
from bot.service.errors import DuplicateActionError, NotOwnerError, OutdatedActionError
from bot.service.replies import Reply, ReplyKind
from engine.media import probe
from engine.profiles import Encoders
from storage.models import ConversationStatus, FeedbackKind
from tests.helpers.service import LICENCES, Env, built, data_dir, index, open_service, postgres_target, tiny  # noqa: F401 - fixtures

LOCAL = ServiceConfig(reasoner="local", reasoner_timeout_s=60.0, reasoner_grounded=False)  # the random tiny LM: raw pieces (it never writes a checked sentence)
ALL_BUTTONS = (ActionKind.USE, ActionKind.ANOTHER, ActionKind.REFINE, ActionKind.START_OVER)
KEYS = PlatformKeys("discord", channel_id="chan-1", user_id="owner-1", thread_id="thread-1", workspace_id="guild-1", user_name="Ada")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def llm_env(request: pytest.FixtureRequest, built: Path, data_dir: Path, tiny: Encoders) -> AsyncIterator[Env]:
    """A service whose reasoner (the tiny LLM) writes the reasons, on each SQL backend."""
    if request.param == "sqlite":
        async with open_service(data_dir, tiny, config=LOCAL) as e:
            yield e
        return
    async with postgres_target() as target:
        folders = {f.name: (f, LICENCES[f.name]) for f in sorted((built / "music").iterdir()) if f.is_dir()}
        await index(data_dir, tiny, folders, sql=target)
        async with open_service(data_dir, tiny, config=LOCAL, sql=target) as e:
            yield e


class Recorder:
    """An adapter's event sink: keeps every event in order (an async consumer, as a platform's)."""

    def __init__(self) -> None:
        self.events: list[object] = []

    async def __call__(self, event: object) -> None:
        await asyncio.sleep(0)
        self.events.append(event)

    def kinds(self) -> list[str]:
        names = {StatusEvent: "status", CardEvent: "card", ReasonTokenEvent: "token", FinalEvent: "final"}
        out: list[str] = []
        for e in self.events:  # runs of the same kind collapse: status* card token* final
            name = names[type(e)]
            if not out or out[-1] != name:
                out.append(name)
        return out

    def final(self) -> Reply:
        finals = [e for e in self.events if isinstance(e, FinalEvent)]
        assert len(finals) == 1
        return finals[0].reply


def assert_media(f: MediaFile | None, suffix: str, mime: str) -> None:
    assert f is not None
    assert f.filename.endswith(suffix) and f.mime_type == mime
    assert f.size == f.path.stat().st_size > 0


async def test_a_whole_conversation_through_the_contract(llm_env: Env, bikes_mp4: Path) -> None:
    svc = llm_env.service
    video = bikes_mp4.read_bytes()

    # turn 1: video bytes + platform keys; the card comes before the reason, which streams
    rec = Recorder()
    r1 = await svc.start(KEYS, video=video, video_name="bikes.mp4", events=rec, options=ReplyOptions(reason_budget_s=60.0, excerpt_format="mp3"))
    assert rec.kinds() == ["status", "card", "token", "final"]
    card = next(e for e in rec.events if isinstance(e, CardEvent)).reply
    assert card.reason_pending and card.track.reason_source == "tag summary"
    tokens = "".join(e.text for e in rec.events if isinstance(e, ReasonTokenEvent))
    assert rec.final() == r1 and not r1.reason_pending
    assert r1.track.reason == tokens.strip() and r1.track.reason_source.startswith("llm")
    assert r1.track.track_id == card.track.track_id  # the same track: only the reason was still coming
    assert r1.actions == ALL_BUTTONS
    assert any("bikes.mp4" in e.message for e in rec.events if isinstance(e, StatusEvent))
    assert_media(r1.track.excerpt, ".mp3", "audio/mpeg")  # the format the platform asked for
    assert r1.track.excerpt.filename == f"{safe_filename(r1.track.title)}-excerpt.mp3"
    info = probe(r1.track.excerpt.path, require_audio=True)
    assert info.audio.codec == "mp3" and 5.0 < info.duration_s <= 26.0
    cid = r1.conversation_id
    assert await svc.find(platform="discord", channel_id="chan-1", thread_id="thread-1") == cid

    # turn 2: free words; turn 3: the "Another" button of turn 2's card
    r2 = await svc.message(cid, "more drums, less sad", user_id="owner-1", events=Recorder())
    assert r2.turn_index == 2 and r2.understood
    rec3 = Recorder()
    r3 = await svc.act(Action(ActionKind.ANOTHER, cid, r2.turn_index), user_id="owner-1", events=rec3)
    assert r3.turn_index == 3 and rec3.kinds() == ["status", "card", "token", "final"]
    assert len({r1.track.track_id, r2.track.track_id, r3.track.track_id}) == 3

    # the button rules: owner only; an older card's button is outdated
    with pytest.raises(NotOwnerError) as not_owner:
        await svc.act(Action(ActionKind.USE, cid, r3.turn_index), user_id="someone-else")
    assert "Ada" in not_owner.value.user_message
    with pytest.raises(OutdatedActionError):
        await svc.act(Action(ActionKind.USE, cid, r2.turn_index), user_id="owner-1")

    # "Use this" with a byte budget smaller than the raw preview: a re-encoded preview under it
    budget = int(len(video) * 0.6)
    rec4 = Recorder()
    r4 = await svc.act(Action(ActionKind.USE, cid, r3.turn_index), user_id="owner-1", events=rec4, options=ReplyOptions(preview_budget_bytes=budget))
    assert r4.kind is ReplyKind.PREVIEW and rec4.kinds()[-1] == "final"
    assert_media(r4.preview, ".mp4", "video/mp4")
    assert r4.preview.size <= budget and "re-encoded" in r4.message
    video_path = svc.media.path_for((await svc.state(cid)).video_sha256)
    raw = await svc.pool.run(svc.renderer.render_preview, video_path, Path(r3.track.source), 0.0)
    assert raw.stat().st_size > budget  # without the budget it would not have fitted
    src, out = probe(bikes_mp4, require_video=True), probe(r4.preview.path, require_video=True, require_audio=True)
    assert abs(out.duration_s - src.duration_s) < 0.5 and out.video.codec == "h264"
    assert r4.actions == (ActionKind.ANOTHER, ActionKind.REFINE, ActionKind.START_OVER)
    with pytest.raises(DuplicateActionError):  # a double click renders nothing twice
        await svc.act(Action(ActionKind.USE, cid, r3.turn_index), user_id="owner-1")

    # "Start over": a fresh first pick for the same video, nothing shown again, feedback forgotten
    r5 = await svc.act(Action(ActionKind.START_OVER, cid, r3.turn_index), user_id="owner-1")
    assert r5.kind is ReplyKind.RECOMMENDATION and r5.turn_index == 4
    assert r5.track.track_id not in {r1.track.track_id, r2.track.track_id, r3.track.track_id}

    # what SQL holds: one row per step, in order
    state = await svc.state(cid)
    assert [t.index for t in state.turns] == [1, 2, 3, 4]
    assert [(f.turn_id, f.kind) for f in state.feedback] == [
        (state.turns[0].id, FeedbackKind.REFINE), (state.turns[1].id, FeedbackKind.ANOTHER),
        (state.turns[2].id, FeedbackKind.ACCEPT), (state.turns[2].id, FeedbackKind.RESTART),
    ]  # fmt: skip
    assert state.turns[3].candidate_track_id is None and state.rejected == ()  # forgotten after the restart
    assert state.turns[0].recommendations[0].reason == r1.track.reason  # the LLM's reason replaced the summary
    assert state.conversation.status is ConversationStatus.ACTIVE  # going on after "use this" reopened it


async def test_a_preview_that_cannot_fit_says_why_and_records_the_choice(llm_env: Env, bikes_mp4: Path) -> None:
    svc = llm_env.service
    r1 = await svc.start(KEYS, video=bikes_mp4.read_bytes())
    r2 = await svc.act(Action(ActionKind.USE, r1.conversation_id, r1.turn_index), user_id="owner-1", options=ReplyOptions(preview_budget_bytes=20_000))
    assert r2.kind is ReplyKind.PREVIEW and r2.preview is None
    assert "upload limit" in r2.message and "shorter clip" in r2.message
    state = await svc.state(r1.conversation_id)
    assert [f.kind for f in state.feedback] == [FeedbackKind.ACCEPT]


@pytest.mark.parametrize(
    ("custom_id", "ok"),
    [("mc1:use:12:3", True), ("mc1:restart:1:9", True), ("mc0:use:12:3", False), ("mc1:delete:1:1", False),
     ("mc1:use:x:1", False), ("", False), ("mc1:use:12:3:extra", False)],
)  # fmt: skip
def test_action_ids_round_trip_and_refuse_anything_else(custom_id: str, ok: bool) -> None:
    if ok:
        action = Action.parse(custom_id)
        assert action.custom_id() == custom_id and len(custom_id) <= 100
    else:
        with pytest.raises(ValueError):
            Action.parse(custom_id)

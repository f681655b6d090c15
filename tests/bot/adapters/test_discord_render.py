"""Pure rendering of replies for Discord: the embed card, the files, the buttons (custom ids from
`Action.custom_id()`), the upload budget, and a reply's events streamed onto one message."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import discord
import pytest

from bot.adapters.discord import render
from bot.adapters.discord.components import ActionButton, FeedbackModal, modal_text
from bot.adapters.discord.live import LiveMessage, Render, ReplyStream
from bot.service import Reply, ReplyKind, TrackCard
from bot.service.contract import (
    Action,
    ActionKind,
    CardEvent,
    FinalEvent,
    MediaFile,
    ReasonTokenEvent,
    StatusEvent,
)
from tests.helpers.fake_discord import BOT_TOKEN, FakeDiscord

ALL_ACTIONS = (ActionKind.USE, ActionKind.ANOTHER, ActionKind.REFINE, ActionKind.START_OVER)


def media(tmp_path: Path, name: str, size: int) -> MediaFile:
    path = tmp_path / name
    path.write_bytes(b"OggS" + bytes(size - 4))
    return MediaFile.of(path, name)


def track(excerpt: MediaFile | None = None, **kw) -> TrackCard:
    fields = dict(
        track_id="a" * 64,
        catalog_id="00000000-0000-0000-0000-000000000000",
        rank=1,
        title="Battle Epic",
        artist="Wesnoth",
        mtt_tags=("orchestral", "epic", "drums"),
        msd_tags=("soundtrack", "Epic"),
        tags=("battle", "orchestral"),
        score=0.8,
        search_score=0.7,
        parts={"semantic": 0.5},
        duration_s=125.0,
        licence="CC-BY-4.0",
        tempo_bpm=120.4,
        reason="Big drums for a fast ride.",
        reason_source="tag summary",
        excerpt=excerpt,
    )
    fields.update(kw)
    return TrackCard(**fields)  # type: ignore[arg-type]


def reply(*tracks: TrackCard, **kw) -> Reply:
    fields = dict(kind=ReplyKind.RECOMMENDATION, conversation_id=12, turn_index=3, mode="zero-shot", tracks=tracks, actions=ALL_ACTIONS)
    fields.update(kw)
    return Reply(**fields)  # type: ignore[arg-type]


def test_card_embed_says_what_was_not_understood_and_what_the_catalog_lacks() -> None:
    r = reply(track(), understood="rainy afternoon \u2192 chill, ambient", unmatched=("asdf",), unavailable=("more opera",))
    fields = {f["name"]: f["value"] for f in render.card_embed(r, r.tracks[0]).to_dict()["fields"]}
    assert fields["Understood"] == "rainy afternoon \u2192 chill, ambient"
    assert fields["Not understood"] == "asdf"
    assert fields["Nothing in the catalog for"] == "more opera"


def test_card_embed_shows_title_artist_tags_tempo_licence_mode_reason() -> None:
    r = reply(track(), understood="more drums")
    e = render.card_embed(r, r.tracks[0]).to_dict()
    assert e["title"] == "🎵 Battle Epic"
    assert e["description"] == "Big drums for a fast ride."
    fields = {f["name"]: f["value"] for f in e["fields"]}
    assert fields == {
        "Artist": "Wesnoth",
        "Tempo": "120 BPM",
        "Length": "2:05",
        "Tags": "orchestral, epic, drums, soundtrack, battle",  # MTT, MSD, the rest; no repeats (any case)
        "Licence": "CC-BY-4.0",
        "Mode": "zero-shot",
        "Understood": "more drums",
    }
    assert e["footer"]["text"] == "Suggestion 3 · reason: tag summary"


def test_a_reason_being_written_has_a_cursor_and_long_text_is_cut() -> None:
    r = reply(track())
    assert render.card_embed(r, r.tracks[0], reason="Big dr", writing=True).description == "Big dr ▌"
    assert render.card_embed(r, r.tracks[0], reason="", writing=True).description == "✍️ writing a reason ▌"
    long = render.card_embed(r, r.tracks[0], reason="x" * 5000, writing=True).description
    assert long is not None and len(long) <= render.MAX_DESCRIPTION_CHARS and long.endswith("… ▌")


def test_a_missing_excerpt_says_why() -> None:
    r = reply(track(excerpt=None, excerpt_note="the excerpt could not be cut"))
    fields = {f.name: f.value for f in render.card_embed(r, r.tracks[0]).fields}
    assert fields["Excerpt"] == "the excerpt could not be cut"


def test_buttons_carry_the_versioned_action_ids_in_a_fixed_order() -> None:
    view = render.action_view(reply(track()))
    assert view is not None and view.timeout is None
    rows = view.to_components()
    assert [(c["label"], c["custom_id"], c["style"]) for c in rows[0]["components"]] == [
        ("Use this", "mc1:use:12:3", 3),
        ("Another", "mc1:another:12:3", 1),
        ("Feedback…", "mc1:refine:12:3", 2),
        ("Start over", "mc1:restart:12:3", 2),
    ]
    assert all(isinstance(i, ActionButton) and i.is_persistent() for i in view.children)
    only = render.action_view(reply(track(), actions=(ActionKind.START_OVER,)))
    assert only is not None and [i.custom_id for i in only.children] == ["mc1:restart:12:3"]  # type: ignore[attr-defined]
    assert render.action_view(reply(track(), actions=())) is None


def test_the_button_template_matches_every_action_and_nothing_else() -> None:
    from bot.adapters.discord.components import ACTION_TEMPLATE

    for kind in ActionKind:
        assert ACTION_TEMPLATE.fullmatch(Action(kind, 1, 2).custom_id())
    for junk in ("mc0:use:1:2", "mc1:dance:1:2", "mc1:use:x:2", "mc1:use:1:2:3"):
        assert not ACTION_TEMPLATE.fullmatch(junk)


def test_feedback_modal_has_one_text_box_and_its_value_is_read_back() -> None:
    modal = FeedbackModal(Action(ActionKind.REFINE, 12, 3))
    assert modal.custom_id == "mc1:refine:12:3"
    comps = modal.to_components()
    assert comps[0]["type"] == 18 and comps[0]["component"]["custom_id"] == "text"
    assert comps[0]["component"]["max_length"] == 300
    label_payload = {"components": [{"type": 18, "component": {"type": 4, "custom_id": "text", "value": "more drums"}}]}
    row_payload = {"components": [{"type": 1, "components": [{"type": 4, "custom_id": "text", "value": "less sad"}]}]}
    assert (modal_text(label_payload), modal_text(row_payload), modal_text({})) == ("more drums", "less sad", "")


def test_files_are_the_excerpts_that_fit_the_budget(tmp_path: Path) -> None:
    small, big = media(tmp_path, "a.ogg", 1000), media(tmp_path, "b.ogg", 5000)
    r = reply(track(excerpt=small), track(excerpt=big, title="B"), track(excerpt=None, title="C"))
    assert render.card_media(r, 4000) == [small]
    f = render.media_file(small)
    assert f.filename == "a.ogg"


async def test_upload_budget_interaction_then_guild_then_ten_mib() -> None:
    async with FakeDiscord() as fake:
        with fake.patched():
            client = discord.Client(intents=discord.Intents.default())
            try:
                await client.login(BOT_TOKEN)
                state = client._connection
                boosted = discord.Interaction(data=fake.slash_command("music", user_id=1, size_limit=50 * 2**20), state=state)
                assert render.upload_budget(interaction=boosted) == 50 * 2**20
                unknown = discord.Interaction(data=fake.slash_command("music", user_id=1, size_limit=0), state=state)
                assert render.upload_budget(interaction=unknown) == 10 * 2**20  # the guild's (tier 0)
                guild = state._get_or_create_unavailable_guild(fake.guild_id, data={"premium_tier": 3})
                assert render.upload_budget(guild=guild) == 100 * 2**20
                assert render.upload_budget() == discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES == 10 * 2**20
            finally:
                await client.close()


class Recorder:
    def __init__(self) -> None:
        self.renders: list[Render] = []

    async def render(self, r: Render) -> None:
        self.renders.append(r)


async def test_events_stream_onto_one_message_status_card_reason_final(tmp_path: Path) -> None:
    excerpt = media(tmp_path, "battle-epic.ogg", 2000)
    pending = reply(track(excerpt=excerpt, reason="orchestral, epic", reason_source=""), reason_pending=True)
    final = reply(track(excerpt=excerpt, reason="Big drums for a fast ride.", reason_source="local LLM"))
    target = Recorder()
    stream = ReplyStream(LiveMessage(target, min_interval_s=0.0), budget=10 * 2**20)

    async def step(event) -> Render:
        await stream(event)
        await stream.live.flush()
        return target.renders[-1]

    assert (await step(StatusEvent("listening to your video"))).content == "⏳ listening to your video"
    card = await step(CardEvent(pending))
    assert card.files == [excerpt] and card.content is None
    assert card.embeds[0].description == "orchestral, epic ▌"  # the tag summary while the reason is written
    assert [i.custom_id for i in card.view.children] == [a.custom_id() for a in (Action(k, 12, 3) for k in ALL_ACTIONS)]
    assert (await step(ReasonTokenEvent("Big drums"))).embeds[0].description == "Big drums ▌"
    assert (await step(ReasonTokenEvent(" for a fast ride."))).embeds[0].description == "Big drums for a fast ride. ▌"
    done = await step(FinalEvent(final))
    assert done.embeds[0].description == "Big drums for a fast ride."
    assert done.embeds[0].footer.text == "Suggestion 3 · reason: local LLM"
    assert done.files == []  # the excerpt went up once
    await stream.finish(final)  # the returned reply after the FinalEvent renders nothing new
    assert len(target.renders) == 5


async def test_a_reply_without_events_is_rendered_by_finish(tmp_path: Path) -> None:
    target = Recorder()
    stream = ReplyStream(LiveMessage(target, min_interval_s=0.0), budget=10 * 2**20)
    excerpt = media(tmp_path, "x.ogg", 100)
    await stream.finish(reply(track(excerpt=excerpt)))
    assert len(target.renders) == 1 and target.renders[0].files == [excerpt]


@pytest.mark.parametrize(("budget", "fits"), [(10 * 2**20, True), (1000, False)], ids=["fits", "too-large"])
async def test_a_preview_is_attached_when_it_fits_else_a_sentence(tmp_path: Path, budget: int, fits: bool) -> None:
    preview = media(tmp_path, "bikes-battle-epic.mp4", 5000)
    r = reply(kind=ReplyKind.PREVIEW, preview=preview, message="Here is your video with Battle Epic.", actions=(ActionKind.START_OVER,))
    target = Recorder()
    stream = ReplyStream(LiveMessage(target, min_interval_s=0.0), budget=budget)
    await stream.finish(r)
    (done,) = target.renders
    if fits:
        assert done.files == [preview] and done.content == "Here is your video with Battle Epic."
    else:
        assert done.files == [] and done.content == render.too_large_sentence(1000)
        assert "1 KiB" in done.content
    assert [i.custom_id for i in done.view.children] == ["mc1:restart:12:3"]


async def test_an_exhausted_reply_is_its_sentence() -> None:
    target = Recorder()
    stream = ReplyStream(LiveMessage(target, min_interval_s=0.0), budget=10)
    r = reply(kind=ReplyKind.EXHAUSTED, message="You have heard every track that fits.", actions=(ActionKind.START_OVER,))
    await stream.finish(r)
    assert target.renders[0].content == "You have heard every track that fits." and target.renders[0].embeds == []


def test_thread_names_and_long_titles_are_cut() -> None:
    assert render.thread_name("bikes.mp4") == "🎵 bikes"
    assert len(render.thread_name("x" * 300 + ".mp4")) == render.MAX_THREAD_NAME_CHARS
    r = reply(replace(track(), title="t" * 400))
    assert len(render.card_embed(r, r.tracks[0]).title or "") == render.MAX_TITLE_CHARS


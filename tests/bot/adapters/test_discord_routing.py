"""Routing of Discord messages and the other entry points, with the real service: the context menu,
a DM, a Discord reply to the first card in the channel, words that arrive empty without the
message-content intent, and an untyped failure (logged with its traceback, a short apology)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from bot.adapters.discord import DiscordAdapter
from bot.adapters.discord.adapter import APOLOGY
from tests.bot.adapters.test_discord_conversation import (  # noqa: F401  (fixtures)
    BUTTONS,
    OWNER,
    TIMEOUT_S,
    adapter,
    bot_messages,
    buttons,
    fake,
    first_card,
    is_settled,
    next_card,
    slash,
    until,
)
from tests.helpers.fake_discord import FakeDiscord
from tests.helpers.service import Env, built, data_dir, env, tiny  # noqa: F401


def video_attachment(fake: FakeDiscord, video: Path) -> dict[str, Any]:
    data = video.read_bytes()
    return fake.attachment_payload(fake.add_cdn_file(video.name, data), filename=video.name, size=len(data))


async def test_context_menu_on_a_message_with_a_video(fake: FakeDiscord, adapter: DiscordAdapter, env: Env, bikes_mp4: Path) -> None:
    target = fake.user_message(channel_id=fake.channel_id, user_id=OWNER + 1, content="my ride", attachments=[video_attachment(fake, bikes_mp4)])
    payload = fake.message_command("Find music for this video", user_id=OWNER, target=target)
    adapter.client._connection.parse_interaction_create(payload)
    cb = await fake.expect("POST", f"/interactions/{payload['id']}/{payload['token']}/callback")
    assert cb.json == {"type": 5}
    card_id, card = await first_card(fake, payload)
    assert [label for label, _ in buttons(card)] == BUTTONS
    assert await env.service.find(platform="discord", channel_id=str(fake.channel_id), thread_id=str(card_id)) is not None


async def test_a_dm_conversation_lives_in_the_dm_channel(fake: FakeDiscord, adapter: DiscordAdapter, env: Env, bikes_mp4: Path) -> None:
    dm = fake.snowflake()
    fake.channels[dm] = fake.dm_channel_payload(dm, OWNER)
    msg = fake.user_message(channel_id=dm, user_id=OWNER, attachments=[video_attachment(fake, bikes_mp4)], dm=True)
    adapter.client._connection.parse_message_create(msg)  # no mention needed in a DM
    card = await next_card(fake, dm, 0)
    assert await env.service.find(platform="discord", channel_id=str(dm), thread_id=card["id"]) == conversation(card)
    assert fake.requests("POST", "/channels/*/messages/*/threads") == []  # no threads in DMs
    words = fake.user_message(channel_id=dm, user_id=OWNER, content="more drums", dm=True)  # DMs carry content
    adapter.client._connection.parse_message_create(words)
    second = await next_card(fake, dm, 1)  # the newest card's conversation (read from the DM's history)
    assert second["embeds"][0]["title"] != card["embeds"][0]["title"]
    first_conv = conversation(card)
    assert conversation(second) == first_conv

    # another video in the same DM: a new conversation; a reply to an older card goes to that card's
    again = fake.user_message(channel_id=dm, user_id=OWNER, attachments=[video_attachment(fake, bikes_mp4)], dm=True)
    adapter.client._connection.parse_message_create(again)
    third = await next_card(fake, dm, 2)
    assert conversation(third) != first_conv
    reply = fake.user_message(channel_id=dm, user_id=OWNER, content="calmer", dm=True, reference=second)
    adapter.client._connection.parse_message_create(reply)
    fourth = await next_card(fake, dm, 3)
    assert conversation(fourth) == first_conv
    assert int(buttons(fourth)[0][1].split(":")[3]) == 3  # the first conversation's third turn


def conversation(card: dict[str, Any]) -> int:
    return int(buttons(card)[0][1].split(":")[2])


async def test_a_reply_to_the_first_card_in_the_channel_goes_to_its_thread(
    fake: FakeDiscord, adapter: DiscordAdapter, bikes_mp4: Path
) -> None:
    payload = await slash(fake, adapter, bikes_mp4)
    card_id, card = await first_card(fake, payload)
    reply = fake.user_message(channel_id=fake.channel_id, user_id=OWNER, content="less calm", reference=card)
    adapter.client._connection.parse_message_create(reply)
    second = await next_card(fake, card_id, 0)  # posted in the thread started from the card
    assert buttons(second)[0][1].endswith(":2")


async def test_words_without_the_intent_arrive_empty_and_are_ignored(
    fake: FakeDiscord, adapter: DiscordAdapter, bikes_mp4: Path
) -> None:
    payload = await slash(fake, adapter, bikes_mp4)
    card_id, _ = await first_card(fake, payload)
    chatter = fake.user_message(channel_id=card_id, user_id=OWNER, content="")  # what Discord sends without the intent
    adapter.client._connection.parse_message_create(chatter)
    await fake.no_request("POST", f"/channels/{card_id}/messages", wait_s=0.5)
    assert bot_messages(fake, card_id) == []


async def test_an_untyped_failure_is_logged_and_answered_with_an_apology(
    fake: FakeDiscord, adapter: DiscordAdapter, env: Env, bikes_mp4: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    payload = await slash(fake, adapter, bikes_mp4)
    card_id, _ = await first_card(fake, payload)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the service")

    monkeypatch.setattr(env.service, "message", broken)
    msg = fake.user_message(channel_id=card_id, user_id=OWNER, content=f"<@{fake.bot_id}> more drums", mentions_bot=True)
    with caplog.at_level(logging.ERROR, logger="bot.adapters.discord"):
        adapter.client._connection.parse_message_create(msg)
        (answer,) = await until(lambda: bot_messages(fake, card_id), "the apology", timeout=TIMEOUT_S)
    assert answer["content"] == APOLOGY
    (record,) = [r for r in caplog.records if r.exc_info]
    assert "RuntimeError: a bug in the service" in caplog.text and record.levelno == logging.ERROR
    assert not is_settled(answer)


async def test_without_the_thread_permission_the_conversation_goes_on_in_the_channel(
    fake: FakeDiscord, adapter: DiscordAdapter, bikes_mp4: Path
) -> None:
    fake.fail("POST", "/channels/*/messages/*/threads", status=403, body={"code": 50013, "message": "Missing Permissions"})
    payload = await slash(fake, adapter, bikes_mp4)
    card_id, card = await first_card(fake, payload)  # the card is there; the thread was refused
    assert card_id not in fake.channels
    another = fake.component(buttons(card)[1][1], user_id=OWNER, message=card)
    adapter.client._connection.parse_interaction_create(another)
    await fake.expect("POST", f"/channels/{card_id}/messages", timeout=TIMEOUT_S)  # the thread: unknown
    second = await next_card(fake, fake.channel_id, 1)  # so the channel itself
    assert buttons(second)[0][1].endswith(":2")

"""The Discord adapter's surface for `serve`: run() holds the (fake) gateway and sets `ready`,
events arrive over it, close() ends run(); commands are registered only on request (tree.sync)."""

from __future__ import annotations

import asyncio
from typing import Any

import discord
import pytest

from bot.adapters.discord import DiscordAdapter
from bot.adapters.discord.adapter import NOT_HERE
from bot.settings import Settings
from tests.helpers.fake_discord import BOT_TOKEN, FakeDiscord

USER_ID = 1_300_000_000_000_000_777


class NoService:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the service was called ({name})")


def settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, discord_token=BOT_TOKEN, **kw)  # type: ignore[call-arg]


@pytest.fixture
async def fake():
    async with FakeDiscord() as fake:
        with fake.patched():
            yield fake


async def test_run_connects_sets_ready_handles_events_and_close_ends_it(fake: FakeDiscord) -> None:
    adapter = DiscordAdapter(NoService(), settings())
    assert not adapter.ready
    task = asyncio.create_task(adapter.run())
    await asyncio.wait_for(fake.identified.wait(), 5)
    await asyncio.wait_for(adapter.client.wait_until_ready(), 5)
    assert adapter.ready
    # default intents: no privileged ones (members 1<<1, presences 1<<8, message content 1<<15)
    intents = fake.identify["intents"]  # type: ignore[index]
    assert intents & (1 << 1 | 1 << 8 | 1 << 15) == 0
    assert intents == discord.Intents.default().value

    url = fake.add_cdn_file("cat.png", b"x")
    att = fake.attachment_payload(url, filename="cat.png", size=1, content_type="image/png")
    payload = fake.slash_command("music", user_id=USER_ID, options=[{"name": "video", "type": 11, "value": att["id"]}], attachments=[att])
    await fake.dispatch("INTERACTION_CREATE", payload)  # over the gateway, as Discord sends it
    cb = await fake.expect("POST", f"/interactions/{payload['id']}/{payload['token']}/callback")
    assert cb.json["data"]["flags"] == 64

    await adapter.close()
    await asyncio.wait_for(task, 5)
    assert not adapter.ready


async def test_message_content_intent_follows_the_setting() -> None:
    assert DiscordAdapter(NoService(), settings(discord_message_content=True)).client.intents.message_content
    assert not DiscordAdapter(NoService(), settings()).client.intents.message_content


async def test_run_without_a_token_says_which_variable_is_missing() -> None:
    adapter = DiscordAdapter(NoService(), Settings(_env_file=None))  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="MUSECHAT_DISCORD_TOKEN"):
        await adapter.run()


@pytest.mark.parametrize("guild", [False, True], ids=["global", "one-guild"])
async def test_sync_registers_music_and_the_context_menu(fake: FakeDiscord, guild: bool) -> None:
    adapter = DiscordAdapter(NoService(), settings())
    await adapter.login()
    try:
        names = await adapter.sync_commands(guild_id=fake.guild_id if guild else None)
    finally:
        await adapter.close()
    path = f"/applications/{fake.app_id}/guilds/{fake.guild_id}/commands" if guild else f"/applications/{fake.app_id}/commands"
    put = await fake.expect("PUT", path)
    by_name = {c["name"]: c for c in put.json}
    assert sorted(names) == sorted(by_name) == ["Find music for this video", "music", "music-admin"]
    music = by_name["music"]
    assert music["type"] == 1
    assert [(o["name"], o["type"], o.get("required", False)) for o in music["options"]] == [("video", 11, True), ("prompt", 3, False)]
    assert by_name["Find music for this video"]["type"] == 3  # a message context menu
    admin = by_name["music-admin"]
    assert [(o["name"], o["type"]) for o in admin["options"]] == [("refresh", 1), ("status", 1)]  # subcommands
    assert int(admin["default_member_permissions"]) == 1 << 5  # Manage Server
    assert admin["dm_permission"] is False  # guilds only
    assert fake.requests("PUT", "/applications/*/commands" if guild else "/applications/*/guilds/*/commands") == []


@pytest.mark.parametrize(
    ("guilds", "channels", "allowed"),
    [((), (), True), (("guild",), (), True), ((1,), (), False), ((), ("channel",), True), ((), (2,), False)],
    ids=["no-limits", "this-guild", "other-guild", "this-channel", "other-channel"],
)
async def test_allowed_guilds_and_channels(fake: FakeDiscord, guilds: tuple, channels: tuple, allowed: bool) -> None:
    ids = {"guild": fake.guild_id, "channel": fake.channel_id}
    adapter = DiscordAdapter(
        NoService(),
        settings(),
        allowed_guild_ids=[ids.get(g, g) for g in guilds],
        allowed_channel_ids=[ids.get(c, c) for c in channels],
    )
    await adapter.login()
    try:
        url = fake.add_cdn_file("cat.png", b"x")
        att = fake.attachment_payload(url, filename="cat.png", size=1, content_type="image/png")
        payload = fake.slash_command("music", user_id=USER_ID, options=[{"name": "video", "type": 11, "value": att["id"]}], attachments=[att])
        adapter.client._connection.parse_interaction_create(payload)
        cb = await fake.expect("POST", f"/interactions/{payload['id']}/{payload['token']}/callback")
        expected = "That file is not a video I can use: send an mp4, mov or webm clip." if allowed else NOT_HERE
        assert (cb.json["data"]["content"], cb.json["data"]["flags"]) == (expected, 64)
        # a message with a video that mentions the bot: refused quietly where the bot is not enabled
        msg = fake.user_message(channel_id=fake.channel_id, user_id=USER_ID, content="", attachments=[att], mentions_bot=True)
        adapter.client._connection.parse_message_create(msg)
        if allowed:
            reply = await fake.expect("POST", f"/channels/{fake.channel_id}/messages")
            assert reply.json["content"] == expected
        else:
            await fake.no_request("POST", f"/channels/{fake.channel_id}/messages")
    finally:
        await adapter.close()


def test_ids_from_settings_strings_and_lists() -> None:
    from bot.adapters.discord.adapter import _ids

    assert _ids("1, 2,,3") == {1, 2, 3} and _ids([4, "5"]) == {4, 5} and _ids(None) == frozenset()


async def test_per_user_cooldown_in_sql_survives_a_new_adapter(fake: FakeDiscord, tmp_path) -> None:  # noqa: ANN001
    from storage.db import default_sqlite_url, ensure_schema, make_engine
    from storage.rate_limit_store import RateLimitStore

    url = default_sqlite_url(tmp_path)
    await ensure_schema(url)
    sql = make_engine(url)
    try:
        limiter = RateLimitStore(sql, capacity=1, refill_per_s=1 / 60)  # one turn a minute
        video = fake.add_cdn_file("clip.mp4", b"\x00" * 100)
        att = fake.attachment_payload(video, filename="clip.mp4", size=100)

        def music() -> dict:
            return fake.slash_command("music", user_id=USER_ID, options=[{"name": "video", "type": 11, "value": att["id"]}], attachments=[att])

        first = DiscordAdapter(NoService(), settings(), limiter=limiter)  # production hosts: the download is refused
        await first.login()
        p1 = music()
        first.client._connection.parse_interaction_create(p1)
        assert (await fake.expect("POST", f"/interactions/{p1['id']}/{p1['token']}/callback")).json == {"type": 5}
        await first.close()

        again = DiscordAdapter(NoService(), settings(), limiter=RateLimitStore(sql, capacity=1, refill_per_s=1 / 60))
        await again.login()  # a restarted bot: the bucket is in SQL
        p2 = music()
        again.client._connection.parse_interaction_create(p2)
        cb = await fake.expect("POST", f"/interactions/{p2['id']}/{p2['token']}/callback")
        assert cb.json["type"] == 4 and cb.json["data"]["flags"] == 64
        assert cb.json["data"]["content"] in {f"You are going a bit fast: please try again in {s} s." for s in (59, 60)}
        await again.close()
    finally:
        await sql.dispose()


async def test_interaction_tokens_are_blanked_in_discord_py_logs(fake: FakeDiscord, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    adapter = DiscordAdapter(NoService(), settings())
    await adapter.login()
    try:
        url = fake.add_cdn_file("cat.png", b"x")
        att = fake.attachment_payload(url, filename="cat.png", size=1, content_type="image/png")
        payload = fake.slash_command("music", user_id=USER_ID, options=[{"name": "video", "type": 11, "value": att["id"]}], attachments=[att])
        with caplog.at_level(logging.DEBUG, logger="discord"):
            adapter.client._connection.parse_interaction_create(payload)
            await fake.expect("POST", f"/interactions/{payload['id']}/{payload['token']}/callback")
        assert f"/interactions/{payload['id']}/<token>/callback" in caplog.text  # discord.py's debug line, redacted
        assert payload["token"] not in caplog.text and BOT_TOKEN not in caplog.text
    finally:
        await adapter.close()

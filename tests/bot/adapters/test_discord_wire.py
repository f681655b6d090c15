"""The fake Discord API against the real discord.py: login, a slash command with an attachment,
a deferred response edited with an embed, an audio file and buttons (multipart), a thread from the
original message, thread messages, edits, and a 429 waited out. These pin the fake's fidelity; the
adapter's own tests (test_discord_adapter.py) build on it."""

from __future__ import annotations

import asyncio
import io
import time

import discord
import pytest
from discord import app_commands

from tests.helpers.fake_discord import BOT_TOKEN, FakeDiscord

USER_ID = 1_300_000_000_000_000_777


@pytest.fixture
async def fake():
    async with FakeDiscord() as fake:
        with fake.patched():
            yield fake


@pytest.fixture
async def client(fake: FakeDiscord):
    client = discord.Client(intents=discord.Intents.default())
    client.tree = app_commands.CommandTree(client)  # type: ignore[attr-defined]
    yield client
    await client.close()


async def test_route_base_is_restored_after_the_fake() -> None:
    from discord.http import Route

    before = Route.BASE
    async with FakeDiscord() as fake:
        with fake.patched():
            assert Route.BASE == fake.api_base
        assert Route.BASE == before


async def test_login_fetches_the_bot_user_and_the_application(fake: FakeDiscord, client: discord.Client) -> None:
    await client.login(BOT_TOKEN)
    me = await fake.expect("GET", "/users/@me")
    assert me.headers["Authorization"] == f"Bot {BOT_TOKEN}"
    await fake.expect("GET", "/oauth2/applications/@me")
    assert client.user is not None and client.user.id == fake.bot_id
    assert client.application_id == fake.app_id


async def test_a_wrong_token_fails_login(fake: FakeDiscord, client: discord.Client) -> None:
    with pytest.raises(discord.LoginFailure):
        await client.login("not-the-token")


async def test_slash_command_with_attachment_defer_edit_thread_and_messages(fake: FakeDiscord, client: discord.Client) -> None:
    video = b"\x00\x00\x00\x18ftypmp42" + bytes(5000)
    url = fake.add_cdn_file("clip.mp4", video)
    att = fake.attachment_payload(url, size=len(video))
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen: dict[str, object] = {}

    @client.tree.command(name="music", description="Suggest music")  # type: ignore[attr-defined]
    async def music(interaction: discord.Interaction, video: discord.Attachment, prompt: str | None = None) -> None:
        try:
            seen["limit"] = interaction.filesize_limit
            seen["prompt"] = prompt
            seen["video"] = (video.filename, video.size, video.content_type)
            seen["bytes"] = await video.read()
            response = await interaction.response.defer(thinking=True)
            seen["message_id"] = response.message_id
            view = discord.ui.View(timeout=None)
            view.add_item(discord.ui.Button(label="Use this", custom_id="mc1:use:1:1", style=discord.ButtonStyle.success))
            embed = discord.Embed(title="Battle Epic", description="A reason")
            audio = discord.File(io.BytesIO(b"OggS" + bytes(100)), filename="battle-epic.ogg")
            await interaction.edit_original_response(embed=embed, attachments=[audio], view=view)
            original = await interaction.original_response()
            thread = await original.create_thread(name="🎵 clip.mp4", auto_archive_duration=1440)
            seen["thread"] = (thread.id, thread.parent_id)
            posted = await thread.send("in the thread", file=discord.File(io.BytesIO(b"ID3" + bytes(50)), filename="x.mp3"))
            await posted.edit(content="edited")
            done.set_result(None)
        except Exception as exc:  # noqa: BLE001 - surface it in the test, not in discord.py's log
            done.set_exception(exc)

    await client.login(BOT_TOKEN)
    payload = fake.slash_command(
        "music",
        user_id=USER_ID,
        options=[{"name": "video", "type": 11, "value": att["id"]}, {"name": "prompt", "type": 3, "value": "calm"}],
        attachments=[att],
        size_limit=25 * 2**20,
    )
    client._connection.parse_interaction_create(payload)
    await asyncio.wait_for(done, 5)

    assert seen["limit"] == 25 * 2**20
    assert seen["prompt"] == "calm"
    assert seen["video"] == ("clip.mp4", len(video), "video/mp4")
    assert seen["bytes"] == video

    cb = await fake.expect("POST", f"/interactions/{payload['id']}/{payload['token']}/callback")
    assert cb.json == {"type": 5}  # DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE ("thinking")
    assert cb.query.get("with_response") == "1"
    assert "Authorization" not in cb.headers  # interaction callbacks carry no bot token

    edit = await fake.expect("PATCH", f"/webhooks/{fake.app_id}/{payload['token']}/messages/@original")
    assert edit.multipart
    assert edit.json["embeds"][0]["title"] == "Battle Epic"
    assert edit.json["attachments"] == [{"id": 0, "filename": "battle-epic.ogg"}]
    assert edit.json["components"][0]["components"][0]["custom_id"] == "mc1:use:1:1"
    assert [(f.field, f.filename, f.data[:4]) for f in edit.files] == [("files[0]", "battle-epic.ogg", b"OggS")]

    await fake.expect("GET", f"/webhooks/{fake.app_id}/{payload['token']}/messages/@original")
    mid = seen["message_id"]
    thread = await fake.expect("POST", f"/channels/{fake.channel_id}/messages/{mid}/threads")
    assert thread.json == {"name": "🎵 clip.mp4", "auto_archive_duration": 1440, "rate_limit_per_user": None}
    assert thread.headers["Authorization"] == f"Bot {BOT_TOKEN}"
    assert seen["thread"] == (mid, fake.channel_id)  # a thread started from a message has its id

    post = await fake.expect("POST", f"/channels/{mid}/messages")
    assert post.json["content"] == "in the thread"
    assert post.files[0].filename == "x.mp3"
    patch = await fake.expect("PATCH", f"/channels/{mid}/messages/*")
    assert patch.json["content"] == "edited"


async def test_a_429_is_waited_out_and_the_edit_lands(fake: FakeDiscord, client: discord.Client) -> None:
    await client.login(BOT_TOKEN)
    channel = client.get_partial_messageable(fake.channel_id)
    msg = await channel.send("first")
    fake.fail("PATCH", "/channels/*/messages/*", body={"message": "slow down", "retry_after": 0.3, "global": False})
    t0 = time.monotonic()
    await msg.edit(content="second")
    assert time.monotonic() - t0 >= 0.3
    first = await fake.expect("PATCH", f"/channels/{fake.channel_id}/messages/{msg.id}")
    second = await fake.expect("PATCH", f"/channels/{fake.channel_id}/messages/{msg.id}")
    assert first.json == second.json and first.json["content"] == "second"
    assert fake.messages[msg.id]["content"] == "second"


async def test_a_413_with_code_40005_raises_http_exception(fake: FakeDiscord, client: discord.Client) -> None:
    await client.login(BOT_TOKEN)
    channel = client.get_partial_messageable(fake.channel_id)
    fake.fail_too_large("POST", "/channels/*/messages")
    with pytest.raises(discord.HTTPException) as info:
        await channel.send(file=discord.File(io.BytesIO(bytes(10)), filename="preview.mp4"))
    assert (info.value.status, info.value.code) == (413, 40005)


async def test_thread_message_and_button_press_are_parsed_from_payloads(fake: FakeDiscord, client: discord.Client) -> None:
    await client.login(BOT_TOKEN)
    got: asyncio.Queue[discord.Message] = asyncio.Queue()
    client.event(_on_message(got))
    payload = fake.user_message(channel_id=fake.channel_id, user_id=USER_ID, content="more drums", mentions_bot=True)
    client._connection.parse_message_create(payload)
    message = await asyncio.wait_for(got.get(), 2)
    assert message.content == "more drums"
    assert message.author.id == USER_ID
    assert client.user in message.mentions

    pressed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    class Press(discord.ui.DynamicItem[discord.ui.Button], template=r"mc1:use:(?P<c>\d+):(?P<t>\d+)"):
        def __init__(self, c: int, t: int) -> None:
            super().__init__(discord.ui.Button(label="Use this", custom_id=f"mc1:use:{c}:{t}"))

        @classmethod
        async def from_custom_id(cls, interaction, item, match, /):  # type: ignore[no-untyped-def]
            return cls(int(match["c"]), int(match["t"]))

        async def callback(self, interaction: discord.Interaction) -> None:
            await interaction.response.defer()
            pressed.set_result(self.custom_id)

    client.add_dynamic_items(Press)
    channel = client.get_partial_messageable(fake.channel_id)
    view = discord.ui.View(timeout=None)
    view.add_item(Press(3, 1))
    sent = await channel.send("card", view=view)
    press = fake.component("mc1:use:3:1", user_id=USER_ID, message=fake.messages[sent.id])
    client._connection.parse_interaction_create(press)
    assert await asyncio.wait_for(pressed, 2) == "mc1:use:3:1"
    cb = await fake.expect("POST", f"/interactions/{press['id']}/{press['token']}/callback")
    assert cb.json == {"type": 6}  # DEFERRED_UPDATE_MESSAGE


def _on_message(queue: asyncio.Queue[discord.Message]):
    async def on_message(message: discord.Message) -> None:
        await queue.put(message)

    return on_message


async def test_start_connects_to_the_fake_gateway_and_gets_ready(fake: FakeDiscord, client: discord.Client) -> None:
    got: asyncio.Queue[discord.Message] = asyncio.Queue()
    client.event(_on_message(got))
    task = asyncio.create_task(client.start(BOT_TOKEN))
    await asyncio.wait_for(fake.identified.wait(), 5)
    assert fake.identify is not None and fake.identify["token"] == BOT_TOKEN
    await asyncio.wait_for(client.wait_until_ready(), 5)
    assert client.is_ready()
    await fake.dispatch("MESSAGE_CREATE", fake.user_message(channel_id=fake.channel_id, user_id=USER_ID, content="hi"))
    assert (await asyncio.wait_for(got.get(), 2)).content == "hi"
    await client.close()
    await asyncio.wait_for(task, 5)

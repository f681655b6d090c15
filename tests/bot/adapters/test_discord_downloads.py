"""The Discord adapter refuses bad uploads before any model work, over the real discord.py and the
fake Discord API + CDN: not a video or too large (refused before downloading, ephemerally), a file
that lies about its size (cut by the cap), a stalled host (timeout), a redirect elsewhere and a
foreign host (refused). None of these reach the service."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bot.adapters.discord import DISCORD_CDN_HOSTS, DiscordAdapter
from bot.adapters.download import DownloadLimits
from bot.settings import Settings
from tests.helpers.fake_discord import BOT_TOKEN, FakeDiscord

USER_ID = 1_300_000_000_000_000_777
CAP = 1 * 2**20  # bytes: the adapter's download cap in these tests
EPHEMERAL = 64


class NoService:
    """A service that must not be called: every case here ends before the conversation starts."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the service was called ({name}) for an upload that should have been refused")


@pytest.fixture
async def fake():
    async with FakeDiscord() as fake:
        with fake.patched():
            yield fake


def settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, discord_token=BOT_TOKEN, max_upload_bytes=CAP, **kw)  # type: ignore[call-arg]


@pytest.fixture
async def adapter(fake: FakeDiscord):
    adapter = DiscordAdapter(
        NoService(),
        settings(),
        cdn_hosts={"127.0.0.1"},
        download_limits=DownloadLimits(max_bytes=CAP, read_timeout_s=0.3, total_timeout_s=5),
        edit_interval_s=0.01,
    )
    await adapter.login()
    yield adapter
    await adapter.close()


def music(fake: FakeDiscord, att: dict[str, Any]) -> dict[str, Any]:
    return fake.slash_command(
        "music", user_id=USER_ID, options=[{"name": "video", "type": 11, "value": att["id"]}], attachments=[att]
    )


async def test_production_hosts_are_discords_cdn_only() -> None:
    adapter = DiscordAdapter(NoService(), settings())
    assert adapter.cdn_hosts == DISCORD_CDN_HOSTS == {"cdn.discordapp.com", "media.discordapp.net"}
    assert adapter.download_limits.max_bytes == CAP


@pytest.mark.parametrize(
    ("filename", "content_type", "size", "sentence"),
    [
        ("big.mp4", "video/mp4", 5 * 2**20, "your video is 5 MiB; the limit here is 1 MiB. Send a shorter clip."),
        ("cat.png", "image/png", 1000, "That file is not a video I can use: send an mp4, mov or webm clip."),
        ("notes.txt", None, 1000, "That file is not a video I can use: send an mp4, mov or webm clip."),
    ],
    ids=["too-large", "an-image", "no-type-wrong-extension"],
)
async def test_refused_before_download_with_an_ephemeral_sentence(
    fake: FakeDiscord, adapter: DiscordAdapter, filename: str, content_type: str | None, size: int, sentence: str
) -> None:
    url = fake.add_cdn_file(filename, b"x" * 10)
    payload = music(fake, fake.attachment_payload(url, filename=filename, size=size, content_type=content_type))
    adapter.client._connection.parse_interaction_create(payload)
    cb = await fake.expect("POST", f"/interactions/{payload['id']}/{payload['token']}/callback")
    assert cb.json["type"] == 4  # CHANNEL_MESSAGE_WITH_SOURCE, not a deferral
    assert (cb.json["data"]["content"], cb.json["data"]["flags"]) == (sentence, EPHEMERAL)
    assert fake.cdn[filename].hits == 0  # nothing was downloaded


async def deferred_then(fake: FakeDiscord, payload: dict[str, Any]) -> str:
    """The callback is a deferral; return the text the original response finally shows."""
    cb = await fake.expect("POST", f"/interactions/{payload['id']}/{payload['token']}/callback")
    assert cb.json == {"type": 5}
    path = f"/webhooks/{fake.app_id}/{payload['token']}/messages/@original"
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        edit = await fake.expect("PATCH", path, timeout=max(0.1, deadline - asyncio.get_running_loop().time()))
        content = edit.json.get("content") or ""
        if not content.startswith("⏳"):
            assert edit.json.get("embeds") == []  # no card
            return content


async def test_a_file_that_lies_about_its_size_is_cut_by_the_cap(fake: FakeDiscord, adapter: DiscordAdapter) -> None:
    body = b"\x00" * (3 * CAP)
    url = fake.add_cdn_file("liar.mp4", body, content_length=1000)  # streamed without its real length
    payload = music(fake, fake.attachment_payload(url, filename="liar.mp4", size=1000))
    adapter.client._connection.parse_interaction_create(payload)
    assert await deferred_then(fake, payload) == "your video is over the limit of 1 MiB; send a shorter clip."
    assert fake.cdn["liar.mp4"].hits == 1


async def test_a_stalled_host_times_out(fake: FakeDiscord, adapter: DiscordAdapter) -> None:
    url = fake.add_cdn_file("slow.mp4", b"\x00" * (200 * 1024), delay_s=2.0)
    payload = music(fake, fake.attachment_payload(url, filename="slow.mp4", size=200 * 1024))
    adapter.client._connection.parse_interaction_create(payload)
    assert await deferred_then(fake, payload) == "Fetching your video took too long; please try again."


async def test_a_redirect_to_another_host_is_not_followed(fake: FakeDiscord, adapter: DiscordAdapter) -> None:
    url = fake.add_cdn_file("moved.mp4", b"", redirect_to="http://203.0.113.9/elsewhere.mp4")
    payload = music(fake, fake.attachment_payload(url, filename="moved.mp4", size=1000))
    adapter.client._connection.parse_interaction_create(payload)
    text = await deferred_then(fake, payload)
    assert text == "I could not fetch your video (the file host answered 302); please upload it again."


async def test_a_host_other_than_the_cdn_is_refused_without_a_request(fake: FakeDiscord, adapter: DiscordAdapter) -> None:
    url = fake.add_cdn_file("clip.mp4", b"\x00" * 100).replace("127.0.0.1", "localhost")
    payload = music(fake, fake.attachment_payload(url, filename="clip.mp4", size=100))
    adapter.client._connection.parse_interaction_create(payload)
    assert await deferred_then(fake, payload) == "I can only fetch your video from the platform's own file host."
    assert fake.cdn["clip.mp4"].hits == 0


async def test_the_production_hosts_refuse_the_fake_cdn(fake: FakeDiscord) -> None:
    adapter = DiscordAdapter(NoService(), settings())  # no cdn_hosts: Discord's only
    await adapter.login()
    try:
        url = fake.add_cdn_file("clip.mp4", b"\x00" * 100)
        payload = music(fake, fake.attachment_payload(url, filename="clip.mp4", size=100))
        adapter.client._connection.parse_interaction_create(payload)
        assert await deferred_then(fake, payload) == "I can only fetch your video from the platform's own file host."
        assert fake.cdn["clip.mp4"].hits == 0
    finally:
        await adapter.close()


async def test_context_menu_on_a_message_without_a_video(fake: FakeDiscord, adapter: DiscordAdapter) -> None:
    target = fake.user_message(channel_id=fake.channel_id, user_id=USER_ID, content="just words")
    payload = fake.message_command("Find music for this video", user_id=USER_ID, target=target)
    adapter.client._connection.parse_interaction_create(payload)
    cb = await fake.expect("POST", f"/interactions/{payload['id']}/{payload['token']}/callback")
    assert cb.json["type"] == 4 and cb.json["data"]["flags"] == EPHEMERAL
    assert cb.json["data"]["content"].startswith("That message has no video attached")

"""LiveMessage: a message edited as a reason streams, at most once per interval; the final state
always lands, through a 429 too (real discord.py against the fake Discord API)."""

from __future__ import annotations

import asyncio
import itertools

import discord
import pytest

from bot.adapters.discord.live import ChannelTarget, LiveMessage, Render
from tests.helpers.fake_discord import BOT_TOKEN, FakeDiscord


class Recorder:
    """A target that records what it was asked to show, and when."""

    def __init__(self, fail_first: int = 0, delay_s: float = 0.0) -> None:
        self.renders: list[tuple[float, Render]] = []
        self.fail_first = fail_first
        self.delay_s = delay_s

    async def render(self, r: Render) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_first:
            self.fail_first -= 1
            raise RuntimeError("boom")
        self.renders.append((asyncio.get_running_loop().time(), r))


async def test_tokens_are_coalesced_into_spaced_edits_and_the_last_state_lands() -> None:
    target = Recorder()
    live = LiveMessage(target, min_interval_s=0.2)
    text = ""
    for i in range(40):  # 40 tokens over ~0.4 s
        text += f"w{i} "
        live.show(content=text)
        await asyncio.sleep(0.01)
    await live.flush()
    times = [t for t, _ in target.renders]
    assert target.renders[-1][1].content == text  # the final text always lands
    assert all(b - a >= 0.2 - 0.02 for a, b in itertools.pairwise(times))  # never more often than the interval
    assert 2 <= len(times) <= 5  # 40 updates became a handful of edits


async def test_files_are_uploaded_once_and_unset_fields_are_left_alone() -> None:
    from pathlib import Path

    from bot.service.contract import MediaFile

    target = Recorder()
    live = LiveMessage(target, min_interval_s=0.0)
    excerpt = MediaFile(Path("/tmp/x.ogg"), "x.ogg", "audio/ogg", 10)
    live.show(content="card", files=[excerpt])
    await live.flush()
    live.show(embeds=[])
    await live.flush()
    first, second = (r for _, r in target.renders)
    assert first.files == [excerpt] and first.content == "card"
    assert second.files == [] and second.content == "card" and second.embeds == []


async def test_a_failed_render_is_raised_by_flush_and_the_next_state_still_lands() -> None:
    target = Recorder(fail_first=1)
    live = LiveMessage(target, min_interval_s=0.0)
    live.show(content="one")
    with pytest.raises(RuntimeError):
        await live.flush()
    live.show(content="two")
    await live.flush()
    assert [r.content for _, r in target.renders] == ["two"]


async def test_streamed_edits_wait_out_a_429_and_the_final_text_lands() -> None:
    async with FakeDiscord() as fake:
        with fake.patched():
            client = discord.Client(intents=discord.Intents.default())
            try:
                await client.login(BOT_TOKEN)
                channel = client.get_partial_messageable(fake.channel_id)
                live = LiveMessage(ChannelTarget(channel), min_interval_s=0.05)
                live.show(content="⏳ listening")
                await live.flush()
                await fake.expect("POST", f"/channels/{fake.channel_id}/messages")
                mid = max(fake.messages)
                fake.fail("PATCH", "/channels/*/messages/*", body={"message": "slow", "retry_after": 0.25, "global": False})
                text = ""
                for word in ["a", "calm", "piano", "line", "under", "the", "waves"]:
                    text += word + " "
                    live.show(content=text.strip())
                    await asyncio.sleep(0.02)
                await live.flush()
                assert fake.messages[mid]["content"] == "a calm piano line under the waves"
                patches = fake.requests("PATCH", f"/channels/{fake.channel_id}/messages/{mid}")
                assert patches[0].json["content"] == patches[1].json["content"]  # the 429'd edit, retried
                assert len(patches) <= 4  # 7 tokens, coalesced
            finally:
                await client.close()

"""`musechat discord sync-commands` against the local fake of Discord's API (tests/helpers/fake_discord.py)."""

from __future__ import annotations

import asyncio

import pytest
from typer.testing import CliRunner

from bot.cli.main import app
from bot.settings import get_settings
from tests.helpers.fake_discord import BOT_TOKEN, FakeDiscord


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MUSECHAT_DISCORD_TOKEN", BOT_TOKEN)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def test_sync_commands_registers_them_in_one_guild(token_env: None) -> None:
    async with FakeDiscord() as fake:
        with fake.patched():
            result = await asyncio.to_thread(CliRunner().invoke, app, ["discord", "sync-commands", "--guild", str(fake.guild_id)])
            assert result.exit_code == 0, result.output
            put = await fake.expect("PUT", f"/applications/{fake.app_id}/guilds/{fake.guild_id}/commands")
    assert sorted(c["name"] for c in put.json) == ["Find music for this video", "music", "music-admin"]
    assert f"in guild {fake.guild_id}" in result.output and BOT_TOKEN not in result.output


def test_sync_commands_without_a_token_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MUSECHAT_DISCORD_TOKEN", raising=False)
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["discord", "sync-commands"])
    get_settings.cache_clear()
    assert result.exit_code == 2 and "MUSECHAT_DISCORD_TOKEN" in result.output

"""/music-admin with the real catalog admin over a real catalog: Manage Server or an admin role only;
the refresh edits its response with progress, then its report; status summarises the catalog."""

from __future__ import annotations

from typing import Any

import pytest

from bot.adapters.discord import DiscordAdapter
from bot.adapters.discord.admin import NO_ADMIN, NOT_ADMIN
from bot.service.catalog_admin import CatalogAdmin
from bot.settings import Settings
from tests.helpers.fake_discord import BOT_TOKEN, FakeDiscord
from tests.helpers.service import CLIP_MIN_S, Env, built, data_dir, env, tiny  # noqa: F401

ADMIN_ROLE = 1_300_000_000_000_000_555
EPHEMERAL = 64
MANAGE_GUILD = 1 << 5


@pytest.fixture
async def fake():
    async with FakeDiscord() as fake:
        with fake.patched():
            yield fake


def admin_for(env: Env) -> CatalogAdmin:
    return CatalogAdmin(
        engine=env.sql, catalog=env.catalog, media_store=env.media, data_dir=env.data, encoders=env.encoders, min_duration_s=CLIP_MIN_S
    )


async def adapter_with(env: Env, admin: Any) -> DiscordAdapter:
    settings = Settings(_env_file=None, discord_token=BOT_TOKEN)  # type: ignore[call-arg]
    adapter = DiscordAdapter(env.service, settings, catalog_admin=admin, admin_role_ids={ADMIN_ROLE}, edit_interval_s=0.0)
    await adapter.login()
    return adapter


def sub(fake: FakeDiscord, name: str, *, permissions: int, roles: list[int] | None = None) -> dict[str, Any]:
    payload = fake.slash_command("music-admin", user_id=42, options=[{"name": name, "type": 1, "options": []}])
    payload["member"]["permissions"] = str(permissions)
    payload["member"]["roles"] = [str(r) for r in roles or []]
    return payload


async def test_refresh_reports_progress_then_its_report(fake: FakeDiscord, env: Env) -> None:
    adapter = await adapter_with(env, admin_for(env))
    try:
        payload = sub(fake, "refresh", permissions=MANAGE_GUILD)
        adapter.client._connection.parse_interaction_create(payload)
        cb = await fake.expect("POST", f"/interactions/{payload['id']}/{payload['token']}/callback")
        assert cb.json == {"type": 5, "data": {"flags": EPHEMERAL}}
        path = f"/webhooks/{fake.app_id}/{payload['token']}/messages/@original"
        edits = []
        while not (edits and edits[-1].startswith("✅")):
            edits.append((await fake.expect("PATCH", path, timeout=120)).json["content"])
        assert any(e.startswith("⏳ Refreshing the catalog") for e in edits[:-1])
        assert "12 tracks live" in edits[-1]
    finally:
        await adapter.close()


async def test_status_for_an_admin_role(fake: FakeDiscord, env: Env) -> None:
    adapter = await adapter_with(env, admin_for(env))
    try:
        payload = sub(fake, "status", permissions=0, roles=[ADMIN_ROLE])
        adapter.client._connection.parse_interaction_create(payload)
        await fake.expect("POST", f"/interactions/{payload['id']}/{payload['token']}/callback")
        edit = await fake.expect("PATCH", f"/webhooks/{fake.app_id}/{payload['token']}/messages/@original", timeout=30)
        assert edit.json["content"].startswith("**Live catalog:** ") and "· 12 tracks" in edit.json["content"]
    finally:
        await adapter.close()


@pytest.mark.parametrize(("has_admin", "sentence"), [(True, NOT_ADMIN), (False, NO_ADMIN)], ids=["member", "no-admin-here"])
async def test_refused_ephemerally(fake: FakeDiscord, env: Env, has_admin: bool, sentence: str) -> None:
    adapter = await adapter_with(env, admin_for(env) if has_admin else None)
    try:
        permissions = 0 if has_admin else MANAGE_GUILD
        payload = sub(fake, "refresh", permissions=permissions, roles=[123])
        adapter.client._connection.parse_interaction_create(payload)
        cb = await fake.expect("POST", f"/interactions/{payload['id']}/{payload['token']}/callback")
        assert cb.json["type"] == 4
        assert (cb.json["data"]["content"], cb.json["data"]["flags"]) == (sentence, EPHEMERAL)
    finally:
        await adapter.close()

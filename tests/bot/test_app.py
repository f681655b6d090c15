"""bot/app.py: the composition root opens storage once per process and shares it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bot.app import App, RandomWeightsError
from bot.settings import Settings
from engine.profiles import Encoders, UnknownProfileError
from storage.catalog import CatalogLockedError
from tests.helpers.service import built, tiny  # noqa: F401 - fixtures


def settings_for(data: Path, **kw: object) -> Settings:
    return Settings(_env_file=None, data_dir=data, profile="tiny", **kw)  # type: ignore[arg-type]


async def test_the_service_and_the_admin_share_one_catalog_database_and_pool(built: Path, tmp_path: Path, tiny: Encoders) -> None:
    data = tmp_path / "data"
    shutil.copytree(built / "data", data)
    app = await App.open(settings_for(data, allow_random_weights=True), encoders=tiny)
    try:
        svc = await app.service()
        admin = app.admin()
        assert svc.catalog is app.catalog is admin.catalog
        assert svc.sql is app.sql and svc.pool is app.pool is admin.pool
        assert await app.service() is svc  # the models load once
        import sys

        from bot.app import SWITCH_INTERVAL_S

        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)  # the event loop gets the GIL back sooner
        assert (await admin.status()).live_points == svc.catalog.count() > 0
        # a second process (here: a second App) cannot open the embedded catalog
        with pytest.raises(CatalogLockedError):
            await App.open(settings_for(data, allow_random_weights=True))
    finally:
        await app.close()
    await app.close()  # closing twice is harmless
    again = await App.open(settings_for(data))  # the lock went with the first app
    await again.close()


async def test_random_weights_are_refused_unless_allowed(tmp_path: Path) -> None:
    app = await App.open(settings_for(tmp_path / "data"))
    try:
        with pytest.raises(RandomWeightsError) as refused:
            await app.service()
        assert "MUSECHAT_ALLOW_RANDOM_WEIGHTS" in refused.value.user_message
    finally:
        await app.close()


async def test_an_unknown_profile_fails_before_anything_is_opened(tmp_path: Path) -> None:
    with pytest.raises(UnknownProfileError):
        await App.open(Settings(_env_file=None, data_dir=tmp_path / "data", profile="huge"))
    assert not (tmp_path / "data").exists()


async def test_by_default_the_service_and_a_worker_write_reasons_in_a_reasoner_process_closed_with_the_app(
    built: Path, tmp_path: Path, tiny: Encoders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MUSECHAT_REASONER unset: `local`, in a child process started (and warmed up) with the app, ended by its close."""
    monkeypatch.delenv("MUSECHAT_REASONER", raising=False)  # tests/conftest.py sets it off for the other tests
    data = tmp_path / "data"
    shutil.copytree(built / "data", data)
    settings = Settings(data_dir=data, profile="tiny", allow_random_weights=True)  # type: ignore[arg-type]
    assert settings.reasoner == "local" and settings.reasoner_process
    app = await App.open(settings, encoders=tiny)
    try:
        svc = await app.service()
        service_reasoner = svc.reasons._reasoner
        assert service_reasoner.alive and service_reasoner.info["warm_up_s"] > 0  # before the first turn
        worker = await app.worker_runner()
        worker_reasoner = worker.reasons._reasoner
        assert worker_reasoner.alive and worker_reasoner.pid != service_reasoner.pid
        r = await svc.start(text="happy tune", channel_id="default", user_id="u")
        # the random tiny LM never writes a sentence that passes the fact check: the tag summary, saying so
        assert r.track.reason_source == "tag summary" and "passed the fact check" in r.track.reason
    finally:
        await app.close()
    assert not service_reasoner.alive and not worker_reasoner.alive

"""Real conversation services for tests: catalogs of real music clips built by the real indexer.

`make_clips` cuts stream-copied clips of real tracks (Debian game music, scripts/fetch_music.sh),
`index` registers them and refreshes with the real indexer (bot/service/catalog_admin.py), and
`open_service` opens a `ConversationService` over that data directory as a fresh process would.
The fixtures `tiny`, `built`, `data_dir` and `env` are imported by the test modules that use them.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.service.catalog_admin import CatalogAdmin
from bot.service.catalog_layout import (
    FEATURES_DIR,
    FeatureCache,
    catalog_schema,
    features_key,
)
from bot.service.conversation import ConversationService, ServiceConfig, TrackAssets
from engine.engine import Engine, EngineConfig
from engine.media import MediaLimits, ffmpeg_binary
from engine.profiles import Encoders, load_encoders
from storage.catalog.edge import EdgeCatalog
from storage.conversation_store import ConversationStore
from storage.db import default_sqlite_url, ensure_schema, make_engine
from storage.media_store import MediaStore
from storage.track_store import TrackStore

# (package/file, clip length in seconds, folder): two licences, two lengths
CLIPS = [
    ("wesnoth-1.16-music/battle-epic.ogg", 8, "cc-by"),
    ("supertux-data/chipdisko.ogg", 20, "cc-by-sa"),
    ("hedgewars-data/Rock.ogg", 20, "cc-by"),
    ("extremetuxracer-data/calmrace-ks.ogg", 8, "cc-by-sa"),
    ("hedgewars-data/Beach.ogg", 20, "cc-by"),
    ("supertux-data/forest.ogg", 20, "cc-by-sa"),
    ("wesnoth-1.16-music/elvish-theme.ogg", 8, "cc-by"),
    ("hedgewars-data/Jungle.ogg", 20, "cc-by-sa"),
    ("supertux-data/arctic_breeze.ogg", 20, "cc-by"),
    ("extremetuxracer-data/race1-jt.ogg", 8, "cc-by-sa"),
    ("hedgewars-data/oriental.ogg", 20, "cc-by"),
    ("supertux-data/cave.ogg", 20, "cc-by-sa"),
]
LICENCES = {"cc-by": "CC-BY-4.0", "cc-by-sa": "CC-BY-SA-3.0"}
CLIP_START_S = 30.0  # seconds into each real track


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True, timeout=120)


def make_clips(music_dir: Path, out: Path, clips=CLIPS) -> dict[str, Path]:
    """Stream-copied clips of real tracks (no re-encode): folder -> its path."""
    folders = {}
    for rel, seconds, folder in clips:
        dest = out / folder
        dest.mkdir(parents=True, exist_ok=True)
        ffmpeg("-ss", str(CLIP_START_S), "-t", str(seconds), "-i", str(music_dir / rel), "-map", "0:a:0", "-c:a", "copy", str(dest / Path(rel).name))
        folders[folder] = dest
    return folders


async def index(data: Path, encoders: Encoders, folders: dict[str, tuple[Path, str | None]]) -> None:
    """Register folders (path, licence) and refresh, with the real indexer."""
    url = default_sqlite_url(data)
    await ensure_schema(url)
    sql = make_engine(url)
    catalog = EdgeCatalog(data / "catalog", catalog_schema(encoders.profile, fusion=False))
    try:
        admin = CatalogAdmin(engine=sql, catalog=catalog, media_store=MediaStore(data / "media"), data_dir=data, encoders=encoders)
        for path, licence in folders.values():
            await admin.add_folder(path, licence=licence)
        report = await admin.refresh()
        assert not report.failures, report.failures
    finally:
        catalog.close()
        await sql.dispose()


@pytest.fixture(scope="module")
def tiny() -> Encoders:
    return load_encoders("tiny")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, music_dir: Path, tiny: Encoders) -> Path:
    """A data directory (SQLite + embedded catalog + media store + feature cache) of 12 real clips."""
    root = tmp_path_factory.mktemp("catalog")
    folders = make_clips(music_dir, root / "music")
    asyncio.run(index(root / "data", tiny, {k: (v, LICENCES[k]) for k, v in folders.items()}))
    return root


@dataclass
class Env:
    data: Path
    service: ConversationService
    catalog: EdgeCatalog
    sql: object
    media: MediaStore
    encoders: Encoders
    calls: list[Path]  # every video the engine decoded


@asynccontextmanager
async def open_service(data: Path, encoders: Encoders, *, config: ServiceConfig | None = None,
                       limits: MediaLimits | None = None) -> AsyncIterator[Env]:  # fmt: skip
    """A service over `data`, as a fresh process would open it; counts the videos it decodes."""
    sql = make_engine(default_sqlite_url(data))
    catalog = EdgeCatalog(data / "catalog", catalog_schema(encoders.profile, fusion=False))
    media = MediaStore(data / "media")
    engine = Engine(EngineConfig(profile=encoders.profile.name, limits=limits or MediaLimits()), encoders=encoders)
    calls: list[Path] = []
    decode = engine.video_features

    def counting(path, **kw):  # noqa: ANN001, ANN202
        calls.append(Path(path))
        return decode(path, **kw)

    engine.video_features = counting  # type: ignore[method-assign]
    service = ConversationService(
        engine=engine, catalog=catalog, store=ConversationStore(sql), sql=sql, media=media,
        assets=TrackAssets(TrackStore(sql), FeatureCache(data / FEATURES_DIR / features_key(encoders.profile))),
        config=config, limits=limits,
    )  # fmt: skip
    try:
        yield Env(data, service, catalog, sql, media, encoders, calls)
    finally:
        await service.close()
        catalog.close()
        await sql.dispose()  # type: ignore[attr-defined]


@pytest.fixture
def data_dir(built: Path, tmp_path: Path) -> Path:
    shutil.copytree(built / "data", tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture
async def env(data_dir: Path, tiny: Encoders) -> AsyncIterator[Env]:
    async with open_service(data_dir, tiny) as e:
        yield e

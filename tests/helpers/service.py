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

from bot.app import App
from bot.service.conversation import ConversationService, ServiceConfig
from bot.settings import Settings
from engine.media import MediaLimits, ffmpeg_binary
from engine.profiles import Encoders, load_encoders
from storage.catalog import MusicCatalog
from storage.media_store import MediaStore
from tests.helpers.sql import (
    POSTGRES_URL,
    SqlTarget,
    create_pg_schema,
    drop_pg_schema,
    head_sql,
    require_postgres_or_fail,
)

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
CLIP_MIN_S = 5.0  # the catalog's minimum track length here: the 8 s clips are shorter than the default (10 s)


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


def app_settings(data: Path, encoders: Encoders, *, limits: MediaLimits | None = None, sql: SqlTarget | None = None) -> Settings:
    """Settings of an application over `data` (tiny profile allowed: these are tests)."""
    extra: dict = {}
    if limits is not None:
        extra |= {"max_video_seconds": limits.max_seconds, "max_upload_bytes": limits.max_bytes, "ffmpeg_timeout_s": limits.timeout_s}
    if sql is not None and sql.backend == "postgresql":
        extra["database_url"] = sql.url
    return Settings(
        _env_file=None, data_dir=data, profile=encoders.profile.name, allow_random_weights=True,
        catalog_min_track_s=CLIP_MIN_S, **extra,
    )  # fmt: skip


async def index(data: Path, encoders: Encoders, folders: dict[str, tuple[Path, str | None]], *, sql: SqlTarget | None = None) -> None:
    """Register folders (path, licence) and refresh, with the real indexer of the application (bot/app.py)."""
    app = await App.open(app_settings(data, encoders, sql=sql), encoders=encoders, sql_schema=sql.schema if sql else None)
    try:
        admin = app.admin()
        for path, licence in folders.values():
            await admin.add_folder(path, licence=licence)
        report = await admin.refresh()
        assert not report.failures, report.failures
    finally:
        await app.close()


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
    catalog: MusicCatalog
    sql: object
    media: MediaStore
    encoders: Encoders
    calls: list[Path]  # every video the engine decoded
    app: App | None = None
    target: SqlTarget | None = None  # the PostgreSQL schema, None: the SQLite file in `data`


@asynccontextmanager
async def open_service(data: Path, encoders: Encoders, *, config: ServiceConfig | None = None,
                       limits: MediaLimits | None = None, sql: SqlTarget | None = None) -> AsyncIterator[Env]:  # fmt: skip
    """A service over `data` (and `sql`, default the SQLite file in it), as a fresh process would open it
    (bot/app.py); counts the videos it decodes."""
    app = await App.open(app_settings(data, encoders, limits=limits, sql=sql), config=config, encoders=encoders,
                         sql_schema=sql.schema if sql else None)  # fmt: skip
    try:
        service = await app.service()
        calls: list[Path] = []
        decode = service.engine.video_features

        def counting(path, **kw):  # noqa: ANN001, ANN202
            calls.append(Path(path))
            return decode(path, **kw)

        service.engine.video_features = counting  # type: ignore[method-assign]
        yield Env(data, service, app.catalog, app.sql, app.media, encoders, calls, app, sql)
    finally:
        await app.close()


@asynccontextmanager
async def postgres_target() -> AsyncIterator[SqlTarget]:
    """A PostgreSQL schema of its own, migrated to head, dropped afterwards (fails, never skips, when PostgreSQL is down)."""
    await require_postgres_or_fail()
    schema = await create_pg_schema(head_sql())
    try:
        yield SqlTarget("postgresql", POSTGRES_URL, schema)
    finally:
        await drop_pg_schema(schema)


@pytest.fixture
def data_dir(built: Path, tmp_path: Path) -> Path:
    shutil.copytree(built / "data", tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def env(request: pytest.FixtureRequest, built: Path, data_dir: Path, tiny: Encoders) -> AsyncIterator[Env]:
    """The service over a copy of the built catalog, on SQLite and on PostgreSQL.

    PostgreSQL: a schema of its own, filled by a refresh of the same folders (the feature cache is
    in the copied data directory, so nothing is embedded again)."""
    if request.param == "sqlite":
        async with open_service(data_dir, tiny) as e:
            yield e
        return
    async with postgres_target() as target:
        folders = {f.name: (f, LICENCES[f.name]) for f in sorted((built / "music").iterdir()) if f.is_dir()}
        await index(data_dir, tiny, folders, sql=target)
        async with open_service(data_dir, tiny, sql=target) as e:
            yield e

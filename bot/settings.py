"""Typed settings, read once from the environment (prefix MUSECHAT_) and an optional .env file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MB = 2**20  # bytes


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MUSECHAT_", env_file=".env", extra="ignore")

    # --- where things live -------------------------------------------------------------------
    data_dir: Path = Field(Path("data"), description="SQLite file, embedded Qdrant shards, media store")
    music_dir: Path = Field(
        Path.home() / ".cache" / "musechat" / "music",
        description="demo music fetched by scripts/fetch_music.sh",
    )

    # --- storage ---------------------------------------------------------------------------------
    database_url: str | None = Field(
        None, description="SQLAlchemy URL, e.g. postgresql://user@host/db; default: SQLite in data_dir"
    )
    qdrant_url: str | None = Field(None, description="Qdrant server/cluster URL; default: embedded catalog in data_dir")
    qdrant_api_key: str | None = Field(None, description="API key of the Qdrant server")
    media_max_age_days: float = Field(30.0, description="media store: remove files unused this long")
    media_max_total_mb: float = Field(5 * 1024.0, description="media store: total size cap, MiB")

    # --- models --------------------------------------------------------------------------------
    profile: str = Field("lite", description="model profile: paper | lite | tiny (DESIGN.md)")
    image_backbone: str | None = Field(None, description="hub id or local dir; overrides the profile's")
    text_backbone: str | None = Field(None, description="hub id or local dir; overrides the profile's")
    music_backbone: str | None = Field(None, description="hub id or local dir; overrides the profile's")
    device: str = Field("cpu", description="torch device for model work")
    query_fps: float = Field(1.0, description="frames per second sampled for a chat query (training uses 5)")

    # --- media limits --------------------------------------------------------------------------
    ffmpeg_binary: str | None = Field(None, description="ffmpeg executable; default: the one imageio-ffmpeg ships")
    max_video_seconds: float = Field(15 * 60.0, description="longest accepted upload, seconds")
    max_upload_bytes: int = Field(200 * MB, description="largest accepted upload, bytes")
    ffmpeg_timeout_s: float = Field(120.0, description="time limit of one ffmpeg call, seconds")

    @property
    def sql_url(self) -> str:
        from storage.db import default_sqlite_url

        return self.database_url or default_sqlite_url(self.data_dir)

    @property
    def media_dir(self) -> Path:
        return self.data_dir / "media"

    @property
    def catalog_dir(self) -> Path:
        return self.data_dir / "catalog"

    @property
    def backbone_overrides(self) -> dict[str, str]:
        pairs = {"image": self.image_backbone, "text": self.text_backbone, "music": self.music_backbone}
        return {k: v for k, v in pairs.items() if v}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings (read from the environment on first use)."""
    return Settings()

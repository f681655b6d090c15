"""The music catalog in Qdrant: one interface, two backends (DESIGN.md, "Storage").

- embedded (default): Qdrant Edge in-process, one shard directory per catalog version
  (`storage.catalog.edge.EdgeCatalog`);
- server or cluster: qdrant-client by URL and API key, one collection per version behind the
  alias `music` (`storage.catalog.server.ServerCatalog`).

`open_catalog` picks the backend from the settings: a URL means the server.
"""

from __future__ import annotations

from pathlib import Path

from storage.catalog.base import (
    DEFAULT_KEEP_VERSIONS,
    FUSION_VECTOR,
    MUSIC_VECTOR,
    TEXT_VECTOR,
    CatalogError,
    CatalogFilter,
    CatalogLockedError,
    CatalogSchema,
    CatalogVersion,
    Hit,
    MusicCatalog,
    NoExamplesError,
    RecommendStrategy,
    SchemaError,
    TrackId,
    TrackPayload,
    TrackPoint,
    TrackRecord,
    UnknownTrackError,
    VectorSpec,
    VersionWriter,
    normalize_track_id,
)

__all__ = [
    "DEFAULT_KEEP_VERSIONS",
    "FUSION_VECTOR",
    "MUSIC_VECTOR",
    "TEXT_VECTOR",
    "CatalogError",
    "CatalogFilter",
    "CatalogLockedError",
    "CatalogSchema",
    "CatalogVersion",
    "Hit",
    "MusicCatalog",
    "NoExamplesError",
    "RecommendStrategy",
    "SchemaError",
    "TrackId",
    "TrackPayload",
    "TrackPoint",
    "TrackRecord",
    "UnknownTrackError",
    "VectorSpec",
    "VersionWriter",
    "normalize_track_id",
    "open_catalog",
]


def open_catalog(
    *,
    url: str | None,
    api_key: str | None,
    path: Path,
    schema: CatalogSchema | None = None,
) -> MusicCatalog:
    """The server catalog if `url` is set (MUSECHAT_QDRANT_URL), else the embedded one at `path`.

    The embedded catalog locks `path`: a second process opening it gets CatalogLockedError.
    """
    if url:
        from storage.catalog.server import ServerCatalog

        return ServerCatalog.connect(url=url, api_key=api_key, schema=schema)
    from storage.catalog.edge import EdgeCatalog

    return EdgeCatalog(path, schema)

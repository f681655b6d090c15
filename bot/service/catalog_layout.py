"""How a profile's catalog is laid out: its vectors (the Qdrant schema) and its feature-cache folder.

Shared by the indexer (bot/service/catalog_admin.py), which writes them, and the conversation
service, which reads them; neither imports the other.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from engine.music_towers import TOWER_TRACK_VERSION, TowerTrack
from engine.profiles import TAGGER_MUSIC, ProfileConfig
from engine.tracks import ANALYSIS_VERSION, TrackAnalysis
from storage.catalog import (
    FUSION_VECTOR,
    MUSIC_VECTOR,
    TEXT_VECTOR,
    CatalogSchema,
    VectorSpec,
)
from storage.catalog.base import FUSION_DIM
from storage.feature_cache import FeatureCache as _FeatureCache

FEATURES_DIR = "features"  # under the data directory: one folder per profile key
TOWERS_DIR_PREFIX = "towers-"  # inside a profile's folder: one folder per towers checkpoint (its fusion_id)


def catalog_schema(profile: ProfileConfig, *, fusion: bool) -> CatalogSchema:
    """The vectors a refresh writes: text + music always, fusion (256-d) with a fusion checkpoint."""
    specs = [VectorSpec(TEXT_VECTOR, profile.text_dim), VectorSpec(MUSIC_VECTOR, profile.music_dim)]
    if fusion:
        specs.insert(0, VectorSpec(FUSION_VECTOR, FUSION_DIM))
    return CatalogSchema(vectors=tuple(specs))


def features_key(profile: ProfileConfig) -> str:
    """Folder name of a profile's feature cache: the profile plus a digest of what shapes the features."""
    ident = {
        "music": [profile.music_family, profile.music_backbone, profile.sample_rate],
        "text": [profile.text_family, profile.text_backbone],
        "analysis": ANALYSIS_VERSION,
    }
    if profile.tagger != TAGGER_MUSIC:  # who tags changes the analyses (keys of music-tagged profiles unchanged)
        ident["tags"] = profile.tagger
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    return f"{profile.name}-{digest}"


class TrackAnalysisCodec:
    """`engine.tracks.TrackAnalysis` in the feature cache (npz); analyses of another version are stale."""

    suffix = ".npz"

    def key(self, analysis: TrackAnalysis) -> str:
        return analysis.content_hash

    def dumps(self, analysis: TrackAnalysis) -> bytes:
        return analysis.to_bytes()

    def loads(self, data: bytes, sha: str) -> TrackAnalysis | None:
        analysis = TrackAnalysis.from_bytes(data)
        return analysis if analysis.version == ANALYSIS_VERSION and analysis.content_hash == sha else None


class FeatureCache(_FeatureCache[TrackAnalysis]):
    """Track analyses by content hash (storage/feature_cache.py) under one profile's folder."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, TrackAnalysisCodec())


def towers_dir(data_dir: Path, profile: ProfileConfig, fusion_id: str) -> Path:
    """Where a refresh keeps `TowerTrack`s of one towers checkpoint: beside the profile's analyses."""
    if not fusion_id:
        raise ValueError("a towers cache needs the checkpoint's fusion_id")
    return Path(data_dir) / FEATURES_DIR / features_key(profile) / f"{TOWERS_DIR_PREFIX}{fusion_id}"


class TowerTrackCodec:
    """`engine.music_towers.TowerTrack` in a feature cache; entries of another version or checkpoint are stale."""

    suffix = ".npz"

    def __init__(self, fusion_id: str) -> None:
        self.fusion_id = fusion_id

    def key(self, entry: TowerTrack) -> str:
        return entry.content_hash

    def dumps(self, entry: TowerTrack) -> bytes:
        return entry.to_bytes()

    def loads(self, data: bytes, sha: str) -> TowerTrack | None:
        entry = TowerTrack.from_bytes(data)
        ok = entry.version == TOWER_TRACK_VERSION and entry.content_hash == sha and entry.fusion_id == self.fusion_id
        return entry if ok else None


class TowerCache(_FeatureCache[TowerTrack]):
    """Per-track target vectors and candidate clips of one towers checkpoint (`towers_dir`)."""

    def __init__(self, data_dir: Path, profile: ProfileConfig, fusion_id: str) -> None:
        super().__init__(towers_dir(data_dir, profile, fusion_id), TowerTrackCodec(fusion_id))
        self.fusion_id = fusion_id

"""What the indexer left per track: attributes in SQL, analyses in the feature cache, excerpts in the media store."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bot.service.catalog_layout import FeatureCache, TowerCache
from storage.track_store import TrackStore

log = logging.getLogger(__name__)


ATTRIBUTE_CACHE_SIZE = 50_000  # tracks whose indexer attributes are kept in memory


@dataclass(frozen=True)
class TrackExtras:
    """A track's indexer attributes the catalog payload does not carry."""

    onset_rate: float | None  # onsets per second (engine/rhythm.py)
    excerpt_sha256: str | None  # the listening excerpt in the media store
    excerpt_start_s: float | None  # where that excerpt starts in the track, seconds
    excerpt_format: str | None = None  # its format ("ogg", "mp3"); None: unknown (assumed "ogg")


class TrackAssets:
    """Reads what bot/service/catalog_admin.py stored per track (module docstring there), with a memory cache."""

    def __init__(self, tracks: TrackStore, features: FeatureCache | None, towers: TowerCache | None = None) -> None:
        self._tracks = tracks
        self.features = features
        self.towers = towers  # a fusion checkpoint with trained AST towers: its per-track candidate clips
        self._cache: OrderedDict[str, TrackExtras] = OrderedDict()
        self._cut: dict[str, str] = {}  # content hash -> sha256 of an excerpt cut by this process

    async def extras(self, hashes: Sequence[str]) -> dict[str, TrackExtras]:
        missing = [h for h in dict.fromkeys(hashes) if h not in self._cache]
        if missing:
            rows = await self._tracks.get_many(content_hashes=missing)
            for h in missing:
                row = rows.get(h)
                attrs: Mapping[str, Any] = row.attributes if row is not None else {}
                ex = attrs.get("excerpt") or {}
                onset = attrs.get("onset_rate")
                self._cache[h] = TrackExtras(
                    onset_rate=None if onset is None else float(onset),
                    excerpt_sha256=ex.get("sha256") if isinstance(ex, Mapping) else None,
                    excerpt_start_s=_float_or_none(ex.get("cut_start_s", ex.get("start_s"))) if isinstance(ex, Mapping) else None,
                    excerpt_format=str(ex.get("format") or "ogg") if isinstance(ex, Mapping) else None,
                )
                if len(self._cache) > ATTRIBUTE_CACHE_SIZE:
                    self._cache.popitem(last=False)
        out = {}
        for h in hashes:
            self._cache.move_to_end(h)
            out[h] = self._cache[h]
        return out

    def segment_music(self, content_hash: str) -> np.ndarray | None:
        """(S, Dm) per-segment music features from the feature cache, for the fusion model's x_mc."""
        if self.features is None:
            return None
        analysis = self.features.get(content_hash)
        return None if analysis is None else analysis.segment_vectors

    def clip_mels(self, content_hash: str) -> np.ndarray | None:
        """(frames, mel bins) float16 log-mels of the track's 10 s candidate clip, g_mc's input (trained towers)."""
        if self.towers is None:
            return None
        entry = self.towers.get(content_hash)
        return None if entry is None else entry.candidate_mels

    def remember_cut(self, content_hash: str, sha256: str, fmt: str = "ogg") -> None:
        self._cut[f"{content_hash}:{fmt}"] = sha256

    def cut_sha(self, content_hash: str, fmt: str = "ogg") -> str | None:
        return self._cut.get(f"{content_hash}:{fmt}")


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None

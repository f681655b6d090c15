"""The music catalog interface and its domain types, shared by both Qdrant backends.

The catalog holds one point per track (DESIGN.md, "Storage"): the 256-d track vector of the
target music tower for the trained MVT-Fusion model (paper section 4.1; track-level vector = mean
of the twelve 10 s segment vectors, section 5, ranked by cosine), plus the named vectors the
zero-shot scorer ranks with (a text-encoder sentence vector of title + tags, a music embedding),
and the track's payload (title, artist, tags, tempo, loudness, licence...).

Callers pass and receive dataclasses (`TrackPoint`, `Hit`, `TrackRecord`), never Qdrant types.
A catalog refresh builds a new *version* through a `VersionWriter` and makes it live in one
atomic step, so a refresh that fails half way leaves the previous version serving.
"""

from __future__ import annotations

import logging
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from types import TracebackType
from typing import Any, Self

import numpy as np

log = logging.getLogger(__name__)

FUSION_VECTOR = "fusion"  # MVT-Fusion target-music vector (paper section 4.1)
TEXT_VECTOR = "text"  # text-encoder sentence vector of "title. tags" (zero-shot scorer)
MUSIC_VECTOR = "music"  # music-encoder embedding (zero-shot scorer)
FUSION_DIM = 256  # paper section 4.1: every modality projected to d = 256
TEXT_DIM_MINILM = 384  # all-MiniLM-L6-v2 sentence vector (lite profile)
DEFAULT_MUSIC_DIM = 200  # musicnn penultimate dense layer (lite profile); configurable

DEFAULT_KEEP_VERSIONS = 2  # the live version and the one before it (to roll back by hand)
STALE_BUILD_AGE = timedelta(hours=6)  # an unfinished build older than this is a crashed refresh
MAX_POINT_ID = 2**64 - 1  # Qdrant integer point ids are unsigned 64-bit

_VERSION_RE = re.compile(r"^v(\d{8}T\d{12})$")
_VERSION_TIME_FORMAT = "%Y%m%dT%H%M%S%f"

TrackId = str  # a decimal integer ("42") or a UUID, as the SQL tracks table hands it out
PointId = int | str  # what Qdrant stores: an unsigned integer or a canonical UUID string


# --- errors -----------------------------------------------------------------------------------


class CatalogError(RuntimeError):
    """Base class of catalog failures that callers may want to report to an admin."""


class CatalogLockedError(CatalogError):
    """The embedded catalog directory is already open in another process."""


class UnknownTrackError(CatalogError, LookupError):
    """A track id given as a recommendation example is not in the live catalog version."""

    def __init__(self, track_ids: Sequence[TrackId], vector_name: str) -> None:
        self.track_ids = tuple(track_ids)
        super().__init__(f"tracks {list(self.track_ids)} have no {vector_name!r} vector in the live catalog")


class SchemaError(CatalogError, ValueError):
    """A vector name or dimension that the catalog schema does not declare."""


# --- schema -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VectorSpec:
    """One named dense vector of every catalog point; all are compared by cosine."""

    name: str
    dim: int


@dataclass(frozen=True)
class CatalogSchema:
    """The named vectors of a catalog version (their names and dimensions)."""

    vectors: tuple[VectorSpec, ...]

    def __post_init__(self) -> None:
        names = [v.name for v in self.vectors]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"a catalog schema needs distinct vector names, got {names}")
        for spec in self.vectors:
            if spec.dim <= 0:
                raise ValueError(f"vector {spec.name!r} has dimension {spec.dim}")

    @classmethod
    def default(
        cls,
        *,
        fusion_dim: int = FUSION_DIM,
        text_dim: int = TEXT_DIM_MINILM,
        music_dim: int = DEFAULT_MUSIC_DIM,
    ) -> CatalogSchema:
        """The schema the bot uses: fusion (paper) + text and music (zero-shot scorer)."""
        return cls(
            vectors=(
                VectorSpec(FUSION_VECTOR, fusion_dim),
                VectorSpec(TEXT_VECTOR, text_dim),
                VectorSpec(MUSIC_VECTOR, music_dim),
            )
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.vectors)

    def dim(self, name: str) -> int:
        for spec in self.vectors:
            if spec.name == name:
                return spec.dim
        raise SchemaError(f"unknown vector {name!r}; the catalog has {list(self.names)}")

    def to_json(self) -> dict[str, int]:
        return {v.name: v.dim for v in self.vectors}

    @classmethod
    def from_json(cls, data: Mapping[str, int]) -> CatalogSchema:
        return cls(vectors=tuple(VectorSpec(str(k), int(v)) for k, v in data.items()))


# --- domain dataclasses -------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackPayload:
    """What the catalog knows about a track besides its vectors (Qdrant payload)."""

    title: str
    artist: str = ""
    tags: tuple[str, ...] = ()  # file metadata + admin manifest + musicnn top-5 MTT/MSD tags
    tag_probs: Mapping[str, float] = field(default_factory=dict)  # musicnn tag -> probability
    duration_s: float = 0.0
    tempo_bpm: float | None = None
    loudness_db: float | None = None  # integrated loudness, dB (LUFS-like)
    licence: str = ""  # e.g. "CC-BY-SA-4.0"; filtered with CatalogFilter.licences
    source: str = ""  # where the audio lives (file path or URL)
    content_hash: str = ""  # sha256 of the audio file
    fusion_id: str = ""  # fingerprint of the fusion checkpoint whose target tower made the "fusion" vector ("": unknown / none)

    def to_dict(self, track_id: TrackId) -> dict[str, Any]:
        """The stored Qdrant payload; `track_id` is kept in it so scrolls can return it."""
        return {
            "track_id": track_id,
            "title": self.title,
            "artist": self.artist,
            "tags": list(self.tags),
            "tag_probs": {str(k): float(v) for k, v in self.tag_probs.items()},
            "duration_s": float(self.duration_s),
            "tempo_bpm": None if self.tempo_bpm is None else float(self.tempo_bpm),
            "loudness_db": None if self.loudness_db is None else float(self.loudness_db),
            "licence": self.licence,
            "source": self.source,
            "content_hash": self.content_hash,
            "fusion_id": self.fusion_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrackPayload:
        tempo = data.get("tempo_bpm")
        loudness = data.get("loudness_db")
        return cls(
            title=str(data.get("title", "")),
            artist=str(data.get("artist", "")),
            tags=tuple(str(t) for t in data.get("tags") or ()),
            tag_probs={str(k): float(v) for k, v in (data.get("tag_probs") or {}).items()},
            duration_s=float(data.get("duration_s") or 0.0),
            tempo_bpm=None if tempo is None else float(tempo),
            loudness_db=None if loudness is None else float(loudness),
            licence=str(data.get("licence", "")),
            source=str(data.get("source", "")),
            content_hash=str(data.get("content_hash", "")),
            fusion_id=str(data.get("fusion_id", "")),
        )


def normalize_track_id(track_id: TrackId | int | uuid.UUID) -> TrackId:
    """Canonical string form of a track id: decimal digits, or a lower-case hyphenated UUID."""
    if isinstance(track_id, bool):
        raise TypeError("a track id cannot be a bool")
    if isinstance(track_id, int):
        if not 0 <= track_id <= MAX_POINT_ID:
            raise ValueError(f"integer track id {track_id} is outside 0..2**64-1")
        return str(track_id)
    if isinstance(track_id, uuid.UUID):
        return str(track_id)
    text = str(track_id).strip()
    if text.isdigit():
        return normalize_track_id(int(text))
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise ValueError(f"track id {track_id!r} is neither an unsigned integer nor a UUID") from None


def to_point_id(track_id: TrackId) -> PointId:
    """The Qdrant point id of a track id (integers stay integers, UUIDs become strings)."""
    canonical = normalize_track_id(track_id)
    return int(canonical) if canonical.isdigit() else canonical


def from_point_id(point_id: int | str | uuid.UUID) -> TrackId:
    return normalize_track_id(point_id)


@dataclass(frozen=True)
class TrackPoint:
    """One track to index: its id, its named vectors and its payload."""

    track_id: TrackId
    vectors: Mapping[str, np.ndarray]  # name -> (dim,) float vector; a track may lack some names
    payload: TrackPayload

    def __post_init__(self) -> None:
        object.__setattr__(self, "track_id", normalize_track_id(self.track_id))
        if not self.vectors:
            raise ValueError(f"track {self.track_id} has no vectors")


@dataclass(frozen=True)
class Hit:
    """One ranked result: cosine similarity (search) or recommendation score."""

    track_id: TrackId
    score: float
    payload: TrackPayload


@dataclass(frozen=True)
class TrackRecord:
    """A stored track read back by id or by scrolling; vectors only when asked for."""

    track_id: TrackId
    payload: TrackPayload
    vectors: Mapping[str, np.ndarray] = field(default_factory=dict)  # name -> (dim,) float32


@dataclass(frozen=True)
class CatalogFilter:
    """Payload conditions of a search; all given conditions must hold."""

    tags_any: tuple[str, ...] = ()  # the track carries at least one of these tags
    min_duration_s: float | None = None  # inclusive
    max_duration_s: float | None = None  # inclusive
    licences: tuple[str, ...] = ()  # the track's licence is one of these

    def __post_init__(self) -> None:
        if (
            self.min_duration_s is not None
            and self.max_duration_s is not None
            and self.min_duration_s > self.max_duration_s
        ):
            raise ValueError(f"min_duration_s {self.min_duration_s} > max_duration_s {self.max_duration_s}")

    @property
    def is_empty(self) -> bool:
        return not (
            self.tags_any or self.licences or self.min_duration_s is not None or self.max_duration_s is not None
        )


class RecommendStrategy(str, Enum):
    """How positive and negative examples become a ranking (Qdrant's recommend strategies).

    BEST_SCORE: each candidate takes its best similarity to a positive; if a negative is closer,
        its score is the negated (sigmoid-scaled) negative similarity, which pushes everything
        near a rejected track below everything near a liked one.
    SUM_SCORES: sum of similarities to positives minus sum of similarities to negatives.
    AVERAGE_VECTOR: one nearest-neighbour search for avg(pos) + avg(pos) - avg(neg).
    """

    BEST_SCORE = "best_score"
    SUM_SCORES = "sum_scores"
    AVERAGE_VECTOR = "average_vector"


@dataclass(frozen=True)
class CatalogVersion:
    """One built (or building) catalog version."""

    name: str  # "v20250301T120000123456": build start time, UTC, sortable
    created_at: datetime
    points: int | None  # None while building
    live: bool
    complete: bool  # False for a build in progress or one that crashed


# --- helpers shared by the backends ------------------------------------------------------------


def new_version_name(now: datetime | None = None) -> str:
    """A version name that sorts by creation time (microsecond resolution)."""
    now = now or datetime.now(UTC)
    return "v" + now.astimezone(UTC).strftime(_VERSION_TIME_FORMAT)


def version_created_at(name: str) -> datetime | None:
    match = _VERSION_RE.match(name)
    if not match:
        return None
    return datetime.strptime(match.group(1), _VERSION_TIME_FORMAT).replace(tzinfo=UTC)


def as_query_vector(schema: CatalogSchema, vector_name: str, vector: np.ndarray | Sequence[float]) -> np.ndarray:
    """Validate a vector against the schema; returns a (dim,) float32 array."""
    dim = schema.dim(vector_name)
    arr = np.asarray(vector, dtype=np.float32).reshape(-1)  # (dim,)
    if arr.shape[0] != dim:
        raise SchemaError(f"vector {vector_name!r} must have {dim} values, got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"vector {vector_name!r} contains NaN or infinity")
    if not np.any(arr):
        raise ValueError(f"vector {vector_name!r} is all zeros: cosine similarity is undefined")
    return arr


def checked_point_vectors(schema: CatalogSchema, point: TrackPoint) -> dict[str, list[float]]:
    """The point's vectors as lists, validated against the schema."""
    try:
        return {name: as_query_vector(schema, name, vec).tolist() for name, vec in point.vectors.items()}
    except (SchemaError, ValueError) as exc:
        raise type(exc)(f"track {point.track_id}: {exc}") from exc


def average_vector_query(positives: Sequence[np.ndarray], negatives: Sequence[np.ndarray]) -> np.ndarray:
    """Qdrant's `average_vector` recommend query: avg(pos) + avg(pos) - avg(neg)."""
    avg_pos = np.mean(np.stack(positives), axis=0)  # (dim,)
    if not negatives:
        return avg_pos
    avg_neg = np.mean(np.stack(negatives), axis=0)  # (dim,)
    return avg_pos + avg_pos - avg_neg


class NoExamplesError(ValueError):
    """A recommend query with no example left to recommend around (all of them left the catalog)."""


def check_recommend_examples(
    strategy: RecommendStrategy, n_positive: int, n_negative: int
) -> None:
    if n_positive + n_negative == 0:
        raise NoExamplesError("recommend needs at least one positive or negative example")
    if strategy is RecommendStrategy.AVERAGE_VECTOR and n_positive == 0:
        raise ValueError("the average_vector strategy needs at least one positive example")


def check_limit(limit: int) -> None:
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")


def normalize_ids(track_ids: Iterable[TrackId]) -> list[TrackId]:
    """Canonical ids, duplicates removed, order kept."""
    return list(dict.fromkeys(normalize_track_id(t) for t in track_ids))


# --- the interface -------------------------------------------------------------------------------


class VersionWriter(ABC):
    """Builds one catalog version; `commit()` makes it live atomically, `abort()` discards it.

    Used as a context manager, an exception inside the block aborts the build and leaving the
    block without `commit()` aborts it too: only an explicit commit changes what is served.
    """

    name: str

    @abstractmethod
    def upsert(self, points: Iterable[TrackPoint]) -> int:
        """Add (or replace) points in the version being built; returns how many were written."""

    @abstractmethod
    def commit(self) -> CatalogVersion:
        """Finish the build and make this version the live one in one atomic switch."""

    @abstractmethod
    def abort(self) -> None:
        """Discard the build; the live version is untouched. Idempotent."""

    @property
    @abstractmethod
    def finished(self) -> bool:
        """True once committed or aborted."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.finished:
            return
        if exc_type is None:
            log.warning("catalog version %s left without commit(): discarding it", self.name)
        else:
            log.warning("catalog version %s failed (%s): discarding it", self.name, exc_type.__name__)
        self.abort()


class MusicCatalog(ABC):
    """The music catalog: nearest-neighbour search and recommendation over the live version."""

    schema: CatalogSchema

    @abstractmethod
    def search(
        self,
        vector_name: str,
        query_vector: np.ndarray | Sequence[float],
        *,
        limit: int = 10,
        exclude_ids: Iterable[TrackId] = (),
        filters: CatalogFilter | None = None,
    ) -> list[Hit]:
        """Top `limit` tracks by cosine similarity to `query_vector` in the named vector space.

        `exclude_ids` are the tracks already shown in the conversation (DESIGN.md, step 3).
        Returns [] while no version is live.
        """

    @abstractmethod
    def recommend(
        self,
        vector_name: str,
        *,
        positive_ids: Iterable[TrackId] = (),
        negative_ids: Iterable[TrackId] = (),
        positive_vectors: Sequence[np.ndarray] = (),
        negative_vectors: Sequence[np.ndarray] = (),
        limit: int = 10,
        exclude_ids: Iterable[TrackId] = (),
        filters: CatalogFilter | None = None,
        strategy: RecommendStrategy = RecommendStrategy.BEST_SCORE,
    ) -> list[Hit]:
        """Tracks like the positive examples and unlike the negative ones.

        Examples are stored tracks (by id) or raw vectors (e.g. the conversation's query
        vector as a positive, "another one, not like this" as the last track's id as a
        negative). Example tracks never appear in the results.
        Raises UnknownTrackError if an example id has no such vector in the live version.
        """

    @abstractmethod
    def get(self, track_ids: Iterable[TrackId], *, with_vectors: bool = False) -> list[TrackRecord]:
        """Stored tracks in the order asked; ids that are not in the live version are skipped."""

    @abstractmethod
    def count(self, filters: CatalogFilter | None = None) -> int:
        """Number of tracks in the live version (matching `filters` if given)."""

    @abstractmethod
    def scroll_payloads(self, *, batch_size: int = 256) -> Iterator[TrackRecord]:
        """Every track of the live version (payload only), in point-id order."""

    @abstractmethod
    def begin_version(self) -> VersionWriter:
        """Start building a new catalog version (a refresh)."""

    @abstractmethod
    def list_versions(self) -> list[CatalogVersion]:
        """All versions, oldest first, including unfinished builds."""

    @abstractmethod
    def drop_version(self, name: str) -> None:
        """Delete a version that is not live."""

    @abstractmethod
    def close(self) -> None:
        """Release the backend (and the embedded directory's lock)."""

    def live_version(self) -> CatalogVersion | None:
        return next((v for v in self.list_versions() if v.live), None)

    def drop_old_versions(self, keep: int = DEFAULT_KEEP_VERSIONS, *, now: datetime | None = None) -> list[str]:
        """Keep the newest `keep` complete versions (the live one always), drop the others.

        Unfinished builds are dropped only once older than STALE_BUILD_AGE, because on a
        server another bot process may be building one right now. Returns the dropped names.
        """
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (the live version), got {keep}")
        now = now or datetime.now(UTC)
        versions = self.list_versions()
        complete = [v for v in versions if v.complete]
        kept = {v.name for v in complete[-keep:]} | {v.name for v in versions if v.live}
        dropped: list[str] = []
        for version in versions:
            if version.name in kept:
                continue
            if not version.complete and now - version.created_at < STALE_BUILD_AGE:
                continue
            self.drop_version(version.name)
            dropped.append(version.name)
        if dropped:
            log.info("dropped old catalog versions %s (keeping %d)", dropped, keep)
        return dropped

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

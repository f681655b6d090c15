"""What the service answers: the reply, and the platform-neutral track card inside it (bot/service/contract.py)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bot.service.contract import ActionKind, MediaFile


class ReplyKind(enum.StrEnum):
    RECOMMENDATION = "recommendation"  # one (or k) tracks
    EXHAUSTED = "exhausted"  # no matching track left: `message` says why
    PREVIEW = "preview"  # "use this": `preview` is the video with the track (or `message` says why not)


@dataclass(frozen=True)
class ScoredTrack:
    """One re-ranked candidate (the ranking a reply lists for scripts and tests)."""

    track_id: str  # sha256 content hash
    title: str
    score: float  # total re-ranking score
    parts: Mapping[str, float]  # weighted score parts (semantic, pace, steering, not like rejected...)


@dataclass(frozen=True)
class TrackCard:
    """A recommended track as an adapter shows it."""

    track_id: str  # sha256 content hash of the audio (the SQL identity)
    catalog_id: str  # the catalog point id (UUID of the hash's first 128 bits)
    rank: int  # 1 = best
    title: str
    artist: str
    mtt_tags: tuple[str, ...]  # top-5 MagnaTagATune tags (paper section 3)
    msd_tags: tuple[str, ...]  # top-5 Million Song Dataset tags
    tags: tuple[str, ...]  # every payload tag (metadata + manifest + automatic)
    score: float  # total re-ranking score
    search_score: float  # the catalog's similarity for the searched vector
    parts: Mapping[str, float]  # the score breakdown
    duration_s: float
    licence: str
    tempo_bpm: float | None
    reason: str
    reason_source: str  # "tag summary", or the reasoner's REASON_SOURCE_* (ServiceConfig.reasoner)
    excerpt: MediaFile | None  # a short audio file to listen to (ogg or mp3), None when unavailable
    excerpt_note: str = ""  # why there is no excerpt
    source: str = ""  # the track's audio file

    @property
    def excerpt_path(self) -> Path | None:
        return None if self.excerpt is None else self.excerpt.path


@dataclass(frozen=True)
class Reply:
    """What the service answers to one message."""

    kind: ReplyKind
    conversation_id: int
    turn_index: int  # the turn this reply belongs to (for PREVIEW: the turn whose track was used)
    mode: str  # "zero-shot" or "fusion"
    tracks: tuple[TrackCard, ...] = ()
    understood: str = ""  # Preference.describe() of the user's words ("more drums, less sad")
    unmatched: tuple[str, ...] = ()  # words nothing understood
    unavailable: tuple[str, ...] = ()  # what the words asked for that no track in the catalog has ("more opera")
    filters: str = ""  # the filters in force (FilterRequest.describe())
    message: str = ""  # a sentence for EXHAUSTED and PREVIEW replies, or a note
    preview: MediaFile | None = None  # PREVIEW: the video with the track (fits ReplyOptions.preview_budget_bytes)
    actions: tuple[ActionKind, ...] = ()  # the buttons this reply offers (bot/service/contract.py)
    reason_pending: bool = False  # the card came before the LLM's reason (CardEvent); FinalEvent has it
    ranking: tuple[ScoredTrack, ...] = ()  # the re-ranked pool, best first
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds per stage

    @property
    def track(self) -> TrackCard | None:
        return self.tracks[0] if self.tracks else None

    @property
    def preview_path(self) -> Path | None:
        return None if self.preview is None else self.preview.path

"""The conversation service: one video (or a few words), then as many turns of feedback as the user likes.

DESIGN.md, "Data flow of one conversation", for every platform (terminal, Discord, Slack). An
adapter hands the service a video and/or text and gets back a `Reply` dataclass to format. The
turns follow the paper's two-turn protocol, extended to any number of turns (section 5):

- turn 1: the video (plus the user's words, if any): `Engine.query(video=..., text=...)`;
- turn k >= 2: the video + the track recommended at turn k-1 as the candidate music x_mc (section
  4.1: `TrackContext` from the catalog record: its "text" vector, tag probabilities, rhythm (tempo
  and loudness from the payload, onset rate from the indexer's SQL attributes) and, for the fusion
  model, its per-segment music features from the indexer's feature cache) + the user's feedback;
- a text-only start ("calm piano for a wedding video"): no video; at turns k >= 2 the opening
  words stand in for the video as a second positive example of the retrieval, so "more drums"
  does not forget "wedding";
- "another" without words is a negative example: every track rejected that way in the conversation
  is a `Query.negative_ids` entry, retrieved with the catalog's recommend (the turn's query vector
  as the positive example, the rejected tracks as negatives) and penalised again by the
  re-ranker ("not like rejected");
- filters in the user's words ("under 2 minutes", "CC-BY only") become a `CatalogFilter` for the
  rest of the conversation (bot/service/filters.py) and are cut out of the feedback the engine reads.

A track shown once in a conversation is never shown again: every search excludes all the tracks
the conversation's SQL rows recommended. Each turn retrieves `candidate_pool` candidates (a
nearest-neighbour search on `Query.vector_name`, or a recommend query), fetches their vectors,
re-ranks them (`Query.rerank`) and answers with the best.

Persistence and restarts: every step is written through `ConversationStore` before the reply is
returned (the feedback row on the previous turn, then the new turn with its recommendations, or
with none when the catalog has no matching track left). Nothing else is kept between turns: the
state is derived from SQL, the video's features are cached in the media store (the serialised
`VideoFeatures`, found through a small key file `<media root>/keys/video-features/...`, since the
store itself is addressed by content), and the uploaded video is in the media store too. A new
process on the same database and catalog continues any conversation, and no audio is decoded
during a conversation: excerpts come from the indexer (bot/service/catalog_admin.py); only when one is
missing is it cut on the spot, within `excerpt_budget_s`, else the reply says it is unavailable.

Concurrency: one turn at a time per conversation (`storage.locks.conversation_lock`), any number
of conversations at once. Model work (video decoding and embedding, query encoding, catalog
search, re-ranking, ffmpeg renders) runs off the event loop in a bounded pool (`ModelPool`: a
thread pool of N workers behind an asyncio semaphore of N); a request that has to wait for a
worker is told how many requests are ahead of it through its `on_status` callback.

A reply's reason is a plain summary of the track's tags and the score breakdown, labelled
`reason_source = "tag summary"`, unless `ServiceConfig.reasoner = "local"`: then the best track's
reason is written by the reasoner (engine/reasoner.py, paper 4.2) on its own thread within
`reasoner_timeout_s`, labelled by what its prompt held ("llm (title + tags, untrained soft token
left out)" or "llm + music token"). `ServiceConfig.reasoner = "http"` asks an OpenAI-compatible
server instead (bot/service/reasoner_http.py: `reasoner_url`, `reasoner_model`, optional `reasoner_api_key`),
text only, labelled "llm via http (title + tags)". When either fails or times out, the tag summary is
given with a note that the model's reason is unavailable.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import gc
import inspect
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.service.catalog_layout import FEATURES_DIR, FeatureCache, catalog_schema, features_key
from storage.catalog.ids import track_id_for
from bot.service.filters import FilterRequest, conversation_filters, parse_filters
from engine.encoders.musicnn import top_tags
from engine.engine import MODE_FUSION, TEXT_VECTOR, CandidateRow, Engine, Query, Ranking, TrackContext
from engine.media import MediaError, MediaLimits
from engine.render import EXCERPT_S, cut_excerpt, make_preview
from engine.video import VideoFeatures, content_hash
from engine.zeroshot import LOUDNESS_RANGE_DB, ONSET_RANGE, TEMPO_RANGE_BPM, video_sentence
from storage.catalog import CatalogFilter, Hit, MusicCatalog, SchemaError, TrackRecord, UnknownTrackError
from storage.conversation_store import Conversation, ConversationStore, Feedback, Recommendation, Turn
from storage.db import ensure_schema, make_engine
from storage.locks import DEFAULT_LOCK_TIMEOUT_S, ConversationBusyError, conversation_lock
from storage.media_store import MediaNotFoundError, MediaStore, MediaTooLargeError, RetentionPolicy
from storage.models import ConversationStatus, FeedbackKind
from storage.track_store import TrackStore

log = logging.getLogger(__name__)

T = TypeVar("T")

REASON_SOURCE_TAGS = "tag summary"  # the reasoner is off, failed or timed out
REASONER_OFF = "off"  # ServiceConfig.reasoner: the tag summary is the reason
REASONER_LOCAL = "local"  # the profile's LLM in this process (engine/reasoner.py, paper 4.2)
REASONER_HTTP = "http"  # an OpenAI-compatible server (Ollama, vLLM), text only (bot/service/reasoner_http.py)
REASONER_MODES = (REASONER_OFF, REASONER_LOCAL, REASONER_HTTP)
REASONER_TIMEOUT_S = 3.0  # seconds a reply waits for the LLM's reason (lite: ~2.5 s for 40 tokens on 2 cores)
REASONER_MAX_NEW_TOKENS = 48  # tokens of an LLM reason in a reply
DEFAULT_WORKERS = 2  # model threads (one per core of the 2-core reference machine)
EXCERPT_BUDGET_S = 0.3  # seconds a reply waits for an excerpt cut on the spot
VIDEO_CACHE_SIZE = 64  # VideoFeatures kept in memory (a few hundred KB each)
ATTRIBUTE_CACHE_SIZE = 50_000  # tracks whose indexer attributes are kept in memory
RANKING_SHOWN = 200  # re-ranked candidates a reply lists (for scripts and tests)
KEYS_DIR = "keys"  # under the media store root: key files naming stored objects
VIDEO_FEATURES_KEYS = "video-features"
TOP_TAGS = 5  # per vocabulary (paper section 3: top-5 MTT + top-5 MSD)
PLATFORM_TERMINAL = "terminal"
# A track whose rhythm the catalog does not know sits at the centre of the zero-shot scorer's
# ranges (geometric for tempo and onset rate, arithmetic for loudness): it neither wins nor loses
# on pace. Used for every candidate alike, so a missing value never creates a difference.
NEUTRAL_TEMPO_BPM = float(np.sqrt(TEMPO_RANGE_BPM[0] * TEMPO_RANGE_BPM[1]))
NEUTRAL_LOUDNESS_DB = float(np.mean(LOUDNESS_RANGE_DB))
NEUTRAL_ONSET_RATE = float(np.sqrt(ONSET_RANGE[0] * ONSET_RANGE[1]))

StatusCallback = Callable[[str], Awaitable[None] | None]
ReasonTokenCallback = Callable[[str], Awaitable[None] | None]  # each piece of the LLM's reason as it is written

# "another", "next", "skip": a rejection (with words after it, the words are feedback)
ANOTHER_RE = re.compile(
    r"^\s*(?:/another\b|(?:give\s+me\s+|show\s+me\s+|try\s+|play\s+)?(?:another|next|skip|something\s+else|a\s+different)"
    r"(?:\s+(?:one|track|song|tune|pick|please|then))*)[\s,.;:!-]*",
    re.I,
)
USE_RE = re.compile(
    r"^\s*(?:/use|use\s+(?:this|it|that)(?:\s+one)?|i'?ll\s+take\s+(?:it|this)|this\s+one|perfect|that'?s\s+it)\s*[.!]*\s*$", re.I
)


# =================================================================================================
# errors
# =================================================================================================


class ConversationError(Exception):
    """A request the service cannot serve; `user_message` is fit for the chat."""

    def __init__(self, user_message: str, detail: str | None = None) -> None:
        super().__init__(detail or user_message)
        self.user_message = user_message


class UnknownConversationError(ConversationError, LookupError):
    """No conversation with that id (or platform keys)."""


class ConversationExistsError(ConversationError):
    """`start` on a channel/thread that already holds a conversation."""


class EmptyCatalogError(ConversationError):
    """The live catalog holds no track (or none is live)."""


class NothingToAskError(ConversationError, ValueError):
    """A start with neither a video nor any words about the music."""


class VideoGoneError(ConversationError):
    """The conversation's video and its features were both removed by the media store's retention."""


class CatalogMismatchError(ConversationError):
    """The live catalog's vectors do not fit the loaded models (built for another profile)."""


class BusyError(ConversationError):
    """The conversation's previous turn is still running after the lock timeout."""


# =================================================================================================
# replies
# =================================================================================================


class ReplyKind(enum.StrEnum):
    RECOMMENDATION = "recommendation"  # one (or k) tracks
    EXHAUSTED = "exhausted"  # no matching track left: `message` says why
    PREVIEW = "preview"  # "use this": `preview_path` is the video with the track


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
    excerpt_path: Path | None  # a short audio file to listen to, None when unavailable
    excerpt_note: str = ""  # why there is no excerpt
    source: str = ""  # the track's audio file


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
    filters: str = ""  # the filters in force (FilterRequest.describe())
    message: str = ""  # a sentence for EXHAUSTED and PREVIEW replies, or a note
    preview_path: Path | None = None
    ranking: tuple[ScoredTrack, ...] = ()  # the re-ranked pool, best first
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds per stage

    @property
    def track(self) -> TrackCard | None:
        return self.tracks[0] if self.tracks else None


@dataclass(frozen=True)
class ConversationState:
    """A conversation as its SQL rows describe it (what a restarted process resumes from)."""

    conversation: Conversation
    turns: tuple[Turn, ...]
    feedback: tuple[Feedback, ...]

    @property
    def id(self) -> int:
        return self.conversation.id

    @property
    def video_sha256(self) -> str | None:
        return self.turns[0].video_sha256 if self.turns else None

    @property
    def opening_text(self) -> str:
        return self.turns[0].user_text if self.turns else ""

    @property
    def shown(self) -> tuple[str, ...]:
        """Every track recommended so far, in order (sha256)."""
        return tuple(dict.fromkeys(r.track_id for t in self.turns for r in t.recommendations))

    @property
    def last_pick(self) -> tuple[Turn, Recommendation] | None:
        """The latest turn that recommended something, and its best track."""
        for t in reversed(self.turns):
            if t.recommendations:
                return t, t.recommendations[0]
        return None

    @property
    def rejected(self) -> tuple[str, ...]:
        """Tracks the user passed on with a bare "another" (negative examples), oldest first."""
        return tuple(dict.fromkeys(f.track_id for f in self.feedback if f.kind is FeedbackKind.ANOTHER and f.track_id))

    @property
    def filters(self) -> FilterRequest:
        return conversation_filters(t.user_text for t in self.turns)


# =================================================================================================
# the bounded model pool
# =================================================================================================


async def _notify(cb: StatusCallback | None, message: str) -> None:
    if cb is None:
        return
    try:
        result = cb(message)
        if inspect.isawaitable(result):
            await result
    except Exception:  # noqa: BLE001 - a broken status channel must not fail the turn
        log.warning("status callback failed for %r", message, exc_info=True)


class ModelPool:
    """A thread pool of `workers` threads behind an asyncio semaphore of the same size.

    The semaphore queues requests in arrival order on the event loop (asyncio's semaphore is
    fair), so the number of requests ahead of a newcomer is known and can be told; the threads
    keep the event loop free while models run.
    """

    def __init__(self, workers: int = DEFAULT_WORKERS) -> None:
        if workers < 1:
            raise ValueError(f"a model pool needs at least one worker, got {workers}")
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="musechat-model")
        self._slots = asyncio.Semaphore(workers)
        self._waiting = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    async def run(self, fn: Callable[..., T], /, *args: Any, on_status: StatusCallback | None = None, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` on a worker thread once a slot is free; tell the caller if it waits."""
        if self._slots.locked() or self._waiting:
            ahead = self._waiting + 1  # the waiters before us, and one running request to finish
            self._waiting += 1
            try:
                await _notify(on_status, f"{ahead} request{'s' if ahead != 1 else ''} ahead of you; yours is queued")
                await self._slots.acquire()
            finally:
                self._waiting -= 1
        else:
            await self._slots.acquire()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        finally:
            self._slots.release()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


# =================================================================================================
# what the indexer left: attributes in SQL, analyses in the feature cache, excerpts in the media store
# =================================================================================================


@dataclass(frozen=True)
class TrackExtras:
    """A track's indexer attributes the catalog payload does not carry."""

    onset_rate: float | None  # onsets per second (engine/rhythm.py)
    excerpt_sha256: str | None  # the listening excerpt in the media store
    excerpt_start_s: float | None  # where that excerpt starts in the track, seconds


class TrackAssets:
    """Reads what bot/service/catalog_admin.py stored per track (module docstring there), with a memory cache."""

    def __init__(self, tracks: TrackStore, features: FeatureCache | None) -> None:
        self._tracks = tracks
        self.features = features
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

    def remember_cut(self, content_hash: str, sha256: str) -> None:
        self._cut[content_hash] = sha256

    def cut_sha(self, content_hash: str) -> str | None:
        return self._cut.get(content_hash)


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


# =================================================================================================
# configuration
# =================================================================================================


@dataclass
class ServiceConfig:
    workers: int = DEFAULT_WORKERS  # model threads (and the semaphore's size)
    candidate_pool: int | None = None  # candidates re-ranked per turn; None: the engine's
    excerpt_budget_s: float = EXCERPT_BUDGET_S  # seconds to wait for an excerpt cut on the spot
    excerpt_format: str = "ogg"  # of excerpts cut on the spot
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S  # seconds a turn waits for its conversation's previous turn
    mix_original_sound: bool = False  # previews keep the video's own sound under the track
    max_upload_bytes: int | None = None  # None: the media store's limit
    reasoner: str = REASONER_OFF  # "off" | "local" | "http": who writes the best track's reason (paper 4.2)
    reasoner_timeout_s: float = REASONER_TIMEOUT_S  # after this, the reply falls back to the tag summary
    reasoner_checkpoint: Path | None = None  # trained LoRA + f_l; None: title + tags, no soft token
    reasoner_max_new_tokens: int = REASONER_MAX_NEW_TOKENS
    reasoner_url: str | None = None  # reasoner="http": the server's base URL (/v1/chat/completions is added)
    reasoner_model: str | None = None  # reasoner="http": the server's model name
    reasoner_api_key: str | None = field(default=None, repr=False)  # reasoner="http": bearer key, never logged


# =================================================================================================
# the service
# =================================================================================================


@dataclass
class _TurnPlan:
    """One turn's inputs, gathered on the event loop before the model work."""

    state: ConversationState | None
    video: VideoFeatures | None
    text: str  # the feedback the engine reads (filters cut out)
    anchor_text: str  # text-only conversations: the opening words (filters cut out)
    candidate_sha: str | None
    negative_shas: tuple[str, ...]
    exclude_shas: tuple[str, ...]
    filters: FilterRequest
    k: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds spent before the model work (video)


@dataclass
class _Retrieved:
    query: Query
    hits: list[Hit]
    records: list[TrackRecord]
    catalog_filter: CatalogFilter | None
    timings: dict[str, float]


class ConversationService:
    """Conversations over a catalog (module docstring). Safe for many concurrent conversations."""

    def __init__(
        self,
        *,
        engine: Engine,
        catalog: MusicCatalog,
        store: ConversationStore,
        sql: AsyncEngine,  # the engine the store writes with (conversation locks use it too)
        media: MediaStore,
        assets: TrackAssets | None = None,
        config: ServiceConfig | None = None,
        limits: MediaLimits | None = None,
        ffmpeg: str | None = None,
    ) -> None:
        self.engine = engine
        self.catalog = catalog
        self.store = store
        self.sql = sql
        self.media = media
        self.config = config or ServiceConfig()
        self.assets = assets or TrackAssets(TrackStore(sql), None)
        self.limits = limits or engine.config.limits
        self.ffmpeg = ffmpeg if ffmpeg is not None else engine.config.ffmpeg
        self.pool = ModelPool(self.config.workers)
        self._videos: OrderedDict[str, VideoFeatures] = OrderedDict()
        self._video_lock = threading.Lock()
        self._inflight: dict[str, asyncio.Future[VideoFeatures]] = {}
        self._licences: tuple[str | None, tuple[str, ...]] = (None, ())  # (live version, licences)
        self._owned: list[Callable[[], Awaitable[None] | None]] = []
        self._keys_dir = media.root / KEYS_DIR / VIDEO_FEATURES_KEYS
        self._keys_dir.mkdir(parents=True, exist_ok=True)
        if self.config.reasoner not in REASONER_MODES:
            raise ValueError(f"unknown reasoner {self.config.reasoner!r}: choose one of {', '.join(REASONER_MODES)}")
        if self.config.reasoner == REASONER_HTTP and not (self.config.reasoner_url and self.config.reasoner_model):
            raise ValueError("reasoner='http' needs reasoner_url and reasoner_model (MUSECHAT_REASONER_URL / _MODEL)")
        self._reasoner: Any = None  # engine.reasoner.MusicReasoner, loaded on first use (or warm_up)
        self._reasoner_lock = threading.Lock()
        self._reasoner_executor: ThreadPoolExecutor | None = None  # one thread: generation is CPU-bound

    # --- construction from settings -------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        settings: Any,
        *,
        profile: str | None = None,
        config: ServiceConfig | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> ConversationService:
        """Everything from `bot.settings.Settings`: schema upgrade (embedded SQLite), catalog, models.

        Raises the storage layer's errors (an unreachable database, an outdated PostgreSQL schema,
        a locked embedded catalog) for the caller to report.
        """
        import dataclasses

        from engine.profiles import resolve_profile
        from storage.catalog import open_catalog

        say = progress or (lambda _: None)
        config = config or settings.service_config()
        engine_config = settings.engine_config()
        if profile:
            engine_config = dataclasses.replace(engine_config, profile=profile)
        profile_name = engine_config.profile
        say("checking the database")
        await ensure_schema(settings.sql_url)
        sql = make_engine(settings.sql_url)
        catalog = None
        try:
            cfg = resolve_profile(profile_name, settings.backbone_overrides)
            fusion = engine_config.fusion_checkpoint is not None
            say("opening the catalog")
            catalog = await asyncio.to_thread(
                open_catalog, url=settings.qdrant_url, api_key=settings.qdrant_api_key, path=settings.catalog_dir,
                schema=catalog_schema(cfg, fusion=fusion),
            )  # fmt: skip
            media = MediaStore(
                settings.media_dir,
                max_file_bytes=settings.max_upload_bytes,
                retention=RetentionPolicy(
                    max_age_s=settings.media_max_age_days * 86400.0,
                    max_total_bytes=int(settings.media_max_total_mb * 2**20),
                ),
            )
            limits = engine_config.limits
            engine = Engine(engine_config)
            say(f"loading the '{profile_name}' models")
            await asyncio.to_thread(engine.warm_up)
            features = FeatureCache(Path(settings.data_dir) / FEATURES_DIR / features_key(engine.encoders.profile))
            service = cls(
                engine=engine, catalog=catalog, store=ConversationStore(sql), sql=sql, media=media,
                assets=TrackAssets(TrackStore(sql), features), config=config, limits=limits, ffmpeg=settings.ffmpeg_binary,
            )  # fmt: skip
            await service.warm_up()
            settle_heap()
        except BaseException:
            if catalog is not None:
                catalog.close()
            await sql.dispose()
            raise
        service._owned = [catalog.close, sql.dispose]
        return service

    async def warm_up(self) -> None:
        """Check the catalog fits the models, and read what the first turn would pay for (licences).

        Raises `CatalogMismatchError` when the live catalog was built for another profile (its
        "text" vectors have another dimension than this text encoder's).
        """
        await asyncio.to_thread(self._check_catalog)
        await self._known_licences()
        if self.config.reasoner == REASONER_LOCAL:
            try:
                await asyncio.to_thread(self._get_reasoner)
            except Exception:  # noqa: BLE001 - replies fall back to the tag summary
                log.exception("the reasoner did not load; replies give the tag summary")

    def _check_catalog(self) -> None:
        if self.catalog.count() == 0:
            return
        dim = int(self.engine.encoders.text.dim)
        try:
            self.catalog.search(TEXT_VECTOR, np.ones(dim, dtype=np.float32), limit=1)
        except SchemaError as exc:
            raise CatalogMismatchError(
                f"the catalog was built for another model profile than '{self.engine.config.profile}' "
                f"({exc}): run musechat catalog refresh with this profile",
            ) from exc

    async def close(self) -> None:
        """Stop the pool; close what `open` opened."""
        await asyncio.to_thread(self.pool.shutdown)
        if self._reasoner_executor is not None:
            self._reasoner_executor.shutdown(wait=False, cancel_futures=True)
        for close in self._owned:
            result = close()
            if inspect.isawaitable(result):
                await result
        self._owned = []

    # --- public API -----------------------------------------------------------------------------

    async def start(
        self,
        *,
        video: Path | str | bytes | None = None,
        text: str = "",
        platform: str = PLATFORM_TERMINAL,
        channel_id: str,
        thread_id: str = "",
        workspace_id: str = "",
        user_id: str,
        user_name: str = "",
        k: int = 1,
        on_status: StatusCallback | None = None,
        on_reason_token: ReasonTokenCallback | None = None,
    ) -> Reply:
        """Open a conversation with a video (and optional words) or with words only; answer turn 1.

        Raises `ConversationExistsError` when the channel/thread already has one, `NothingToAskError`
        without video or musical words, `EmptyCatalogError`, and the video's `MediaError`s (not a
        video, audio only, truncated, too long, too large) before anything is stored.
        """
        existing = await self.store.get_conversation(platform=platform, channel_id=channel_id, thread_id=thread_id)
        if existing is not None and existing.turn_count > 0:
            raise ConversationExistsError(
                "This thread already has a conversation; reply to it, or start a new thread.",
                f"conversation {existing.id} exists on {platform}/{channel_id}/{thread_id}",
            )
        parsed = parse_filters(text)
        if video is None and not parsed.text.strip():
            raise NothingToAskError("Send me a video, or tell me what kind of music you want (e.g. \"calm piano for a wedding video\").")
        await self._require_catalog()
        t0 = time.perf_counter()
        vf, video_ref = None, None
        before: dict[str, float] = {}
        if video is not None:
            await _notify(on_status, "decoding and embedding your video")
            vf, video_ref = await self._ingest_video(video, on_status)
            before["video"] = time.perf_counter() - t0  # hash, decode + embed (unless cached), store
        conv = await self.store.get_or_create_conversation(
            platform=platform, channel_id=channel_id, thread_id=thread_id, workspace_id=workspace_id,
            platform_user_id=user_id, user_name=user_name, profile=self.engine.config.profile,
            model_version=self.engine.mode,
        )  # fmt: skip
        log.info("conversation %d: start on %s by %s (%s)", conv.id, platform, user_id, "video" if vf is not None else "text only")
        async with self._locked(conv.id):
            state = await self.state(conv.id)
            if state.turns:  # a concurrent start won the race
                raise ConversationExistsError("This thread already has a conversation; reply to it, or start a new thread.")
            plan = _TurnPlan(
                state=state, video=vf, text=parsed.text, anchor_text="", candidate_sha=None, negative_shas=(),
                exclude_shas=(), filters=parsed.filters, k=k, timings=before,
            )  # fmt: skip
            return await self._turn(
                conv, plan, user_text=text, video_sha=vf.content_hash if vf else None, video_ref=video_ref,
                on_status=on_status, on_reason_token=on_reason_token, t0=t0,
            )  # fmt: skip

    async def message(
        self, conversation_id: int, text: str, *, k: int = 1, on_status: StatusCallback | None = None,
        on_reason_token: ReasonTokenCallback | None = None,
    ) -> Reply:  # fmt: skip
        """Answer a free-form message: "use this", "another (one)", or feedback words."""
        if USE_RE.match(text or ""):
            return await self.use_this(conversation_id, on_status=on_status)
        m = ANOTHER_RE.match(text or "")
        if m:
            return await self.another(conversation_id, text=text[m.end() :], k=k, on_status=on_status, on_reason_token=on_reason_token)
        return await self.feedback(conversation_id, text, k=k, on_status=on_status, on_reason_token=on_reason_token)

    async def feedback(
        self, conversation_id: int, text: str, *, k: int = 1, on_status: StatusCallback | None = None,
        on_reason_token: ReasonTokenCallback | None = None,
    ) -> Reply:  # fmt: skip
        """A turn k >= 2: the video + the previous track + these words (paper section 4.1)."""
        return await self._next_turn(conversation_id, text, FeedbackKind.REFINE, k=k, on_status=on_status, on_reason_token=on_reason_token)

    async def another(
        self, conversation_id: int, *, text: str = "", k: int = 1, on_status: StatusCallback | None = None,
        on_reason_token: ReasonTokenCallback | None = None,
    ) -> Reply:  # fmt: skip
        """"Another one": without other words the previous track becomes a negative example."""
        return await self._next_turn(conversation_id, text, FeedbackKind.ANOTHER, k=k, on_status=on_status, on_reason_token=on_reason_token)

    async def use_this(self, conversation_id: int, *, on_status: StatusCallback | None = None) -> Reply:
        """"Use this": record the choice and render the preview (the video with the track under it)."""
        t0 = time.perf_counter()
        async with self._locked(conversation_id):
            state = await self.state(conversation_id)
            pick = state.last_pick
            if pick is None:
                raise ConversationError("There is no track to use yet.")
            turn, rec = pick
            await self.store.record_feedback(turn_id=turn.id, kind=FeedbackKind.ACCEPT, text="use this", track_id=rec.track_id)
            await self.store.set_status(conversation_id=conversation_id, status=ConversationStatus.CLOSED)
            record = await self.pool.run(self._get_records, [track_id_for(rec.track_id)], False, on_status=on_status)
            if not record:
                return Reply(ReplyKind.PREVIEW, conversation_id, turn.index, turn.mode,
                             message="That track has left the catalog since; I cannot render a preview of it.")  # fmt: skip
            card_source = record[0].payload.source
            if state.video_sha256 is None:
                return Reply(
                    ReplyKind.PREVIEW, conversation_id, turn.index, turn.mode,
                    message=f"Noted: \"{record[0].payload.title}\". There is no video in this conversation to preview it with; "
                    f"the track is {card_source}.",
                )  # fmt: skip
            try:
                video_path = self.media.path_for(state.video_sha256)
            except MediaNotFoundError:
                raise VideoGoneError("Your video is no longer stored here, so I cannot render the preview; please send it again.") from None
            extras = (await self.assets.extras([rec.track_id]))[rec.track_id]
            await _notify(on_status, "rendering the preview")
            path = await self.pool.run(
                self._render_preview, video_path, Path(card_source), extras.excerpt_start_s or 0.0, on_status=on_status
            )
            log.info("conversation %d: preview of %s rendered", conversation_id, rec.track_id[:12])
            return Reply(
                ReplyKind.PREVIEW, conversation_id, turn.index, turn.mode, preview_path=path,
                message=f"Here is your video with \"{record[0].payload.title}\".",
                timings={"total": time.perf_counter() - t0},
            )  # fmt: skip

    async def state(self, conversation_id: int) -> ConversationState:
        """The conversation as stored; raises UnknownConversationError."""
        conv = await self.store.get_conversation_by_id(conversation_id=conversation_id)
        if conv is None:
            raise UnknownConversationError(f"There is no conversation {conversation_id}.")
        turns = await self.store.list_turns(conversation_id=conversation_id)
        fb = await self.store.list_feedback(conversation_id=conversation_id)
        return ConversationState(conv, tuple(turns), tuple(fb))

    async def find(self, *, platform: str, channel_id: str, thread_id: str = "") -> int | None:
        """The id of the conversation of a channel/thread, if any."""
        conv = await self.store.get_conversation(platform=platform, channel_id=channel_id, thread_id=thread_id)
        return None if conv is None else conv.id

    # --- turns ----------------------------------------------------------------------------------

    async def _next_turn(
        self, conversation_id: int, text: str, kind: FeedbackKind, *, k: int, on_status: StatusCallback | None,
        on_reason_token: ReasonTokenCallback | None = None,
    ) -> Reply:  # fmt: skip
        t0 = time.perf_counter()
        parsed = parse_filters(text or "")
        words = parsed.text.strip()
        if kind is FeedbackKind.ANOTHER and words:
            kind = FeedbackKind.REFINE  # "another one, but with drums": words steer, no rejection
        async with self._locked(conversation_id):
            state = await self.state(conversation_id)
            if not state.turns:
                raise ConversationError("This conversation has not started yet: send a video or a few words first.")
            await self._require_catalog()
            if state.conversation.status is ConversationStatus.CLOSED:
                await self.store.set_status(conversation_id=conversation_id, status=ConversationStatus.ACTIVE)
            pick = state.last_pick
            if pick is not None:
                turn, rec = pick
                await self.store.record_feedback(turn_id=turn.id, kind=kind, text=text or "", track_id=rec.track_id)
                if kind is FeedbackKind.ANOTHER:  # the state gains this rejection
                    state = await self.state(conversation_id)
            vf = None
            if state.video_sha256 is not None:
                vf = await self._video_for(state.video_sha256, on_status)
            anchor = parse_filters(state.opening_text).text if state.video_sha256 is None else ""
            plan = _TurnPlan(
                state=state, video=vf, text=words, anchor_text=anchor,
                candidate_sha=pick[1].track_id if pick else None, negative_shas=state.rejected,
                exclude_shas=state.shown, filters=state.filters.merge(parsed.filters), k=k,
            )  # fmt: skip
            return await self._turn(
                state.conversation, plan, user_text=text or "", video_sha=state.video_sha256,
                video_ref=state.turns[0].video_ref, on_status=on_status, on_reason_token=on_reason_token, t0=t0,
            )  # fmt: skip

    async def _turn(
        self,
        conv: Conversation,
        plan: _TurnPlan,
        *,
        user_text: str,
        video_sha: str | None,
        video_ref: str | None,
        on_status: StatusCallback | None,
        t0: float,
        on_reason_token: ReasonTokenCallback | None = None,
    ) -> Reply:
        """Query, retrieve, re-rank, persist, answer (module docstring). Runs under the conversation lock."""
        licences = await self._known_licences()
        catalog_filter = plan.filters.to_catalog_filter(licences)
        # the previous track and rejected tracks as the engine needs them (SQL attributes: onset rate)
        context_shas = [s for s in (plan.candidate_sha, *plan.negative_shas) if s]
        context_extras = await self.assets.extras(context_shas) if context_shas else {}
        await _notify(on_status, "searching the catalog")
        retrieved = await self.pool.run(self._retrieve, plan, catalog_filter, context_extras, on_status=on_status)
        cand_shas = [r.payload.content_hash for r in retrieved.records]
        extras = await self.assets.extras(cand_shas) if cand_shas else {}
        ranking, rows = await self.pool.run(self._rerank, retrieved, extras, on_status=on_status)
        timings = plan.timings | retrieved.timings
        pref = retrieved.query.preference
        understood = pref.describe() if pref is not None else ""
        unmatched = tuple(pref.unmatched) if pref is not None else ()
        mode = retrieved.query.mode
        if not rows:
            message = await self._exhausted_message(plan, catalog_filter)
            turn = await self.store.add_turn(
                conversation_id=conv.id, mode=mode, user_text=user_text, video_sha256=video_sha, video_ref=video_ref,
                candidate_track_id=plan.candidate_sha, timings=timings | {"total": time.perf_counter() - t0},
            )  # fmt: skip
            log.info("conversation %d turn %d: nothing left (%s)", conv.id, turn.index, message)
            return Reply(
                ReplyKind.EXHAUSTED, conv.id, turn.index, mode, understood=understood, unmatched=unmatched,
                filters=plan.filters.describe(), message=message, timings=turn.timings,
            )  # fmt: skip
        picks = [int(i) for i in ranking.order[: max(1, plan.k)]]
        t_cards = time.perf_counter()
        cards = []
        for rank, i in enumerate(picks, start=1):
            cards.append(await self._card(rank, retrieved.records[i], rows[i], ranking, i, plan, understood, extras, on_status, on_reason_token))
        timings["cards"] = time.perf_counter() - t_cards
        timings["total"] = time.perf_counter() - t0
        turn = await self.store.add_turn(
            conversation_id=conv.id, mode=mode, user_text=user_text, video_sha256=video_sha, video_ref=video_ref,
            candidate_track_id=plan.candidate_sha, timings=timings,
            recommendations=[Recommendation(rank=c.rank, track_id=c.track_id, score=c.score, reason=c.reason) for c in cards],
        )  # fmt: skip
        shown = tuple(
            ScoredTrack(retrieved.records[int(i)].payload.content_hash, retrieved.records[int(i)].payload.title,
                        float(ranking.scores[int(i)]), ranking.explain(int(i)))
            for i in ranking.order[:RANKING_SHOWN]
        )  # fmt: skip
        log.info(
            "conversation %d turn %d (%s): %s (score %.2f) in %.0f ms",
            conv.id, turn.index, mode, cards[0].title, cards[0].score, 1000 * timings["total"],
        )  # fmt: skip
        return Reply(
            ReplyKind.RECOMMENDATION, conv.id, turn.index, mode, tracks=tuple(cards), understood=understood,
            unmatched=unmatched, filters=plan.filters.describe(), ranking=shown, timings=timings,
        )  # fmt: skip

    # --- model work (worker threads) -------------------------------------------------------------

    def _context(self, sha: str, record: TrackRecord | None, extras: TrackExtras | None) -> TrackContext:
        """A shown track as the engine's `TrackContext` (the paper's candidate music x_mc)."""
        if record is None:
            return TrackContext(sha)
        p = record.payload
        segment_music = self.assets.segment_music(sha) if self.engine.mode == MODE_FUSION else None
        return TrackContext(
            track_id=record.track_id,
            text=record.vectors.get(TEXT_VECTOR),
            tag_probs=dict(p.tag_probs),
            rhythm=_rhythm(p.tempo_bpm, p.loudness_db, extras.onset_rate if extras else None),
            segment_music=segment_music,
        )

    def _get_records(self, catalog_ids: Sequence[str], with_vectors: bool) -> list[TrackRecord]:
        return self.catalog.get(catalog_ids, with_vectors=with_vectors)

    def _retrieve(self, plan: _TurnPlan, catalog_filter: CatalogFilter | None, context_extras: Mapping[str, TrackExtras]) -> _Retrieved:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        # the previous and the rejected tracks, read back from the catalog (vectors for the engine)
        ids = {s: track_id_for(s) for s in (plan.candidate_sha, *plan.negative_shas) if s}
        records = {r.payload.content_hash or r.track_id: r for r in self.catalog.get(list(ids.values()), with_vectors=True)} if ids else {}
        candidate = None
        if plan.candidate_sha is not None and plan.candidate_sha in records:
            candidate = self._context(plan.candidate_sha, records[plan.candidate_sha], context_extras.get(plan.candidate_sha))
        negatives = [self._context(s, records[s], context_extras.get(s)) for s in plan.negative_shas if s in records]
        timings["context"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        text = plan.text or None
        if plan.video is None and text is None and candidate is None and not negatives:
            text = plan.anchor_text or None  # text-only, nothing shown yet (turn 1 found nothing): ask again
        query = self.engine.query(video=plan.video, text=text, candidate=candidate, negatives=negatives)
        timings["query"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        limit = self.config.candidate_pool or self.engine.config.candidate_pool
        exclude = [track_id_for(s) for s in plan.exclude_shas]
        positives: list[np.ndarray] = [] if query.vector is None else [np.asarray(query.vector, dtype=np.float32)]
        if plan.anchor_text and query.vector_name == TEXT_VECTOR:
            # text-only conversation: the opening words stand in for the video (module docstring)
            anchor = self.engine.text_vector(plan.anchor_text)
            if not positives or not np.allclose(positives[0], anchor):
                positives.append(np.asarray(anchor, dtype=np.float32))
        try:
            hits = self._search(query, positives, limit, exclude, catalog_filter)
        except SchemaError as exc:
            raise ConversationError(
                "The catalog was built with another model profile than the one answering now: run `musechat catalog refresh`.",
                str(exc),
            ) from exc
        timings["search"] = time.perf_counter() - t2

        t3 = time.perf_counter()
        recs = self.catalog.get([h.track_id for h in hits], with_vectors=True) if hits else []
        by_id = {r.track_id: r for r in recs}
        kept_hits = [h for h in hits if h.track_id in by_id]
        timings["fetch"] = time.perf_counter() - t3
        return _Retrieved(query, kept_hits, [by_id[h.track_id] for h in kept_hits], catalog_filter, timings)

    def _search(
        self, query: Query, positives: list[np.ndarray], limit: int, exclude: list[str], catalog_filter: CatalogFilter | None
    ) -> list[Hit]:
        neg_ids = list(query.negative_ids)
        pos_ids = list(query.positive_ids)
        while True:
            try:
                if not neg_ids and not pos_ids and len(positives) == 1:
                    return self.catalog.search(query.vector_name, positives[0], limit=limit, exclude_ids=exclude, filters=catalog_filter)
                if not neg_ids and not pos_ids and not positives:
                    return []
                return self.catalog.recommend(
                    query.vector_name, positive_ids=pos_ids, negative_ids=neg_ids, positive_vectors=positives,
                    limit=limit, exclude_ids=exclude, filters=catalog_filter,
                )  # fmt: skip
            except UnknownTrackError as exc:  # an example left the catalog in a refresh: go on without it
                gone = set(exc.track_ids)
                if not gone & (set(neg_ids) | set(pos_ids)):
                    raise
                neg_ids = [t for t in neg_ids if t not in gone]
                pos_ids = [t for t in pos_ids if t not in gone]
            except ValueError as exc:
                if "recommend needs" in str(exc):  # nothing left to recommend around
                    return []
                raise

    def _rerank(self, retrieved: _Retrieved, extras: Mapping[str, TrackExtras]) -> tuple[Ranking, list[CandidateRow]]:
        t0 = time.perf_counter()
        rows = []
        for hit, rec in zip(retrieved.hits, retrieved.records, strict=True):
            text = rec.vectors.get(TEXT_VECTOR)
            if text is None:
                continue
            ex = extras.get(rec.payload.content_hash)
            rows.append(
                CandidateRow(
                    track_id=rec.track_id, text=text, tag_probs=rec.payload.tag_probs,
                    rhythm=_rhythm(rec.payload.tempo_bpm, rec.payload.loudness_db, ex.onset_rate if ex else None),
                    search_score=hit.score,
                )  # fmt: skip
            )
        if len(rows) != len(retrieved.records):  # keep records aligned with rows
            keep = {r.track_id for r in rows}
            pairs = [(h, r) for h, r in zip(retrieved.hits, retrieved.records, strict=True) if r.track_id in keep]
            retrieved.hits, retrieved.records = [h for h, _ in pairs], [r for _, r in pairs]
        ranking = retrieved.query.rerank(rows)
        retrieved.timings["rerank"] = time.perf_counter() - t0
        return ranking, rows

    # --- videos ---------------------------------------------------------------------------------

    def _features_key_file(self, video_sha: str) -> Path:
        cfg = self.engine.config
        return self._keys_dir / video_sha[:2] / f"{video_sha}-{cfg.profile}-{cfg.query_fps:g}fps"

    def _cache_key(self, video_sha: str) -> str:
        return f"{video_sha}:{self.engine.config.profile}:{self.engine.config.query_fps:g}"

    def _remember(self, vf: VideoFeatures) -> None:
        with self._video_lock:
            key = self._cache_key(vf.content_hash)
            self._videos[key] = vf
            self._videos.move_to_end(key)
            while len(self._videos) > VIDEO_CACHE_SIZE:
                self._videos.popitem(last=False)

    def _stored_features(self, video_sha: str) -> VideoFeatures | None:
        """The features cached in the media store for this video, profile and frame rate, if any."""
        key_file = self._features_key_file(video_sha)
        try:
            ref = key_file.read_text(encoding="utf-8").strip()
            vf = VideoFeatures.from_bytes(self.media.path_for(ref).read_bytes())
        except (FileNotFoundError, MediaNotFoundError, ValueError):
            return None
        except Exception as exc:  # noqa: BLE001 - a damaged cache entry is recomputed
            log.warning("cached features of video %s are unreadable (%s): recomputing", video_sha[:12], exc)
            return None
        return vf if vf.content_hash == video_sha else None

    def _store_features(self, vf: VideoFeatures) -> None:
        ref = self.media.put_bytes(vf.to_bytes())
        key_file = self._features_key_file(vf.content_hash)
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=key_file.parent, prefix=".key-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(ref.sha256)
        os.replace(tmp, key_file)

    def _cached_video(self, video_sha: str) -> VideoFeatures | None:
        with self._video_lock:
            vf = self._videos.get(self._cache_key(video_sha))
        if vf is not None:
            return vf
        vf = self._stored_features(video_sha)
        if vf is not None:
            self._remember(vf)
        return vf

    async def _video_for(self, video_sha: str, on_status: StatusCallback | None) -> VideoFeatures:
        """The conversation's video features: memory, then the media store, else decoded again from the stored video."""
        vf = await asyncio.to_thread(self._cached_video, video_sha)
        if vf is not None:
            return vf
        try:
            path = self.media.path_for(video_sha)
        except MediaNotFoundError:
            raise VideoGoneError(
                "Your video is no longer stored here (old files are cleaned up); please start again with it."
            ) from None
        await _notify(on_status, "decoding your video again (its cached features were cleaned up)")
        return await self._compute_once(video_sha, path, on_status)

    async def _compute_once(self, video_sha: str, path: Path, on_status: StatusCallback | None) -> VideoFeatures:
        """Decode and embed a video, once even when several requests ask for it at the same time."""
        key = self._cache_key(video_sha)
        fut = self._inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            vf = await self.pool.run(self.engine.video_features, path, on_status=on_status)
            await asyncio.to_thread(self._store_features, vf)
            self._remember(vf)
            fut.set_result(vf)
            return vf
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: the waiters (if any) re-raise it
            raise
        finally:
            self._inflight.pop(key, None)

    async def _ingest_video(self, video: Path | str | bytes, on_status: StatusCallback | None) -> tuple[VideoFeatures, str]:
        """Validate and embed an upload (features once per content), then keep it in the media store."""
        limit = self.config.max_upload_bytes
        tmp: Path | None = None
        if isinstance(video, bytes):
            fd, name = tempfile.mkstemp(dir=self.media.tmp_dir, prefix="upload-")
            with os.fdopen(fd, "wb") as f:
                f.write(video)
            path = tmp = Path(name)
        else:
            path = Path(video)
            if not path.is_file():
                raise FileNotFoundError(2, "no such file", str(path))
        try:
            sha = await asyncio.to_thread(content_hash, path)
            vf = await asyncio.to_thread(self._cached_video, sha)
            if vf is None:
                vf = await self._compute_once(sha, path, on_status)  # raises the MediaErrors of a bad upload
            try:
                ref = await asyncio.to_thread(self.media.put_file, path, max_bytes=limit, move=tmp is not None)
            except MediaTooLargeError as exc:
                raise ConversationError("That video is too large for me to keep.", str(exc)) from exc
            return vf, ref.sha256
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    # --- replies --------------------------------------------------------------------------------

    async def _card(
        self,
        rank: int,
        rec: TrackRecord,
        row: CandidateRow,
        ranking: Ranking,
        i: int,
        plan: _TurnPlan,
        understood: str,
        extras: Mapping[str, TrackExtras],
        on_status: StatusCallback | None,
        on_reason_token: ReasonTokenCallback | None = None,
    ) -> TrackCard:
        p = rec.payload
        sha = p.content_hash
        mtt, msd = top_tags(dict(p.tag_probs), k=TOP_TAGS)
        mtt_names = tuple(n.lower() for n, _ in mtt)
        msd_names = tuple(n.lower() for n, _ in msd)
        if not mtt_names and not msd_names:  # a tagger without MTT/MSD vocabularies: the payload's tags
            mtt_names = tuple(p.tags[:TOP_TAGS])
            msd_names = tuple(p.tags[TOP_TAGS : 2 * TOP_TAGS])
        parts = ranking.explain(i)
        ex = extras.get(sha)
        excerpt, note = await self._excerpt(sha, p.source, ex, on_status)
        tags = list(dict.fromkeys(mtt_names + msd_names)) or list(p.tags)
        reason = tag_summary(
            title=p.title, tags=tags, parts=parts, video=plan.video, understood=understood,
            tempo_bpm=p.tempo_bpm, rejected=bool(plan.negative_shas),
        )  # fmt: skip
        reason_source = REASON_SOURCE_TAGS
        if self.config.reasoner != REASONER_OFF and rank == 1:  # one LLM call per reply bounds its latency
            reason, reason_source = await self._llm_reason(p.title, sha, tags, plan, reason, on_reason_token)
        return TrackCard(
            track_id=sha, catalog_id=rec.track_id, rank=rank, title=p.title, artist=p.artist,
            mtt_tags=mtt_names, msd_tags=msd_names, tags=tuple(p.tags), score=float(ranking.scores[i]),
            search_score=float(row.search_score), parts=parts, duration_s=p.duration_s, licence=p.licence,
            tempo_bpm=p.tempo_bpm, reason=reason, reason_source=reason_source, excerpt_path=excerpt,
            excerpt_note=note, source=p.source,
        )  # fmt: skip

    def _get_reasoner(self) -> Any:
        """The profile's reasoner (engine/reasoner.py), loaded once (worker thread)."""
        with self._reasoner_lock:
            if self._reasoner is None:
                from engine.reasoner import load_reasoner

                profile = self.engine.encoders.profile
                self._reasoner = load_reasoner(
                    profile.reasoner, music_dim=profile.music_dim, checkpoint=self.config.reasoner_checkpoint,
                    device=self.engine.config.device,
                )  # fmt: skip
            return self._reasoner

    async def _llm_reason(
        self, title: str, sha: str, tags: Sequence[str], plan: _TurnPlan, fallback: str,
        on_reason_token: ReasonTokenCallback | None = None,
    ) -> tuple[str, str]:  # fmt: skip
        """(reason, reason_source): the LLM's, within `reasoner_timeout_s`, else the tag summary saying why.

        With `on_reason_token`, each piece the local LLM writes is handed to it (in order, on the event
        loop) as it comes; all of them arrive before this returns.
        """
        from engine.reasoner import Justification, ReasonInput, justify, reason_or_fallback

        if self.config.reasoner == REASONER_HTTP:
            return await self._http_reason(title, tags, plan, fallback, on_reason_token)
        if self._reasoner_executor is None:
            self._reasoner_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="musechat-reasoner")
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        reasoner = self._reasoner
        if reasoner is None:  # not warmed up: load it, but never wait past the limit for it
            loading = loop.run_in_executor(self._reasoner_executor, self._get_reasoner)
            try:
                reasoner = await asyncio.wait_for(asyncio.shield(loading), self.config.reasoner_timeout_s)
            except Exception as e:  # noqa: BLE001 - the reply still gives the track
                error = "the model is still loading" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
                log.warning("no reasoner for this reply: %s", error)
                j = Justification(None, REASON_SOURCE_TAGS, time.perf_counter() - t0, error=error)
                return reason_or_fallback(j, fallback, REASON_SOURCE_TAGS)
        music = None
        if reasoner.trained:  # the soft token needs the track's mean music embedding (feature cache)
            segments = await loop.run_in_executor(self._reasoner_executor, self.assets.segment_music, sha)
            music = None if segments is None else np.asarray(segments, dtype=np.float32).mean(axis=0)  # (Dm,)
        video = video_sentence(plan.video.labels[:3]) if plan.video is not None else plan.anchor_text
        inp = ReasonInput(title, music_vector=music, tags=tuple(tags), feedback=plan.text, video=video)
        remaining = max(0.0, self.config.reasoner_timeout_s - (time.perf_counter() - t0))
        relay = _TokenRelay(on_reason_token, loop) if on_reason_token is not None else None
        try:
            j = await justify(
                reasoner, inp, timeout_s=remaining, executor=self._reasoner_executor,
                max_new_tokens=self.config.reasoner_max_new_tokens, on_token=relay.put if relay is not None else None,
            )  # fmt: skip
        finally:
            if relay is not None:
                await relay.close()
        return reason_or_fallback(j, fallback, REASON_SOURCE_TAGS)

    async def _http_reason(
        self, title: str, tags: Sequence[str], plan: _TurnPlan, fallback: str, on_reason_token: ReasonTokenCallback | None = None,
    ) -> tuple[str, str]:  # fmt: skip
        """(reason, reason_source) from the OpenAI-compatible server (text only), else the tag summary saying why.

        The server answers in one piece (no streaming request): `on_reason_token` gets the whole text once.
        """
        from bot.service.reasoner_http import HttpReasonerConfig, justify_http
        from engine.reasoner import ReasonInput, reason_or_fallback

        cfg = HttpReasonerConfig(
            base_url=self.config.reasoner_url or "", model=self.config.reasoner_model or "",
            api_key=self.config.reasoner_api_key, max_tokens=self.config.reasoner_max_new_tokens,
        )  # fmt: skip
        video = video_sentence(plan.video.labels[:3]) if plan.video is not None else plan.anchor_text
        inp = ReasonInput(title, tags=tuple(tags), feedback=plan.text, video=video)
        j = await justify_http(inp, cfg, timeout_s=self.config.reasoner_timeout_s)
        if j.text and on_reason_token is not None:
            relay = _TokenRelay(on_reason_token, asyncio.get_running_loop())
            relay.put(j.text)
            await relay.close()
        return reason_or_fallback(j, fallback, REASON_SOURCE_TAGS)

    async def _excerpt(
        self, sha: str, source: str, ex: TrackExtras | None, on_status: StatusCallback | None
    ) -> tuple[Path | None, str]:
        """The indexer's excerpt; else one cut now if it is ready within the budget (module docstring)."""
        for ref in (ex.excerpt_sha256 if ex else None, self.assets.cut_sha(sha)):
            if ref:
                try:
                    return self.media.path_for(ref), ""
                except (MediaNotFoundError, ValueError):
                    continue
        if not source or not Path(source).is_file():
            return None, "excerpt unavailable: the track's audio file is not reachable from here"
        start = ex.excerpt_start_s if ex and ex.excerpt_start_s is not None else None
        task = asyncio.ensure_future(self.pool.run(self._cut_excerpt, sha, Path(source), start, on_status=None))
        try:
            path = await asyncio.wait_for(asyncio.shield(task), timeout=self.config.excerpt_budget_s)
        except TimeoutError:
            # the cut goes on in the background; the next reply that shows this track will have it
            task.add_done_callback(_log_task_failure)
            return None, "excerpt unavailable right now (still being cut); ask again in a moment"
        except (MediaError, OSError) as exc:
            log.warning("no excerpt for track %s: %s", sha[:12], exc)
            return None, "excerpt unavailable: the track's audio could not be cut"
        return path, ""

    def _cut_excerpt(self, sha: str, source: Path, start_s: float | None) -> Path:
        fmt = self.config.excerpt_format
        out = self.media.tmp_dir / f"excerpt-{sha}-{os.getpid()}-{threading.get_ident()}.{fmt}"
        try:
            if start_s is None:  # centred window (the indexer's choice needs the analysis)
                from engine.media import probe

                info = probe(source, limits=self.limits, require_audio=True, ffmpeg=self.ffmpeg)
                start_s = max(0.0, (info.duration_s - EXCERPT_S) / 2)
                excerpt = cut_excerpt(source, out, start_s=start_s, fmt=fmt, info=info, limits=self.limits, ffmpeg=self.ffmpeg)  # type: ignore[arg-type]
            else:
                excerpt = cut_excerpt(source, out, start_s=start_s, fmt=fmt, limits=self.limits, ffmpeg=self.ffmpeg)  # type: ignore[arg-type]
            ref = self.media.put_file(excerpt.path, move=True)
        finally:
            out.unlink(missing_ok=True)
        self.assets.remember_cut(sha, ref.sha256)
        return ref.path

    def _render_preview(self, video: Path, track: Path, start_s: float) -> Path:
        out = self.media.tmp_dir / f"preview-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}.mp4"
        try:
            make_preview(
                video, track, out, track_start_s=start_s, mix_original=self.config.mix_original_sound,
                limits=self.limits, ffmpeg=self.ffmpeg,
            )  # fmt: skip
            ref = self.media.put_file(out, move=True)
        finally:
            out.unlink(missing_ok=True)
        return ref.path

    async def _exhausted_message(self, plan: _TurnPlan, catalog_filter: CatalogFilter | None) -> str:
        total = await asyncio.to_thread(self.catalog.count)
        matching = total if catalog_filter is None else await asyncio.to_thread(self.catalog.count, catalog_filter)
        desc = plan.filters.describe()
        if catalog_filter is not None and matching == 0:
            return (
                f"No track in the catalog matches your filters ({desc}). Say \"any length\" or \"any licence\" "
                "to lift them."
            )
        scope = f"the catalog's {matching} tracks that match your filters ({desc})" if catalog_filter is not None else (
            f"the catalog's {matching} tracks"
        )
        return (
            f"You have heard every one of {scope} in this conversation. Add music with `musechat catalog add` "
            "and refresh" + (", or lift a filter." if catalog_filter is not None else ".")
        )

    # --- helpers --------------------------------------------------------------------------------

    async def _require_catalog(self) -> None:
        n = await asyncio.to_thread(self.catalog.count)
        if n == 0:
            raise EmptyCatalogError("the catalog is empty: run musechat catalog add/refresh")

    async def _known_licences(self) -> tuple[str, ...]:
        """Every licence string in the live catalog version (cached per version), for licence filters."""
        live = await asyncio.to_thread(self.catalog.live_version)
        name = live.name if live is not None else None
        if self._licences[0] != name or name is None:
            licences = await asyncio.to_thread(lambda: tuple(sorted({r.payload.licence for r in self.catalog.scroll_payloads()})))
            self._licences = (name, licences)
        return self._licences[1]

    def _locked(self, conversation_id: int):
        return _TurnLock(self, conversation_id)


class _TokenRelay:
    """Pieces of text from the reasoner's thread to an (async) callback on the event loop, in order.

    `put` may be called from any thread; `close` (on the loop) waits until every piece put before
    it has been handed over, then ignores later ones (a timed-out generation still finishing). A
    callback that raises is logged and not called again: a display problem never fails the reply.
    """

    def __init__(self, callback: ReasonTokenCallback, loop: asyncio.AbstractEventLoop) -> None:
        self._callback = callback
        self._loop = loop
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._closed = False
        self._task = loop.create_task(self._deliver())

    def put(self, piece: str) -> None:
        if not self._closed and piece:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, piece)

    async def _deliver(self) -> None:
        broken = False
        while (piece := await self._queue.get()) is not None:
            if broken:
                continue
            try:
                result = self._callback(piece)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # noqa: BLE001 - the reply must still come
                log.warning("the reason-token callback failed; no more pieces go to it", exc_info=True)
                broken = True

    async def close(self) -> None:
        self._closed = True
        self._loop.call_soon_threadsafe(self._queue.put_nowait, None)  # after every piece already scheduled
        await self._task


class _TurnLock:
    """`conversation_lock` with its timeout turned into a chat message."""

    def __init__(self, service: ConversationService, conversation_id: int) -> None:
        self._cm = conversation_lock(service.sql, conversation_id, timeout_s=service.config.lock_timeout_s)
        self._id = conversation_id

    async def __aenter__(self) -> None:
        try:
            await self._cm.__aenter__()
        except ConversationBusyError as exc:
            raise BusyError("I am still working on your previous message; try again in a moment.", str(exc)) from exc

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._cm.__aexit__(*exc)


def settle_heap() -> None:
    """Move everything loaded so far (models, libraries) out of the garbage collector's sight.

    A full (generation 2) collection walks every tracked object; with torch and transformers
    loaded that took 40-200 ms here, on whichever thread triggered it: on the event loop's, every
    chat waits. After `gc.freeze()` those objects sit in a permanent generation that collections
    skip, so they stay short (the objects are long-lived anyway). Called once after start-up.
    """
    gc.collect()
    gc.freeze()
    log.debug("froze %d objects out of garbage collection", gc.get_freeze_count())


def _log_task_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("background excerpt cut failed: %s", task.exception())


def _rhythm(tempo: float | None, loudness: float | None, onset: float | None) -> tuple[float, float, float]:
    """(tempo BPM, loudness dBFS, onsets/s), unknown values at the neutral centre (constants above)."""
    return (
        float(tempo) if tempo and tempo > 0 else NEUTRAL_TEMPO_BPM,
        float(loudness) if loudness is not None else NEUTRAL_LOUDNESS_DB,
        float(onset) if onset is not None and onset > 0 else NEUTRAL_ONSET_RATE,
    )


PART_PHRASES = {
    "semantic": "its description matches {what}",
    "pace": "its tempo and loudness suit the video's pace",
    "steering": "it moves the way you asked ({understood})",
    "fusion": "the trained fusion model ranks it close to your video and words",
    "not like rejected": "it is unlike the track you passed on",
}


def tag_summary(
    *,
    title: str,
    tags: Sequence[str],
    parts: Mapping[str, float],
    video: VideoFeatures | None,
    understood: str,
    tempo_bpm: float | None,
    rejected: bool,
) -> str:
    """A plain reason from the track's tags and the score breakdown (until the reasoner lands).

    Names the track's leading tags, then the score parts that lifted it most (positive parts,
    largest first), e.g. "Battle Epic: classical, strings, slow. Picked because its description
    matches what the video shows (mountain bike, alp) (+1.20) and its tempo and loudness suit the
    video's pace (+0.45)."
    """
    lead = f"{title}: {', '.join(tags[:6])}." if tags else f"{title}."
    if tempo_bpm:
        lead = lead[:-1] + f", about {tempo_bpm:.0f} BPM."
    what = "what you asked for"
    if video is not None and (labels := video_sentence(video.labels[:3])):
        what = f"what the video shows ({labels})" + (" and your words" if understood else "")
    reasons = []
    for name, value in sorted(((n, v) for n, v in parts.items() if n != "total"), key=lambda kv: -kv[1]):
        if value <= 0 or name not in PART_PHRASES:
            continue
        if name == "not like rejected" and not rejected:
            continue
        reasons.append(PART_PHRASES[name].format(what=what, understood=understood or "your words") + f" ({value:+.2f})")
    if not reasons:
        return f"{lead} The closest match left in the catalog (score {parts.get('total', 0.0):.2f})."
    return f"{lead} Picked because " + (", ".join(reasons[:-1]) + " and " + reasons[-1] if len(reasons) > 1 else reasons[0]) + "."


__all__ = [
    "BusyError",
    "CatalogMismatchError",
    "ConversationError",
    "ConversationExistsError",
    "ConversationService",
    "ConversationState",
    "EmptyCatalogError",
    "ModelPool",
    "NothingToAskError",
    "Reply",
    "ReasonTokenCallback",
    "ReplyKind",
    "ScoredTrack",
    "ServiceConfig",
    "settle_heap",
    "TrackAssets",
    "TrackCard",
    "TrackExtras",
    "UnknownConversationError",
    "VideoGoneError",
    "tag_summary",
]

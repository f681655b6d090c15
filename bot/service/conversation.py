"""The conversation service: one video (or a few words), then as many turns of feedback as the user likes.

DESIGN.md, "Data flow of one conversation", for every platform (terminal, Discord, Slack). An
adapter speaks the contract of bot/service/contract.py: `start` (a video and/or words, with the
platform keys), `message` (free words) and `act` (a button's structured `Action`); while a request
runs the service emits its events (status, the card as soon as chosen, the reason's tokens, the
final reply) and returns the `Reply`. The turns follow the paper's two-turn protocol, extended to any number of turns (section 5):

- turn 1: the video (plus the user's words, if any): `Engine.query(video=..., text=...)`;
- turn k >= 2: the video + the track recommended at turn k-1 as the candidate music x_mc (section
  4.1: `TrackContext` from the catalog record: its "text" vector, tag probabilities, rhythm (tempo
  and loudness from the payload, onset rate from the indexer's SQL attributes) and, for the fusion
  model, its per-segment music features from the indexer's feature cache, or, when the checkpoint
  trained the AST towers, its 10 s candidate clip's log-mels for g_mc from that checkpoint's cache,
  bot/service/catalog_layout.py `TowerCache`) + the user's feedback;
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

Persistence and restarts: every step is written through `ConversationStore` before the card goes
out, in one transaction per turn (the feedback row on the previous turn, the new turn with its
recommendations, or with none when the catalog has no matching track left, and the status); the
LLM's reason, written after the card, then replaces the recommendation's tag summary. "Use this"
records the choice once the preview exists. Nothing else is kept between turns: the
state is derived from SQL, the video's features are cached in the media store (the serialised
`VideoFeatures`, found through a small key file `<media root>/keys/video-features/...`, since the
store itself is addressed by content), and the uploaded video is in the media store too. A new
process on the same database and catalog continues any conversation, and no audio is decoded
during a conversation: excerpts come from the indexer (bot/service/catalog_admin.py); only when one is
missing is it cut on the spot, within `excerpt_budget_s`, else the reply says it is unavailable.

Buttons (`act`): only the conversation's owner may press them; a button of an older card than the
latest raises `OutdatedActionError` ("start over" always works); a second "use this" on the same
card raises `DuplicateActionError`. "Start over" forgets the feedback and rejections so far and
answers a fresh first pick for the same video (nothing shown is shown again).

Concurrency: one turn at a time per conversation (`storage.locks.conversation_lock`), any number
of conversations at once. Model work (video decoding and embedding, query encoding, catalog
search, re-ranking, ffmpeg renders) runs off the event loop in the model pool (bot/service/pool.py:
N threads, an interactive lane before the catalog lane a refresh uses); a request that has to wait
is told how many requests are ahead of it (a `StatusEvent`). The named model jobs (decoding and
embedding a video, cutting an excerpt, rendering a preview, writing the LLM's reason) go through
`self.runner` (bot/jobs/runner.py): this pool by default, or SAQ workers behind Redis
(`MUSECHAT_MODEL_RUNNER=saq`). With workers, a turn's query and re-rank are worker jobs too
(`query`, `rerank`) and the catalog search between them stays here, so a front-end loads no model;
in process, the whole retrieval runs on this process's pool as one step. While `drain`
runs (shutdown), new requests are refused with `ShuttingDownError` and those in flight finish.

A reply's reason is a plain summary of the track's tags and the score breakdown, labelled
`reason_source = "tag summary"`, unless `ServiceConfig.reasoner = "local"` (the app's default): then
the best track's reason is written by the reasoner (engine/reasoner.py, paper 4.2; in a process of its
own with `reasoner_process`, engine/reasoner_process.py) within the platform's
`ReplyOptions.reason_budget_s` (default `reasoner_timeout_s`), after the card, labelled by what its
prompt held ("llm, from the facts, each sentence checked", "llm (title + tags, untrained soft token
left out)" or "llm + music token"). `ServiceConfig.reasoner = "http"` asks an OpenAI-compatible
server instead (bot/service/reasoner_http.py: `reasoner_url`, `reasoner_model`, optional `reasoner_api_key`),
text only, labelled "llm via http (title + tags)". When either fails or times out, the tag summary is
given with a note that the model's reason is unavailable. With `reasoner_grounded` (the default) the
reasoner gets the turn's facts (`ReasonRequest`) and each sentence is checked against them before it
is shown (bot/service/reasons.py, engine/grounding.py); if none passes, the tag summary stands, labelled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.jobs.local import InProcessRunner
from bot.jobs.runner import ModelRunner, ReasonRequest
from bot.service.assets import TrackAssets, TrackExtras
from bot.service.contract import (
    Action,
    ActionKind,
    CardEvent,
    Event,
    EventSink,
    FinalEvent,
    MediaFile,
    PlatformKeys,
    ReasonTokenEvent,
    ReplyOptions,
    StatusEvent,
    safe_filename,
)
from bot.service.errors import (
    BusyError,
    CatalogMismatchError,
    ConversationError,
    ConversationExistsError,
    DuplicateActionError,
    EmptyCatalogError,
    NothingToAskError,
    NotOwnerError,
    OutdatedActionError,
    SettingsError,
    ShuttingDownError,
    UnknownConversationError,
    VideoGoneError,
)
from bot.service.filters import FilterRequest, conversation_filters, parse_filters
from bot.service.intents import ANOTHER_RE, USE_RE
from bot.service.media import EXCERPT_BUDGET_S, MediaRenderer
from bot.service.pool import (
    DEFAULT_WORKERS,
    ModelPool,
    notify,
    settle_heap,
)
from bot.service.reasons import (
    REASON_SOURCE_TAGS,
    REASONER_HTTP,
    REASONER_LOCAL,
    REASONER_MAX_NEW_TOKENS,
    REASONER_MODES,
    REASONER_OFF,
    REASONER_TIMEOUT_S,
    ReasonTokenCallback,
    ReasonWriter,
    plan_video_labels,
    plan_video_words,
    tag_summary,
)
from bot.service.replies import Reply, ReplyKind, ScoredTrack, TrackCard
from bot.service.turns import Retriever, TurnPlan, check_fusion_vectors
from bot.service.videos import VideoFeatureStore
from engine.encoders.musicnn import top_tags
from engine.engine import MODE_FUSION, TEXT_VECTOR, CandidateRow, Engine, Ranking
from engine.grounding import ReasonFacts
from engine.media import MediaLimits
from engine.render import human_bytes
from storage.catalog import CatalogFilter, MusicCatalog, SchemaError, TrackRecord
from storage.catalog.ids import track_id_for
from storage.conversation_store import (
    Conversation,
    ConversationStore,
    Feedback,
    PendingFeedback,
    Recommendation,
    Turn,
)
from storage.locks import (
    DEFAULT_LOCK_TIMEOUT_S,
    ConversationBusyError,
    conversation_lock,
)
from storage.media_store import MediaStore
from storage.models import ConversationStatus, FeedbackKind
from storage.track_store import TrackStore

log = logging.getLogger(__name__)

T = TypeVar("T")

RANKING_SHOWN = 200  # re-ranked candidates a reply lists (for scripts and tests)
# the buttons each kind of reply offers (Reply.actions)
AFTER_RECOMMENDATION = (ActionKind.USE, ActionKind.ANOTHER, ActionKind.REFINE, ActionKind.START_OVER)
AFTER_EXHAUSTED = (ActionKind.REFINE, ActionKind.START_OVER)  # words may lift a filter
AFTER_USE = (ActionKind.ANOTHER, ActionKind.REFINE, ActionKind.START_OVER)  # the conversation may go on

LegacyStatusCallback = Callable[[str], Awaitable[None] | None]  # the status sentence only (terminal)
TOP_TAGS = 5  # per vocabulary (paper section 3: top-5 MTT + top-5 MSD)
PLATFORM_TERMINAL = "terminal"
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

    def accepted(self, turn_index: int) -> bool:
        """Whether the user took ("use this") the track of this turn."""
        ids = {t.id for t in self.turns if t.index == turn_index}
        return any(f.kind is FeedbackKind.ACCEPT and f.turn_id in ids for f in self.feedback)

    @property
    def _restarted_after(self) -> int:
        """Index of the last turn answered with "start over" (0: never): what came before is forgotten."""
        index = {t.id: t.index for t in self.turns}
        return max((index.get(f.turn_id, 0) for f in self.feedback if f.kind is FeedbackKind.RESTART), default=0)

    @property
    def rejected(self) -> tuple[str, ...]:
        """Tracks the user passed on with a bare "another" since the last start over (negative examples), oldest first."""
        index = {t.id: t.index for t in self.turns}
        since = self._restarted_after
        return tuple(dict.fromkeys(
            f.track_id for f in self.feedback
            if f.kind is FeedbackKind.ANOTHER and f.track_id and index.get(f.turn_id, 0) > since
        ))  # fmt: skip

    @property
    def filters(self) -> FilterRequest:
        """The filters asked for: in the opening words, and in every message since the last start over."""
        since = self._restarted_after
        return conversation_filters(t.user_text for t in self.turns if t.index == 1 or t.index > since)


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
    reasoner: str = REASONER_OFF  # "off" | "local" | "http": who writes the best track's reason (paper 4.2); the app's
    # default is "local" (bot/settings.py, MUSECHAT_REASONER); a bare ServiceConfig starts no LLM
    reasoner_timeout_s: float = REASONER_TIMEOUT_S  # after this, the reply falls back to the tag summary
    reasoner_grounded: bool = True  # facts-only prompt, every sentence checked before it is shown (engine/grounding.py)
    reasoner_checkpoint: Path | None = None  # trained LoRA + f_l; None: title + tags, no soft token
    reasoner_int8: bool = True  # local, untrained, CPU with native bfloat16: int8 weights for decoding (engine/quantize.py)
    reasoner_process: bool = True  # local: the reasoner runs in a child process of its own (engine/reasoner_process.py)
    reasoner_max_new_tokens: int = REASONER_MAX_NEW_TOKENS
    reasoner_url: str | None = None  # reasoner="http": the server's base URL (/v1/chat/completions is added)
    reasoner_model: str | None = None  # reasoner="http": the server's model name
    reasoner_api_key: str | None = field(default=None, repr=False)  # reasoner="http": bearer key, never logged


# =================================================================================================
# the service
# =================================================================================================


def _request(method: Callable[..., Awaitable[Reply]]) -> Callable[..., Awaitable[Reply]]:
    """A public request: refused while the service drains (shutdown), counted while it runs."""

    @functools.wraps(method)
    async def wrapper(self: ConversationService, *args: Any, **kwargs: Any) -> Reply:
        if self._draining:
            raise ShuttingDownError("I am restarting right now; send that again in a minute.")
        self._active += 1
        self._idle.clear()
        try:
            return await method(self, *args, **kwargs)
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    return wrapper


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
        pool: ModelPool | None = None,  # shared with the catalog admin (bot/app.py); None: the service's own
        runner: ModelRunner | None = None,  # the named model jobs (bot/jobs/); None: in-process, on `pool`
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
        self._draining = False  # True once `drain` began: new requests are refused
        self._active = 0  # requests running now
        self._idle = asyncio.Event()
        self._idle.set()
        self._own_pool = pool is None
        self.pool = pool if pool is not None else ModelPool(self.config.workers)
        self._licences: tuple[str | None, tuple[str, ...]] = (None, ())  # (live version, licences)
        if self.config.reasoner not in REASONER_MODES:
            raise SettingsError(f"unknown reasoner (MUSECHAT_REASONER) {self.config.reasoner!r}: choose one of {', '.join(REASONER_MODES)}")
        if self.config.reasoner == REASONER_HTTP and not (self.config.reasoner_url and self.config.reasoner_model):
            raise SettingsError("reasoner='http' needs reasoner_url and reasoner_model (MUSECHAT_REASONER_URL / _MODEL)")
        self.retriever = Retriever(engine=engine, catalog=catalog, assets=self.assets, candidate_pool=self.config.candidate_pool)
        self.renderer = MediaRenderer(
            media=media, assets=self.assets, pool=self.pool, limits=self.limits, ffmpeg=self.ffmpeg,
            excerpt_budget_s=self.config.excerpt_budget_s, excerpt_format=self.config.excerpt_format,
            mix_original_sound=self.config.mix_original_sound,
        )  # fmt: skip
        self.reasons = ReasonWriter(config=self.config, engine=engine, assets=self.assets)
        self.runner: ModelRunner = runner or InProcessRunner(
            self.pool, engine=engine, media=media, renderer=self.renderer, reasons=self.reasons
        )  # fmt: skip
        self.renderer.runner = self.runner
        self.videos = VideoFeatureStore(engine=engine, media=media, runner=self.runner, max_upload_bytes=self.config.max_upload_bytes)

    async def warm_up(self) -> None:
        """Check the catalog fits the models, and read what the first turn would pay for (licences).

        Raises `CatalogMismatchError` when the live catalog was built for another profile (its
        "text" vectors have another dimension than this text encoder's), or, in fusion mode, with
        another fusion checkpoint or without this checkpoint's trained AST towers (bot/service/turns.py
        `fusion_mismatch`).
        """
        await asyncio.to_thread(self._check_catalog)
        await self._known_licences()
        if self.config.reasoner == REASONER_LOCAL and self.runner.local:  # else the workers load it
            try:
                await asyncio.to_thread(self.reasons.get_reasoner)
            except Exception:  # noqa: BLE001 - replies fall back to the tag summary
                log.exception("the reasoner did not load; replies give the tag summary")

    def _check_catalog(self) -> None:
        if self.catalog.count() == 0:
            return
        if self.runner.local:
            dim = int(self.engine.encoders.text.dim)
        else:  # the models are the workers': the profile's declared size (a front-end loads no model)
            from engine.profiles import resolve_profile

            dim = resolve_profile(self.engine.config.profile, self.engine.config.overrides).text_dim
        try:
            self.catalog.search(TEXT_VECTOR, np.ones(dim, dtype=np.float32), limit=1)
        except SchemaError as exc:
            raise CatalogMismatchError(
                f"the catalog was built for another model profile than '{self.engine.config.profile}' "
                f"({exc}): run musechat catalog refresh with this profile",
            ) from exc
        if self.engine.mode == MODE_FUSION:  # its "fusion" vectors must be this checkpoint's (one refresh builds a version)
            first = next(iter(self.catalog.scroll_payloads(batch_size=1)), None)
            if first is not None:
                check_fusion_vectors(self.engine, first.payload.fusion_id)

    @property
    def active_requests(self) -> int:
        return self._active

    async def drain(self, grace_s: float) -> bool:
        """Stop taking new requests; wait up to `grace_s` for those in flight. True when none is left."""
        self._draining = True
        if self._active:
            log.info("draining: %d request(s) in flight, waiting up to %.0f s", self._active, grace_s)
            try:
                await asyncio.wait_for(self._idle.wait(), grace_s)
            except TimeoutError:
                log.warning("drain: %d request(s) still running after %.0f s", self._active, grace_s)
                return False
        return True

    async def close(self) -> None:
        """Finish or cancel the background work (video decodes, excerpt cuts); stop the pool if it is the service's own."""
        await self.videos.close()
        await self.renderer.close()
        if self._own_pool:
            await asyncio.to_thread(self.pool.shutdown)
        self.reasons.close()

    # --- public API (bot/service/contract.py) ---------------------------------------------------

    @_request
    async def start(
        self,
        keys: PlatformKeys | None = None,
        *,
        video: Path | str | bytes | None = None,
        text: str = "",
        video_name: str = "",
        events: EventSink | None = None,
        options: ReplyOptions | None = None,
        # the same keys one by one (the terminal, scripts):
        platform: str = PLATFORM_TERMINAL,
        channel_id: str = "",
        thread_id: str = "",
        workspace_id: str = "",
        user_id: str = "",
        user_name: str = "",
        k: int | None = None,
        on_status: LegacyStatusCallback | None = None,
        on_reason_token: ReasonTokenCallback | None = None,
    ) -> Reply:
        """Open a conversation with a video (and optional words) or with words only; answer turn 1.

        Raises `ConversationExistsError` when the channel/thread already has one, `NothingToAskError`
        without video or musical words, `EmptyCatalogError`, and the video's `MediaError`s (not a
        video, audio only, truncated, too long, too large) before anything is stored.
        """
        if keys is None:
            if not channel_id or not user_id:
                raise ValueError("start needs PlatformKeys, or channel_id and user_id")
            keys = PlatformKeys(platform, channel_id, user_id, thread_id, workspace_id, user_name)
        options = self._options(options, k)
        out = _Emitter(events, on_status, on_reason_token)
        existing = await self.store.get_conversation(platform=keys.platform, channel_id=keys.channel_id, thread_id=keys.thread_id)
        if existing is not None and existing.turn_count > 0:
            raise ConversationExistsError(
                "This thread already has a conversation; reply to it, or start a new thread.",
                f"conversation {existing.id} exists on {keys.platform}/{keys.channel_id}/{keys.thread_id}",
            )
        parsed = parse_filters(text)
        if video is None and not parsed.text.strip():
            raise NothingToAskError("Send me a video, or tell me what kind of music you want (e.g. \"calm piano for a wedding video\").")
        await self._require_catalog()
        t0 = time.perf_counter()
        vf, video_ref = None, None
        before: dict[str, float] = {}
        if video is not None:
            await notify(out.status, f"decoding and embedding {video_name or 'your video'}")
            vf, video_ref = await self.videos.ingest(video, out.status)
            before["video"] = time.perf_counter() - t0  # hash, decode + embed (unless cached), store
        conv = await self.store.get_or_create_conversation(
            platform=keys.platform, channel_id=keys.channel_id, thread_id=keys.thread_id, workspace_id=keys.workspace_id,
            platform_user_id=keys.user_id, user_name=keys.user_name, profile=self.engine.config.profile,
            model_version=self.engine.mode,
        )  # fmt: skip
        log.info("conversation %d: start on %s by %s (%s)", conv.id, keys.platform, keys.user_id, "video" if vf is not None else "text only")
        async with self._locked(conv.id):
            state = await self.state(conv.id)
            if state.turns:  # a concurrent start won the race
                raise ConversationExistsError("This thread already has a conversation; reply to it, or start a new thread.")
            plan = TurnPlan(
                state=state, video=vf, text=parsed.text, anchor_text="", candidate_sha=None, negative_shas=(),
                exclude_shas=(), filters=parsed.filters, k=options.k, timings=before,
            )  # fmt: skip
            return await self._turn(
                conv, plan, user_text=text, video_sha=vf.content_hash if vf else None, video_ref=video_ref,
                out=out, options=options, t0=t0,
            )  # fmt: skip

    @_request
    async def message(
        self, conversation_id: int, text: str, *, user_id: str | None = None, events: EventSink | None = None,
        options: ReplyOptions | None = None, k: int | None = None, on_status: LegacyStatusCallback | None = None,
        on_reason_token: ReasonTokenCallback | None = None,
    ) -> Reply:  # fmt: skip
        """Answer a free-form message: "use this" (as the button), "another (one)", or feedback words.

        `user_id`: who wrote it (logged; in a shared thread anyone may give feedback, only the
        owner may press buttons).
        """
        out, options = _Emitter(events, on_status, on_reason_token), self._options(options, k)
        if USE_RE.match(text or ""):
            return await self._use(conversation_id, None, out=out, options=options)
        m = ANOTHER_RE.match(text or "")
        if m:
            return await self._next_turn(conversation_id, text[m.end() :], FeedbackKind.ANOTHER, out=out, options=options)
        return await self._next_turn(conversation_id, text, FeedbackKind.REFINE, out=out, options=options)

    @_request
    async def act(
        self, action: Action, *, user_id: str, events: EventSink | None = None, options: ReplyOptions | None = None,
    ) -> Reply:  # fmt: skip
        """A button press (bot/service/contract.py): use this, another, refine with words, start over.

        Only the conversation's owner may press its buttons (`NotOwnerError`). A button acts on the
        card that carried it: on an older card than the latest, "use this", "another" and "refine"
        raise `OutdatedActionError` (the user is pointed at the latest card); "start over" always
        works. A second "use this" on the same card raises `DuplicateActionError` (a double click
        never renders twice).
        """
        out, options = _Emitter(events, None, None), self._options(options, None)
        state = await self.state(action.conversation_id)
        owner = await self.store.get_user(user_id=state.conversation.user_id)
        if owner is not None and user_id != owner.platform_user_id:
            name = owner.name or "the person who started it"
            raise NotOwnerError(f"These buttons belong to {name}'s conversation; start your own with a video.")
        kind = action.kind
        if kind is ActionKind.USE:
            return await self._use(action.conversation_id, action.turn_index, out=out, options=options)
        if kind is ActionKind.START_OVER:
            return await self._next_turn(action.conversation_id, "", FeedbackKind.RESTART, out=out, options=options)
        if kind is ActionKind.ANOTHER:
            return await self._next_turn(
                action.conversation_id, action.text, FeedbackKind.ANOTHER, out=out, options=options, on_turn=action.turn_index,
            )  # fmt: skip
        if not action.text.strip():
            raise ConversationError("Tell me what to change (\"less sad, more drums\").")
        return await self._next_turn(
            action.conversation_id, action.text, FeedbackKind.REFINE, out=out, options=options, on_turn=action.turn_index,
        )  # fmt: skip

    @_request
    async def feedback(
        self, conversation_id: int, text: str, *, k: int = 1, on_status: LegacyStatusCallback | None = None,
        on_reason_token: ReasonTokenCallback | None = None, events: EventSink | None = None, options: ReplyOptions | None = None,
    ) -> Reply:  # fmt: skip
        """A turn k >= 2: the video + the previous track + these words (paper section 4.1)."""
        out = _Emitter(events, on_status, on_reason_token)
        return await self._next_turn(conversation_id, text, FeedbackKind.REFINE, out=out, options=self._options(options, k))

    @_request
    async def another(
        self, conversation_id: int, *, text: str = "", k: int = 1, on_status: LegacyStatusCallback | None = None,
        on_reason_token: ReasonTokenCallback | None = None, events: EventSink | None = None, options: ReplyOptions | None = None,
    ) -> Reply:  # fmt: skip
        """"Another one": without other words the previous track becomes a negative example."""
        out = _Emitter(events, on_status, on_reason_token)
        return await self._next_turn(conversation_id, text, FeedbackKind.ANOTHER, out=out, options=self._options(options, k))

    @_request
    async def use_this(
        self, conversation_id: int, *, on_status: LegacyStatusCallback | None = None, events: EventSink | None = None,
        options: ReplyOptions | None = None,
    ) -> Reply:  # fmt: skip
        """"Use this": render the preview (the video with the track under it), then record the choice."""
        return await self._use(conversation_id, None, out=_Emitter(events, on_status, None), options=self._options(options, None))

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

    def _options(self, options: ReplyOptions | None, k: int | None) -> ReplyOptions:
        options = options or ReplyOptions(excerpt_format=self.config.excerpt_format)
        return dataclasses.replace(options, k=k) if k is not None else options

    # --- turns ----------------------------------------------------------------------------------

    async def _use(self, conversation_id: int, turn_index: int | None, *, out: _Emitter, options: ReplyOptions) -> Reply:
        """Render the preview of a turn's track (the latest pick when `turn_index` is None), then record the choice."""
        t0 = time.perf_counter()
        async with self._locked(conversation_id):
            state = await self.state(conversation_id)
            pick = state.last_pick
            if pick is None:
                raise ConversationError("There is no track to use yet.")
            turn, rec = pick
            if turn_index is not None and turn_index != turn.index:
                if state.accepted(turn_index):
                    raise DuplicateActionError("You already chose that track; its preview is above.")
                raise OutdatedActionError(
                    "That suggestion is outdated: the conversation has moved on. Use the buttons on the latest card.",
                    f"use on turn {turn_index}, latest pick is turn {turn.index}",
                )
            if state.accepted(turn.index):
                raise DuplicateActionError("You already chose this track; its preview is above.")
            record = await self.pool.run(self.retriever.get_records, [track_id_for(rec.track_id)], False, on_status=out.status)
            if not record:
                return Reply(ReplyKind.PREVIEW, conversation_id, turn.index, turn.mode, actions=AFTER_USE,
                             message="That track has left the catalog since; I cannot render a preview of it.")  # fmt: skip
            payload = record[0].payload
            if state.video_sha256 is None:
                await self.store.record_feedback(
                    turn_id=turn.id, kind=FeedbackKind.ACCEPT, text="use this", track_id=rec.track_id, status=ConversationStatus.CLOSED,
                )  # fmt: skip
                reply = Reply(
                    ReplyKind.PREVIEW, conversation_id, turn.index, turn.mode, actions=AFTER_USE,
                    message=f"Noted: \"{payload.title}\". There is no video in this conversation to preview it with; "
                    f"the track is {payload.source}.",
                )  # fmt: skip
                await out.final(reply)
                return reply
            if not self.media.exists(state.video_sha256):
                raise VideoGoneError("Your video is no longer stored here, so I cannot render the preview; please send it again.")
            extras = (await self.assets.extras([rec.track_id]))[rec.track_id]
            await notify(out.status, "rendering the preview")
            budget = options.preview_budget_bytes
            rendered = await self.runner.preview(
                state.video_sha256, payload.source, extras.excerpt_start_s or 0.0, max_bytes=budget,
                job_key=f"preview:{conversation_id}:{turn.index}:{budget}", on_status=out.status,
            )  # fmt: skip
            path = None if rendered.media_key is None else self.media.path_for(rendered.media_key)
            note = rendered.too_large
            if rendered.fitted and budget is not None:
                note = f" (re-encoded to fit the {human_bytes(budget)} upload limit here)"
            preview = None if path is None else MediaFile.of(path, f"musechat-{safe_filename(payload.title)}.mp4")
            # the choice is recorded once the preview exists (or cannot exist): a failed render records nothing
            await self.store.record_feedback(
                turn_id=turn.id, kind=FeedbackKind.ACCEPT, text="use this", track_id=rec.track_id, status=ConversationStatus.CLOSED,
            )  # fmt: skip
            log.info("conversation %d: preview of %s rendered (%s)", conversation_id, rec.track_id[:12], "fits" if preview else "too large")
            message = f"Here is your video with \"{payload.title}\".{note}" if preview else f"You chose \"{payload.title}\". {note}"
            reply = Reply(
                ReplyKind.PREVIEW, conversation_id, turn.index, turn.mode, preview=preview, message=message, actions=AFTER_USE,
                timings={"total": time.perf_counter() - t0},
            )  # fmt: skip
            await out.final(reply)
            return reply

    async def _next_turn(
        self, conversation_id: int, text: str, kind: FeedbackKind, *, out: _Emitter, options: ReplyOptions,
        on_turn: int | None = None,
    ) -> Reply:  # fmt: skip
        """Turn k >= 2 (feedback, another, start over); `on_turn`: the turn whose button asked (else the latest)."""
        t0 = time.perf_counter()
        parsed = parse_filters(text or "")
        words = parsed.text.strip()
        if kind is FeedbackKind.ANOTHER and words:
            kind = FeedbackKind.REFINE  # "another one, but with drums": words steer, no rejection
        async with self._locked(conversation_id):
            state = await self.state(conversation_id)
            if not state.turns:
                raise ConversationError("This conversation has not started yet: send a video or a few words first.")
            if on_turn is not None and on_turn != state.turns[-1].index:
                raise OutdatedActionError(
                    "That suggestion is outdated: the conversation has moved on. Use the buttons on the latest card.",
                    f"action on turn {on_turn}, latest is {state.turns[-1].index}",
                )
            await self._require_catalog()
            pick = state.last_pick
            pending = None
            rejected = state.rejected
            if pick is not None:
                turn, rec = pick
                pending = PendingFeedback(turn.id, kind, text or ("start over" if kind is FeedbackKind.RESTART else ""), rec.track_id)
                if kind is FeedbackKind.ANOTHER:  # the plan gains this rejection (written with the turn)
                    rejected = tuple(dict.fromkeys((*rejected, rec.track_id)))
            vf = None
            if state.video_sha256 is not None:
                vf = await self.videos.video_for(state.video_sha256, out.status)
            opening = parse_filters(state.opening_text)
            anchor = opening.text if state.video_sha256 is None else ""
            if kind is FeedbackKind.RESTART:  # a fresh first pick: the opening request, nothing shown again
                plan = TurnPlan(
                    state=state, video=vf, text=opening.text if vf is not None else "", anchor_text=anchor, candidate_sha=None,
                    negative_shas=(), exclude_shas=state.shown, filters=opening.filters, k=options.k,
                )  # fmt: skip
            else:
                plan = TurnPlan(
                    state=state, video=vf, text=words, anchor_text=anchor,
                    candidate_sha=pick[1].track_id if pick else None, negative_shas=rejected,
                    exclude_shas=state.shown, filters=state.filters.merge(parsed.filters), k=options.k,
                )  # fmt: skip
            status = ConversationStatus.ACTIVE if state.conversation.status is ConversationStatus.CLOSED else None
            return await self._turn(
                state.conversation, plan, user_text=text or "", video_sha=state.video_sha256,
                video_ref=state.turns[0].video_ref, out=out, options=options, t0=t0, pending=pending, status=status,
            )  # fmt: skip

    async def _turn(
        self,
        conv: Conversation,
        plan: TurnPlan,
        *,
        user_text: str,
        video_sha: str | None,
        video_ref: str | None,
        out: _Emitter,
        options: ReplyOptions,
        t0: float,
        pending: PendingFeedback | None = None,
        status: ConversationStatus | None = None,
    ) -> Reply:
        """Query, retrieve, re-rank, persist, answer (module docstring). Runs under the conversation lock.

        The turn's rows (the feedback that led to it, the turn, its recommendations, the status)
        are written in one transaction, before the card goes out; the LLM's reason follows it.
        """
        licences = await self._known_licences()
        catalog_filter = plan.filters.to_catalog_filter(licences)
        # the previous track and rejected tracks as the engine needs them (SQL attributes: onset rate)
        context_shas = [s for s in (plan.candidate_sha, *plan.negative_shas) if s]
        context_extras = await self.assets.extras(context_shas) if context_shas else {}
        await notify(out.status, "searching the catalog")
        # the query and the re-rank are model work: this process's, or a worker's (with workers, a front-end loads no model)
        job_key = f"turn:{conv.id}:{len(plan.state.turns) + 1 if plan.state is not None else 1}"
        if self.runner.local:
            retrieved = await self.pool.run(self.retriever.retrieve, plan, catalog_filter, context_extras, on_status=out.status)
        else:
            retrieved = await self.retriever.retrieve_with(
                self.runner, self.pool, plan, catalog_filter, context_extras, job_key=job_key, on_status=out.status
            )  # fmt: skip
        cand_shas = [r.payload.content_hash for r in retrieved.records]
        extras = await self.assets.extras(cand_shas) if cand_shas else {}
        if self.runner.local:
            ranking, rows = await self.pool.run(self.retriever.rerank, retrieved, extras, on_status=out.status)
        else:
            ranking, rows = await self.retriever.rerank_with(self.runner, retrieved, extras, job_key=job_key, on_status=out.status)
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
                feedback_on_previous=pending, status=status,
            )  # fmt: skip
            log.info("conversation %d turn %d: nothing left (%s)", conv.id, turn.index, message)
            reply = Reply(
                ReplyKind.EXHAUSTED, conv.id, turn.index, mode, understood=understood, unmatched=unmatched,
                filters=plan.filters.describe(), message=message, timings=turn.timings, actions=AFTER_EXHAUSTED,
            )  # fmt: skip
            await out.final(reply)
            return reply
        picks = [int(i) for i in ranking.order[: max(1, plan.k)]]
        t_cards = time.perf_counter()
        cards = []
        for rank, i in enumerate(picks, start=1):
            cards.append(await self._card(rank, retrieved.records[i], rows[i], ranking, i, plan, understood, extras, out, options))
        timings["cards"] = time.perf_counter() - t_cards
        timings["total"] = time.perf_counter() - t0
        turn = await self.store.add_turn(
            conversation_id=conv.id, mode=mode, user_text=user_text, video_sha256=video_sha, video_ref=video_ref,
            candidate_track_id=plan.candidate_sha, timings=timings,
            recommendations=[Recommendation(rank=c.rank, track_id=c.track_id, score=c.score, reason=c.reason) for c in cards],
            feedback_on_previous=pending, status=status,
        )  # fmt: skip
        shown = tuple(
            ScoredTrack(retrieved.records[int(i)].payload.content_hash, retrieved.records[int(i)].payload.title,
                        float(ranking.scores[int(i)]), ranking.explain(int(i)))
            for i in ranking.order[:RANKING_SHOWN]
        )  # fmt: skip
        writes_reason = self.config.reasoner != REASONER_OFF
        reply = Reply(
            ReplyKind.RECOMMENDATION, conv.id, turn.index, mode, tracks=tuple(cards), understood=understood,
            unmatched=unmatched, unavailable=ranking.unavailable, filters=plan.filters.describe(), ranking=shown, timings=dict(timings),
            actions=AFTER_RECOMMENDATION, reason_pending=writes_reason,
        )  # fmt: skip
        await out.card(reply)  # the card never waits for the reason
        if writes_reason:  # one LLM call per reply (the best track) bounds its latency
            best = cards[0]
            t_reason = time.perf_counter()
            payload = retrieved.records[picks[0]].payload
            facts = ReasonFacts(
                best.title, artist=best.artist, tags=tuple(dict.fromkeys(best.mtt_tags + best.msd_tags)) or tuple(best.tags),
                tempo_bpm=best.tempo_bpm, loudness_db=payload.loudness_db, video_labels=plan_video_labels(plan),
                words=plan.text or plan.anchor_text, understood=understood, licence=best.licence,
                duration_s=best.duration_s or None,
            )  # fmt: skip
            request = ReasonRequest(
                facts, best.track_id, video_words=plan_video_words(plan), fallback=best.reason, timeout_s=options.reason_budget_s
            )  # fmt: skip
            reason, source = await self.runner.reason(request, job_key=f"reason:{conv.id}:{turn.index}", on_token=out.token)
            if reason != best.reason:
                await self.store.set_reason(turn_id=turn.id, rank=best.rank, reason=reason)
            cards[0] = dataclasses.replace(best, reason=reason, reason_source=source)
            timings["reason"] = time.perf_counter() - t_reason
            timings["total"] = time.perf_counter() - t0
            reply = dataclasses.replace(reply, tracks=tuple(cards), reason_pending=False, timings=timings)
        log.info(
            "conversation %d turn %d (%s): %s (score %.2f) in %.0f ms",
            conv.id, turn.index, mode, cards[0].title, cards[0].score, 1000 * timings["total"],
        )  # fmt: skip
        await out.final(reply)
        return reply

    # --- replies --------------------------------------------------------------------------------

    async def _card(
        self,
        rank: int,
        rec: TrackRecord,
        row: CandidateRow,
        ranking: Ranking,
        i: int,
        plan: TurnPlan,
        understood: str,
        extras: Mapping[str, TrackExtras],
        out: _Emitter,
        options: ReplyOptions,
    ) -> TrackCard:
        """A track card with its excerpt and the tag summary as its reason (the LLM's may replace it)."""
        p = rec.payload
        sha = p.content_hash
        mtt, msd = top_tags(dict(p.tag_probs), k=TOP_TAGS)
        mtt_names = tuple(n.lower() for n, _ in mtt)
        msd_names = tuple(n.lower() for n, _ in msd)
        if not mtt_names and not msd_names:  # a tagger without MTT/MSD vocabularies: the payload's tags
            mtt_names = tuple(p.tags[:TOP_TAGS])
            msd_names = tuple(p.tags[TOP_TAGS : 2 * TOP_TAGS])
        parts = ranking.explain(i)
        excerpt, note = await self.renderer.excerpt(sha, p.source, extras.get(sha), out.status, fmt=options.excerpt_format, title=p.title)
        tags = list(dict.fromkeys(mtt_names + msd_names)) or list(p.tags)
        reason = tag_summary(
            title=p.title, tags=tags, parts=parts, video=plan.video, understood=understood,
            tempo_bpm=p.tempo_bpm, rejected=bool(plan.negative_shas),
        )  # fmt: skip
        return TrackCard(
            track_id=sha, catalog_id=rec.track_id, rank=rank, title=p.title, artist=p.artist,
            mtt_tags=mtt_names, msd_tags=msd_names, tags=tuple(p.tags), score=float(ranking.scores[i]),
            search_score=float(row.search_score), parts=parts, duration_s=p.duration_s, licence=p.licence,
            tempo_bpm=p.tempo_bpm, reason=reason, reason_source=REASON_SOURCE_TAGS, excerpt=excerpt,
            excerpt_note=note, source=p.source,
        )  # fmt: skip

    async def _exhausted_message(self, plan: TurnPlan, catalog_filter: CatalogFilter | None) -> str:
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


class _Emitter:
    """The events of one request, in order, to the adapter's sink and the older per-kind callbacks.

    A sink or callback that raises is logged and not called again: a display problem never fails
    a turn (the reply is still returned, and persisted).
    """

    def __init__(
        self, sink: EventSink | None, on_status: LegacyStatusCallback | None, on_reason_token: ReasonTokenCallback | None
    ) -> None:  # fmt: skip
        self._sink = sink
        self._on_status = on_status
        self._on_token = on_reason_token
        self._broken: set[str] = set()
        self.token = self._token if (sink is not None or on_reason_token is not None) else None

    async def _call(self, name: str, fn: Callable[[Any], Any] | None, value: Any) -> None:
        if fn is None or name in self._broken:
            return
        try:
            result = fn(value)
            if inspect.isawaitable(result):
                await result
        except Exception:  # noqa: BLE001 - the reply must still come
            log.warning("the %s callback failed; no more events go to it", name, exc_info=True)
            self._broken.add(name)

    async def _send(self, event: Event) -> None:
        await self._call("events", self._sink, event)

    async def status(self, event: StatusEvent) -> None:
        await self._send(event)
        await self._call("status", self._on_status, event.message)

    async def card(self, reply: Reply) -> None:
        await self._send(CardEvent(reply))

    async def _token(self, piece: str) -> None:
        await self._send(ReasonTokenEvent(piece))
        await self._call("reason token", self._on_token, piece)

    async def final(self, reply: Reply) -> None:
        await self._send(FinalEvent(reply))


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

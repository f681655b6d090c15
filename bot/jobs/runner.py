"""The model runner: the named model jobs the conversation service asks for, whoever runs them.

Two implementations (DESIGN.md, "Scale"):

- `bot.jobs.local.InProcessRunner`: the process's own `ModelPool` (bot/service/pool.py), the
  embedded default: same lanes, same queue-position `StatusEvent`s as before;
- `bot.jobs.saq_runner.SaqRunner`: a SAQ job queue on Redis served by `musechat worker` processes
  (bot/jobs/worker.py), for several front-ends and shared GPU workers.

The service does not know which one runs. Payloads are claim checks: media-store keys (sha256 of
stored files: the shared volume of the stack) and small JSON, never video bytes. Results are
media-store keys too (features, excerpts, previews), or short text (a reason).

Job kinds, each with a unique key per (conversation, turn, kind) or per content, so a double
click never queues the same work twice (`job_key`):

| kind             | payload                                       | result                        |
|------------------|-----------------------------------------------|-------------------------------|
| `video_features` | video_sha                                     | VideoFeatures (stored bytes)  |
| `excerpt`        | track_sha, source or convert_from key, fmt    | media key of the excerpt      |
| `preview`        | video_sha, track_source, start_s, max_bytes   | media key, or why it is none  |
| `reason`         | the facts: title, tags, words, ... (ReasonRequest) | (reason, source); tokens stream back |
| `query`          | video features key, words, previous/rejected tracks (QueryRequest) | the engine's Query: search vector, examples, what was understood |
| `rerank`         | the same QueryRequest + its mode, the candidates (a Redis key) | the Ranking (order, scores, parts) |

`query` and `rerank` are a turn's model work (query + re-rank, paper 4.1 and section 5): with
workers, a front-end loads no model at all. The catalog search between them stays with the
front-end: it is no model work, and the embedded catalog belongs to one process (a worker may have
no catalog). Both answer exactly what the in-process turn answers (bot/jobs/wire.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from bot.jobs.wire import facts_from_json, facts_to_json
from bot.service.errors import ConversationError
from bot.service.pool import StatusCallback
from engine.engine import CandidateRow, Query, Ranking, TrackContext
from engine.grounding import ReasonFacts
from engine.video import VideoFeatures

VIDEO_FEATURES = "video_features"
EXCERPT = "excerpt"
PREVIEW = "preview"
REASON = "reason"
QUERY = "query"
RERANK = "rerank"
PING = "ping"  # a round trip with no model work (health, the queue's overhead)
CATALOG_REFRESH = "catalog_refresh"  # the `catalog` queue (SAQ runner only): a whole refresh, with heartbeats
JOB_KINDS = (VIDEO_FEATURES, EXCERPT, PREVIEW, REASON, QUERY, RERANK, PING, CATALOG_REFRESH)

TokenCallback = Callable[[str], Awaitable[None] | None]


class QueueFullError(ConversationError):
    """The job queue holds more waiting jobs than its limit: the user is asked to come back."""


class JobTimeoutError(ConversationError):
    """A model job did not finish in time (a worker too slow, or none alive)."""


class CatalogBusyError(ConversationError):
    """A worker could not open the catalog to refresh it: an embedded catalog is open in another process."""


class JobFailedError(ConversationError):
    """A model job failed on the worker for a reason that is not the user's (a bug, logged there)."""


@dataclass(frozen=True)
class ReasonRequest:
    """What the reasoner needs for one track's reason (paper 4.2): small text, no tensors."""

    facts: ReasonFacts  # what the reason may say (engine/grounding.py): title, tags, the user's words, ...
    track_sha: str  # the track's content hash: its music vector for a trained reasoner (the feature cache)
    video_words: str  # the video's top labels as a sentence (or a text-only start's opening words)
    fallback: str  # the tag summary given when the LLM fails or runs out of time
    timeout_s: float | None = None  # None: the service's reasoner_timeout_s

    def to_json(self) -> dict[str, Any]:
        """The job's payload: the facts nested under "facts" (bot/jobs/wire.py `facts_to_json`)."""
        return dataclasses.asdict(self) | {"facts": facts_to_json(self.facts)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReasonRequest:
        """A request from `to_json`'s payload; ValueError naming the problem for one of another version."""
        if "facts" not in d:
            raise ValueError(
                "a reason job without 'facts' (its facts at the top level): it was queued by a front-end of an older "
                "version; run the same version of musechat on the front-ends and the workers"
            )  # fmt: skip
        if unknown := sorted(set(d) - REQUEST_KEYS):
            raise ValueError(f"a reason job with unknown fields {unknown}: the front-end runs another version than this worker")
        return cls(**(d | {"facts": facts_from_json(d["facts"])}))


REQUEST_KEYS = frozenset(f.name for f in dataclasses.fields(ReasonRequest))


@dataclass(frozen=True)
class QueryRequest:
    """What a turn's query needs (bot/service/turns.py `encode_query`): the engine's inputs, nothing of the catalog."""

    video: VideoFeatures | None
    text: str | None  # the words the engine reads (`query_words`)
    anchor_text: str  # text-only conversations: the opening words standing in for the video
    candidate: TrackContext | None  # the previous pick (the paper's candidate music x_mc)
    negatives: tuple[TrackContext, ...] = ()  # tracks rejected with a bare "another"


def features_tag(engine: Any) -> str:
    """What a front-end's query jobs must find on the worker: the profile, the query fps and, with a
    fusion checkpoint, its fingerprint (a worker with other weights refuses the job, bot/jobs/worker.py)."""
    cfg = engine.config
    tag = f"{cfg.profile}:{cfg.query_fps:g}"
    return f"{tag}:{engine.fusion_id}" if engine.fusion_id else tag


@dataclass(frozen=True)
class PreviewResult:
    """A rendered preview: its media key, whether it was re-encoded to fit, or why there is none."""

    media_key: str | None
    fitted: bool = False  # re-encoded to fit max_bytes
    too_large: str = ""  # the chat sentence when even the re-encode did not fit (media_key is None)


@runtime_checkable
class ModelRunner(Protocol):
    """The named model jobs (module docstring)."""

    local: bool  # True: runs in this process (the front-end loads the models it needs anyway)

    async def video_features(self, video_sha: str, path: Path | None = None, *, on_status: StatusCallback | None = None) -> VideoFeatures:
        """Decode and embed a video. `path`: where it lies now (an upload not stored yet); a remote
        runner stores it in the media store first (claim check) and sends only `video_sha`."""
        ...

    async def excerpt(
        self, track_sha: str, *, fmt: str, source: str | None = None, start_s: float | None = None,
        convert_from: str | None = None,
    ) -> str:  # fmt: skip
        """Cut a listening excerpt of a track (or convert the indexer's, media key `convert_from`); its media key."""
        ...

    async def preview(
        self, video_sha: str, track_source: str, start_s: float, *, max_bytes: int | None, job_key: str,
        on_status: StatusCallback | None = None,
    ) -> PreviewResult:  # fmt: skip
        """The user's video with the track under it, re-encoded to fit `max_bytes` if needed."""
        ...

    async def reason(self, request: ReasonRequest, *, job_key: str, on_token: TokenCallback | None = None) -> tuple[str, str]:
        """(reason, reason_source): the LLM's reason (tokens to `on_token`, in order), else the labelled fallback."""
        ...

    async def query(
        self, request: QueryRequest, *, job_key: str, on_status: StatusCallback | None = None
    ) -> tuple[Query, np.ndarray | None]:  # fmt: skip
        """A turn's query (the engine's `Query`; a remote one can only be searched with, not re-rank) and the
        opening words' vector when they stand in for the video (text-only), else None."""
        ...

    async def rerank(
        self, request: QueryRequest, mode: str, rows: list[CandidateRow], *, job_key: str, on_status: StatusCallback | None = None
    ) -> Ranking:  # fmt: skip
        """The candidates re-ranked for `request` (`mode`: its query's), as `query(request)[0].rerank(rows)` would."""
        ...

    async def ping(self, *, job_key: str | None = None) -> dict[str, Any]:
        """A round trip through the runner's pool (and queue) with no model work."""
        ...

    async def close(self) -> None: ...


__all__ = [
    "CATALOG_REFRESH",
    "CatalogBusyError",
    "EXCERPT",
    "JOB_KINDS",
    "PING",
    "PREVIEW",
    "QUERY",
    "REASON",
    "RERANK",
    "VIDEO_FEATURES",
    "features_tag",
    "JobFailedError",
    "JobTimeoutError",
    "ModelRunner",
    "PreviewResult",
    "QueryRequest",
    "QueueFullError",
    "ReasonRequest",
    "TokenCallback",
]

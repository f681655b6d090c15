"""One turn's plan and its retrieval: query, nearest neighbours or recommend, re-rank (module docstring of bot/service/conversation.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bot.service.assets import TrackAssets, TrackExtras
from bot.service.errors import CatalogMismatchError, ConversationError
from bot.service.filters import FilterRequest
from engine.engine import (
    MODE_FUSION,
    TEXT_VECTOR,
    CandidateRow,
    Engine,
    Query,
    Ranking,
    TrackContext,
)
from engine.video import VideoFeatures
from engine.zeroshot import LOUDNESS_RANGE_DB, ONSET_RANGE, TEMPO_RANGE_BPM
from storage.catalog import (
    CatalogFilter,
    Hit,
    MusicCatalog,
    NoExamplesError,
    SchemaError,
    TrackRecord,
    UnknownTrackError,
)
from storage.catalog.ids import track_id_for

log = logging.getLogger(__name__)


# A track whose rhythm the catalog does not know sits at the centre of the zero-shot scorer's
# ranges (geometric for tempo and onset rate, arithmetic for loudness): it neither wins nor loses
# on pace. Used for every candidate alike, so a missing value never creates a difference.
NEUTRAL_TEMPO_BPM = float(np.sqrt(TEMPO_RANGE_BPM[0] * TEMPO_RANGE_BPM[1]))
NEUTRAL_LOUDNESS_DB = float(np.mean(LOUDNESS_RANGE_DB))
NEUTRAL_ONSET_RATE = float(np.sqrt(ONSET_RANGE[0] * ONSET_RANGE[1]))


@dataclass
class TurnPlan:
    """One turn's inputs, gathered on the event loop before the model work."""

    state: Any  # ConversationState | None (bot/service/conversation.py)
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
class Retrieved:
    query: Query
    hits: list[Hit]
    records: list[TrackRecord]
    catalog_filter: CatalogFilter | None
    timings: dict[str, float]
    request: Any = None  # bot/jobs/runner.py QueryRequest when a model worker encoded the query (its re-rank needs it)



class Retriever:
    """Query, search, fetch, re-rank one turn (model worker threads): the paper's turn logic (section 4.1, 5)."""

    def __init__(self, *, engine: Engine, catalog: MusicCatalog, assets: TrackAssets, candidate_pool: int | None) -> None:
        self.engine = engine
        self.catalog = catalog
        self.assets = assets
        self.candidate_pool = candidate_pool

    def _context(self, sha: str, record: TrackRecord | None, extras: TrackExtras | None, *, candidate: bool = False) -> TrackContext:
        """A shown track as the engine's `TrackContext` (the paper's candidate music x_mc).

        With trained AST towers the candidate carries its 10 s clip's log-mels (g_mc's input, from the
        checkpoint's cache), never the profile encoder's pooled segment features."""
        if record is None:
            return TrackContext(sha)
        p = record.payload
        segment_music = clip_mels = None
        if self.engine.mode == MODE_FUSION and self.engine.fusion_towers:
            clip_mels = self.assets.clip_mels(sha) if candidate else None
        elif self.engine.mode == MODE_FUSION:
            segment_music = self.assets.segment_music(sha)
        return TrackContext(
            track_id=record.track_id,
            text=record.vectors.get(TEXT_VECTOR),
            tag_probs=dict(p.tag_probs),
            rhythm=_rhythm(p.tempo_bpm, p.loudness_db, extras.onset_rate if extras else None),
            segment_music=segment_music,
            clip_mels=clip_mels,
        )

    def contexts(
        self, plan: TurnPlan, context_extras: Mapping[str, TrackExtras]
    ) -> tuple[TrackContext | None, list[TrackContext], dict[str, float]]:  # fmt: skip
        """The previous pick and the rejected tracks as the engine's `TrackContext`s (catalog reads, no model work)."""
        # the previous and the rejected tracks, read back from the catalog (vectors for the engine)
        t0 = time.perf_counter()
        ids = {s: track_id_for(s) for s in (plan.candidate_sha, *plan.negative_shas) if s}
        records = {r.payload.content_hash or r.track_id: r for r in self.catalog.get(list(ids.values()), with_vectors=True)} if ids else {}
        candidate = None
        if plan.candidate_sha is not None and plan.candidate_sha in records:
            candidate = self._context(plan.candidate_sha, records[plan.candidate_sha], context_extras.get(plan.candidate_sha), candidate=True)
        negatives = [self._context(s, records[s], context_extras.get(s)) for s in plan.negative_shas if s in records]
        return candidate, negatives, {"context": time.perf_counter() - t0}

    def get_records(self, catalog_ids: Sequence[str], with_vectors: bool) -> list[TrackRecord]:
        return self.catalog.get(catalog_ids, with_vectors=with_vectors)

    def retrieve(self, plan: TurnPlan, catalog_filter: CatalogFilter | None, context_extras: Mapping[str, TrackExtras]) -> Retrieved:
        """Query, search and fetch one turn's candidates in this process (the in-process runner's turn)."""
        candidate, negatives, timings = self.contexts(plan, context_extras)
        t1 = time.perf_counter()
        query, anchor = encode_query(
            self.engine, video=plan.video, text=query_words(plan, candidate, negatives), anchor_text=plan.anchor_text,
            candidate=candidate, negatives=negatives,
        )  # fmt: skip
        timings["query"] = time.perf_counter() - t1
        hits, records_, more = self.search(plan, query, anchor, catalog_filter)
        return Retrieved(query, hits, records_, catalog_filter, timings | more)

    async def retrieve_with(
        self, runner: Any, pool: Any, plan: TurnPlan, catalog_filter: CatalogFilter | None,
        context_extras: Mapping[str, TrackExtras], *, job_key: str, on_status: Any = None,
    ) -> Retrieved:  # fmt: skip
        """`retrieve` with the query's model work on `runner` (a model worker), the catalog's on `pool` (this process)."""
        from bot.jobs.runner import QueryRequest

        candidate, negatives, timings = await pool.run(self.contexts, plan, context_extras, on_status=on_status)
        t1 = time.perf_counter()
        request = QueryRequest(
            video=plan.video, text=query_words(plan, candidate, negatives), anchor_text=plan.anchor_text,
            candidate=candidate, negatives=tuple(negatives),
        )  # fmt: skip
        query, anchor = await runner.query(request, job_key=f"{job_key}:query", on_status=on_status)
        timings["query"] = time.perf_counter() - t1
        hits, records, more = await pool.run(self.search, plan, query, anchor, catalog_filter, on_status=on_status)
        return Retrieved(query, hits, records, catalog_filter, timings | more, request)

    async def rerank_with(
        self, runner: Any, retrieved: Retrieved, extras: Mapping[str, TrackExtras], *, job_key: str, on_status: Any = None
    ) -> tuple[Ranking, list[CandidateRow]]:  # fmt: skip
        """`rerank` on `runner` (a model worker): the candidates go to it, the ranking comes back."""
        t0 = time.perf_counter()
        rows = self.rows(retrieved, extras)
        ranking = await runner.rerank(retrieved.request, retrieved.query.mode, rows, job_key=f"{job_key}:rerank", on_status=on_status)
        retrieved.timings["rerank"] = time.perf_counter() - t0
        return ranking, rows

    def search(
        self, plan: TurnPlan, query: Query, anchor: np.ndarray | None, catalog_filter: CatalogFilter | None
    ) -> tuple[list[Hit], list[TrackRecord], dict[str, float]]:  # fmt: skip
        """The catalog's candidates for an encoded query (no model work): hits, their records, timings."""
        timings: dict[str, float] = {}
        t2 = time.perf_counter()
        limit = self.candidate_pool or self.engine.config.candidate_pool
        exclude = [track_id_for(s) for s in plan.exclude_shas]
        positives: list[np.ndarray] = [] if query.vector is None else [np.asarray(query.vector, dtype=np.float32)]
        if anchor is not None:
            # text-only conversation: the opening words stand in for the video (module docstring)
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
        if query.mode == MODE_FUSION and recs:  # a refresh elsewhere (another checkpoint) must not mix vectors in
            check_fusion_vectors(self.engine, recs[0].payload.fusion_id)
        by_id = {r.track_id: r for r in recs}
        kept_hits = [h for h in hits if h.track_id in by_id]
        timings["fetch"] = time.perf_counter() - t3
        return kept_hits, [by_id[h.track_id] for h in kept_hits], timings

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
            except NoExamplesError:  # every example left the catalog: nothing to recommend around
                return []

    def rerank(self, retrieved: Retrieved, extras: Mapping[str, TrackExtras]) -> tuple[Ranking, list[CandidateRow]]:
        """Re-rank the candidates in this process (the in-process runner's turn)."""
        t0 = time.perf_counter()
        rows = self.rows(retrieved, extras)
        ranking = retrieved.query.rerank(rows)
        retrieved.timings["rerank"] = time.perf_counter() - t0
        return ranking, rows

    @staticmethod
    def rows(retrieved: Retrieved, extras: Mapping[str, TrackExtras]) -> list[CandidateRow]:
        """The candidates as the re-ranker reads them (no model work); `retrieved` keeps only those with a "text" vector."""
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
        return rows


def fusion_mismatch(engine: Engine, recorded: str) -> str | None:
    """Why catalog points whose "fusion" vectors carry `recorded` (payload `fusion_id`) cannot answer
    this engine's fusion queries, or None when they can. Points of a catalog built before the id was
    recorded carry "": accepted for a checkpoint without towers (as before), never with trained towers."""
    if engine.mode != MODE_FUSION:
        return None
    expected = engine.fusion_id
    if recorded == expected or (not recorded and not engine.fusion_towers):
        return None
    now = f"the fusion checkpoint answering now ({engine.config.fusion_checkpoint}, id {expected or '?'}"
    now += ", trained AST towers)" if engine.fusion_towers else ")"
    if not recorded:
        return (f"The catalog's music vectors were not made by the trained AST towers of {now}: "
                "run `musechat catalog refresh` to rebuild them with it.")  # fmt: skip
    return (f"The catalog's music vectors were built with another fusion checkpoint (id {recorded}) than {now}: "
            "run `musechat catalog refresh` to rebuild them with it.")  # fmt: skip


def check_fusion_vectors(engine: Engine, recorded: str) -> None:
    """Raise `CatalogMismatchError` when `fusion_mismatch` says why."""
    why = fusion_mismatch(engine, recorded)
    if why is not None:
        raise CatalogMismatchError(why)


def query_words(plan: TurnPlan, candidate: TrackContext | None, negatives: Sequence[TrackContext]) -> str | None:
    """The words the engine reads this turn: the feedback, or the opening words when nothing else is there."""
    text = plan.text or None
    if plan.video is None and text is None and candidate is None and not negatives:
        text = plan.anchor_text or None  # text-only, nothing shown yet (turn 1 found nothing): ask again
    return text


def encode_query(
    engine: Engine, *, video: VideoFeatures | None, text: str | None, anchor_text: str, candidate: TrackContext | None,
    negatives: Sequence[TrackContext],
) -> tuple[Query, np.ndarray | None]:  # fmt: skip
    """The model work of a turn's query (paper 4.1; runs where the models are: this process or a worker):
    the engine's `Query`, and the opening words' vector when they stand in for the video (text-only)."""
    query = engine.query(video=video, text=text, candidate=candidate, negatives=negatives)
    anchor = None
    if anchor_text and query.vector_name == TEXT_VECTOR:
        anchor = engine.text_vector(anchor_text)
    return query, anchor



def _rhythm(tempo: float | None, loudness: float | None, onset: float | None) -> tuple[float, float, float]:
    """(tempo BPM, loudness dBFS, onsets/s), unknown values at the neutral centre (constants above)."""
    return (
        float(tempo) if tempo and tempo > 0 else NEUTRAL_TEMPO_BPM,
        float(loudness) if loudness is not None else NEUTRAL_LOUDNESS_DB,
        float(onset) if onset is not None and onset > 0 else NEUTRAL_ONSET_RATE,
    )

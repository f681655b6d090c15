"""The engine's public API: what the application calls for videos, tracks and queries.

`Engine` loads a profile's encoders once (and a fusion checkpoint, if one is configured) and is
safe to call from worker threads. A conversation uses it in three steps (DESIGN.md, "Data flow"):

1. `video_features(path)` once per conversation (serialisable, so later turns decode nothing);
2. `query(video=..., text=..., candidate=..., negatives=...)` per turn: a `Query` that says which
   catalog vector to search with (or which tracks to recommend around), and a `rerank` that
   scores the catalog's candidates;
3. the caller (bot/) runs the search against the catalog (storage/) and calls `query.rerank`.

Modes (every answer names its mode):
- "zero-shot" (no checkpoint): retrieval on the catalog's "text" vectors with the video's labels
  and the user's words, re-ranked by semantics + pace + feedback steering (engine/zeroshot.py).
- "fusion" (a checkpoint is configured): MVT-Fusion's query (paper 4.1; turn 1 = video (+ text),
  turn k >= 2 = video + the previous track as candidate music + the feedback) searched on the
  "fusion" vectors; the cosine is then combined with feedback steering, standardised over the
  candidates: score = z(cosine) + steering_weight * z(steer). The trained model already reads
  the feedback; steering makes explicit tag directions ("no vocals") hold even where the model
  is unsure. Set the steering weight to 0 for the paper's model alone.
  A checkpoint folder that also holds trained AST towers (a run that trained g_mc and g_mt,
  engine/music_towers.py) loads as a `TowerRecommender` (frozen, eval mode): the candidate is then
  g_mc's output tokens of the previous track's 10 s candidate clip (`TrackContext.clip_mels`, kept
  by the catalog), never the profile encoder's pooled segment features; video and words as above.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.media import MediaLimits
from engine.steering import Preference, unavailable
from engine.video import VideoFeatures, video_features
from engine.zeroshot import (
    Candidates,
    ScoreBreakdown,
    TrackFeatures,
    ZeroShotScorer,
    ZeroShotWeights,
    standardise,
)

log = logging.getLogger(__name__)

MODE_ZERO_SHOT = "zero-shot"
MODE_FUSION = "fusion"
TEXT_VECTOR = "text"  # catalog vector names (storage/catalog/base.py)
FUSION_VECTOR = "fusion"
MUSIC_VECTOR = "music"
NEGATIVE_WEIGHT = 1.0  # per standard deviation of similarity to a rejected track ("another")
FUSION_STEERING_WEIGHT = 1.0  # steering beside a fusion checkpoint (module docstring)
STEER_STD_FLOOR = 0.05


@dataclass
class EngineConfig:
    profile: str = "lite"
    overrides: dict[str, str] = field(default_factory=dict)  # backbone -> hub id or local dir
    device: str = "cpu"
    query_fps: float = 1.0  # frames per second per segment for a chat query (paper: 5 for training)
    limits: MediaLimits = field(default_factory=MediaLimits)
    ffmpeg: str | None = None
    fusion_checkpoint: Path | None = None  # None: the zero-shot recommender answers
    zero_shot: ZeroShotWeights = field(default_factory=ZeroShotWeights)
    fusion_steering_weight: float = FUSION_STEERING_WEIGHT
    candidate_pool: int = 200  # catalog candidates re-ranked per turn


@dataclass
class TrackContext:
    """What the engine needs of a catalog track shown earlier (the previous pick, or a rejected one)."""

    track_id: str
    text: np.ndarray | None = None  # (Dt,) the catalog's "text" vector
    tag_probs: Mapping[str, float] = field(default_factory=dict)
    rhythm: tuple[float, float, float] | None = None  # tempo BPM, loudness dBFS, onsets/s
    segment_music: np.ndarray | None = None  # (S, Dm) per-segment music embeddings (fusion's candidate)
    clip_mels: np.ndarray | None = None  # (frames, mel bins) float16: the 10 s candidate clip g_mc reads (trained towers)


@dataclass
class CandidateRow:
    """One catalog candidate as the re-ranker sees it."""

    track_id: str
    text: np.ndarray  # (Dt,)
    tag_probs: Mapping[str, float]
    rhythm: tuple[float, float, float]
    search_score: float = 0.0  # the catalog's cosine for the searched vector


@dataclass
class Ranking:
    order: np.ndarray  # (N,) candidate indices, best first
    scores: np.ndarray  # (N,) total score per candidate (input order)
    parts: dict[str, np.ndarray]  # name -> (N,) weighted part per candidate
    mode: str
    preference: Preference | None
    unavailable: tuple[str, ...] = ()  # what the words asked for that no candidate has ("more opera")

    def explain(self, i: int) -> dict[str, float]:
        return {name: float(v[i]) for name, v in self.parts.items()} | {"total": float(self.scores[i])}


@dataclass
class Query:
    """One turn's request to the catalog, and how to re-rank what it returns."""

    mode: str
    vector_name: str  # the catalog vector to search ("text" or "fusion")
    vector: np.ndarray | None  # None: recommend around positive/negative examples only
    positive_ids: tuple[str, ...]
    negative_ids: tuple[str, ...]
    preference: Preference | None
    _engine: Engine
    _video: VideoFeatures | None
    _text: str | None
    _previous: TrackContext | None
    _negatives: tuple[TrackContext, ...]

    def rerank(self, rows: Sequence[CandidateRow]) -> Ranking:
        return self._engine._rerank(self, rows)


class Engine:
    """Models loaded once; every method is safe to call from a worker thread."""

    def __init__(self, config: EngineConfig | None = None, *, encoders=None, fusion_model=None) -> None:
        self.config = config or EngineConfig()
        self._encoders = encoders
        self._fusion = fusion_model
        self._load_lock = threading.Lock()
        self._scorer_lock = threading.Lock()
        self._scorer: ZeroShotScorer | None = None

    # --- loading -------------------------------------------------------------------------------

    @property
    def encoders(self):
        if self._encoders is None:
            with self._load_lock:
                if self._encoders is None:
                    from engine.profiles import load_encoders

                    self._encoders = load_encoders(
                        self.config.profile, overrides=self.config.overrides, device=self.config.device
                    )
        return self._encoders

    @property
    def fusion(self):
        """The MVT-Fusion model, or None when no checkpoint is configured (zero-shot mode)."""
        if self._fusion is None and self.config.fusion_checkpoint is not None:
            with self._load_lock:
                if self._fusion is None:
                    self._fusion = self._load_fusion(self.config.fusion_checkpoint)
        return self._fusion

    def _load_fusion(self, directory: Path):
        from engine.music_towers import check_tower_inputs, has_towers, load_tower_checkpoint

        if not has_towers(directory):
            from engine.checkpoint import load_checkpoint

            return load_checkpoint(directory, expect_profile=self.config.profile, device=self.config.device)
        model = load_tower_checkpoint(directory, expect_profile=self.config.profile, device=self.config.device)
        check_tower_inputs(model, self.encoders.music, directory)
        log.info("fusion checkpoint %s: trained AST towers g_mc and g_mt loaded (frozen, eval mode)", directory)
        return model.requires_grad_(False).eval()

    @property
    def fusion_towers(self) -> bool:
        """True when the fusion model has trained AST towers (known from the checkpoint's files: nothing is loaded)."""
        from engine.music_towers import TowerRecommender, has_towers

        if self._fusion is not None:
            return isinstance(self._fusion, TowerRecommender)
        return has_towers(self.config.fusion_checkpoint)

    @property
    def fusion_id(self) -> str:
        """The fusion checkpoint's fingerprint (`engine.music_towers.fusion_id`); "" without a checkpoint folder."""
        if self.config.fusion_checkpoint is None:
            return ""
        from engine.music_towers import fusion_id

        return fusion_id(self.config.fusion_checkpoint)

    @property
    def mode(self) -> str:
        return MODE_FUSION if (self._fusion is not None or self.config.fusion_checkpoint is not None) else MODE_ZERO_SHOT

    @property
    def scorer(self) -> ZeroShotScorer:
        if self._scorer is None:
            with self._load_lock:
                if self._scorer is None:
                    self._scorer = ZeroShotScorer(self.encoders.text, self.config.zero_shot)
        return self._scorer

    def warm_up(self) -> None:
        """Load every model now (at start-up) rather than on the first request."""
        _ = self.encoders, self.fusion, self.scorer
        self.scorer.parser.precompute()  # the descriptions any-words steering compares phrases with

    def share_text_encoder(self, text_encoder) -> None:
        """Use `text_encoder` (a thread-safe one: a model worker's micro-batched encoder, bot/jobs/batching.py)
        and let threads query and re-rank at once, so that their sentences meet in its batches.

        By default the scorer is used by one thread at a time (`_scorer_lock`): tokenizers are not
        safe to share between threads, and nothing else gains from running queries side by side."""
        import contextlib
        import dataclasses

        encoders = self.encoders  # loaded first (the property takes _load_lock itself)
        with self._load_lock:
            self._encoders = dataclasses.replace(encoders, text=text_encoder)
            self._scorer = ZeroShotScorer(text_encoder, self.config.zero_shot)
            self._scorer_lock = contextlib.nullcontext()  # type: ignore[assignment]

    # --- features ------------------------------------------------------------------------------

    def video_features(self, path: str | Path, *, fps: float | None = None) -> VideoFeatures:
        """Decode and embed a video once per conversation (see engine/video.py)."""
        return video_features(
            path,
            self.encoders.image,
            profile=self.encoders.profile.name,
            fps=fps or self.config.query_fps,
            limits=self.config.limits,
            ffmpeg=self.config.ffmpeg,
        )

    def text_vector(self, text: str) -> np.ndarray:
        """The text encoder's sentence vector (catalog "text" space).  # (Dt,)"""
        with self._scorer_lock:
            return self.scorer.embed([text])[0]

    # --- queries -------------------------------------------------------------------------------

    def query(
        self,
        *,
        video: VideoFeatures | None = None,
        text: str | None = None,
        candidate: TrackContext | None = None,
        negatives: Sequence[TrackContext] = (),
    ) -> Query:
        """Build one turn's query (paper: turn 1 = video (+ text); k >= 2 = video + candidate + feedback)."""
        text = (text or "").strip() or None
        if video is None and text is None and candidate is None and not negatives:
            raise ValueError("a query needs a video, some words, or a previous track")
        with self._scorer_lock:
            preference = self.scorer.parser.parse(text) if text else None
        negative_ids = tuple(n.track_id for n in negatives)
        if self.fusion is not None:
            vec = self._fusion_query(video, text, candidate)
            return Query(MODE_FUSION, FUSION_VECTOR, vec, (), negative_ids, preference, self, video, text, candidate, tuple(negatives))

        # zero-shot: retrieve on the text space with the video's labels and the positive words
        from engine.zeroshot import video_sentence

        sentences = []
        if video is not None and (vs := video_sentence(video.labels)):
            sentences.append(vs)
        positive_words = preference.positive_text if preference is not None else None
        if positive_words:
            sentences.append(positive_words)
        vec = None
        if sentences:
            with self._scorer_lock:
                q = self.scorer.embed(sentences).mean(axis=0)
            vec = q / max(float(np.linalg.norm(q)), 1e-12)
        # With nothing to embed (a bare "another"), retrieve around the previous track unless the
        # user rejected it; the bot then recommends with the rejected tracks as negatives.
        positive_ids = ()
        if vec is None and candidate is not None and candidate.track_id not in negative_ids:
            positive_ids = (candidate.track_id,)
        return Query(MODE_ZERO_SHOT, TEXT_VECTOR, vec, positive_ids, negative_ids, preference, self, video, text, candidate, tuple(negatives))

    def ranker(
        self,
        *,
        mode: str,
        video: VideoFeatures | None = None,
        text: str | None = None,
        candidate: TrackContext | None = None,
        negatives: Sequence[TrackContext] = (),
    ) -> Query:
        """The `Query` of `query(...)` on the same inputs, for its `rerank` only: no search vector computed.

        Where the search ran elsewhere (a model worker re-ranks what a front-end's catalog returned,
        bot/jobs/worker.py): the ranking equals `query(...).rerank` on the same candidates."""
        text = (text or "").strip() or None
        with self._scorer_lock:
            preference = self.scorer.parser.parse(text) if text else None
        vector_name = FUSION_VECTOR if mode == MODE_FUSION else TEXT_VECTOR
        negative_ids = tuple(n.track_id for n in negatives)
        return Query(mode, vector_name, None, (), negative_ids, preference, self, video, text, candidate, tuple(negatives))

    @torch.inference_mode()
    def _fusion_query(self, video: VideoFeatures | None, text: str | None, candidate: TrackContext | None) -> np.ndarray:
        model = self.fusion
        device = next(model.parameters()).device
        kw: dict[str, torch.Tensor | None] = {}
        v = None
        if video is not None:
            v = torch.as_tensor(video.segment_vectors, dtype=torch.float32, device=device).mean(0, keepdim=True)  # (1, Dv)
        t = None
        if text:
            tok = self.encoders.text.encode_tokens([text])
            t, kw["text_mask"] = tok.states.to(device), tok.mask.to(device)  # (1, T, Dt)
        from engine.music_towers import TowerRecommender

        m = None
        if isinstance(model, TowerRecommender):  # g_mc's tokens of the candidate's 10 s clip (eq. 1)
            if candidate is not None and candidate.clip_mels is not None:
                m = torch.as_tensor(np.asarray(candidate.clip_mels), device=device)[None]  # (1, frames, mel)
            elif candidate is not None:
                log.warning("track %s has no candidate clip for the AST towers: turn without candidate music", candidate.track_id)
            if v is None and t is None and m is None:
                raise ValueError("the fusion model needs a video, words or a candidate track")
            q = model.encode_query(v, t, candidate_mels=m, **kw)  # (1, 256)
            return q[0].float().cpu().numpy()
        if candidate is not None and candidate.segment_music is not None:
            m = torch.as_tensor(candidate.segment_music, dtype=torch.float32, device=device)[None]  # (1, S, Dm)
        if v is None and t is None and m is None:
            raise ValueError("the fusion model needs a video, words or a candidate track")
        q = model.encode_query(v, t, m, **kw)  # (1, 256)
        return q[0].float().cpu().numpy()

    def _rerank(self, query: Query, rows: Sequence[CandidateRow]) -> Ranking:
        n = len(rows)
        if n == 0:
            empty = np.zeros(0, dtype=np.float32)
            return Ranking(np.zeros(0, dtype=np.int64), empty, {}, query.mode, query.preference)
        vocab = self.scorer.vocabulary
        cands = Candidates(
            text=np.stack([np.asarray(r.text, dtype=np.float32) for r in rows]),
            tags=vocab.matrix([r.tag_probs for r in rows]),
            rhythm=np.asarray([r.rhythm for r in rows], dtype=np.float32),
        )
        prev = query._previous
        previous = None
        if prev is not None:
            previous = TrackFeatures(
                text=prev.text,
                tags=vocab.vector(prev.tag_probs) if prev.tag_probs else None,
                rhythm=None if prev.rhythm is None else np.asarray(prev.rhythm, dtype=np.float32),
            )
        parts: dict[str, np.ndarray]
        if query.mode == MODE_ZERO_SHOT:
            with self._scorer_lock:
                bd: ScoreBreakdown = self.scorer.score_parts(
                    video=query._video, text=query._text, candidates=cands, previous=previous, preference=query.preference
                )
            parts = {"semantic": bd.semantic, "pace": bd.pace, "steering": bd.steering}
        else:
            cos = np.asarray([r.search_score for r in rows], dtype=np.float32)
            parts = {"fusion": standardise(cos, 0.01)}
            if query.preference is not None and not query.preference.empty and self.config.fusion_steering_weight:
                with self._scorer_lock:
                    bd = self.scorer.score_parts(candidates=cands, previous=previous, preference=query.preference)
                parts["steering"] = bd.steering * (self.config.fusion_steering_weight / max(self.config.zero_shot.steering, 1e-6))
        if query._negatives:
            neg = [nv.text for nv in query._negatives if nv.text is not None]
            if neg:
                sim = (cands.text @ np.stack(neg).T).max(axis=1)  # (N,) closest rejected track
                parts["not like rejected"] = -NEGATIVE_WEIGHT * standardise(sim, 0.02)
        total = np.sum(list(parts.values()), axis=0).astype(np.float32)
        order = np.argsort(-total, kind="stable")
        missing = tuple(unavailable(query.preference, cands.tags, vocab)) if query.preference is not None else ()
        return Ranking(order, total, parts, query.mode, query.preference, missing)

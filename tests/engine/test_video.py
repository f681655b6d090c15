"""The video feature pipeline on the tiny profile (fast) and the lite profile (slow, real weights)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.media import CorruptMediaError, NoVideoStreamError
from engine.profiles import load_encoders
from engine.video import VideoFeatures, content_hash, video_features


@pytest.fixture(scope="module")
def tiny():
    return load_encoders("tiny")


def test_segments_vectors_and_pace_align(tiny, bikes_mp4) -> None:
    vf = video_features(bikes_mp4, tiny.image, profile="tiny", fps=2.0)
    assert vf.duration_s == pytest.approx(10.0, abs=0.05)
    assert [(s.start_s, s.end_s) for s in vf.segments] == [(0.0, 10.0)]
    assert vf.segment_vectors.shape == (1, tiny.image.dim)
    assert vf.motion.shape == vf.cut_rate.shape == (1,)
    assert np.linalg.norm(vf.clip_vector) == pytest.approx(1.0, abs=1e-5)
    assert vf.content_hash == content_hash(bikes_mp4)
    assert {"probe", "decode", "embed", "total"} <= set(vf.timings)


def test_long_video_uses_centre_120s_in_12_segments(tiny, media_factory) -> None:
    clip = media_factory("long.mp4", "testsrc2=s=160x90:r=10:d=150", args=("-c:v", "libx264", "-preset", "ultrafast"))
    vf = video_features(clip, tiny.image, profile="tiny", fps=0.5)
    assert len(vf.segments) == 12
    assert vf.segments[0].start_s == pytest.approx(15.0)
    assert vf.segments[-1].end_s == pytest.approx(135.0)
    assert vf.segment_vectors.shape == (12, tiny.image.dim)


def test_round_trip_bytes(tiny, bikes_mp4) -> None:
    vf = video_features(bikes_mp4, tiny.image, profile="tiny", fps=1.0)
    back = VideoFeatures.from_bytes(vf.to_bytes())
    assert back.content_hash == vf.content_hash and back.labels == vf.labels and back.segments == vf.segments
    np.testing.assert_array_equal(back.segment_vectors, vf.segment_vectors)
    np.testing.assert_array_equal(back.motion, vf.motion)


def test_audio_only_is_refused(tiny, media_factory) -> None:
    audio = media_factory("tone.ogg", "sine=f=440:d=3")
    with pytest.raises(NoVideoStreamError):
        video_features(audio, tiny.image, profile="tiny")


def test_truncated_video_is_refused(tiny, bikes_mp4, tmp_path) -> None:
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(bikes_mp4.read_bytes()[: bikes_mp4.stat().st_size // 2])
    with pytest.raises(CorruptMediaError):
        video_features(cut, tiny.image, profile="tiny")


@pytest.mark.slow
def test_lite_sees_a_street_in_bikes(bikes_mp4) -> None:
    """Real EfficientNet-Lite0 weights on real footage (street scene: switches, cars, a taxi)."""
    enc = load_encoders("lite")
    vf = video_features(bikes_mp4, enc.image, profile="lite", fps=1.0)
    assert vf.segment_vectors.shape == (1, 1280)
    names = " ".join(n for n, _ in vf.labels)
    assert any(w in names for w in ("switch", "cab", "car", "rickshaw", "unicycle", "bridge", "traffic", "street"))

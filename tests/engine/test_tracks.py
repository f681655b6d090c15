"""Tests for engine/tracks.py: the paper's 120 s / twelve 10 s segments, tags, rhythm, excerpt choice.

Fast tests run the tiny profile on tones synthesised with ffmpeg lavfi; the slow ones run the
lite profile (musicnn) on real game music (top-5 MTT + top-5 MSD, paper section 3).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.encoders.musicnn import MSD_LABELS, MTT_LABELS
from engine.media import CorruptMediaError, MediaError, NoAudioStreamError, NotMediaError, Segment, plan_segments
from engine.profiles import load_encoders
from engine.tracks import (
    TrackAnalysis,
    TrackJob,
    analyse_track,
    analyse_tracks,
    choose_excerpt,
    display_tag,
    title_from_path,
    title_source,
)
from tests.conftest import lavfi


@pytest.fixture(scope="module")
def tiny():
    return load_encoders("tiny")


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tracks")


@pytest.fixture(scope="module")
def long_track(audio_dir: Path) -> Path:
    """130 s of a 330 Hz tone (vorbis): longer than the paper's 120 s window."""
    return lavfi(audio_dir / "long.ogg", "sine=f=330:d=130", args=("-c:a", "libvorbis"))


@pytest.fixture(scope="module")
def long_analysis(tiny, long_track: Path) -> TrackAnalysis:
    return analyse_track(long_track, tiny, title="Long Tone", artist="Lavfi", tags=("drone",))


@pytest.fixture(scope="module")
def click_track(audio_dir: Path) -> Path:
    """30 s of 20 ms clicks every 0.5 s: 120 BPM."""
    expr = "if(lt(mod(t\\,0.5)\\,0.02)\\,sin(2*PI*1000*t)\\,0)"
    return lavfi(audio_dir / "clicks.wav", f"aevalsrc={expr}:s=16000:d=30")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def paper_tiny(tmp_path_factory: pytest.TempPathFactory):
    """The `paper` profile's code path (AST + musicnn tagger) with tiny CLIP/AST and the real musicnn weights."""
    from engine.profiles import tiny_overrides

    return load_encoders("paper", overrides=tiny_overrides(tmp_path_factory.mktemp("paper-backbones")))


# =================================================================================================
# analyse_track on the tiny profile
# =================================================================================================


def test_long_track_is_the_centre_120s_in_twelve_segments(tiny, long_track: Path, long_analysis: TrackAnalysis) -> None:
    a = long_analysis
    assert a.content_hash == _sha(long_track)
    assert a.profile == "tiny"
    assert a.duration_s == pytest.approx(130.0, abs=0.1)
    assert a.segments == plan_segments(a.duration_s)  # paper section 3: centre 120 s, 10 s segments
    assert len(a.segments) == 12
    assert (a.segments[0].start_s, a.segments[-1].end_s) == (pytest.approx(5.0, abs=0.1), pytest.approx(125.0, abs=0.1))
    assert a.segment_vectors.shape == (12, tiny.music.dim) and a.segment_vectors.dtype == np.float32
    np.testing.assert_allclose(a.music_vector, a.segment_vectors.mean(axis=0), rtol=1e-6)
    # the per-segment vectors are the encoder's pooled vectors of each 10 s slice
    assert set(a.tag_probs) == set(tiny.music.tag_names)
    assert all(0.0 <= p <= 1.0 for p in a.tag_probs.values())
    assert a.sentence.startswith("Long Tone by Lavfi: drone, ")
    assert a.text_vector is not None and a.text_vector.shape == (tiny.text.dim,)
    expected = tiny.text.encode_sentences([a.sentence])[0].numpy()
    np.testing.assert_allclose(a.text_vector, expected, rtol=1e-5, atol=1e-6)
    assert a.excerpt_duration_s == 25.0
    assert 5.0 <= a.excerpt_start_s and a.excerpt_start_s + 25.0 <= 125.0
    assert a.loudness_db == pytest.approx(20 * np.log10(0.125 / np.sqrt(2)), abs=0.3)  # lavfi sine: amplitude 1/8
    assert {"decode", "music", "rhythm", "text", "total", "x_realtime"} <= set(a.timings)


def test_segment_vectors_are_the_encoders_per_segment_embeddings(tiny, long_track: Path, long_analysis: TrackAnalysis) -> None:
    from engine.media import decode_audio

    a = long_analysis
    seg = a.segments[3]
    audio = decode_audio(long_track, sample_rate=tiny.music.sample_rate, start=seg.start_s, duration=seg.duration_s)
    direct = tiny.music.encode(audio).pooled.numpy()
    np.testing.assert_allclose(a.segment_vectors[3], direct, rtol=1e-3, atol=1e-4)


def test_click_track_tempo(tiny, click_track: Path) -> None:
    a = analyse_track(click_track, tiny)
    assert a.tempo_bpm == pytest.approx(120.0, abs=2.0)
    assert a.onset_rate == pytest.approx(2.0, abs=0.3)
    assert len(a.segments) == 3 and a.duration_s == pytest.approx(30.0, abs=0.05)


def test_short_track_is_one_segment_and_its_own_excerpt(tiny, audio_dir: Path) -> None:
    short = lavfi(audio_dir / "short.mp3", "sine=f=500:d=4", args=("-c:a", "libmp3lame"))
    a = analyse_track(short, tiny)
    assert len(a.segments) == 1 and a.segment_vectors.shape == (1, tiny.music.dim)
    assert a.excerpt_start_s == 0.0 and a.excerpt_duration_s == pytest.approx(a.duration_s)
    assert a.sentence.startswith("Short: ")  # the title comes from the file name


def test_round_trip_bytes(tiny, click_track: Path) -> None:
    a = analyse_track(click_track, tiny, title="Clicks")
    b = TrackAnalysis.from_bytes(a.to_bytes())
    assert b.segments == a.segments and b.tag_probs == a.tag_probs and b.sentence == a.sentence
    np.testing.assert_array_equal(b.segment_vectors, a.segment_vectors)
    np.testing.assert_array_equal(b.text_vector, a.text_vector)
    assert (b.tempo_bpm, b.loudness_db, b.onset_rate) == (a.tempo_bpm, a.loudness_db, a.onset_rate)
    assert (b.excerpt_start_s, b.excerpt_duration_s, b.content_hash, b.profile) == (
        a.excerpt_start_s, a.excerpt_duration_s, a.content_hash, a.profile
    )  # fmt: skip
    assert b.decoder == a.decoder == "ffmpeg"


BAD_FILES = [
    ("junk.ogg", b"not audio " * 500, NotMediaError),
    ("cut.ogg", None, MediaError),  # first 2 KB of a real ogg: its header only
]


@pytest.mark.parametrize(("name", "data", "error"), BAD_FILES)
def test_unreadable_files_raise_media_errors(tiny, tmp_path: Path, long_track: Path, name: str, data: bytes | None, error: type) -> None:
    path = tmp_path / name
    path.write_bytes(data if data is not None else long_track.read_bytes()[:2048])
    with pytest.raises(error):
        analyse_track(path, tiny)


def test_video_without_sound_is_refused(tiny, bikes_mp4: Path) -> None:
    with pytest.raises(NoAudioStreamError):
        analyse_track(bikes_mp4, tiny)


def test_analyse_tracks_yields_results_and_errors_in_order(tiny, tmp_path: Path, click_track: Path) -> None:
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"\x00" * 4000)
    short = lavfi(tmp_path / "long.mp3", "sine=f=200:d=3", args=("-c:a", "libmp3lame"))
    jobs = [TrackJob(click_track, title="Clicks"), TrackJob(junk), TrackJob(short, artist="Lavfi", content_hash="f" * 64)]
    results = list(analyse_tracks(jobs, tiny))
    assert [job for job, _ in results] == jobs
    first, second, third = (r for _, r in results)
    assert isinstance(first, TrackAnalysis) and first.sentence.startswith("Clicks: ")
    assert isinstance(second, MediaError)
    assert isinstance(third, TrackAnalysis) and third.content_hash == "f" * 64  # given hashes are trusted
    assert third.sentence.startswith("Long by Lavfi: ")


def test_analyse_tracks_lets_other_errors_through(tiny, click_track: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(clips):
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(tiny.music, "encode_batch", broken)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        list(analyse_tracks([TrackJob(click_track), TrackJob(click_track)], tiny))


def test_a_decoded_window_with_no_samples_is_corrupt(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, click_track: Path) -> None:
    import engine.tracks as tracks

    monkeypatch.setattr(tracks, "decode_audio", lambda *a, **k: np.zeros(0, dtype=np.float32))
    with pytest.raises(CorruptMediaError):
        analyse_track(click_track, tiny)


# =================================================================================================
# excerpt choice, tags, names
# =================================================================================================


def _segments(start: float, n: int, length: float = 10.0) -> list[Segment]:
    return [Segment(i, start + i * length, start + (i + 1) * length) for i in range(n)]


def test_excerpt_is_the_window_most_like_the_track() -> None:
    segs = _segments(15.0, 12)  # a 150 s track: the centre 120 s
    a, b = np.eye(4)[0], np.eye(4)[1]
    vectors = np.stack([b, b, b] + [a] * 9)  # an unusual intro (45 s), then the body of the track
    start, length = choose_excerpt(segs, vectors, 150.0)
    assert length == 25.0
    # the body (45-135 s) ties everywhere: the window nearest the body's centre... of the whole window (75 s)
    assert start == pytest.approx(62.0)  # 62 and 63 are equally near 75 - 12.5; the first wins
    vectors = np.stack([a] * 9 + [b, b, b])  # an unusual ending instead
    start, _ = choose_excerpt(segs, vectors, 150.0)
    assert 15.0 <= start and start + 25.0 <= 105.0


def test_excerpt_prefers_the_best_segments_over_the_centre() -> None:
    segs = _segments(0.0, 6)  # a 60 s track
    a, others = np.eye(5)[0], np.eye(5)[1:]
    # segments 0-1 are the track's theme; 2-5 are the theme plus a different voice each, so
    # the mean is nearest the theme: cos 0.87 for segments 0-1 against 0.72 for the others
    vectors = np.stack([a, a, *(a + o for o in others)])
    start, length = choose_excerpt(segs, vectors, 60.0)
    assert start == 5.0 and length == 25.0  # as early as the 5 s margin allows


EXCERPT_EDGES = [
    (20.0, (0.0, 20.0)),  # no longer than an excerpt: all of it
    (30.0, (2.5, 25.0)),  # too short for the 5 s margins: centred
    (25.0, (0.0, 25.0)),
]


@pytest.mark.parametrize(("duration", "expected"), EXCERPT_EDGES)
def test_excerpt_of_short_tracks(duration: float, expected: tuple[float, float]) -> None:
    segs = plan_segments(duration)
    vectors = np.ones((len(segs), 3))
    assert choose_excerpt(segs, vectors, duration) == expected


def test_auto_tags_are_top5_mtt_and_top5_msd() -> None:
    probs = {f"mtt:{t}": 0.01 * i for i, t in enumerate(MTT_LABELS)} | {f"msd:{t}": 0.0 for t in MSD_LABELS}
    probs["msd:rock"] = 0.99  # also an MTT tag: merged
    probs["msd:House"] = 0.98
    probs["msd:pop"] = 0.97
    a = TrackAnalysis("0" * 64, "lite", 10.0, [], np.zeros((1, 2), np.float32), probs, 0.0, -20.0, 1.0, 0.0, 10.0)
    assert [n for n, _ in a.top_mtt] == list(MTT_LABELS[-5:][::-1])
    assert [n for n, _ in a.top_msd][:3] == ["rock", "House", "pop"]
    assert a.auto_tags[:3] == ["rock", "house", "pop"]
    assert len(a.auto_tags) == len(set(a.auto_tags)) <= 10
    other = TrackAnalysis("0" * 64, "paper", 10.0, [], np.zeros((1, 2), np.float32), {"Music": 0.9, "Speech": 0.1}, 0.0, -20.0, 1.0, 0.0, 10.0)
    assert other.auto_tags == ["music", "speech"]  # a tagger without MTT/MSD: its best labels


NAMES = [("battle-epic.ogg", "Battle Epic"), ("airship_2.ogg", "Airship 2"), ("Rock.ogg", "Rock"), ("mTT:Male Vocal", None)]


@pytest.mark.parametrize(("name", "title"), NAMES[:3])
def test_title_from_path(name: str, title: str) -> None:
    assert title_from_path(Path("/music") / name) == title


# path under /lib -> title, where it came from: a generic file name takes its folder's name
GENERIC = [
    ("Rainy Days/song.ogg", "Rainy Days", "folder name"),
    ("Rainy Days/Song.OGG", "Rainy Days", "folder name"),
    ("Rainy Days/01.ogg", "Rainy Days 1", "folder name"),
    ("aftermath_soundtrack/track25.opus", "Aftermath Soundtrack 25", "folder name"),
    ("Sunset Drive/Track 03.flac", "Sunset Drive 3", "folder name"),
    ("Sunset Drive/untitled.wav", "Sunset Drive", "folder name"),
    ("night-city/audio_1.mp3", "Night City 1", "folder name"),
    ("night-city/Song (2).mp3", "Night City 2", "folder name"),
    ("music/01.ogg", "01", "file name"),  # the folder's name is generic too
    ("songs/song.ogg", "Song", "file name"),
    ("Rainy Days/rain-song.ogg", "Rain Song", "file name"),  # a word beside "song": a real name
    ("Rainy Days/track3_enhanced.opus", "Track3 Enhanced", "file name"),
    ("Rainy Days/01 - Intro.ogg", "01 Intro", "file name"),
]


@pytest.mark.parametrize(("rel", "title", "source"), GENERIC, ids=[g[0] for g in GENERIC])
def test_title_from_a_generic_file_name_is_the_folders(rel: str, title: str, source: str) -> None:
    assert title_from_path(Path("/lib") / rel) == title
    assert title_source(Path("/lib") / rel) == source


def test_display_tag() -> None:
    assert display_tag("mtt:Male Vocal") == "male vocal"
    assert display_tag(" Rock ") == "rock"


# =================================================================================================
# the lite profile on real music (slow)
# =================================================================================================


@pytest.mark.slow
@pytest.mark.parametrize(
    ("track", "expect_mtt"),
    [
        ("wesnoth-1.16-music/battle-epic.ogg", {"classical", "strings", "violin"}),
        ("supertux-data/chipdisko.ogg", {"techno", "electronic", "beat"}),
        ("hedgewars-data/Rock.ogg", {"rock", "guitar", "drums"}),
    ],
)
def test_lite_real_tracks_get_top5_mtt_and_top5_msd(music_dir: Path, track: str, expect_mtt: set[str]) -> None:
    lite = load_encoders("lite")
    a = analyse_track(music_dir / track, lite)
    assert a.segment_vectors.shape == (len(a.segments), 400)
    assert len(a.segments) == min(12, len(plan_segments(a.duration_s)))
    assert len(a.tag_probs) == 100
    mtt, msd = a.top_mtt, a.top_msd
    assert len(mtt) == 5 and len(msd) == 5
    assert {n for n, _ in mtt} <= set(MTT_LABELS) and {n for n, _ in msd} <= set(MSD_LABELS)
    assert [p for _, p in mtt] == sorted((p for _, p in mtt), reverse=True)
    assert expect_mtt & {n for n, _ in mtt}, f"{track}: {mtt}"
    assert a.text_vector is not None and a.text_vector.shape == (384,)
    assert float(np.linalg.norm(a.text_vector)) == pytest.approx(1.0, abs=1e-4)
    assert a.timings["x_realtime"] > 1.0
    assert isinstance(torch.from_numpy(a.segment_vectors), torch.Tensor)


# =================================================================================================
# the paper profile's tags: musicnn MTT + MSD beside AST (paper section 3)
# =================================================================================================


def test_paper_profile_tags_with_musicnn_and_embeds_with_ast(paper_tiny, audio_dir: Path) -> None:
    from engine.tracks import decode_track
    from tests.conftest import melody

    track = lavfi(audio_dir / "melody25.ogg", melody(330, 25), args=("-c:a", "libvorbis"))
    a = analyse_track(track, paper_tiny, title="Melody")
    assert a.profile == "paper" and len(a.segments) == 3
    assert a.segment_vectors.shape == (3, paper_tiny.music.dim)  # AST's CLS vectors, not musicnn's
    # the tags: musicnn's 100 MTT + MSD probabilities, the length-weighted mean of its per-segment outputs
    assert list(a.tag_probs) == [f"mtt:{t}" for t in MTT_LABELS] + [f"msd:{t}" for t in MSD_LABELS]
    _, clips = decode_track(track, sample_rate=16_000).segment_audio()  # the samples analyse_track embedded
    per_seg = np.asarray([[e.tags[n] for n in a.tag_probs] for e in paper_tiny.tagger.encode_batch(clips)])  # (3, 100)
    w = np.asarray([len(c) for c in clips], dtype=np.float64)
    np.testing.assert_allclose(list(a.tag_probs.values()), (w / w.sum()) @ per_seg, rtol=1e-3, atol=1e-4)
    # the automatic tags: top-5 MTT + top-5 MSD, as the dataset's were (no AudioSet label among them)
    mtt = sorted(MTT_LABELS, key=lambda t: -a.tag_probs[f"mtt:{t}"])[:5]
    msd = sorted(MSD_LABELS, key=lambda t: -a.tag_probs[f"msd:{t}"])[:5]
    assert [t for t, _ in a.top_mtt] == mtt and [t for t, _ in a.top_msd] == msd
    assert set(a.auto_tags) == {display_tag(t) for t in mtt + msd}
    assert not set(a.auto_tags) & {t.lower() for t in paper_tiny.music.tag_names}

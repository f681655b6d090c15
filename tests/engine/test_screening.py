"""Tests for engine/screening.py: too short, silence and constant tones are not music; real music is.

Synthesised signals are computed in numpy (exact) or with ffmpeg's lavfi sources (through the
real decoder); the real music is Debian game music (scripts/fetch_music.sh), decoded by
`engine.tracks.decode_track` with the checks on, as the catalog decodes it.
"""

from __future__ import annotations

import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine.media import ffmpeg_binary
from engine.screening import (
    MIN_TRACK_S,
    SILENCE_DB,
    TONE_MAX_FLUX,
    ConstantToneError,
    SilenceError,
    TooShortError,
    audio_stats,
    check_duration,
    check_music,
)
from engine.tracks import decode_track
from tests.conftest import lavfi, melody

SR = 16_000  # Hz
SECONDS = 20.0
T = np.arange(int(SECONDS * SR)) / SR
RNG = np.random.default_rng(0)


def _db(x: float) -> float:
    return 10 ** (x / 20)


# name, signal, the error it raises (None: music)
SYNTHETIC = [
    ("sine 440 Hz", 0.5 * np.sin(2 * np.pi * 440 * T), ConstantToneError),
    ("sine with noise at -40 dB", 0.5 * np.sin(2 * np.pi * 440 * T) + 0.01 * RNG.standard_normal(len(T)), ConstantToneError),
    ("dial tone 350 + 440 Hz", 0.3 * np.sin(2 * np.pi * 350 * T) + 0.3 * np.sin(2 * np.pi * 440 * T), ConstantToneError),
    ("square 220 Hz", 0.3 * np.sign(np.sin(2 * np.pi * 220 * T)), ConstantToneError),
    ("sine with a 2 Hz tremolo", 0.5 * np.sin(2 * np.pi * 440 * T) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * T)), ConstantToneError),
    ("digital silence", np.zeros(len(T)), SilenceError),
    ("noise at -70 dBFS", _db(-70) * RNG.standard_normal(len(T)), SilenceError),
    ("silence but one 0.2 s click", np.where((T > 5) & (T < 5.2), 0.5, 0.0) * np.sin(2 * np.pi * 440 * T), SilenceError),
    ("sine sweep 100 Hz-1.3 kHz", 0.5 * np.sin(2 * np.pi * (100 * T + 30 * T**2)), None),
]


@pytest.mark.parametrize(("name", "signal", "error"), SYNTHETIC, ids=[c[0] for c in SYNTHETIC])
def test_synthetic_signals(name: str, signal: np.ndarray, error: type[Exception] | None) -> None:
    audio = signal.astype(np.float32)
    if error is None:
        stats = check_music(audio, SR)
        assert stats.flux > TONE_MAX_FLUX and stats.loud_db > SILENCE_DB
    else:
        with pytest.raises(error) as exc:
            check_music(audio, SR, name="x.ogg")
        assert exc.value.reason == ("silence" if error is SilenceError else "constant tone")
        assert "x.ogg" in str(exc.value)


def test_the_numbers_behind_the_thresholds() -> None:
    sine = audio_stats((0.5 * np.sin(2 * np.pi * 440 * T)).astype(np.float32), SR)
    assert sine.flux < 0.001 and sine.loud_db == pytest.approx(-9.03, abs=0.05)  # 0.5 amplitude: -9 dBFS RMS
    silent = audio_stats(np.zeros(SR * 5, np.float32), SR)
    assert silent.sound_frames == 0 and silent.loud_db < -190


@pytest.mark.parametrize(("source", "error"), [
    ("sine=f=440:d=15", ConstantToneError),
    ("anullsrc=r=44100:cl=stereo:d=15", SilenceError),
    (melody(330, 15), None),
], ids=["lavfi sine", "lavfi silence", "lavfi melody"])  # fmt: skip
def test_decode_track_checks_what_it_decodes(tmp_path: Path, source: str, error: type[Exception] | None) -> None:
    path = lavfi(tmp_path / "x.ogg", source, args=("-t", "15", "-c:a", "libvorbis"))
    if error is None:
        decoded = decode_track(path, sample_rate=SR, min_duration_s=MIN_TRACK_S, check_content=True)
        assert decoded.info.duration_s == pytest.approx(15.0, abs=0.1)
    else:
        with pytest.raises(error):
            decode_track(path, sample_rate=SR, min_duration_s=MIN_TRACK_S, check_content=True)
        decode_track(path, sample_rate=SR)  # the checks are the catalog's choice: off by default


REAL = [
    "wesnoth-1.16-music/battle-epic.ogg",
    "wesnoth-1.16-music/elvish-theme.ogg",
    "supertux-data/chipdisko.ogg",
    "hedgewars-data/Beach.ogg",
    "extremetuxracer-data/calmrace-ks.ogg",
]


@pytest.mark.parametrize("rel", REAL)
def test_real_music_passes(music_dir: Path, rel: str) -> None:
    decoded = decode_track(music_dir / rel, sample_rate=SR, min_duration_s=MIN_TRACK_S, check_content=True)
    stats = audio_stats(decoded.audio, SR)
    assert stats.flux > 3 * TONE_MAX_FLUX and stats.loud_db > SILENCE_DB + 30  # far from both thresholds


def test_a_one_second_fragment_of_real_music_is_too_short(tmp_path: Path, orchestral_track: Path) -> None:
    fragment = tmp_path / "fragment.ogg"
    subprocess.run(
        [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-y", "-ss", "40", "-t", "1", "-i", str(orchestral_track),
         "-map", "0:a:0", "-c:a", "libvorbis", str(fragment)],
        check=True, timeout=60,
    )  # fmt: skip
    with pytest.raises(TooShortError) as exc:
        decode_track(fragment, sample_rate=SR, min_duration_s=MIN_TRACK_S, check_content=True)
    assert exc.value.reason == "too short (1.0 s < 10 s)"
    decoded = decode_track(fragment, sample_rate=SR, min_duration_s=0.5, check_content=True)  # it is music, only short
    assert decoded.info.duration_s == pytest.approx(1.0, abs=0.05)


def test_check_duration_and_pickling() -> None:
    check_duration(10.0, 10.0)  # the minimum itself is enough
    with pytest.raises(TooShortError) as exc:
        check_duration(9.96, 10.0)
    assert exc.value.reason == "too short (9.96 s < 10 s)"  # not "10.0 s < 10 s"
    again = pickle.loads(pickle.dumps(exc.value))  # errors cross process boundaries (worker queue)
    assert type(again) is TooShortError and again.reason == exc.value.reason

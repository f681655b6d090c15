"""Tempo, loudness and onset rate on synthetic clicks with known answers, and on real music."""

from __future__ import annotations

import numpy as np
import pytest

from engine.media import decode_audio
from engine.rhythm import rhythm

SR = 22050


def click_track(bpm: float, seconds: float = 20.0, amp: float = 0.5, sr: int = SR) -> np.ndarray:
    """Short decaying 1 kHz blips every beat, on light noise."""
    rng = np.random.default_rng(0)
    y = rng.normal(0, 0.002, int(seconds * sr)).astype(np.float32)
    blip_t = np.arange(int(0.03 * sr)) / sr
    blip = (np.sin(2 * np.pi * 1000 * blip_t) * np.exp(-blip_t * 120)).astype(np.float32)
    for t in np.arange(0, seconds - 0.05, 60.0 / bpm):
        i = int(t * sr)
        y[i : i + len(blip)] += amp * blip
    return y


TEMPI = [72.0, 96.0, 120.0, 140.0, 174.0]


@pytest.mark.parametrize("bpm", TEMPI)
def test_tempo_of_click_tracks(bpm: float) -> None:
    assert rhythm(click_track(bpm), SR).tempo_bpm == pytest.approx(bpm, rel=0.03)


def test_loudness_follows_amplitude() -> None:
    quiet = rhythm(click_track(120, amp=0.05), SR).loudness_db
    loud = rhythm(click_track(120, amp=0.8), SR).loudness_db
    assert loud - quiet == pytest.approx(20 * np.log10(0.8 / 0.05), abs=3.0)


def test_sine_at_full_scale_is_minus_3_dbfs() -> None:
    t = np.arange(SR * 2) / SR
    assert rhythm(np.sin(2 * np.pi * 440 * t).astype(np.float32), SR).loudness_db == pytest.approx(-3.01, abs=0.05)


def test_silence() -> None:
    r = rhythm(np.zeros(SR * 3, dtype=np.float32), SR)
    assert (r.tempo_bpm, r.loudness_db, r.onset_rate) == (0.0, -80.0, 0.0)


def test_onset_rate_counts_beats() -> None:
    assert rhythm(click_track(120, seconds=20), SR).onset_rate == pytest.approx(2.0, rel=0.1)


def test_real_music_has_a_plausible_tempo(music_dir) -> None:
    audio = decode_audio(music_dir / "hedgewars-data" / "Rock.ogg", sample_rate=SR, start=20, duration=30)
    r = rhythm(audio, SR)
    assert 60 <= r.tempo_bpm <= 200
    assert -40 < r.loudness_db < 0
    assert r.onset_rate > 0.5

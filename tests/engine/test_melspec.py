"""musicnn's log-mel front end: librosa compatibility, float32 compression, patching."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from engine.media import decode_audio
from engine.melspec import (
    N_MELS,
    PATCH_FRAMES,
    SAMPLE_RATE,
    hz_to_mel,
    mel_filterbank,
    mel_spectrogram,
    mel_to_hz,
    musicnn_log_mel,
    patches,
)

REFERENCE = Path(__file__).parents[1] / "fixtures" / "musicnn_reference.json"
LOG_MEL_ATOL = 1e-4  # vs librosa (float32 STFT rounding + 6 significant digits stored)

# librosa 0.11.0: librosa.filters.mel(sr=16000, n_fft=512, n_mels=96)[band, bin]
LIBROSA_FILTERBANK = [
    (0, 1, 0.03199922293424606),
    (10, 10, 0.001585724181495607),
    (40, 43, 0.014853696338832378),
    (50, 59, 0.01307774055749178),
    (70, 111, 0.008447029627859592),
    (95, 250, 0.0029884199611842632),
    (95, 255, 0.0004980700323358178),
    (40, 60, 0.0),
]


def test_slaney_mel_scale() -> None:
    assert hz_to_mel(np.array(1000.0)) == pytest.approx(15.0)  # linear part ends at 1 kHz = 15 mel
    assert hz_to_mel(np.array(8000.0)) == pytest.approx(45.245640471924965)  # librosa.hz_to_mel
    assert mel_to_hz(np.array(30.0)) == pytest.approx(2804.6441307389214)
    hz = np.array([0.0, 200.0, 999.0, 1000.0, 4321.0, 8000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, atol=1e-9)


@pytest.mark.parametrize(("band", "fft_bin", "value"), LIBROSA_FILTERBANK)
def test_filterbank_matches_librosa(band: int, fft_bin: int, value: float) -> None:
    fb = mel_filterbank()
    assert fb.shape == (N_MELS, 512 // 2 + 1) and fb.dtype == np.float32
    assert fb[band, fft_bin] == pytest.approx(value, rel=1e-6, abs=1e-9)


def test_band_50_support_matches_librosa() -> None:
    assert np.nonzero(mel_filterbank()[50])[0].tolist() == [57, 58, 59, 60]


def test_frame_count_and_sine_peak() -> None:
    t = np.arange(SAMPLE_RATE * 2) / SAMPLE_RATE
    sine = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)  # (32000,)
    mel = mel_spectrogram(sine)
    assert mel.shape == (1 + 32000 // 256, N_MELS)  # center=True: 1 + N // hop frames
    centres = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(8000.0), N_MELS + 2))[1:-1]
    peak = int(mel[10:-10].mean(axis=0).argmax())
    assert abs(centres[peak] - 1000.0) < 60.0  # the band nearest 1 kHz


def test_silence_is_zero_and_loud_music_stays_finite(orchestral_track: Path) -> None:
    assert np.array_equal(musicnn_log_mel(np.zeros(4000, np.float32)), np.zeros((16, N_MELS), np.float32))
    audio = decode_audio(orchestral_track, sample_rate=SAMPLE_RATE, start=20.0, duration=6.0)
    mel = mel_spectrogram(audio)
    # the float16 bug: ordinary music has mel power above float16's max, so 10000·x overflows
    assert (mel * 10000 > np.finfo(np.float16).max).any()
    log_mel = musicnn_log_mel(audio)
    assert log_mel.dtype == np.float32
    assert np.isfinite(log_mel).all()
    assert 3.0 < log_mel.max() < 10.0


def test_log_mel_matches_librosa_reference_frames(music_dir: Path) -> None:
    """Frames librosa computed on the same decoded samples (scripts/make_musicnn_reference.py)."""
    reference = json.loads(REFERENCE.read_text())
    for track in reference["tracks"]:
        start, duration = track["start_s"], track["duration_s"]
        audio = decode_audio(music_dir / track["file"], sample_rate=SAMPLE_RATE, start=start, duration=duration)
        assert hashlib.sha256(audio.tobytes()).hexdigest() == track["audio_sha256"], (
            f"{track['file']}: decoded samples differ from the reference's; regenerate the fixture"
        )
        log_mel = musicnn_log_mel(audio)
        assert log_mel.shape == (track["n_frames"], N_MELS)
        for frame, values in track["log_mel_frames"].items():
            np.testing.assert_allclose(log_mel[int(frame)], values, rtol=0, atol=LOG_MEL_ATOL)


def test_patches_cut_like_musicnn() -> None:
    log_mel = np.arange(1000 * N_MELS, dtype=np.float32).reshape(1000, N_MELS)
    out = patches(log_mel)
    assert out.shape == (5, PATCH_FRAMES, N_MELS)  # 1000 // 187 = 5, remainder of 65 frames dropped
    np.testing.assert_array_equal(out[1], log_mel[187:374])
    overlapping = patches(log_mel, n_frames=187, hop=100)
    assert overlapping.shape == (9, PATCH_FRAMES, N_MELS)  # starts 0, 100, ..., 800
    np.testing.assert_array_equal(overlapping[8], log_mel[800:987])


def test_short_input_is_repeat_padded() -> None:
    log_mel = np.arange(80 * N_MELS, dtype=np.float32).reshape(80, N_MELS)
    out = patches(log_mel)
    assert out.shape == (1, PATCH_FRAMES, N_MELS)
    np.testing.assert_array_equal(out[0, :80], log_mel)
    np.testing.assert_array_equal(out[0, 80:160], log_mel)
    np.testing.assert_array_equal(out[0, 160:], log_mel[:27])


@pytest.mark.parametrize("bad", [np.zeros((0, N_MELS), np.float32), np.zeros(10, np.float32)])
def test_patches_refuse_empty_or_1d(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        patches(bad)

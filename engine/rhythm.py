"""Pace and energy of music, computed once per track at indexing time (zero-shot scorer, DESIGN.md).

The zero-shot recommender matches a video's motion and cut rate against a track's tempo and
loudness. Neither needs a learned model:
- tempo: spectral-flux onset envelope on a log-mel spectrogram, its autocorrelation over lags of
  40-220 BPM, weighted by a log-normal prior around 120 BPM (the same idea as librosa's
  `beat.tempo`), with parabolic interpolation of the peak;
- loudness: RMS level in dBFS over the clip (a K-weighted LUFS would be closer to perception;
  RMS ranks quiet against loud tracks the same way for our purpose and costs nothing);
- onset rate: onset-envelope peaks per second, a second measure of busyness.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_FFT = 1024  # samples
HOP = 256  # samples
N_MELS = 40
MIN_BPM, MAX_BPM = 40.0, 220.0
PRIOR_BPM, PRIOR_OCTAVE_STD = 120.0, 1.0  # log2-normal tempo prior
SILENCE_DBFS = -80.0


@dataclass(frozen=True)
class Rhythm:
    tempo_bpm: float
    loudness_db: float  # RMS level, dBFS
    onset_rate: float  # onsets per second


def _mel_filters(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular HTK-style mel filters.  # (n_mels, n_fft // 2 + 1)"""
    hz_to_mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    mel_to_hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(30.0), hz_to_mel(min(8000.0, sr / 2)), n_mels + 2))
    fb = np.zeros((n_mels, len(freqs)), dtype=np.float32)
    for i in range(n_mels):
        lo, c, hi = pts[i], pts[i + 1], pts[i + 2]
        fb[i] = np.clip(np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)), 0, None)
    return fb


def onset_envelope(audio: np.ndarray, sr: int) -> np.ndarray:
    """Half-wave rectified spectral flux of the log-mel spectrogram.  # (T,) at sr / HOP Hz"""
    if len(audio) < N_FFT:
        return np.zeros(1, dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(audio, N_FFT)[::HOP]  # (T, N_FFT)
    spec = np.abs(np.fft.rfft(frames * np.hanning(N_FFT).astype(np.float32), axis=1)) ** 2  # (T, F)
    logmel = np.log1p(1000.0 * spec @ _mel_filters(sr, N_FFT, N_MELS).T)  # (T, n_mels)
    flux = np.maximum(np.diff(logmel, axis=0), 0.0).mean(axis=1)  # (T-1,)
    return (flux - flux.mean()).clip(min=0).astype(np.float32)


def estimate_tempo(env: np.ndarray, frame_rate: float) -> float:
    """Tempo in BPM from an onset envelope sampled at `frame_rate` Hz (0.0 if none is found)."""
    if env.size < 4 or not np.any(env > 0):
        return 0.0
    n = int(2 ** np.ceil(np.log2(2 * env.size)))
    spec = np.fft.rfft(env - env.mean(), n)
    ac = np.fft.irfft(spec * np.conj(spec), n)[: env.size]  # autocorrelation
    lags = np.arange(env.size, dtype=np.float64)
    with np.errstate(divide="ignore"):
        bpm = 60.0 * frame_rate / lags
    valid = (bpm >= MIN_BPM) & (bpm <= MAX_BPM)
    if not valid.any():
        return 0.0
    prior = np.exp(-0.5 * (np.log2(np.where(valid, bpm, PRIOR_BPM) / PRIOR_BPM) / PRIOR_OCTAVE_STD) ** 2)
    score = np.where(valid, ac * prior, -np.inf)
    k = int(np.argmax(score))
    if 0 < k < env.size - 1 and np.isfinite(score[k - 1]) and np.isfinite(score[k + 1]):
        a, b, c = score[k - 1], score[k], score[k + 1]  # parabolic interpolation of the peak
        denom = a - 2 * b + c
        k = k + (0.5 * (a - c) / denom if denom != 0 else 0.0)
    return float(60.0 * frame_rate / k)


def rhythm(audio: np.ndarray, sr: int) -> Rhythm:
    """Tempo, loudness and onset rate of mono float32 audio."""
    audio = np.asarray(audio, dtype=np.float32)
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) if audio.size else 0.0
    loud = max(SILENCE_DBFS, 20.0 * np.log10(rms)) if rms > 0 else SILENCE_DBFS
    env = onset_envelope(audio, sr)
    frame_rate = sr / HOP
    tempo = estimate_tempo(env, frame_rate)
    # onsets: local maxima above the envelope's mean + one std
    thr = env.mean() + env.std()
    peaks = (env[1:-1] > env[:-2]) & (env[1:-1] >= env[2:]) & (env[1:-1] > thr)
    duration = max(len(audio) / sr, 1e-6)
    return Rhythm(tempo_bpm=round(tempo, 2), loudness_db=round(float(loud), 2), onset_rate=round(float(peaks.sum()) / duration, 3))

"""Log-mel front end of the lite music encoder (musicnn), in numpy, librosa-compatible.

musicnn (Pons & Serra, ISMIR 2019; ISC licence) was trained on
`librosa.feature.melspectrogram(y, sr=16000, n_fft=512, hop_length=256, n_mels=96)` compressed
with log10(1 + 10000·x), cut into 3 s patches of 187 frames (DESIGN.md, "Model profiles"; it
stands where the paper's AST log-mel front end stands, section 4.1). This module reproduces that
without librosa:

- STFT: periodic Hann window of 512 samples, hop 256, `center=True` with zero padding
  (`pad_mode="constant"`, librosa's default since 0.10; musicnn was trained with 0.6-era librosa,
  which padded by reflection: only the first and last frame differ), power 2.
- Mel filterbank: librosa's default Slaney mel scale with Slaney area normalisation, 0–8 kHz.
- Compression in float32. musicnn's own `extractor.py` casts the mel power to float16 before
  the log; float16 overflows (> 65504) on ordinary music, the log becomes inf and every track
  then gets the same tags. Never do that here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000  # Hz
FFT_SIZE = 512  # samples (32 ms)
HOP_LENGTH = 256  # samples (16 ms)
N_MELS = 96
PATCH_FRAMES = 187  # frames per musicnn input patch: librosa.time_to_frames(3 s) + 1
LOG_GAIN = 10_000.0  # log10(1 + LOG_GAIN * mel power)

# Slaney mel scale (librosa.hz_to_mel with htk=False): linear below 1 kHz, logarithmic above.
_MEL_F_SP = 200.0 / 3  # Hz per mel in the linear part
_MEL_MIN_LOG_HZ = 1000.0  # Hz where the log part starts
_MEL_MIN_LOG_MEL = _MEL_MIN_LOG_HZ / _MEL_F_SP  # = 15 mels
_MEL_LOGSTEP = np.log(6.4) / 27.0  # log-Hz per mel above 1 kHz


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int = SAMPLE_RATE  # Hz
    n_fft: int = FFT_SIZE  # samples; also the window length
    hop_length: int = HOP_LENGTH  # samples
    n_mels: int = N_MELS
    fmin: float = 0.0  # Hz
    fmax: float | None = None  # Hz; None = Nyquist


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale (librosa's default, `htk=False`)."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _MEL_F_SP
    log_part = hz >= _MEL_MIN_LOG_HZ
    mel = np.where(
        log_part,
        _MEL_MIN_LOG_MEL + np.log(np.maximum(hz, _MEL_MIN_LOG_HZ) / _MEL_MIN_LOG_HZ) / _MEL_LOGSTEP,
        mel,
    )
    return mel


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of `hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(
        mel >= _MEL_MIN_LOG_MEL,
        _MEL_MIN_LOG_HZ * np.exp(_MEL_LOGSTEP * (mel - _MEL_MIN_LOG_MEL)),
        _MEL_F_SP * mel,
    )


@lru_cache(maxsize=8)
def mel_filterbank(cfg: MelConfig = MelConfig()) -> np.ndarray:
    """Slaney-normalised triangular filters, as `librosa.filters.mel`.  # (n_mels, n_fft // 2 + 1)"""
    fmax = cfg.sample_rate / 2 if cfg.fmax is None else cfg.fmax
    fft_freqs = np.fft.rfftfreq(cfg.n_fft, d=1.0 / cfg.sample_rate)  # (F,) Hz
    mel_edges = mel_to_hz(np.linspace(hz_to_mel(cfg.fmin), hz_to_mel(fmax), cfg.n_mels + 2))  # Hz
    widths = np.diff(mel_edges)  # (n_mels + 1,)
    ramps = mel_edges[:, None] - fft_freqs[None, :]  # (n_mels + 2, F)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))  # (n_mels, F)
    weights *= (2.0 / (mel_edges[2:] - mel_edges[:-2]))[:, None]  # Slaney: constant area per band
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=8)
def _hann(n: int) -> np.ndarray:
    """Periodic Hann window (scipy.signal.get_window("hann", n, fftbins=True))."""
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    window.setflags(write=False)
    return window


def power_spectrogram(audio: np.ndarray, cfg: MelConfig = MelConfig()) -> np.ndarray:
    """|STFT|^2 with centred zero-padded frames, as librosa.stft.  # (T, n_fft // 2 + 1) float32"""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio (N,), got shape {audio.shape}")
    pad = cfg.n_fft // 2
    padded = np.pad(audio, (pad, pad), mode="constant")
    n_frames = 1 + len(audio) // cfg.hop_length
    windows = np.lib.stride_tricks.sliding_window_view(padded, cfg.n_fft)  # (N + 1, n_fft), a view
    frames = windows[:: cfg.hop_length][:n_frames]  # (T, n_fft)
    # librosa windows in float64 (the window is float64) and stores the STFT as complex64
    spec = np.fft.rfft(frames * _hann(cfg.n_fft), axis=-1).astype(np.complex64)  # (T, F)
    return (spec.real**2 + spec.imag**2).astype(np.float32)


def mel_spectrogram(audio: np.ndarray, cfg: MelConfig = MelConfig()) -> np.ndarray:
    """Mel power spectrogram, as librosa.feature.melspectrogram(...).T.  # (T, n_mels) float32"""
    return power_spectrogram(audio, cfg) @ mel_filterbank(cfg).T


def musicnn_log_mel(audio: np.ndarray, cfg: MelConfig = MelConfig()) -> np.ndarray:
    """musicnn's input: log10(1 + 10000·mel) of 16 kHz mono float32 audio.  # (T, 96) float32

    T = 1 + len(audio) // 256. Computed in float32 (see the module docstring for why not float16).
    """
    mel = mel_spectrogram(audio, cfg)  # (T, n_mels) float32
    return np.log10(np.float32(1.0) + np.float32(LOG_GAIN) * mel).astype(np.float32, copy=False)


def patches(log_mel: np.ndarray, n_frames: int = PATCH_FRAMES, hop: int = PATCH_FRAMES) -> np.ndarray:
    """Cut a (T, M) spectrogram into patches starting every `hop` frames.  # (P, n_frames, M)

    As musicnn's `batch_data`, a trailing remainder shorter than `n_frames` is dropped. A
    spectrogram shorter than one patch is repeated end to end until it fills one ("repeat-pad",
    the `pad_short` setting musicnn was trained with), so any non-empty input gives P >= 1.
    """
    if log_mel.ndim != 2 or log_mel.shape[0] == 0:
        raise ValueError(f"expected a non-empty (T, M) spectrogram, got shape {log_mel.shape}")
    if n_frames <= 0 or hop <= 0:
        raise ValueError("n_frames and hop must be positive")
    if log_mel.shape[0] < n_frames:
        repeats = -(-n_frames // log_mel.shape[0])  # ceil
        log_mel = np.tile(log_mel, (repeats, 1))[:n_frames]
    starts = range(0, log_mel.shape[0] - n_frames + 1, hop)
    return np.stack([log_mel[s : s + n_frames] for s in starts]).astype(np.float32, copy=False)

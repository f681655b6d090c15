"""The fallback decoder: libsndfile (PyPI `soundfile`) for real audio the bundled ffmpeg cannot open.

Some real files are refused by ffmpeg yet read by the reference decoders. The case met in real
libraries: ffmpeg's Ogg demuxer finds a Vorbis stream's modes by reading the setup header
*backwards* from its last set bit (libavcodec/vorbis_parser.c, a heuristic), so a setup header
followed by padding bytes is an "Invalid Setup header" and the file does not open; libvorbis reads
the header forwards and stops at its framing bit, so libsndfile plays the file. libsndfile also
reads a few formats a given ffmpeg build may lack.

Only the catalog uses it (files an admin put in a music folder), and only after ffmpeg failed to
open the file (`UnopenableMediaError` or `NotMediaError` from `engine.media.probe`); users'
uploads go through ffmpeg alone. libsndfile runs in-process: no time limit, but the file size is
checked first (`MediaLimits.max_bytes`) and reads are capped to the window asked for.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from engine.media import (
    AudioStreamInfo,
    CorruptMediaError,
    MediaInfo,
    MediaLimits,
    NotMediaError,
    TooLongError,
    _check_size,
)

log = logging.getLogger(__name__)

DECODER = "libsndfile"  # the name a decoded track records for this decoder
SHORT_READ_TOLERANCE = 0.01  # fraction of the window a read may fall short of before it counts as truncated
STEREO_TO_MONO = math.sqrt(0.5)  # gain of each channel in a stereo -> mono mix, as ffmpeg's decode_audio
WAV_SUBTYPE = "PCM_16"  # intermediate WAVs handed to ffmpeg (excerpts, previews)


def _soundfile():
    import soundfile

    return soundfile


def sndfile_probe(path: str | Path, *, limits: MediaLimits = MediaLimits()) -> MediaInfo:
    """Describe `path` as libsndfile reads it; NotMediaError if libsndfile cannot open it either."""
    sf = _soundfile()
    path = Path(path)
    st = _check_size(path, limits)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise NotMediaError(f"{path}: libsndfile cannot open it either: {exc}") from None
    if info.frames <= 0 or info.samplerate <= 0 or info.channels <= 0:
        raise NotMediaError(f"{path}: libsndfile finds no audio in it")
    duration = info.frames / info.samplerate
    if duration > limits.max_seconds:
        raise TooLongError(f"{path}: {duration:.1f}s > limit {limits.max_seconds:.0f}s")
    audio = AudioStreamInfo(sample_rate=int(info.samplerate), channels=int(info.channels), codec=str(info.subtype).lower())
    return MediaInfo(path, f"{DECODER}:{str(info.format).lower()}", float(duration), st.st_size, None, audio)


def _read_window(path: Path, start: float, duration: float | None) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 of the window at the file's own rate, and that rate."""
    sf = _soundfile()
    try:
        with sf.SoundFile(str(path)) as f:
            rate, total = f.samplerate, f.frames
            first = min(max(0, round(start * rate)), total)
            wanted = total - first if duration is None else min(round(duration * rate), total - first)
            if first:
                f.seek(first)
            data = f.read(frames=wanted, dtype="float32", always_2d=True)  # (N, C)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise CorruptMediaError(f"{path}: libsndfile failed while decoding: {exc}") from None
    if len(data) < wanted * (1 - SHORT_READ_TOLERANCE):
        raise CorruptMediaError(f"{path}: truncated: libsndfile decoded {len(data)} of {wanted} frames from {start:.1f}s")
    return data, rate


def sndfile_decode(
    path: str | Path,
    *,
    sample_rate: int,
    start: float = 0.0,
    duration: float | None = None,
    limits: MediaLimits = MediaLimits(),
) -> np.ndarray:
    """Mono float32 at `sample_rate` Hz of `duration` seconds from `start` (the rest if None).  # (N,)

    The same contract as `engine.media.decode_audio`: stereo mixed to mono as ffmpeg mixes it (so
    loudness features agree between the decoders), other layouts averaged; resampled with a
    polyphase filter (scipy `resample_poly`, Kaiser window); samples left unclipped.
    """
    from scipy.signal import resample_poly

    path = Path(path)
    _check_size(path, limits)
    if duration is not None and not 0 < duration <= limits.max_seconds:
        raise ValueError(f"duration must be in (0, {limits.max_seconds}], got {duration}")
    data, rate = _read_window(path, start, duration)
    if data.shape[1] == 2:  # as ffmpeg's `-ac 1` (swresample) mixes stereo: (L + R) / sqrt(2), measured
        mono = (data[:, 0] + data[:, 1]) * np.float32(STEREO_TO_MONO)  # (N,)
    else:
        mono = data.mean(axis=1)  # (N,)
    if rate != sample_rate and len(mono):
        g = math.gcd(int(rate), int(sample_rate))
        mono = resample_poly(mono, sample_rate // g, rate // g)
    return np.ascontiguousarray(mono, dtype=np.float32)


def sndfile_to_wav(path: str | Path, out: str | Path, *, start_s: float, duration_s: float, limits: MediaLimits = MediaLimits()) -> Path:
    """Write `duration_s` seconds of `path` from `start_s` as a 16-bit WAV at its own rate (mono stays
    mono, more than two channels are mixed to mono), for ffmpeg to cut or mux when it cannot read `path`."""
    sf = _soundfile()
    path, out = Path(path), Path(out)
    _check_size(path, limits)
    data, rate = _read_window(path, start_s, duration_s)
    if data.shape[1] > 2:
        data = data.mean(axis=1, keepdims=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(out), np.clip(data, -1.0, 1.0), rate, subtype=WAV_SUBTYPE, format="WAV")
    log.debug("libsndfile: %.1fs of %s from %.1fs written to %s", len(data) / rate, path.name, start_s, out.name)
    return out

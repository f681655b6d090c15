"""Is a decoded audio file a music track worth indexing? Duration, silence and constant-tone checks.

A real music folder holds more than music: sound effects of a second or two, truncated fragments,
test tones, silent placeholders. Indexed, they get tags and vectors like any track and are then
recommended. The catalog (bot/service/catalog_admin.py) skips them, with a reason an admin reads:

- **too short** (`TooShortError`): under `MIN_TRACK_S` seconds by the header, checked before
  any decoding. The default is one paper segment (section 3: tracks are cut into 10 s segments,
  the unit the fusion model and the excerpt chooser work on): three of musicnn's 3 s patches, and
  enough beats for a tempo. Shorter files in the game packages we index are sound effects and a
  few jingles (6-10 s), which are not background music for a video either.
- **silence** (`SilenceError`): on the decoded window, cut into FRAME_S frames, the loudest
  frames stay quiet: the LOUD_PERCENTILE-th percentile of the frames' RMS level is below
  SILENCE_DB dBFS (at most 2 % of the window rises above it: a click or a cough in silence is
  still silence, a quiet piece with a few loud seconds is not).
- **constant tone** (`ConstantToneError`): among the frames above SILENCE_DB, the spectrum hardly
  changes: the median spectral flux (1 - cosine between consecutive frames' magnitude spectra)
  is below TONE_MAX_FLUX. A sine, a square wave, a dial tone, even one whose loudness swells
  (tremolo), keeps one spectrum; music changes notes, chords or beats. The level is not used:
  a tremolo sine moves its level by 4 dB, while a real tracker tune (pingus gd-cancn) moves it
  by only 0.5 dB.

Thresholds were set on measurements (the centre 120 s at 16 kHz mono, as analysed), listed beside
each one: synthesised sine 440 Hz, sine + noise at -40 dB, dial tone 350 + 440 Hz, square 220 Hz,
tremolo sine: flux <= 0.0003; white noise 0.22, a sine sweep 0.29; 55 real music files of five
Debian game packages not used by the demo (Ogg Vorbis, Opus, WAV, Impulse Tracker): flux 0.064 to
0.59 and loudest frames -21 to -4 dBFS, except two pingus modules that ffmpeg renders at -81 and
-91 dBFS throughout (silence). The tests pin them on synthesised signals and on real music.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.media import MediaError

MIN_TRACK_S = 10.0  # seconds: one paper segment (module docstring); a setting (MUSECHAT_CATALOG_MIN_TRACK_S)
FRAME_S = 0.128  # seconds per analysis frame (2048 samples at 16 kHz), frames do not overlap
SILENCE_DB = -60.0  # dBFS frame RMS: below it a frame is silent (16-bit dither sits near -90, a quiet fade-out near -50)
LOUD_PERCENTILE = 98.0  # the frame level that must clear SILENCE_DB for the audio to count as sound
TONE_MAX_FLUX = 0.02  # median spectral flux below this is a steady spectrum (steady tones: <= 0.0003; real music: >= 0.064)
MIN_SOUND_FRAMES = 4  # frames above SILENCE_DB needed to judge tone at all (fewer: silence)


class NotMusicError(MediaError):
    """Audio that decodes but is no track to recommend. `reason` is the short form an admin reads."""

    default_user_message = "That file is not a music track I can index."

    @property
    def reason(self) -> str:
        return str(self)


class TooShortError(NotMusicError):
    def __init__(self, duration_s: float, min_s: float) -> None:
        shown = f"{duration_s:.1f}"
        if float(shown) >= min_s:  # 9.96 s must not read "10.0 s < 10 s"
            shown = f"{math.floor(duration_s * 100) / 100:.2f}"
        super().__init__(f"too short ({shown} s < {min_s:g} s)")
        self.duration_s, self.min_s = duration_s, min_s

    def __reduce__(self):
        return (type(self), (self.duration_s, self.min_s))


class SilenceError(NotMusicError):
    def __init__(self, detail: str = "silence") -> None:
        super().__init__(detail)

    @property
    def reason(self) -> str:
        return "silence"


class ConstantToneError(NotMusicError):
    def __init__(self, detail: str = "constant tone") -> None:
        super().__init__(detail)

    @property
    def reason(self) -> str:
        return "constant tone"


@dataclass(frozen=True)
class AudioStats:
    """What the checks measure on a decoded window (module docstring)."""

    loud_db: float  # LOUD_PERCENTILE-th percentile of the frames' RMS level, dBFS
    sound_frames: int  # frames above SILENCE_DB
    flux: float  # median spectral flux between consecutive sounding frames, in [0, 1]

    def __str__(self) -> str:
        return f"loudest frames {self.loud_db:.1f} dBFS, spectral flux {self.flux:.4f}"


def audio_stats(audio: np.ndarray, sample_rate: int) -> AudioStats:
    """Frame levels and spectral flux of mono `audio` (N,) at `sample_rate` Hz (module docstring)."""
    n = max(1, round(FRAME_S * sample_rate))
    frames = np.asarray(audio, dtype=np.float32)[: len(audio) // n * n].reshape(-1, n)  # (F, n)
    if len(frames) == 0:
        return AudioStats(-np.inf, 0, 0.0)
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))  # (F,)
    level = 20 * np.log10(np.maximum(rms, 1e-10))  # (F,) dBFS
    sounding = level > SILENCE_DB
    loud_db = float(np.percentile(level, LOUD_PERCENTILE))
    if sounding.sum() < 2:
        return AudioStats(loud_db, int(sounding.sum()), 0.0)
    spec = np.abs(np.fft.rfft(frames[sounding] * np.hanning(n).astype(np.float32), axis=1))  # (S, n/2+1)
    spec /= np.maximum(np.linalg.norm(spec, axis=1, keepdims=True), 1e-12)
    flux = 1.0 - np.sum(spec[1:] * spec[:-1], axis=1)  # (S-1,)
    return AudioStats(loud_db, int(sounding.sum()), float(np.median(flux)))


def check_duration(duration_s: float, min_s: float = MIN_TRACK_S) -> None:
    """TooShortError if the file is shorter than `min_s` seconds."""
    if duration_s < min_s:
        raise TooShortError(duration_s, min_s)


def check_music(audio: np.ndarray, sample_rate: int, *, name: str = "audio") -> AudioStats:
    """Raise SilenceError or ConstantToneError for audio that is not music; return the measurements."""
    stats = audio_stats(audio, sample_rate)
    if stats.loud_db < SILENCE_DB or stats.sound_frames < MIN_SOUND_FRAMES:
        raise SilenceError(f"silence: {name}: {stats}")
    if stats.flux < TONE_MAX_FLUX:
        raise ConstantToneError(f"constant tone: {name}: {stats}")
    return stats

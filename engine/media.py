"""Media decoding with ffmpeg: probing, the paper's segment sampling, frames, audio, motion.

SEED (being completed): only the ffmpeg binary resolution and `decode_audio` exist so far.
"""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np


@lru_cache(maxsize=4)
def ffmpeg_binary(override: str | None = None) -> str:
    """Return the ffmpeg executable: `override` if given, else the one imageio-ffmpeg ships."""
    if override:
        return override
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def decode_audio(
    path: str | Path,
    *,
    sample_rate: int,
    start: float | None = None,
    duration: float | None = None,
    timeout: float = 120.0,
    ffmpeg: str | None = None,
) -> np.ndarray:
    """Decode the audio of `path` to mono float32 in [-1, 1] at `sample_rate` Hz.  # (N,)"""
    cmd = [ffmpeg_binary(ffmpeg), "-nostdin", "-hide_banner", "-loglevel", "error"]
    if start is not None:
        cmd += ["-ss", f"{start:.3f}"]
    if duration is not None:
        cmd += ["-t", f"{duration:.3f}"]
    cmd += ["-i", str(path), "-vn", "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-"]
    out = subprocess.run(cmd, capture_output=True, timeout=timeout, check=True)
    return np.frombuffer(out.stdout, dtype=np.float32).copy()

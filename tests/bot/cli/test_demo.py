"""The first-run demo: the demo folder of real music, and the scripted run end to end (tiny profile)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import bot.cli.demo as demo_mod
from bot.cli.main import app
from bot.settings import get_settings
from engine.media import MediaLimits, probe


def test_demo_folder_links_a_mix_of_real_tracks_with_their_copyright(music_dir: Path, tmp_path: Path) -> None:
    folders = demo_mod.build_demo_folder(music_dir, tmp_path / "demo", {"wesnoth-1.16-music": 3, "supertux-data": 2})
    assert [f.name for f in folders] == ["wesnoth-1.16-music", "supertux-data"]
    wes = sorted(p.name for p in folders[0].glob("*.ogg"))
    assert len(wes) == 3 and all((folders[0] / n).resolve().parent == music_dir / "wesnoth-1.16-music" for n in wes)
    assert (folders[0] / "copyright").read_text().startswith("Format:") or (folders[0] / "copyright").stat().st_size > 100
    assert all((music_dir / "supertux-data" / p.name).stat().st_size >= demo_mod.MIN_TRACK_BYTES for p in folders[1].glob("*.ogg"))
    # running it again changes nothing
    again = demo_mod.build_demo_folder(music_dir, tmp_path / "demo", {"wesnoth-1.16-music": 3, "supertux-data": 2})
    assert sorted(p.name for p in again[0].glob("*.ogg")) == wes


def test_scripted_demo_end_to_end(music_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSECHAT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MUSECHAT_MUSIC_DIR", str(music_dir))
    monkeypatch.setenv("MUSECHAT_ALLOW_RANDOM_WEIGHTS", "1")  # tiny: random weights, allowed for this test
    monkeypatch.delenv("MUSECHAT_DATABASE_URL", raising=False)
    monkeypatch.setattr(demo_mod, "DEMO_TRACKS_PER_PACKAGE", {"hedgewars-data": 3, "extremetuxracer-data": 3})
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["demo", "--profile", "tiny", "--scripted", "--out-dir", str(tmp_path / "out")])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "6 tracks (6 added" in result.output
    for turn in (1, 2, 3):
        assert f"turn {turn}" in result.output
    previews = list((tmp_path / "out").glob("musechat-preview-*.mp4"))
    assert len(previews) == 1
    info = probe(previews[0], limits=MediaLimits(), require_video=True, require_audio=True)
    assert info.duration_s == pytest.approx(10.0, abs=0.6)  # the sample video's length


def test_demo_without_music_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSECHAT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MUSECHAT_MUSIC_DIR", str(tmp_path / "nothing"))
    monkeypatch.setenv("MUSECHAT_ALLOW_RANDOM_WEIGHTS", "1")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["demo", "--profile", "tiny", "--scripted"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code != 0
    assert "fetch_music.sh" in result.output and "Traceback" not in result.output


def test_demo_refuses_random_weights_before_building_anything(music_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSECHAT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MUSECHAT_MUSIC_DIR", str(music_dir))
    monkeypatch.delenv("MUSECHAT_ALLOW_RANDOM_WEIGHTS", raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["demo", "--profile", "tiny", "--scripted"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 3 and "random weights" in result.output
    assert "demo catalog" not in result.output and not (tmp_path / "data" / "demo-music").exists()

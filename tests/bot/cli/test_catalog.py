"""`musechat catalog ...` end to end (tiny profile, synthesised music)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.cli.main import app
from bot.settings import get_settings
from tests.conftest import lavfi, melody


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MUSECHAT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MUSECHAT_PROFILE", "tiny")
    monkeypatch.delenv("MUSECHAT_DATABASE_URL", raising=False)
    monkeypatch.delenv("MUSECHAT_QDRANT_URL", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def music_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "music"
    folder.mkdir()
    lavfi(folder / "low.ogg", melody(220, 12), args=("-c:a", "libvorbis"))
    lavfi(folder / "high.ogg", melody(880, 14), args=("-c:a", "libvorbis"))
    return folder


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def status() -> dict:
    result = run("catalog", "status", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_add_refresh_status_remove(music_folder: Path) -> None:
    added = run("catalog", "add", str(music_folder), "--licence", "CC0-1.0", "--refresh")
    assert added.exit_code == 0, added.output
    assert "2 tracks (2 added" in added.output
    st = status()
    assert st["tracks"] == 2 and st["mode"] == "zero-shot" and st["folders"] == [str(music_folder.resolve())]

    again = run("catalog", "refresh")
    assert again.exit_code == 0 and "0 embedded, 2 reused" in again.output

    assert run("catalog", "remove", str(music_folder)).exit_code == 0
    assert run("catalog", "refresh").exit_code == 0
    assert status()["tracks"] == 0


def test_a_corrupt_file_is_reported_and_the_rest_indexed(music_folder: Path) -> None:
    (music_folder / "broken.ogg").write_bytes(b"OggS" + os.urandom(5000))
    result = run("catalog", "add", str(music_folder), "--refresh")
    assert result.exit_code == 0, result.output
    assert "2 tracks" in result.output and "skipped" in result.output and "broken.ogg" in result.output


def test_status_lists_skipped_files_with_their_reasons(music_folder: Path) -> None:
    lavfi(music_folder / "tone.ogg", "sine=f=440:d=12", args=("-c:a", "libvorbis"))
    lavfi(music_folder / "blip.ogg", melody(500, 2), args=("-c:a", "libvorbis"))
    (music_folder / "zz-copy.ogg").write_bytes((music_folder / "low.ogg").read_bytes())
    result = run("catalog", "add", str(music_folder), "--refresh")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # rich may wrap long paths
    assert "2 tracks" in said and "skipped 3 file(s): 1 too short, 1 constant tone, 1 duplicate" in said
    assert "blip.ogg: too short (2.0 s < 10 s)" in said and "tone.ogg: constant tone" in said
    assert "zz-copy.ogg: duplicate of " in said
    # each skipped file on a line of its own, its path whole (never folded, whatever the temp dir's length)
    lines = result.output.splitlines()
    assert any(ln.startswith("skipped ") and ln.endswith("zz-copy.ogg: duplicate of " + str(music_folder / "low.ogg")) for ln in lines), result.output
    st = status()
    folder = music_folder.resolve()
    assert st["skipped"] == [
        {"path": str(folder / "blip.ogg"), "reason": "too short (2.0 s < 10 s)"},
        {"path": str(folder / "tone.ogg"), "reason": "constant tone"},
        {"path": str(folder / "zz-copy.ogg"), "reason": f"duplicate of {folder / 'low.ogg'}"},
    ]
    assert st["skipped_reasons"] == {"too short": 1, "constant tone": 1, "duplicate": 1}
    text = run("catalog", "status")
    assert text.exit_code == 0, text.output
    flat = " ".join(text.output.split())  # rich may wrap long paths
    assert "skipped 3 file(s): 1 too short, 1 constant tone, 1 duplicate" in flat
    assert "blip.ogg: too short (2.0 s < 10 s)" in flat and "tone.ogg: constant tone" in flat


@pytest.mark.parametrize(
    "args,message",
    [
        (["catalog", "add", "/no/such/folder"], "not a folder"),
        (["catalog", "remove", "/no/such/folder"], "is not a catalog folder"),
        (["catalog", "schedule", "not a cron"], "error"),
    ],
)
def test_admin_mistakes_are_a_message_and_exit_2(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_schedule_is_stored() -> None:
    result = run("catalog", "schedule", "0 3 * * *")
    assert result.exit_code == 0, result.output
    assert "0 3 * * *" in result.output and "enabled" in result.output


def test_a_dead_database_is_exit_3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSECHAT_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/test")
    get_settings.cache_clear()
    result = run("catalog", "status")
    assert result.exit_code == 3, result.output
    assert "unavailable" in result.output and "Traceback" not in result.output

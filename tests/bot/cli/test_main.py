"""The `musechat` CLI: help, exit codes and messages for user errors, db and media commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.cli.main import EXIT_UNAVAILABLE, EXIT_USER_ERROR, app
from bot.settings import get_settings


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MUSECHAT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MUSECHAT_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("cmd", [[], ["embed"], ["tag"], ["db"], ["media"], ["demo"]])
def test_help_everywhere(cmd: list[str]) -> None:
    result = run(*cmd, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_embed_json_on_a_real_video(bikes_mp4: Path) -> None:
    result = run("embed", str(bikes_mp4), "--profile", "tiny", "--fps", "1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["profile"] == "tiny" and data["segments"] == [[0.0, 10.0]]
    assert len(data["motion"]) == 1 and data["vector_dim"] > 0


BAD_INPUTS = [
    ("not_a_video.txt", b"hello, this is not a video\n" * 50, "not a video or audio file"),
    ("empty.mp4", b"", "That file is empty"),
]


@pytest.mark.parametrize("name,data,message", BAD_INPUTS)
def test_embed_bad_input_is_a_message_and_exit_2(tmp_path: Path, name: str, data: bytes, message: str) -> None:
    bad = tmp_path / name
    bad.write_bytes(data)
    result = run("embed", str(bad), "--profile", "tiny")
    assert result.exit_code == EXIT_USER_ERROR
    assert message in result.output and "Traceback" not in result.output


def test_embed_missing_file(tmp_path: Path) -> None:
    result = run("embed", str(tmp_path / "nope.mp4"), "--profile", "tiny")
    assert result.exit_code == EXIT_USER_ERROR
    assert "file not found" in result.output


def test_embed_audio_only_is_refused(media_factory) -> None:
    audio = media_factory("only_audio.ogg", "sine=f=330:d=2")
    result = run("embed", str(audio), "--profile", "tiny")
    assert result.exit_code == EXIT_USER_ERROR
    assert "Traceback" not in result.output


def test_db_upgrade_then_status(tmp_path: Path) -> None:
    result = run("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "musechat.sqlite3").is_file()
    status = run("db", "status")
    assert status.exit_code == 0 and "up to date" in status.output


def test_dead_database_is_a_message_and_exit_3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSECHAT_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/test")
    get_settings.cache_clear()
    result = run("db", "status")
    assert result.exit_code == EXIT_UNAVAILABLE
    assert "unavailable" in result.output and "Traceback" not in result.output


def test_media_cleanup_on_empty_store() -> None:
    result = run("media", "cleanup")
    assert result.exit_code == 0
    assert "removed 0 file(s)" in result.output


def _typed_errors():
    from bot.app import RandomWeightsError
    from bot.jobs.runner import JobFailedError, JobTimeoutError, QueueFullError
    from bot.service.errors import EmptyCatalogError, NotOwnerError
    from bot.service.scheduler import CronError
    from bot.settings import SettingsError
    from engine.media import NotMediaError
    from engine.profiles import UnknownProfileError
    from storage.db import DatabaseUnavailableError

    return [
        (NotMediaError("x"), EXIT_USER_ERROR), (NotOwnerError("not yours"), EXIT_USER_ERROR),
        (CronError("bad cron"), EXIT_USER_ERROR), (UnknownProfileError("huge"), EXIT_USER_ERROR),
        (SettingsError("MUSECHAT_SLACK_MODE must be socket or http"), EXIT_USER_ERROR),
        (FileNotFoundError(2, "no such file", "v.mp4"), EXIT_USER_ERROR),
        (EmptyCatalogError("empty"), EXIT_UNAVAILABLE), (RandomWeightsError("tiny"), EXIT_UNAVAILABLE),
        (QueueFullError("busy"), EXIT_UNAVAILABLE), (JobTimeoutError("slow"), EXIT_UNAVAILABLE),
        (DatabaseUnavailableError("down"), EXIT_UNAVAILABLE),
        (JobFailedError("worker bug"), 1), (KeyError("a bug"), 1), (ValueError("a bug too"), 1),
    ]  # fmt: skip


@pytest.mark.parametrize("error_and_code", _typed_errors(), ids=lambda ec: type(ec[0]).__name__)
def test_one_error_mapper_for_every_command(error_and_code) -> None:  # noqa: ANN001
    import typer

    from bot.cli.common import cli_errors

    error, code = error_and_code
    with pytest.raises(typer.Exit) as leaving:
        with cli_errors():
            raise error
    assert leaving.value.exit_code == code

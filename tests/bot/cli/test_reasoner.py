"""`musechat reasoner say` (bot/cli/reasoner.py): grounded by default, raw with --no-grounded."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from bot.cli.reasoner import register_reasoner_commands
from bot.settings import get_settings
from engine.reasoner import REASON_SOURCE_TITLE_TAGS, clear_cache


@pytest.fixture(autouse=True)
def tiny_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MUSECHAT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MUSECHAT_PROFILE", "tiny")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
    clear_cache()


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test app"""

    register_reasoner_commands(app)
    return app


def test_say_shows_only_checked_sentences_and_says_when_none_passed(app: typer.Typer) -> None:
    """The random tiny LM never writes a sentence that passes the check."""
    res = CliRunner().invoke(app, ["reasoner", "say", "Night Drive", "--tag", "synth", "--video", "sports car, traffic light", "--max-new-tokens", "12"])
    assert res.exit_code == 0, res.output
    assert res.output == f"(no sentence passed the fact check)\n[{REASON_SOURCE_TITLE_TAGS}, grounded]\n"


def test_say_without_grounding_streams_the_raw_text(app: typer.Typer) -> None:
    res = CliRunner().invoke(app, ["reasoner", "say", "Night Drive", "--no-grounded", "--max-new-tokens", "12"])
    assert res.exit_code == 0, res.output
    text, label = res.output.rstrip("\n").rsplit("\n", 1)
    assert text.strip() and label == f"[{REASON_SOURCE_TITLE_TAGS}]"

from typer.testing import CliRunner

from bot.cli import app


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "musechat" in result.output.lower() or "Usage" in result.output
    assert "version" in result.output

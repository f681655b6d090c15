"""`musechat chat` and `musechat recommend`: a conversation at the terminal, JSON for scripts, and
one line + an exit code for every user error.

The catalog is built once per module by the real indexer from real music clips (tiny profile).
In-process runs (typer's CliRunner, stdin from a string) cover the commands quickly; the slow
tests drive the real `musechat` executable through a pseudo-terminal (os.openpty), as a user would.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.cli.main import EXIT_UNAVAILABLE, EXIT_USER_ERROR, app
from bot.settings import get_settings
from engine.media import probe
from engine.profiles import load_encoders
from storage.conversation_store import ConversationStore
from storage.db import default_sqlite_url, make_engine
from storage.models import FeedbackKind
from tests.helpers.service import CLIPS, LICENCES, index, make_clips

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\r")
MUSECHAT = Path(sys.executable).with_name("musechat")
PTY_TIMEOUT_S = 180.0  # seconds for a step of a chat in a pseudo-terminal (the process loads torch first)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, music_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("chat")
    folders = make_clips(music_dir, root / "music", CLIPS[:6])
    asyncio.run(index(root / "data", load_encoders("tiny"), {k: (v, LICENCES[k]) for k, v in folders.items()}))
    return root / "data"


@pytest.fixture
def data_dir(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    shutil.copytree(built, data)
    monkeypatch.setenv("MUSECHAT_DATA_DIR", str(data))
    monkeypatch.setenv("MUSECHAT_PROFILE", "tiny")
    monkeypatch.setenv("MUSECHAT_ALLOW_RANDOM_WEIGHTS", "1")  # the tiny profile answers only when allowed
    monkeypatch.delenv("MUSECHAT_DATABASE_URL", raising=False)
    monkeypatch.delenv("MUSECHAT_QDRANT_URL", raising=False)
    get_settings.cache_clear()
    yield data
    get_settings.cache_clear()


def run(*args: str, input: str | None = None):  # noqa: A002
    return CliRunner().invoke(app, list(args), input=input)


async def _conversation(data: Path, cid: int):
    sql = make_engine(default_sqlite_url(data))
    try:
        store = ConversationStore(sql)
        return await store.list_turns(conversation_id=cid), await store.list_feedback(conversation_id=cid)
    finally:
        await sql.dispose()


@pytest.mark.parametrize("cmd", [["chat"], ["recommend"]])
def test_help(cmd: list[str]) -> None:
    result = run(*cmd, "--help")
    assert result.exit_code == 0 and "Usage" in result.output


def test_chat_session_in_process(data_dir: Path, bikes_mp4: Path, tmp_path: Path) -> None:
    script = "more drums\n/another\n/frobnicate\n\n/use\n/quit\n"
    result = run("chat", str(bikes_mp4), "--out-dir", str(tmp_path / "previews"), input=script)
    assert result.exit_code == 0, result.output
    text = ANSI.sub("", result.output)
    cid = int(re.search(r"conversation (\d+) \(continue it later with: musechat chat --resume \1\)", text).group(1))
    for turn in (1, 2, 3):
        assert f"turn {turn} · zero-shot" in text
    assert text.count("[tag summary]") == 3 and text.count("listen: /") == 3 and "score" in text
    assert "understood: more drums" in text
    assert "unknown command /frobnicate" in text
    preview = Path(re.search(r"preview written to (\S+\.mp4)", text).group(1))
    assert preview.parent == (tmp_path / "previews").resolve()
    info = probe(preview)
    assert info.video is not None and info.audio is not None
    assert f"bye (conversation {cid})" in text
    turns, feedback = asyncio.run(_conversation(data_dir, cid))
    assert [t.index for t in turns] == [1, 2, 3] and turns[1].user_text == "more drums"
    assert [f.kind for f in feedback] == [FeedbackKind.REFINE, FeedbackKind.ANOTHER, FeedbackKind.ACCEPT]
    assert len({t.recommendations[0].track_id for t in turns}) == 3

    # --resume continues it: turn 4, a new track
    again = run("chat", "--resume", str(cid), "--text", "slower", input="/quit\n")
    assert again.exit_code == 0, again.output
    assert "turn 4 · zero-shot" in ANSI.sub("", again.output)
    turns, _ = asyncio.run(_conversation(data_dir, cid))
    assert len(turns) == 4 and turns[3].recommendations[0].track_id not in {t.recommendations[0].track_id for t in turns[:3]}


def test_use_this_in_words_writes_the_preview_like_the_command(data_dir: Path, bikes_mp4: Path, tmp_path: Path) -> None:
    result = run("chat", str(bikes_mp4), "--out-dir", str(tmp_path / "previews"), input="use this\n/quit\n")
    assert result.exit_code == 0, result.output
    preview = Path(re.search(r"preview written to (\S+\.mp4)", ANSI.sub("", result.output)).group(1))
    assert preview.parent == (tmp_path / "previews").resolve() and probe(preview).video is not None


def test_the_random_weights_profile_is_refused_unless_allowed(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MUSECHAT_ALLOW_RANDOM_WEIGHTS")
    get_settings.cache_clear()
    result = run("recommend", "--text", "calm piano")
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    assert "random weights" in result.output and "MUSECHAT_ALLOW_RANDOM_WEIGHTS" in result.output


def test_an_unexpected_error_is_a_bug_exit_1_never_a_user_error(data_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from bot.service.conversation import ConversationService

    async def broken(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise KeyError("a bug in the service")

    monkeypatch.setattr(ConversationService, "start", broken)
    with caplog.at_level("ERROR"):
        result = run("recommend", "--text", "calm piano")
    assert result.exit_code == 1, result.output
    assert "internal error (a bug" in result.output and "KeyError" in result.output
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)  # the traceback is in the log


def test_text_only_chat_and_a_filter_that_matches_nothing(data_dir: Path) -> None:
    result = run("chat", "--text", "calm piano for a wedding video", input="GPL only\n/quit\n")
    assert result.exit_code == 0, result.output
    text = ANSI.sub("", result.output)
    assert "turn 1 · zero-shot" in text
    assert "No track in the catalog matches your filters (licence GPL)" in text  # said, and the chat went on
    assert "bye (conversation" in text


def test_recommend_json_for_scripts(data_dir: Path, bikes_mp4: Path) -> None:
    result = run("recommend", str(bikes_mp4), "--text", "upbeat, CC-BY only", "--json", "--k", "3")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kind"] == "recommendation" and data["mode"] == "zero-shot" and data["filters"] == "licence CC-BY"
    assert [t["rank"] for t in data["tracks"]] == [1, 2, 3]
    assert len({t["track_id"] for t in data["tracks"]}) == 3
    assert all(t["licence"] == "CC-BY-4.0" for t in data["tracks"])
    scores = [t["score"] for t in data["tracks"]]
    assert scores == sorted(scores, reverse=True)
    first = data["tracks"][0]
    assert first["reason_source"] == "tag summary" and first["title"] in first["reason"]
    assert Path(first["excerpt"]).is_file() and set(first["parts"]) >= {"semantic", "pace", "total"}
    text_only = run("recommend", "--text", "epic orchestra", "--json")
    assert text_only.exit_code == 0 and len(json.loads(text_only.stdout)["tracks"]) == 1


def _bad_files(tmp: Path, bikes: Path, media_factory) -> dict[str, Path]:  # noqa: ANN001
    (tmp / "not_a_video.mp4").write_bytes(b"hello, this is not a video\n" * 100)
    (tmp / "truncated.mp4").write_bytes(bikes.read_bytes()[: bikes.stat().st_size // 3])
    return {
        "not a video": tmp / "not_a_video.mp4",
        "truncated": tmp / "truncated.mp4",
        "audio only": media_factory("chat_audio_only.ogg", "sine=f=440:d=2"),
        "missing": tmp / "nope.mp4",
    }


USER_ERRORS = [
    ("not a video", "That file is not a video or audio file I can read."),
    ("truncated", "That file looks damaged or incomplete"),
    ("audio only", "That file has no video in it; please send a video."),
    ("missing", "file not found"),
]


@pytest.mark.parametrize("command", ["chat", "recommend"])
@pytest.mark.parametrize("kind,message", USER_ERRORS)
def test_bad_videos_are_one_line_and_exit_2(data_dir: Path, bikes_mp4: Path, tmp_path: Path, media_factory, command: str, kind: str, message: str) -> None:  # noqa: ANN001
    bad = _bad_files(tmp_path, bikes_mp4, media_factory)[kind]
    result = run(command, str(bad), input="/quit\n")
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_too_long_video(data_dir: Path, bikes_mp4: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSECHAT_MAX_VIDEO_SECONDS", "5")
    get_settings.cache_clear()
    result = run("recommend", str(bikes_mp4))
    assert result.exit_code == EXIT_USER_ERROR
    assert "the most I accept is 5 seconds" in result.output and "Traceback" not in result.output


def test_empty_catalog_unknown_conversation_and_nothing_asked(tmp_path: Path, data_dir: Path, bikes_mp4: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unknown = run("chat", "--resume", "999", input="/quit\n")
    assert unknown.exit_code == EXIT_USER_ERROR and "There is no conversation 999." in unknown.output
    nothing = run("chat")
    assert nothing.exit_code == EXIT_USER_ERROR and "give a video" in nothing.output
    only_filter = run("recommend", "--text", "under 2 minutes")
    assert only_filter.exit_code == EXIT_USER_ERROR and "tell me what kind of music" in only_filter.output
    monkeypatch.setenv("MUSECHAT_DATA_DIR", str(tmp_path / "fresh"))  # a fresh install: schema upgraded, no catalog
    get_settings.cache_clear()
    empty = run("chat", str(bikes_mp4), input="/quit\n")
    assert empty.exit_code == EXIT_UNAVAILABLE
    assert empty.output.strip() == "error: the catalog is empty: run musechat catalog add/refresh"
    assert (tmp_path / "fresh" / "musechat.sqlite3").is_file()


def test_models_missing_or_catalog_of_another_profile_is_exit_3(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mismatch = run("recommend", "--text", "calm piano", "--profile", "lite")
    assert mismatch.exit_code == EXIT_UNAVAILABLE
    assert "error: the catalog was built for another model profile than 'lite'" in mismatch.output
    assert "run musechat catalog refresh" in mismatch.output and "Traceback" not in mismatch.output
    monkeypatch.setenv("MUSECHAT_TEXT_BACKBONE", str(data_dir / "no-such-minilm"))
    get_settings.cache_clear()
    missing = run("recommend", "--text", "calm piano", "--profile", "lite")
    assert missing.exit_code == EXIT_UNAVAILABLE and "no-such-minilm" in missing.output and "Traceback" not in missing.output


def test_dead_database_is_exit_3(data_dir: Path, bikes_mp4: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSECHAT_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/test")
    get_settings.cache_clear()
    result = run("recommend", str(bikes_mp4))
    assert result.exit_code == EXIT_UNAVAILABLE and "unavailable" in result.output and "Traceback" not in result.output


# --- the real executable in a pseudo-terminal -------------------------------------------------------


class Terminal:
    """A process on a pseudo-terminal: write lines, wait for text (a small pexpect)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = os.openpty()
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.fd = master
        self.raw = ""  # everything read
        self.seen = ""  # the same, ANSI codes removed
        self._mark = 0  # expect() searches from here

    def send(self, line: str) -> None:
        self._mark = len(self.seen)
        os.write(self.fd, line.encode() + b"\n")

    def expect(self, pattern: str, timeout: float = PTY_TIMEOUT_S) -> re.Match[str]:
        end = time.monotonic() + timeout
        while True:
            m = re.compile(pattern, re.S).search(self.seen, self._mark)
            if m:
                self._mark = m.end()
                return m
            if time.monotonic() > end:
                raise AssertionError(f"{pattern!r} not seen within {timeout}s; the terminal shows:\n{self.seen[-4000:]}")
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:  # the process closed the terminal
                    data = b""
                if not data and self.proc.poll() is not None:
                    raise AssertionError(f"process exited ({self.proc.returncode}) before {pattern!r}:\n{self.seen[-4000:]}")
                self.raw += data.decode(errors="replace")
                self.seen = ANSI.sub("", self.raw)

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=60)
        finally:
            os.close(self.fd)


def _pty_env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSECHAT_")}
    return env | {"MUSECHAT_DATA_DIR": str(data), "MUSECHAT_PROFILE": "tiny", "MUSECHAT_ALLOW_RANDOM_WEIGHTS": "1", "COLUMNS": "200", "TERM": "xterm-256color"}


@pytest.mark.slow
def test_chat_in_a_pseudo_terminal(data_dir: Path, bikes_mp4: Path, tmp_path: Path) -> None:
    term = Terminal([str(MUSECHAT), "chat", str(bikes_mp4), "--out-dir", str(tmp_path)], _pty_env(data_dir))
    cid = int(term.expect(r"conversation (\d+) \(continue it later").group(1))
    term.expect(r"turn 1 · zero-shot.*\[tag summary\].*listen: /\S+.*you> ")
    term.send("more drums")
    term.expect(r"turn 2 · zero-shot.*understood: more drums.*you> ")
    term.send("/another")
    term.expect(r"turn 3 · zero-shot.*you> ")
    term.send("/use")
    preview = Path(term.expect(r"preview written to (\S+\.mp4)").group(1))
    term.send("/quit")
    term.expect(rf"bye \(conversation {cid}\)")
    assert term.close() == 0
    assert probe(preview).audio is not None
    turns, feedback = asyncio.run(_conversation(data_dir, cid))
    assert len(turns) == 3 and [f.kind for f in feedback][-1] is FeedbackKind.ACCEPT


@pytest.mark.slow
def test_text_only_chat_in_a_pseudo_terminal_and_eof_quits(data_dir: Path) -> None:
    term = Terminal([str(MUSECHAT), "chat", "--text", "calm piano for a wedding video"], _pty_env(data_dir))
    term.expect(r"turn 1 · zero-shot.*you> ")
    os.write(term.fd, b"\x04")  # Ctrl-D: end of input
    term.expect(r"bye \(conversation \d+\)")
    assert term.close() == 0


@pytest.mark.slow
def test_bad_video_in_a_pseudo_terminal(data_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    term = Terminal([str(MUSECHAT), "chat", str(bad)], _pty_env(data_dir))
    term.expect(r"error: .+")
    assert term.close() == EXIT_USER_ERROR
    assert "Traceback" not in term.seen


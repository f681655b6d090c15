"""The local reasoner's pieces reach `on_reason_token` as they are written (bot/service/conversation.py)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from rich.console import Console

from bot.service.conversation import ReplyKind, ServiceConfig
from engine.profiles import Encoders
from engine.reasoner import REASON_SOURCE_TITLE_TAGS
from tests.helpers.service import built, data_dir, open_service, tiny  # noqa: F401 - fixtures

LOCAL = ServiceConfig(reasoner="local", reasoner_timeout_s=60.0, reasoner_grounded=False)  # the random tiny LM: raw pieces (it never writes a checked sentence)
WATCHED_PIECES = 3  # pieces after which the Live test looks at the screen


async def test_tokens_arrive_before_the_reply_and_add_up_to_the_reason(data_dir: Path, tiny: Encoders) -> None:  # noqa: F811
    async with open_service(data_dir, tiny, config=LOCAL) as e:
        for call in ("start", "another", "feedback"):
            pieces: list[str] = []
            done = asyncio.Event()  # set once the service call has returned

            async def on_token(piece: str) -> None:
                assert not done.is_set()  # every piece comes before the reply
                await asyncio.sleep(0)  # an async consumer that yields to the loop
                pieces.append(piece)

            if call == "start":
                r = await e.service.start(text="happy tune", channel_id="stream", user_id="u", on_reason_token=on_token)
                cid = r.conversation_id
            elif call == "another":
                r = await e.service.another(cid, on_reason_token=on_token)
            else:
                r = await e.service.message(cid, "more upbeat", on_reason_token=on_token)
            done.set()
            assert r.kind is ReplyKind.RECOMMENDATION and r.track is not None
            assert r.track.reason_source == REASON_SOURCE_TITLE_TAGS
            assert len(pieces) >= 2, call  # it grew piece by piece
            assert "".join(pieces).strip() == r.track.reason  # generate() strips the joined text


async def test_without_a_callback_or_with_a_broken_one_the_reply_still_has_the_llm_reason(data_dir: Path, tiny: Encoders) -> None:  # noqa: F811
    calls = 0

    def broken(piece: str) -> None:  # a plain (sync) callback that fails on its first piece
        nonlocal calls
        calls += 1
        raise RuntimeError("display gone")

    async with open_service(data_dir, tiny, config=LOCAL) as e:
        plain = await e.service.start(text="happy tune", channel_id="plain", user_id="u")
        hurt = await e.service.start(text="happy tune", channel_id="hurt", user_id="u", on_reason_token=broken)
    assert calls == 1  # not called again after it failed
    assert hurt.track.track_id == plain.track.track_id  # same words, same pick
    for r in (plain, hurt):  # the LLM's reason either way (it samples at temperature 0.1: texts differ)
        assert r.track.reason_source == REASON_SOURCE_TITLE_TAGS
        assert r.track.reason and "unavailable" not in r.track.reason


async def test_the_chat_shows_the_reason_growing_then_the_card(
    data_dir: Path, tiny: Encoders, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """bot/adapters/terminal.py: a rich Live on a terminal console redraws as pieces come; the result is the reply."""
    import bot.cli.main  # noqa: F401 - bot.cli.chat is imported through it (circular otherwise)
    import bot.adapters.terminal as chat_cli

    screen = io.StringIO()
    monkeypatch.setattr(chat_cli, "console", Console(file=screen, force_terminal=True, width=2000, color_system=None))
    frames: list[str] = []  # the screen after each of the first pieces
    pieces: list[str] = []
    async with open_service(data_dir, tiny, config=LOCAL) as e:

        async def call(on_status, on_reason_token):  # noqa: ANN001, ANN202
            async def tok(piece: str) -> None:
                on_reason_token(piece)
                pieces.append(piece)
                if len(pieces) <= WATCHED_PIECES:
                    await asyncio.sleep(2.5 / chat_cli.LIVE_REFRESH_HZ)  # let the Live redraw between pieces
                    frames.append(screen.getvalue())

            return await e.service.start(text="happy tune", channel_id="live", user_id="u", on_status=on_status, on_reason_token=tok)

        reply = await chat_cli.with_reason_stream(call, "thinking…")
    assert reply.kind is ReplyKind.RECOMMENDATION and reply.track.reason_source == REASON_SOURCE_TITLE_TAGS
    shown = screen.getvalue()
    assert "writing the reason…" in shown and "why " in shown
    # the reason grew: the screen held a partial reason before the whole one
    assert len(pieces) > WATCHED_PIECES
    for n, frame in enumerate(frames, start=1):
        assert "why " + "".join(pieces[:n]) in frame  # the first n pieces were on screen
    assert reply.track.reason not in frames[0]
    assert reply.track.reason in shown

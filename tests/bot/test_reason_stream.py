"""The local reasoner's pieces reach `on_reason_token` as they are written (bot/conversation.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.conversation import ReplyKind, ServiceConfig
from engine.profiles import Encoders
from engine.reasoner import REASON_SOURCE_TITLE_TAGS
from tests.bot.test_conversation import built, data_dir, open_service, tiny  # noqa: F401 - fixtures

LOCAL = ServiceConfig(reasoner="local", reasoner_timeout_s=60.0)


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

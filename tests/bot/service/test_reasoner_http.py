"""bot/service/reasoner_http.py against a real local HTTP server (aiohttp.web on 127.0.0.1, a random port)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.service.conversation import ReplyKind, ServiceConfig
from bot.service.reasoner_http import CHAT_PATH, REASON_SOURCE_HTTP, REASON_SOURCE_HTTP_FACTS, HttpReasonerConfig, justify_http
from bot.settings import Settings
from engine.profiles import Encoders
from engine.reasoner import INSTRUCTION, SYSTEM, ReasonInput
from tests.helpers.service import built, data_dir, open_service, tiny  # noqa: F401 - fixtures

ANSWER = "The bright brass matches the sunny bike ride."
INP = ReasonInput.of("Sunny Brass March", tags=("brass", "happy"), words="more upbeat", video="people riding bikes")
SECRET = "sk-test-0123456789"


@dataclass
class FakeServer:
    """An OpenAI-compatible chat server whose behaviour each test sets."""

    url: str = ""
    requests: list[tuple[dict[str, Any], dict[str, str]]] = field(default_factory=list)  # (JSON body, headers)
    behaviour: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None


def completion(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 11, "total_tokens": 51},
    }  # fmt: skip


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    fake = FakeServer()

    async def chat(request: web.Request) -> web.StreamResponse:
        fake.requests.append((await request.json(), dict(request.headers)))
        if fake.behaviour is not None:
            return await fake.behaviour(request)
        return web.json_response(completion(ANSWER))

    app = web.Application()
    app.router.add_post(CHAT_PATH, chat)
    runner = web.AppRunner(app, shutdown_timeout=0.1)  # a slow handler still sleeping must not hold teardown
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


async def test_success_sends_the_prompt_and_returns_the_text(server: FakeServer) -> None:
    j = await justify_http(INP, HttpReasonerConfig(server.url + "/", "llama3.2:3b", max_tokens=32), timeout_s=5.0)
    assert j.text == ANSWER and j.source == REASON_SOURCE_HTTP and j.error == "" and j.tokens == 11
    assert 0 < j.seconds < 5.0
    [(body, headers)] = server.requests
    assert body["model"] == "llama3.2:3b" and body["temperature"] == 0.1 and body["max_tokens"] == 32
    assert body["stream"] is False
    system, user = body["messages"]
    assert system == {"role": "system", "content": SYSTEM}
    assert user["role"] == "user"
    assert user["content"] == (
        "### Recommender: Music title: Sunny Brass March; Music tags: brass, happy; Video: people riding bikes;"
        f" User feedback: more upbeat; Generate Recommendation: \n{INSTRUCTION}"
    )
    assert "Authorization" not in headers


async def test_grounded_the_server_gets_the_facts_only_few_shot_chat(server: FakeServer) -> None:
    from engine.reasoner import grounded_messages

    j = await justify_http(INP, HttpReasonerConfig(server.url, "m"), timeout_s=5.0, grounded=True)
    assert j.text == ANSWER and j.source == REASON_SOURCE_HTTP_FACTS
    [(body, _)] = server.requests
    assert body["messages"] == grounded_messages(INP.facts)  # the local model's examples, then this turn's facts
    assert body["messages"][-1]["content"].startswith("Title: Sunny Brass March\nTags: brass, happy\n")


async def test_api_key_is_sent_as_bearer_and_never_logged(server: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    cfg = HttpReasonerConfig(server.url, "m", api_key=SECRET)
    assert SECRET not in repr(cfg)

    async def fail(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text="boom")

    with caplog.at_level(logging.DEBUG):
        ok = await justify_http(INP, cfg, timeout_s=5.0)
        server.behaviour = fail
        bad = await justify_http(INP, cfg, timeout_s=5.0)
    assert ok.text == ANSWER and bad.text is None
    assert [h["Authorization"] for _, h in server.requests] == [f"Bearer {SECRET}"] * 2
    assert SECRET not in caplog.text and SECRET not in bad.error


async def test_server_error_500_falls_back_with_unavailable(server: FakeServer) -> None:
    from engine.reasoner import reason_or_fallback

    async def fail(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text="model not loaded")

    server.behaviour = fail
    j = await justify_http(INP, HttpReasonerConfig(server.url, "m"), timeout_s=5.0)
    assert j.text is None and j.error == "RuntimeError: HTTP 500: model not loaded"
    reason, source = reason_or_fallback(j, "Tag summary.", "tag summary")
    assert source == "tag summary"
    assert reason == "Tag summary. (The model's reason is unavailable: RuntimeError: HTTP 500: model not loaded.)"


async def test_slow_server_times_out(server: FakeServer) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(2.0)
        return web.json_response(completion(ANSWER))

    server.behaviour = slow
    j = await justify_http(INP, HttpReasonerConfig(server.url, "m"), timeout_s=0.3)
    assert j.text is None and j.error == "timed out after 0.3 s"
    assert 0.25 < j.seconds < 1.5  # the total timeout held, the 2 s answer was not awaited


@pytest.mark.parametrize(
    ("respond", "error"),
    [
        (lambda: web.Response(text="<html>not json</html>", content_type="text/html"), "ValueError: the answer is not JSON"),
        (lambda: web.json_response({"result": ANSWER}), "ValueError: no choices[0].message.content in the answer"),
        (lambda: web.json_response({"choices": []}), "ValueError: no choices[0].message.content in the answer"),
        (lambda: web.json_response({"choices": [{"message": {"content": 3}}]}), "ValueError: choices[0].message.content is int"),
        (lambda: web.json_response(completion("   ")), "the server answered with no text"),
    ],
)
async def test_wrong_json_falls_back(server: FakeServer, respond: Callable[[], web.Response], error: str) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        return respond()

    server.behaviour = answer
    j = await justify_http(INP, HttpReasonerConfig(server.url, "m"), timeout_s=5.0)
    assert j.text is None and j.source == REASON_SOURCE_HTTP
    assert j.error.startswith(error)


async def test_nobody_listening_is_reported() -> None:
    j = await justify_http(INP, HttpReasonerConfig("http://127.0.0.1:9", "m"), timeout_s=5.0)  # discard port: refused
    assert j.text is None and j.error.startswith("server unreachable (ClientConnectorError")


def test_settings_map_to_the_service_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSECHAT_REASONER", "http")
    monkeypatch.setenv("MUSECHAT_REASONER_URL", "http://127.0.0.1:11434")
    monkeypatch.setenv("MUSECHAT_REASONER_MODEL", "llama3.2:3b")
    monkeypatch.setenv("MUSECHAT_REASONER_API_KEY", SECRET)
    s = Settings()
    assert SECRET not in repr(s)
    c = s.service_config()
    assert (c.reasoner, c.reasoner_url, c.reasoner_model, c.reasoner_api_key) == ("http", "http://127.0.0.1:11434", "llama3.2:3b", SECRET)
    assert SECRET not in repr(c)
    assert c.reasoner_grounded is True  # the default: facts-only prompt, sentences checked
    monkeypatch.setenv("MUSECHAT_REASONER_GROUNDED", "false")
    assert Settings().service_config().reasoner_grounded is False


async def test_service_reason_comes_from_the_server_then_falls_back(server: FakeServer, data_dir: Path, tiny: Encoders) -> None:  # noqa: F811
    cfg = ServiceConfig(reasoner="http", reasoner_url=server.url, reasoner_model="m", reasoner_timeout_s=5.0, reasoner_api_key=SECRET)
    async def grounded_then_not(request: web.Request) -> web.StreamResponse:
        """One sentence from the facts of the prompt, then one that names things the facts don't (dropped)."""
        body = await request.json()
        title = re.search(r"^Title: (.*)$", body["messages"][-1]["content"], re.MULTILINE).group(1)  # type: ignore[union-attr]
        return web.json_response(completion(f'"{title}" is what you asked for, a happy tune. {ANSWER}'))

    server.behaviour = grounded_then_not
    async with open_service(data_dir, tiny, config=cfg) as e:
        pieces: list[str] = []
        r = await e.service.start(text="happy tune", channel_id="http", user_id="u", on_reason_token=pieces.append)
        assert r.kind is ReplyKind.RECOMMENDATION and r.track is not None
        shown = f'"{r.track.title}" is what you asked for, a happy tune.'
        assert r.track.reason == shown and r.track.reason_source == REASON_SOURCE_HTTP_FACTS  # "bright brass" was dropped
        assert pieces == [shown]  # the server answers in one piece; only the checked sentence is shown
        [(body, headers)] = server.requests
        assert body["model"] == "m" and body["max_tokens"] == cfg.reasoner_max_new_tokens
        facts = body["messages"][-1]["content"]  # the grounded chat: the turn's facts after the examples
        assert facts.startswith(f"Title: {r.track.title}\n") and "\nUser asked: happy tune\n" in facts
        assert headers["Authorization"] == f"Bearer {SECRET}"

        async def fail(request: web.Request) -> web.StreamResponse:
            return web.Response(status=503, text="overloaded")

        server.behaviour = fail
        r2 = await e.service.another(r.conversation_id)
    assert r2.track is not None and r2.track.reason_source == "tag summary"
    assert r2.track.reason.endswith("(The model's reason is unavailable: RuntimeError: HTTP 503: overloaded.)")
    assert len(server.requests) == 2


async def test_http_mode_needs_url_and_model(data_dir: Path, tiny: Encoders) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="reasoner_url and reasoner_model"):
        async with open_service(data_dir, tiny, config=ServiceConfig(reasoner="http")):
            pass

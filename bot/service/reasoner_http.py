"""The reasoner over HTTP: an OpenAI-compatible chat server (Ollama, vLLM) writes the reason.

Paper 4.2 has the LLM write why a track suits the video. `engine/reasoner.py` runs that LLM in
this process; this module asks a server instead (`ServiceConfig.reasoner = "http"`), so a bot on a
small machine can use a larger model served elsewhere. It is text only: the server never sees the
music token, so the prompt is `build_prompt(..., with_music=False)` (title, tags, video, feedback)
and the reply is labelled `REASON_SOURCE_HTTP`, never claiming to have listened to the music.
Grounded (`ServiceConfig.reasoner_grounded`, the default), the server gets the local model's
facts-only few-shot chat instead (engine/reasoner.py `grounded_messages`: the examples, then this
turn's facts) and the reply is labelled `REASON_SOURCE_HTTP_FACTS`; the caller checks each
sentence against the facts before it is shown (bot/service/reasons.py).

The request is `POST {base_url}/v1/chat/completions` with the system line and the prompt +
instruction the local chat path uses, temperature 0.1 (paper 4.2) and `max_tokens`. An optional
bearer key goes in the Authorization header and is never logged. Every failure (connection,
HTTP status, malformed JSON, empty text, the total timeout) comes back as `Justification(text=None,
error=...)` so the caller falls back to the tag summary; nothing here raises.

engine/ stays free of the network: this module lives in bot/.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from engine.reasoner import (
    INSTRUCTION,
    SYSTEM,
    Justification,
    ReasonerConfig,
    ReasonInput,
    build_prompt,
    grounded_messages,
)

log = logging.getLogger(__name__)

REASON_SOURCE_HTTP = "llm via http (title + tags)"
REASON_SOURCE_HTTP_FACTS = "llm via http, from the facts, each sentence checked"
CHAT_PATH = "/v1/chat/completions"  # OpenAI-compatible endpoint, under the base URL
HTTP_TEMPERATURE = 0.1  # paper 4.2
HTTP_MAX_TOKENS = 48  # tokens of a reason, like REASONER_MAX_NEW_TOKENS
HTTP_TIMEOUT_S = 3.0  # seconds for the whole request, connect to last byte
ERROR_BODY_CHARS = 200  # characters of a failed response's body kept in the error


@dataclass(frozen=True)
class HttpReasonerConfig:
    """Where and how to ask; `api_key` is a secret (left out of repr, never logged)."""

    base_url: str  # e.g. http://127.0.0.1:11434 (Ollama) or http://127.0.0.1:8000 (vLLM)
    model: str  # the server's model name, e.g. "llama3.2:3b"
    api_key: str | None = None
    temperature: float = HTTP_TEMPERATURE
    max_tokens: int = HTTP_MAX_TOKENS

    def __repr__(self) -> str:
        key = "set" if self.api_key else "unset"
        return f"HttpReasonerConfig(base_url={self.base_url!r}, model={self.model!r}, api_key={key})"


def chat_messages(inp: ReasonInput, prompt_cfg: ReasonerConfig | None = None) -> list[dict[str, str]]:
    """The chat the server gets: the local chat path's system line and prompt (no music token)."""
    text = build_prompt(inp, prompt_cfg or ReasonerConfig(), with_music=False)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{text}\n{INSTRUCTION}"}]


def request_body(
    inp: ReasonInput, cfg: HttpReasonerConfig, prompt_cfg: ReasonerConfig | None = None, *, grounded: bool = False
) -> dict[str, Any]:  # fmt: skip
    return {
        "model": cfg.model,
        "messages": grounded_messages(inp.facts) if grounded else chat_messages(inp, prompt_cfg),
        "temperature": cfg.temperature,
        "max_tokens": cfg.max_tokens,
        "stream": False,
    }


def _answer_text(payload: Any) -> tuple[str, int]:
    """(text, completion tokens) of an OpenAI chat completion; ValueError when it is not one."""
    try:
        text = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"no choices[0].message.content in the answer ({type(e).__name__}: {e})") from None
    if not isinstance(text, str):
        raise ValueError(f"choices[0].message.content is {type(text).__name__}, not text")
    usage = payload.get("usage") if isinstance(payload, dict) else None
    tokens = usage.get("completion_tokens", 0) if isinstance(usage, dict) else 0
    return text.strip(), int(tokens) if isinstance(tokens, int) else 0


async def _post(url: str, body: dict[str, Any], headers: dict[str, str], timeout_s: float) -> tuple[str, int]:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.post(url, json=body, headers=headers) as resp:
        raw = await resp.text()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {raw[:ERROR_BODY_CHARS].strip() or resp.reason}")
        try:
            payload = await resp.json(content_type=None)
        except ValueError as e:
            raise ValueError(f"the answer is not JSON ({e})") from None
        return _answer_text(payload)


async def justify_http(
    inp: ReasonInput,
    cfg: HttpReasonerConfig,
    *,
    timeout_s: float = HTTP_TIMEOUT_S,
    prompt_cfg: ReasonerConfig | None = None,
    grounded: bool = False,
) -> Justification:
    """Ask the server for the reason within `timeout_s` (total); on any failure `text=None` and why.

    `grounded`: the facts-only few-shot chat (module docstring); the caller checks the sentences."""
    source = REASON_SOURCE_HTTP_FACTS if grounded else REASON_SOURCE_HTTP
    t0 = time.perf_counter()
    url = cfg.base_url.rstrip("/") + CHAT_PATH
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    try:
        if timeout_s <= 0:
            raise TimeoutError
        text, tokens = await asyncio.wait_for(_post(url, request_body(inp, cfg, prompt_cfg, grounded=grounded), headers, timeout_s), timeout_s)
    except TimeoutError:
        log.warning("http reasoner at %s timed out after %.1f s on %r", url, timeout_s, inp.facts.title)
        return Justification(None, source, time.perf_counter() - t0, error=f"timed out after {timeout_s:g} s")
    except aiohttp.ClientError as e:
        log.warning("http reasoner at %s unreachable: %s", url, type(e).__name__)
        return Justification(None, source, time.perf_counter() - t0, error=f"server unreachable ({type(e).__name__}: {e})")
    except Exception as e:  # noqa: BLE001 - a failed reason must not fail the reply
        log.warning("http reasoner at %s failed on %r: %s", url, inp.facts.title, e)
        return Justification(None, source, time.perf_counter() - t0, error=f"{type(e).__name__}: {e}")
    seconds = time.perf_counter() - t0
    if not text:
        return Justification(None, source, seconds, error="the server answered with no text")
    return Justification(text, source, seconds, tokens=tokens)


__all__ = [
    "CHAT_PATH",
    "HttpReasonerConfig",
    "REASON_SOURCE_HTTP",
    "REASON_SOURCE_HTTP_FACTS",
    "chat_messages",
    "justify_http",
    "request_body",
]

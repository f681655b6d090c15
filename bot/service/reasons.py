"""Reasons: the LLM's justification of a track (paper 4.2), streamed, or a plain summary of its tags.

Grounded (`ServiceConfig.reasoner_grounded`, the default): the reasoner is given the turn's facts
(`ReasonRequest.facts`, engine/grounding.py `ReasonFacts`: title, artist, top tags, tempo, loudness,
the video's labels, the user's words and what was understood, licence, duration) and every sentence
it writes is checked against them before it is shown (engine/grounding.py); the callback gets whole
accepted sentences. When none passes, the tag summary stands, saying the model's reason is
unavailable and why.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from bot.jobs.runner import ReasonRequest
from bot.service.assets import TrackAssets
from bot.service.turns import TurnPlan
from engine.engine import Engine
from engine.grounding import ReasonFacts
from engine.video import VideoFeatures
from engine.zeroshot import video_sentence

log = logging.getLogger(__name__)


REASON_SOURCE_TAGS = "tag summary"  # the reasoner is off, failed or timed out
REASONER_OFF = "off"  # ServiceConfig.reasoner: the tag summary is the reason
REASONER_LOCAL = "local"  # the profile's LLM in this process (engine/reasoner.py, paper 4.2)
REASONER_HTTP = "http"  # an OpenAI-compatible server (Ollama, vLLM), text only (bot/service/reasoner_http.py)
REASONER_MODES = (REASONER_OFF, REASONER_LOCAL, REASONER_HTTP)
REASONER_TIMEOUT_S = 3.0  # seconds a reply waits for the LLM's reason (lite: ~2.5 s for 40 tokens on 2 cores)
REASONER_MAX_NEW_TOKENS = 48  # tokens of an LLM reason in a reply
VIDEO_LABELS = 3  # image labels of the video among a reason's facts

ReasonTokenCallback = Callable[[str], Awaitable[None] | None]  # each piece of the LLM's reason as it is written


class ReasonWriter:
    """The best track's reason: the profile's LLM (local) or a server (http), within a time limit, else the tag summary."""

    def __init__(self, *, config: Any, engine: Engine, assets: TrackAssets) -> None:
        self.config = config  # ServiceConfig: reasoner, reasoner_timeout_s, reasoner_checkpoint, ...
        self.engine = engine
        self.assets = assets
        self._reasoner: Any = None  # engine.reasoner.MusicReasoner, loaded at start-up (warm_up), else on first use
        self._reasoner_lock = threading.Lock()
        self._reasoner_executor: ThreadPoolExecutor | None = None  # one thread: generation is CPU-bound
        self._closed = False

    def close(self) -> None:
        """Stop the reasoner's thread and, in process mode, its process (idempotent); no reasoner is started after."""
        self._closed = True
        if self._reasoner_executor is not None:
            self._reasoner_executor.shutdown(wait=False, cancel_futures=True)
        with self._reasoner_lock:
            reasoner, self._reasoner = self._reasoner, None
        if reasoner is not None and hasattr(reasoner, "close"):
            reasoner.close()

    def get_reasoner(self) -> Any:
        """The profile's reasoner, loaded and warmed up once (worker thread); again if its process ended.

        `reasoner_process` (the default): an `engine.reasoner_process.ReasonerProcess`, the reasoner
        in a child process where it is the only thread running PyTorch (that module says why);
        else an `engine.reasoner.MusicReasoner` in this process.
        """
        with self._reasoner_lock:
            if self._closed:
                raise RuntimeError("the reasoner was closed (the bot is stopping)")
            if self._reasoner is not None and not getattr(self._reasoner, "alive", True):
                log.warning("the reasoner process ended (exit code %s); starting a new one", self._reasoner.exitcode)
                self._reasoner.close()
                self._reasoner = None
            if self._reasoner is None:
                from engine.reasoner import ReasonerConfig, load_reasoner

                profile = self.engine.encoders.profile
                cfg = ReasonerConfig(llm=profile.reasoner, cpu_int8=self.config.reasoner_int8)
                if self.config.reasoner_process:
                    from engine.reasoner_process import ReasonerProcess, ReasonerSpec

                    spec = ReasonerSpec(
                        profile.reasoner, profile.music_dim, cfg, checkpoint=self.config.reasoner_checkpoint,
                        device=str(self.engine.config.device), grounded=self.config.reasoner_grounded,
                        log_level=logging.getLogger().getEffectiveLevel(),
                    )  # fmt: skip
                    self._reasoner = ReasonerProcess(spec).start()  # loaded and warmed up in the child
                    return self._reasoner
                reasoner = load_reasoner(
                    profile.reasoner, music_dim=profile.music_dim, checkpoint=self.config.reasoner_checkpoint,
                    device=self.engine.config.device, config=cfg,
                )  # fmt: skip
                reasoner.warm_up(grounded=self.config.reasoner_grounded)  # the first reply pays no prompt cache
                self._reasoner = reasoner
            return self._reasoner

    async def write(
        self, title: str, sha: str, tags: Sequence[str], plan: TurnPlan, fallback: str,
        on_reason_token: ReasonTokenCallback | None = None, *, timeout_s: float | None = None,
    ) -> tuple[str, str]:  # fmt: skip
        """(reason, reason_source): the LLM's, within `timeout_s` (default `reasoner_timeout_s`), else the tag summary saying why.

        With `on_reason_token`, each piece the LLM writes (grounded: each sentence that passed the
        fact check) is handed to it (in order, on the event loop) as it comes; all of them arrive
        before this returns.
        """
        facts = ReasonFacts(title, tags=tuple(tags), words=plan.text, video_labels=plan_video_labels(plan))
        request = ReasonRequest(facts, sha, video_words=plan_video_words(plan), fallback=fallback, timeout_s=timeout_s)
        return await self.write_request(request, on_reason_token)

    async def write_request(self, request: ReasonRequest, on_reason_token: ReasonTokenCallback | None = None) -> tuple[str, str]:
        """`write` from what a model job carries (bot/jobs/runner.py `ReasonRequest`): the facts, not the plan."""
        from engine.reasoner import (
            Justification,
            justify,
            reason_or_fallback,
        )

        budget = self.config.reasoner_timeout_s if request.timeout_s is None else request.timeout_s
        inp = reason_input(request)
        if self.config.reasoner == REASONER_HTTP:
            return await self._http_reason(inp, request.fallback, on_reason_token, timeout_s=budget)
        if self._reasoner_executor is None:
            self._reasoner_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="musechat-reasoner")
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        reasoner = self._reasoner
        if reasoner is None or not getattr(reasoner, "alive", True):  # not loaded at start-up (it failed then), or its
            # process ended: load it, but never wait past the limit for it
            loading = loop.run_in_executor(self._reasoner_executor, self.get_reasoner)
            try:
                reasoner = await asyncio.wait_for(asyncio.shield(loading), budget)
            except Exception as e:  # noqa: BLE001 - the reply still gives the track
                error = "the model is still loading" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
                log.warning("no reasoner for this reply: %s", error)
                j = Justification(None, REASON_SOURCE_TAGS, time.perf_counter() - t0, error=error)
                return reason_or_fallback(j, request.fallback, REASON_SOURCE_TAGS)
        if reasoner.trained:  # the soft token needs the track's mean music embedding (feature cache)
            segments = await loop.run_in_executor(self._reasoner_executor, self.assets.segment_music, request.track_sha)
            music = None if segments is None else np.asarray(segments, dtype=np.float32).mean(axis=0)  # (Dm,)
            inp = dataclasses.replace(inp, music_vector=music)
        remaining = max(0.0, budget - (time.perf_counter() - t0))
        relay = TokenRelay(on_reason_token, loop) if on_reason_token is not None else None
        try:
            j = await justify(
                reasoner, inp, timeout_s=remaining, executor=self._reasoner_executor,
                max_new_tokens=self.config.reasoner_max_new_tokens, on_token=relay.put if relay is not None else None,
                grounded=self.config.reasoner_grounded,
            )  # fmt: skip
        finally:
            if relay is not None:
                await relay.close()
        if j.dropped:
            log.info("reason for %r: %d sentence(s) left out by the fact check: %s", request.facts.title, len(j.dropped), "; ".join(j.dropped))
        return reason_or_fallback(j, request.fallback, REASON_SOURCE_TAGS)

    async def _http_reason(
        self, inp: Any, fallback: str, on_reason_token: ReasonTokenCallback | None = None, *, timeout_s: float
    ) -> tuple[str, str]:
        """(reason, reason_source) from the OpenAI-compatible server (text only), else the tag summary saying why.

        The server answers in one piece (no streaming request); grounded, it is given the facts-only
        few-shot chat and its sentences go through the same fact check as the local LLM's, and
        `on_reason_token` gets each accepted one.
        """
        from bot.service.reasoner_http import HttpReasonerConfig, justify_http
        from engine.grounding import grounded_text
        from engine.reasoner import SHOT_TERMS, reason_or_fallback

        cfg = HttpReasonerConfig(
            base_url=self.config.reasoner_url or "", model=self.config.reasoner_model or "",
            api_key=self.config.reasoner_api_key, max_tokens=self.config.reasoner_max_new_tokens,
        )  # fmt: skip
        grounded = self.config.reasoner_grounded
        j = await justify_http(inp, cfg, timeout_s=timeout_s, grounded=grounded)
        pieces = [j.text] if j.text else []
        if j.text and grounded:
            text, verdicts = grounded_text(j.text, inp.facts, SHOT_TERMS)  # the examples' words are not this turn's facts
            pieces = [v.sentence for v in verdicts if v.accepted]
            if not text:
                j = dataclasses.replace(j, text=None, error=f"none of its {len(verdicts)} sentence(s) passed the fact check")
            else:
                j = dataclasses.replace(j, text=text)
        if pieces and on_reason_token is not None:
            relay = TokenRelay(on_reason_token, asyncio.get_running_loop())
            for n, piece in enumerate(pieces):
                relay.put(piece if n == 0 else " " + piece)
            await relay.close()
        return reason_or_fallback(j, fallback, REASON_SOURCE_TAGS)


def reason_input(request: ReasonRequest) -> Any:
    """The reasoner's input (engine.reasoner.ReasonInput) from a model job's request."""
    from engine.reasoner import ReasonInput

    return ReasonInput(request.facts, video=request.video_words)


def video_labels(video: VideoFeatures) -> tuple[str, ...]:
    """The video's top image labels (the first of each ImageNet name's synonyms), best first."""
    return tuple(dict.fromkeys(n.split(",")[0].strip() for n, _ in video.labels[:VIDEO_LABELS] if n))


def plan_video_labels(plan: TurnPlan) -> tuple[str, ...]:
    """`video_labels` of the turn's video; none for a text-only start."""
    return video_labels(plan.video) if plan.video is not None else ()


def plan_video_words(plan: TurnPlan) -> str:
    """What the reasoner is told about the video: its top labels as a sentence, or a text-only start's words."""
    return video_sentence(plan.video.labels[:3]) if plan.video is not None else plan.anchor_text


class TokenRelay:
    """Pieces of text from the reasoner's thread to an (async) callback on the event loop, in order.

    `put` may be called from any thread; `close` (on the loop) waits until every piece put before
    it has been handed over, then ignores later ones (a timed-out generation still finishing). A
    callback that raises is logged and not called again: a display problem never fails the reply.
    """

    def __init__(self, callback: ReasonTokenCallback, loop: asyncio.AbstractEventLoop) -> None:
        self._callback = callback
        self._loop = loop
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._closed = False
        self._task = loop.create_task(self._deliver())

    def put(self, piece: str) -> None:
        if not self._closed and piece:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, piece)

    async def _deliver(self) -> None:
        broken = False
        while (piece := await self._queue.get()) is not None:
            if broken:
                continue
            try:
                result = self._callback(piece)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # noqa: BLE001 - the reply must still come
                log.warning("the reason-token callback failed; no more pieces go to it", exc_info=True)
                broken = True

    async def close(self) -> None:
        self._closed = True
        self._loop.call_soon_threadsafe(self._queue.put_nowait, None)  # after every piece already scheduled
        await self._task


PART_PHRASES = {
    "semantic": "its description matches {what}",
    "pace": "its tempo and loudness suit the video's pace",
    "steering": "it moves the way you asked ({understood})",
    "fusion": "the trained fusion model ranks it close to your video and words",
    "not like rejected": "it is unlike the track you passed on",
}


def tag_summary(
    *,
    title: str,
    tags: Sequence[str],
    parts: Mapping[str, float],
    video: VideoFeatures | None,
    understood: str,
    tempo_bpm: float | None,
    rejected: bool,
) -> str:
    """A plain reason from the track's tags and the score breakdown (until the reasoner lands).

    Names the track's leading tags, then the score parts that lifted it most (positive parts,
    largest first), e.g. "Battle Epic: classical, strings, slow. Picked because its description
    matches what the video shows (mountain bike, alp) (+1.20) and its tempo and loudness suit the
    video's pace (+0.45)."
    """
    lead = f"{title}: {', '.join(tags[:6])}." if tags else f"{title}."
    if tempo_bpm:
        lead = lead[:-1] + f", about {tempo_bpm:.0f} BPM."
    what = "what you asked for"
    if video is not None and (labels := video_sentence(video.labels[:3])):
        what = f"what the video shows ({labels})" + (" and your words" if understood else "")
    reasons = []
    for name, value in sorted(((n, v) for n, v in parts.items() if n != "total"), key=lambda kv: -kv[1]):
        if value <= 0 or name not in PART_PHRASES:
            continue
        if name == "not like rejected" and not rejected:
            continue
        reasons.append(PART_PHRASES[name].format(what=what, understood=understood or "your words") + f" ({value:+.2f})")
    if not reasons:
        return f"{lead} The closest match left in the catalog (score {parts.get('total', 0.0):.2f})."
    return f"{lead} Picked because " + (", ".join(reasons[:-1]) + " and " + reasons[-1] if len(reasons) > 1 else reasons[0]) + "."

"""One message that follows a request as it runs: status, then the card, then the reason as it
streams, then the final reply.

Discord allows about five edits per five seconds per channel; a reason arrives token by token.
`LiveMessage` keeps the latest wanted state and one task renders it, at most once per
`min_interval_s`, so tokens never wait on HTTP and never pile up requests. A 429 is waited out by
discord.py itself (retry_after); `flush()` returns once the latest state has landed, so the final
text always lands. Files are uploaded once, with the first render that carries them; later edits
leave the attachments as they are.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import discord

from bot.adapters.discord import render
from bot.adapters.discord.render import media_file
from bot.service.contract import MediaFile

log = logging.getLogger(__name__)

EDIT_INTERVAL_S = 1.0  # seconds between two edits of one message
UNSET: Any = discord.utils.MISSING  # "leave as it is"


@dataclass
class Render:
    """What one message should show. UNSET fields are left as they are."""

    content: Any = UNSET  # str | None (None: no text)
    embeds: Any = UNSET  # list[discord.Embed]
    view: Any = UNSET  # discord.ui.View | None
    files: list[MediaFile] = field(default_factory=list)  # to upload with the next render


class Target(Protocol):
    async def render(self, render: Render) -> None: ...


class InteractionTarget:
    """The deferred response of an interaction (`edit_original_response`)."""

    def __init__(self, interaction: discord.Interaction) -> None:
        self.interaction = interaction
        self.message: discord.InteractionMessage | None = None

    async def render(self, r: Render) -> None:
        kwargs: dict[str, Any] = {}
        if r.content is not UNSET:
            kwargs["content"] = r.content
        if r.embeds is not UNSET:
            kwargs["embeds"] = r.embeds
        if r.view is not UNSET:
            kwargs["view"] = r.view
        if r.files:  # the list replaces the message's attachments: keep those already there
            kept = list(self.message.attachments) if self.message is not None else []
            kwargs["attachments"] = [*kept, *(media_file(m) for m in r.files)]
        self.message = await self.interaction.edit_original_response(**kwargs)


class ChannelTarget:
    """A bot message in a channel or thread: sent on the first render, edited after (bot-token REST).

    `fallback`: where to send when `channel` is gone or out of reach (a thread that could not be
    created: the parent channel).
    """

    def __init__(
        self,
        channel: discord.abc.Messageable,
        *,
        message: discord.Message | None = None,
        fallback: discord.abc.Messageable | None = None,
    ) -> None:
        self.channel = channel
        self.message = message
        self.fallback = fallback

    async def render(self, r: Render) -> None:
        if self.message is None:
            kwargs: dict[str, Any] = {}
            if r.content not in (UNSET, None):
                kwargs["content"] = r.content
            if r.embeds not in (UNSET, None):
                kwargs["embeds"] = r.embeds
            if r.view not in (UNSET, None):
                kwargs["view"] = r.view
            if r.files:
                kwargs["files"] = [media_file(m) for m in r.files]
            try:
                self.message = await self.channel.send(**kwargs)
            except (discord.NotFound, discord.Forbidden) as exc:
                if self.fallback is None:
                    raise
                log.warning("channel %s unreachable (%s); posting in %s", getattr(self.channel, "id", "?"), exc.code, getattr(self.fallback, "id", "?"))
                self.channel, self.fallback = self.fallback, None
                if r.files:  # the files were read by the failed request: open them again
                    kwargs["files"] = [media_file(m) for m in r.files]
                self.message = await self.channel.send(**kwargs)
            return
        kwargs = {}
        if r.content is not UNSET:
            kwargs["content"] = r.content
        if r.embeds is not UNSET:
            kwargs["embeds"] = r.embeds
        if r.view is not UNSET:
            kwargs["view"] = r.view
        if r.files:
            kwargs["attachments"] = [*self.message.attachments, *(media_file(m) for m in r.files)]
        self.message = await self.message.edit(**kwargs)


class LiveMessage:
    """The latest wanted state of one message, rendered by one task at most every `min_interval_s`."""

    def __init__(self, target: Target, *, min_interval_s: float = EDIT_INTERVAL_S) -> None:
        self.target = target
        self.min_interval_s = min_interval_s
        self._want = Render()
        self._dirty = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._last = -math.inf
        self._error: BaseException | None = None
        self.renders = 0  # renders done (tests and logs)

    def show(
        self, *, content: Any = UNSET, embeds: Any = UNSET, view: Any = UNSET, files: list[MediaFile] | None = None
    ) -> None:
        """Want this state; returns at once (the render follows)."""
        if content is not UNSET:
            self._want.content = content
        if embeds is not UNSET:
            self._want.embeds = embeds
        if view is not UNSET:
            self._want.view = view
        if files:
            self._want.files = list(files)
        self._dirty = True
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="discord-live-message")

    async def flush(self) -> None:
        """Wait until the latest state has been rendered; raise the error of the last failed render."""
        if self._dirty and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._run(), name="discord-live-message")
        await self._idle.wait()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._dirty:
            wait = self._last + self.min_interval_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            want, self._dirty = self._want, False
            self._want = Render(content=want.content, embeds=want.embeds, view=want.view)  # files go once
            self._wake.clear()
            try:
                await self.target.render(want)
                self._error = None
            except Exception as exc:  # noqa: BLE001 - kept for flush(); a later render may still succeed
                log.warning("rendering a message failed: %s", exc)
                self._error = exc
            self._last = loop.time()
            self.renders += 1
        self._idle.set()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


class ReplyStream:
    """The `EventSink` of one request: status -> card -> reason tokens -> final reply, onto one message.

    Call `finish(reply)` with the reply the service returned: it renders the final state even when
    no FinalEvent came, and waits until it has landed (raising a failed upload's error).
    """

    def __init__(self, live: LiveMessage, *, budget: int) -> None:
        self.live = live
        self.budget = budget
        self.reply: Any = None  # the card's reply, once shown
        self.reason = ""  # the streamed reason so far
        self.final: Any = None
        self._uploaded: set[str] = set()  # paths of the files already attached

    async def __call__(self, event: Any) -> None:
        from bot.service.contract import (
            CardEvent,
            FinalEvent,
            ReasonTokenEvent,
            StatusEvent,
        )

        if isinstance(event, StatusEvent):
            if self.reply is None:
                self.live.show(content=render.status_text(event.message))
        elif isinstance(event, CardEvent):
            self._show_card(event.reply, writing=bool(getattr(event.reply, "reason_pending", False)))
        elif isinstance(event, ReasonTokenEvent):
            self.reason += event.text
            if self.reply is not None and self.reply.tracks:
                self.live.show(embeds=render.card_embeds(self.reply, reason=self.reason.strip(), writing=True))
        elif isinstance(event, FinalEvent):
            self.final = event.reply
            self._show_final(event.reply)

    def _show_card(self, reply: Any, *, writing: bool) -> None:
        self.reply = reply
        files = [m for m in render.card_media(reply, self.budget) if str(m.path) not in self._uploaded]
        self._uploaded.update(str(m.path) for m in files)
        self.live.show(
            content=render.clip(reply.message, render.MAX_CONTENT_CHARS) if reply.message else None,
            embeds=render.card_embeds(reply, reason=self.reason.strip() or None, writing=writing),
            view=render.action_view(reply),
            files=files,
        )

    def _show_final(self, reply: Any) -> None:
        from bot.service import ReplyKind

        if reply.kind == ReplyKind.PREVIEW:
            files = []
            content = reply.message or "Here is your video with the track."
            if reply.preview is not None:
                if reply.preview.size <= self.budget:
                    files = [reply.preview]
                else:
                    content = render.too_large_sentence(self.budget)
            self.live.show(content=render.clip(content, render.MAX_CONTENT_CHARS), embeds=[], view=render.action_view(reply), files=files)
            return
        if not reply.tracks:  # EXHAUSTED, or a note without a track
            self.live.show(
                content=render.clip(reply.message or "I have nothing more to suggest.", render.MAX_CONTENT_CHARS),
                embeds=[],
                view=render.action_view(reply),
            )
            return
        self.reason = ""
        self._show_card(reply, writing=False)

    async def finish(self, reply: Any) -> None:
        if self.final is None:
            self.final = reply
            self._show_final(reply)
        await self.live.flush()

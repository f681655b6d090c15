"""One request's reply in its Slack thread, drawn from the service's events as they arrive.

The service emits StatusEvent* -> CardEvent -> ReasonTokenEvent* -> FinalEvent (bot/service/contract.py).
`ThreadReply.sink` queues them without waiting (the service never waits on Slack), and one task
turns them into Slack calls, in order:

- a placeholder message in the thread shows progress and the queue position (edited at most
  once per `interval_s`);
- the card replaces the placeholder as soon as it is chosen (`chat.update`), then the listening
  excerpt is uploaded into the thread (`files_upload_v2`: three calls);
- the reason streams with Slack's message streaming (`chat.startStream` / `appendStream` /
  `stopStream`) as its own message under the card; where streaming is refused (an older
  workspace, a missing scope) it grows inside the card by `chat.update`, at most once per
  `interval_s`;
- the final reply always lands: the card's last edit carries the final reason (or points at the
  streamed message, which is corrected by `chat.update` when the final text differs from what
  was streamed); a "use this" reply uploads the preview video into the thread.

A Slack call that fails is logged (without tokens or URLs) and the rest goes on; 429s are retried
by the client's rate-limit handler before they get here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from bot.adapters.slack import render
from bot.service.contract import (
    CardEvent,
    FinalEvent,
    MediaFile,
    ReasonTokenEvent,
    StatusEvent,
)

if TYPE_CHECKING:
    from slack_sdk.web.async_chat_stream import AsyncChatStream

    from bot.service import Reply

log = logging.getLogger(__name__)

UPDATE_INTERVAL_S = 1.0  # seconds between two edits of one message (Slack: about one per second)
_DONE = object()


class ThreadReply:
    """Renders one request's events into one thread (module docstring)."""

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        channel: str,
        thread_ts: str,
        user_id: str,
        team_id: str = "",
        streaming: bool = True,
        interval_s: float = UPDATE_INTERVAL_S,
    ) -> None:
        self.client = client
        self.channel = channel
        self.thread_ts = thread_ts
        self.user_id = user_id
        self.team_id = team_id
        self.streaming = streaming
        self.interval_s = interval_s
        self.message_ts: str | None = None  # the placeholder, then the card
        self.reply: Reply | None = None  # the card shown (CardEvent or final)
        self.reason = ""  # the reason streamed so far
        self._pending = ""  # reason text not yet sent
        self._stream: AsyncChatStream | None = None
        self._stream_started = False
        self._stream_failed = False
        self._last_edit = 0.0
        self._final_seen = False
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    # --- the producer side ----------------------------------------------------------------------

    async def open(self, status: str) -> None:
        """Post the placeholder now (a conversation start: the user waits for a video to be read)."""
        await self._show_status(status, None, force=True)

    def sink(self, event: Any) -> None:
        """The service's EventSink: queue the event; the rendering task does the Slack calls."""
        if self._task is None:
            self._task = asyncio.create_task(self._consume(), name=f"slack-reply-{self.channel}-{self.thread_ts}")
        self._queue.put_nowait(event)

    async def finish(self, reply: Reply) -> None:
        """The service returned: make sure its final reply lands, and wait until everything is sent."""
        self.sink(FinalEvent(reply))
        self._queue.put_nowait(_DONE)
        assert self._task is not None
        await self._task

    async def fail(self, message: str) -> None:
        """The request failed with a sentence for the user: show it where the reply would have been."""
        if self._task is not None:
            self._queue.put_nowait(_DONE)
            await self._task
        if self._stream_started and self._stream is not None:
            await self._land_stream("")  # close the half-written reason; the note follows
        text = f"⚠️ {message}"
        if self.message_ts is not None and self.reply is None:
            await self._call("chat.update", channel=self.channel, ts=self.message_ts, text=text, blocks=render.note_blocks(text))
        else:
            await self.post_note(text)

    async def withdraw(self) -> None:
        """The request was refused (told to the user privately): remove its placeholder, if any."""
        if self._task is not None:
            self._queue.put_nowait(_DONE)
            await self._task
        if self.message_ts is not None and self.reply is None:
            await self._call("chat.delete", channel=self.channel, ts=self.message_ts)
            self.message_ts = None

    async def post_note(self, text: str) -> None:
        await self._call(
            "chat.postMessage", channel=self.channel, thread_ts=self.thread_ts, text=text, blocks=render.note_blocks(text)
        )

    # --- the rendering task ---------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            timeout = None
            if self._pending and self.reply is not None:
                timeout = max(0.0, self._last_edit + self.interval_s - time.monotonic())
            try:
                event = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                await self._flush_reason()
                continue
            if event is _DONE:
                return
            try:
                await self._handle(event)
            except Exception:  # noqa: BLE001 - one failed render must not lose the rest
                log.exception("rendering %s in %s/%s failed", type(event).__name__, self.channel, self.thread_ts)

    async def _handle(self, event: Any) -> None:
        if isinstance(event, StatusEvent):
            if self.reply is None:
                await self._show_status(event.message, event.ahead)
        elif isinstance(event, CardEvent):
            await self._show_card(event.reply)
        elif isinstance(event, ReasonTokenEvent):
            self.reason += event.text
            self._pending += event.text
            if time.monotonic() - self._last_edit >= self.interval_s:
                await self._flush_reason()
        elif isinstance(event, FinalEvent) and not self._final_seen:
            self._final_seen = True
            await self._show_final(event.reply)

    async def _show_status(self, status: str, ahead: int | None, *, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_edit < self.interval_s and self.message_ts is not None:
            return
        text, blocks = render.placeholder(status, ahead)
        await self._put(text, blocks)

    async def _put(self, text: str, blocks: list[dict[str, Any]]) -> None:
        """Post the request's message, or edit it once posted."""
        self._last_edit = time.monotonic()
        if self.message_ts is None:
            resp = await self._call("chat.postMessage", channel=self.channel, thread_ts=self.thread_ts, text=text, blocks=blocks)
            if resp is not None:
                self.message_ts = resp["ts"]
        else:
            await self._call("chat.update", channel=self.channel, ts=self.message_ts, text=text, blocks=blocks)

    async def _show_card(self, reply: Reply) -> None:
        self.reply = reply
        await self._put(render.card_text(reply), render.card_blocks(reply))
        for card in reply.tracks:
            if card.excerpt is not None:
                await self.upload(card.excerpt, title=f"{card.title} (excerpt)")

    async def _flush_reason(self) -> None:
        """Send the reason written since the last edit: into the stream, else into the card."""
        if not self._pending or self.reply is None:
            return
        text, self._pending = self._pending, ""
        self._last_edit = time.monotonic()
        if self.streaming and not self._stream_failed:
            try:
                if self._stream is None:
                    self._stream = await self.client.chat_stream(
                        channel=self.channel, thread_ts=self.thread_ts, buffer_size=1,
                        recipient_team_id=self.team_id or None, recipient_user_id=self.user_id,
                    )  # fmt: skip
                await self._stream.append(markdown_text=text)
                self._stream_started = True
                return
            except (SlackApiError, SlackClientError) as exc:
                log.info("Slack refused message streaming (%s); the reason grows in the card instead", _error(exc))
                self._stream_failed = True
                if self._stream_started:  # half a streamed message: the final text will replace it
                    return
        await self._call(
            "chat.update", channel=self.channel, ts=self.message_ts, text=render.card_text(self.reply),
            blocks=render.card_blocks(self.reply, partial=self.reason),
        )  # fmt: skip

    async def _show_final(self, reply: Reply) -> None:
        if reply.tracks and (self.reply is None or not _same_card(self.reply, reply)):
            await self._show_card(reply)  # no CardEvent came (or another card): show it first
        self.reply = reply
        final_reason = reply.track.reason if reply.track is not None else ""
        streamed = False
        if self._stream_started and self._stream is not None:
            streamed = await self._land_stream(final_reason)
        if reply.preview is not None:
            await self.upload(reply.preview, title=reply.preview.filename)
        if reply.tracks or reply.message or reply.actions:
            if reply.kind == "preview":
                text = f"✅ {reply.message}" if reply.message else "✅ Here is your preview."
                blocks = render.note_blocks(text)
                actions = render.buttons(reply)
                await self._put(text, blocks + ([actions] if actions else []))
            else:
                await self._put(render.card_text(reply), render.card_blocks(reply, streamed=streamed))

    async def _land_stream(self, final_reason: str) -> bool:
        """Stop the stream; make its message read the final reason. True when that message holds it."""
        assert self._stream is not None
        rest, self._pending = self._pending, ""
        stopped, self._stream_started = self._stream_started, False  # stop once
        try:
            if stopped and not self._stream_failed:
                await self._stream.stop(markdown_text=rest or None)
        except (SlackApiError, SlackClientError) as exc:
            log.info("stopping the reason stream failed (%s); editing its message instead", _error(exc))
            self._stream_failed = True
        ts = self._stream.ts
        if ts is None:
            return False
        if final_reason and (self._stream_failed or (self.reason + "").strip() != final_reason.strip()):
            resp = await self._call("chat.update", channel=self.channel, ts=ts, text=final_reason)
            return resp is not None
        return True

    # --- files and calls ------------------------------------------------------------------------

    async def upload(self, media: MediaFile, *, title: str, comment: str = "") -> bool:
        """Upload a file into the thread (files_upload_v2); a note in the thread when Slack refuses."""
        try:
            await self.client.files_upload_v2(
                file=str(media.path), filename=media.filename, title=title, channel=self.channel,
                thread_ts=self.thread_ts, initial_comment=comment or None,
            )  # fmt: skip
            return True
        except (SlackApiError, SlackClientError, OSError) as exc:
            log.warning("upload of %s into %s/%s failed: %s", media.filename, self.channel, self.thread_ts, _error(exc))
            await self.post_note(f"⚠️ I could not upload {media.filename} here ({_error(exc)}).")
            return False

    async def _call(self, method: str, **args: Any) -> Any:
        try:
            return await self.client.api_call(method, json={k: v for k, v in args.items() if v is not None})
        except (SlackApiError, SlackClientError) as exc:
            log.warning("Slack %s in %s/%s failed: %s", method, self.channel, self.thread_ts, _error(exc))
            return None


def _same_card(a: Reply, b: Reply) -> bool:
    return (a.conversation_id, a.turn_index, [t.title for t in a.tracks]) == (
        b.conversation_id, b.turn_index, [t.title for t in b.tracks]
    )  # fmt: skip


def _error(exc: BaseException) -> str:
    """A short, secret-free description of a Slack error (API error code or exception type)."""
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error", "error"))
    return type(exc).__name__

"""The Slack adapter: slack-bolt (async) events in, one conversation-service call each, Block Kit out.

Entry points (DESIGN.md, "Data flow"; research/platforms.md §2):

- a message with a video (`file_share`) in a channel the bot is in or in a DM, or an @mention
  with a video: a new conversation in the thread of that message;
- the message shortcut "Find music for this video" on a message holding a video;
- `/music [words]`: a modal with a file input (slash commands carry no files) and a text box;
  the conversation lives in the thread of a message the bot posts in the channel;
- a reply in a conversation's thread: a feedback turn (`service.message`);
- the card's buttons (Use this, Another, Start over: `service.act`; Refine…: a modal whose
  submission is a REFINE action). A button's value is `Action.custom_id()`, so any process
  handles any click; the service checks the owner and the turn.

Every listener acks first (bolt acks events itself; actions, commands, shortcuts and views call
`ack()` before anything else) and the work runs in a task of this adapter (`drain` waits for them,
`close` gives them a grace period). Deliveries are claimed once (bot/adapters/slack/dedup.py).
Replies are drawn by `ThreadReply` (bot/adapters/slack/streaming.py).

Modes: Socket Mode by default (`AsyncSocketModeHandler`, the app-level `xapp-` token, no public
URL); HTTP mode (`slack_mode = "http"`) serves bolt's aiohttp app on `slack_http_port` at
`/slack/events`, where bolt checks every request's signature and timestamp (401 otherwise).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from slack_bolt.async_app import AsyncApp
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot.adapters.slack import admin, dedup, render
from bot.adapters.slack.files import SLACK_FILE_HOSTS, fetch_file, resolve_file
from bot.adapters.slack.streaming import UPDATE_INTERVAL_S, ThreadReply
from bot.service.contract import (
    Action,
    ActionKind,
    EventSink,
    PlatformKeys,
    ReplyOptions,
)
from bot.service.errors import (
    BusyError,
    DuplicateActionError,
    NotOwnerError,
    OutdatedActionError,
    SettingsError,
)

if TYPE_CHECKING:
    from bot.service import Reply

log = logging.getLogger(__name__)

PLATFORM = "slack"
COOLDOWN = "You are going a little fast: try again in {seconds} s."
EVENTS_PATH = "/slack/events"
REASON_BUDGET_S = 60.0  # seconds the LLM may write a reason: Slack shows it as it grows
FILE_LIMIT_BYTES = 2**30  # Slack's per-file upload limit (files_upload_v2): previews up to 1 GiB
DRAIN_TIMEOUT_S = 20.0  # seconds `close` waits for turns in flight
APOLOGY = "Sorry, something went wrong on my side; nothing was lost. Please try again."
HINT = "Send me a video (mp4, mov or webm) and I will suggest background music for it."
EPHEMERAL_ERRORS = (NotOwnerError, OutdatedActionError, DuplicateActionError, BusyError)  # told to the clicker only
USER_SUBTYPES = (None, "file_share", "thread_broadcast")  # message subtypes a user writes
BUTTON_ACTIONS = re.compile(r"^mc_(use|another|restart)$")


class SlackAdapter:
    """MuseChat on Slack (module docstring): `await run()` until `await close()`; `ready` for /readyz."""

    name = "slack"  # bot.adapters.host.Adapter: /readyz reports "adapter:slack"

    def __init__(
        self,
        service: Any,
        settings: Any,
        *,
        api_url: str | None = None,  # tests: a fake Web API
        file_hosts: Collection[str] = SLACK_FILE_HOSTS,  # tests: the fake's host
        claims: dedup.Claims | None = None,
        sql_engine: Any = None,  # the SQL event store's engine; default: the service's
        redis_prefix: str = dedup.DEFAULT_REDIS_PREFIX,
        streaming: bool = True,  # stream reasons with chat.startStream (else chat.update only)
        update_interval_s: float = UPDATE_INTERVAL_S,
        http_host: str = "0.0.0.0",
        catalog_admin: Any = None,  # bot.service.catalog_admin.CatalogAdmin: enables /music-admin
        admin_user_ids: Collection[str] = (),  # Slack user ids allowed to use /music-admin
        limiter: Any = None,  # per-user cooldowns kept in SQL (storage.rate_limit_store.RateLimitStore); None: none
    ) -> None:
        if settings.slack_bot_token is None:
            raise SettingsError("Slack needs a bot token: set MUSECHAT_SLACK_BOT_TOKEN (xoxb-...)")
        self.service = service
        self.settings = settings
        self.limiter = limiter
        self.mode = (settings.slack_mode or "socket").lower()
        if self.mode not in ("socket", "http"):
            raise SettingsError(f"MUSECHAT_SLACK_MODE must be socket or http, not {settings.slack_mode!r}")
        secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else ""
        if self.mode == "http" and not secret:
            raise SettingsError("Slack HTTP mode needs the signing secret: set MUSECHAT_SLACK_SIGNING_SECRET")
        self._token = settings.slack_bot_token.get_secret_value()
        client_args: dict[str, Any] = {"base_url": api_url} if api_url else {}
        self.client = AsyncWebClient(
            token=self._token,
            retry_handlers=[AsyncConnectionErrorRetryHandler(), AsyncRateLimitErrorRetryHandler(max_retry_count=2)],
            **client_args,
        )
        # process_before_response: bolt awaits each listener before answering; the listeners only ack
        # and hand the work to this adapter's tasks, so the answer is as fast, and the adapter owns
        # every task (close() drains them; tests wait for them).
        self.app = AsyncApp(client=self.client, signing_secret=secret, name="musechat", process_before_response=True)
        self.file_hosts = tuple(file_hosts)
        self.claims = claims or self._default_claims(sql_engine, redis_prefix)
        self.streaming = streaming
        self.update_interval_s = update_interval_s
        self.http_host = http_host
        self.catalog_admin = catalog_admin
        self.admin_user_ids = frozenset(admin_user_ids)
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        self._handler: Any = None  # AsyncSocketModeHandler
        self._runner: web.AppRunner | None = None
        self._stopped = asyncio.Event()
        self._ready = False
        self._register()

    def _default_claims(self, sql_engine: Any, redis_prefix: str) -> dedup.Claims:
        if self.settings.redis_url:
            return dedup.RedisClaims(self.settings.redis_url, prefix=redis_prefix)
        engine = sql_engine if sql_engine is not None else getattr(self.service, "sql", None)
        if engine is not None:
            return dedup.SqlClaims(engine)
        log.warning("no Redis and no SQL engine: Slack deliveries are de-duplicated in this process only")
        return dedup.MemoryClaims()

    # =============================================================================================
    # lifecycle
    # =============================================================================================

    @property
    def ready(self) -> bool:
        """Connected to Slack (Socket Mode) or serving /slack/events (HTTP mode)."""
        if not self._ready or self._stopped.is_set():
            return False
        if self._handler is not None:
            session = self._handler.client.current_session
            return session is not None and not session.closed
        return True

    async def run(self) -> None:
        """Connect (Socket Mode) or serve (HTTP mode), then run until `close()`."""
        try:
            if self.mode == "http":
                self._runner = web.AppRunner(self.app.web_app(path=EVENTS_PATH, port=self.settings.slack_http_port))
                await self._runner.setup()
                await web.TCPSite(self._runner, self.http_host, self.settings.slack_http_port).start()
                log.info("Slack HTTP mode: serving %s on port %s", EVENTS_PATH, self.settings.slack_http_port)
            else:
                from slack_bolt.adapter.socket_mode.async_handler import (
                    AsyncSocketModeHandler,
                )

                if self.settings.slack_app_token is None:
                    raise SettingsError("Slack Socket Mode needs an app-level token: set MUSECHAT_SLACK_APP_TOKEN (xapp-...)")
                self._handler = AsyncSocketModeHandler(self.app, self.settings.slack_app_token.get_secret_value())
                await self._handler.connect_async()
                log.info("Slack Socket Mode: connected")
            self._ready = True
            await self._stopped.wait()
        finally:
            self._ready = False
            await self._shutdown_transport()

    async def close(self) -> None:
        """Stop taking events, let turns in flight finish (up to DRAIN_TIMEOUT_S), release everything."""
        self._stopped.set()
        await self._shutdown_transport()
        try:
            await asyncio.wait_for(self.drain(), DRAIN_TIMEOUT_S)
        except TimeoutError:
            log.warning("%d Slack turns still running after %.0f s; cancelling them", len(self._tasks), DRAIN_TIMEOUT_S)
            for task in list(self._tasks):
                task.cancel()
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self.claims.close()

    async def _shutdown_transport(self) -> None:
        handler, self._handler = self._handler, None
        if handler is not None:
            await handler.close_async()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def drain(self) -> None:
        """Wait until every piece of work started so far (and what it started) is done."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, coro: Awaitable[None], what: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception:  # noqa: BLE001 - logged; the user got an apology where possible
                log.exception("Slack work %s failed", what)

        task = asyncio.create_task(guarded(), name=f"slack:{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    # =============================================================================================
    # listeners
    # =============================================================================================

    def _register(self) -> None:
        app = self.app
        app.middleware(self._claim_delivery)
        app.event("message")(self._on_message)
        app.event("app_mention")(self._on_message)
        app.shortcut(render.SHORTCUT_CALLBACK)(self._on_shortcut)
        app.command("/music")(self._on_command)
        app.command("/music-admin")(self._on_admin)
        app.view(render.MUSIC_VIEW)(self._on_music_view)
        app.action("mc_refine")(self._on_refine_button)
        app.view(render.REFINE_VIEW)(self._on_refine_view)
        app.action(BUTTON_ACTIONS)(self._on_button)

    async def _claim_delivery(self, body: dict[str, Any], next: Callable[[], Awaitable[None]]) -> BoltResponse | None:  # noqa: A002
        """Global middleware: the first delivery of an event id goes on; repeats are acked and dropped."""
        key = dedup.event_key(body)
        if key is not None and not await dedup.first_time(self.claims, key):
            return BoltResponse(status=200, body="")
        await next()
        return None

    async def _on_message(self, event: dict[str, Any], context: Any) -> None:
        """A message or an @mention: a video starts a conversation; a reply in its thread is feedback."""
        if event.get("subtype") not in USER_SUBTYPES or event.get("bot_id"):
            return
        if event.get("channel") and event.get("ts") and event.get("user"):
            self._spawn(self._handle_message(event, context.get("bot_user_id"), context.get("team_id") or ""),
                        f"message:{event['channel']}:{event['ts']}")  # fmt: skip

    async def _handle_message(self, event: dict[str, Any], bot_user: str | None, context_team: str) -> None:
        channel, ts, user = event["channel"], event["ts"], event["user"]
        mentioned = event.get("type") == "app_mention" or bool(bot_user and f"<@{bot_user}>" in event.get("text", ""))
        thread_ts = event.get("thread_ts") or ""
        text = render.mention_free(event.get("text", ""), bot_user)
        video = render.first_video(event.get("files") or [])
        team = event.get("team") or context_team
        in_thread = bool(thread_ts) and thread_ts != ts
        conversation = await self.service.find(platform=PLATFORM, channel_id=channel, thread_id=thread_ts) if in_thread else None
        if conversation is None and video is None and not (mentioned or event.get("channel_type") == "im"):
            return  # channel chatter
        if not await dedup.first_time(self.claims, dedup.message_key(channel, ts)):
            return  # the other event of the same message (message + app_mention) took it
        reply = ThreadReply(self.client, channel=channel, thread_ts=thread_ts or ts, user_id=user, team_id=team,
                            streaming=self.streaming, interval_s=self.update_interval_s)  # fmt: skip
        if conversation is not None:
            if text:
                log.info("slack: %s gave feedback on conversation %s in %s/%s", user, conversation, channel, thread_ts)
                await self._turn(
                    reply, lambda sink, opts: self.service.message(conversation, text, user_id=user, events=sink, options=opts)
                )
        elif video is not None:
            await self._start(reply, PlatformKeys(PLATFORM, channel, user, thread_id=thread_ts or ts, workspace_id=team), video, text)
        else:
            await reply.post_note(HINT)

    async def _on_shortcut(self, ack: Callable[..., Awaitable[None]], body: dict[str, Any]) -> None:
        """The message shortcut "Find music for this video": a conversation in that message's thread."""
        await ack()
        message = body.get("message") or {}
        channel = (body.get("channel") or {}).get("id", "")
        user = (body.get("user") or {}).get("id", "")
        team = (body.get("team") or {}).get("id", "")
        video = render.first_video(message.get("files") or [])
        if video is None:
            self._spawn(self._ephemeral(channel, user, "That message holds no video I can read (mp4, mov, webm)."), "shortcut")
            return
        thread_ts = message.get("thread_ts") or message.get("ts", "")
        reply = ThreadReply(self.client, channel=channel, thread_ts=thread_ts, user_id=user, team_id=team,
                            streaming=self.streaming, interval_s=self.update_interval_s)  # fmt: skip
        keys = PlatformKeys(PLATFORM, channel, user, thread_id=thread_ts, workspace_id=team)
        text = render.mention_free(message.get("text", ""), None)
        self._spawn(self._start(reply, keys, video, text), f"shortcut:{channel}:{thread_ts}")

    async def _on_command(self, ack: Callable[..., Awaitable[None]], command: dict[str, Any]) -> None:
        """/music [words]: open the modal at once (its trigger lives 3 s)."""
        await ack()
        try:
            await self.client.views_open(
                trigger_id=command["trigger_id"],
                view=render.music_modal(channel=command.get("channel_id", ""), words=command.get("text", "")),
            )
        except (SlackApiError, SlackClientError) as exc:
            log.warning("views.open for /music failed: %s", _error(exc))

    async def _on_admin(self, ack: Callable[..., Awaitable[None]], command: dict[str, Any]) -> None:
        """/music-admin status|refresh: for configured admins; answers only they see."""
        await ack()
        channel, user = command.get("channel_id", ""), command.get("user_id", "")
        words = (command.get("text") or "").split()
        sub = words[0].lower() if words else "status"
        if self.catalog_admin is None:
            note = admin.NOT_ENABLED
        elif user not in self.admin_user_ids:
            log.warning("user %s tried /music-admin %s without being an admin", user, sub)
            note = admin.NOT_ADMIN
        elif sub in ("status", "refresh"):
            self._spawn(self._admin(sub, channel, user), f"admin:{sub}")
            return
        else:
            note = admin.USAGE
        self._spawn(self._ephemeral(channel, user, note), "admin")

    async def _admin(self, sub: str, channel: str, user: str) -> None:
        from bot.service.catalog_admin import CatalogAdminError

        try:
            if sub == "status":
                note = admin.status_text(await self.catalog_admin.status())
            else:
                log.info("user %s started a catalog refresh from Slack", user)
                await self._ephemeral(channel, user, "Refreshing the catalog; the current one keeps serving meanwhile…")
                note = admin.report_text(await self.catalog_admin.refresh(trigger=f"slack:{user}"))
        except CatalogAdminError as exc:
            note = f"⚠️ {exc}"
        except Exception:  # noqa: BLE001 - an admin gets a short note; the traceback goes to the log
            log.exception("/music-admin %s failed", sub)
            note = f"⚠️ /music-admin {sub} failed; see the bot's log."
        await self._ephemeral(channel, user, note)

    async def _on_music_view(self, ack: Callable[..., Awaitable[None]], body: dict[str, Any], view: dict[str, Any]) -> None:
        """The /music modal was submitted: post a message in the channel and start in its thread."""
        files = render.modal_value(view, render.VIDEO_BLOCK, render.VIDEO_INPUT).get("files") or []
        video = render.first_video(files)
        if video is None:
            await ack(response_action="errors", errors={render.VIDEO_BLOCK: "Please attach a video (mp4, mov, webm)."})
            return
        await ack()
        text = str(render.modal_value(view, render.WORDS_BLOCK, render.WORDS_INPUT).get("value") or "")
        channel = json.loads(view.get("private_metadata") or "{}").get("c", "")
        user = (body.get("user") or {}).get("id", "")
        team = (body.get("team") or {}).get("id", "") or (body.get("user") or {}).get("team_id", "")
        self._spawn(self._start_from_modal(channel, user, team, video, text), f"music:{channel}")

    async def _start_from_modal(self, channel: str, user: str, team: str, video: dict[str, Any], text: str) -> None:
        opener = f"🎬 <@{user}> asked for music for *{render.escape(video.get('name') or 'a video')}*"
        if text:
            opener += f": “{render.escape(text)}”"
        try:
            resp = await self.client.chat_postMessage(channel=channel, text=opener)
        except (SlackApiError, SlackClientError) as exc:
            note = "I can't post in this channel: invite me first (/invite @MuseChat)." if _error(exc) == "not_in_channel" else APOLOGY
            await self._ephemeral(channel, user, note)
            return
        thread_ts = resp["ts"]
        reply = ThreadReply(self.client, channel=channel, thread_ts=thread_ts, user_id=user, team_id=team,
                            streaming=self.streaming, interval_s=self.update_interval_s)  # fmt: skip
        await self._start(reply, PlatformKeys(PLATFORM, channel, user, thread_id=thread_ts, workspace_id=team), video, text)

    async def _on_button(self, ack: Callable[..., Awaitable[None]], body: dict[str, Any], action: dict[str, Any]) -> None:
        """Use this / Another / Start over: one structured action on the conversation the button names."""
        await ack()
        channel, thread_ts, user, team = _where(body)
        try:
            parsed = Action.parse(action.get("value", ""))
        except ValueError:
            self._spawn(self._ephemeral(channel, user, "That button is from an older version of me; start a new conversation."), "button")
            return
        log.info("slack: %s pressed %s on conversation %s turn %s", user, parsed.kind.value, parsed.conversation_id,
                 parsed.turn_index)  # fmt: skip
        reply = ThreadReply(self.client, channel=channel, thread_ts=thread_ts, user_id=user, team_id=team,
                            streaming=self.streaming, interval_s=self.update_interval_s)  # fmt: skip
        self._spawn(
            self._turn(reply, lambda sink, opts: self.service.act(parsed, user_id=user, events=sink, options=opts)),
            f"{parsed.kind.value}:{parsed.conversation_id}:{parsed.turn_index}",
        )

    async def _on_refine_button(self, ack: Callable[..., Awaitable[None]], body: dict[str, Any], action: dict[str, Any]) -> None:
        """Refine…: open the modal at once (its trigger lives 3 s); the submission is the action."""
        await ack()
        channel, thread_ts, user, _ = _where(body)
        try:
            parsed = Action.parse(action.get("value", ""))
        except ValueError:
            self._spawn(self._ephemeral(channel, user, "That button is from an older version of me; start a new conversation."), "refine")
            return
        target = render.RefineTarget(Action(ActionKind.REFINE, parsed.conversation_id, parsed.turn_index).custom_id(), channel, thread_ts)
        try:
            await self.client.views_open(trigger_id=body["trigger_id"], view=render.refine_modal(target))
        except (SlackApiError, SlackClientError) as exc:
            log.warning("views.open for Refine failed: %s", _error(exc))

    async def _on_refine_view(self, ack: Callable[..., Awaitable[None]], body: dict[str, Any], view: dict[str, Any]) -> None:
        """The Refine modal was submitted: a REFINE action with the user's words."""
        text = str(render.modal_value(view, render.REFINE_BLOCK, render.REFINE_INPUT).get("value") or "").strip()
        if not text:
            await ack(response_action="errors", errors={render.REFINE_BLOCK: "Say what should change, e.g. “more drums”."})
            return
        await ack()
        target = render.RefineTarget.load(view.get("private_metadata") or "{}")
        action = Action.parse(target.action_id, text=text)
        user = (body.get("user") or {}).get("id", "")
        log.info("slack: %s refined conversation %s turn %s", user, action.conversation_id, action.turn_index)
        team = (body.get("team") or {}).get("id", "")
        reply = ThreadReply(self.client, channel=target.channel, thread_ts=target.thread_ts, user_id=user, team_id=team,
                            streaming=self.streaming, interval_s=self.update_interval_s)  # fmt: skip
        self._spawn(
            self._turn(reply, lambda sink, opts: self.service.act(action, user_id=user, events=sink, options=opts)),
            f"refine:{action.conversation_id}:{action.turn_index}",
        )

    # =============================================================================================
    # the work
    # =============================================================================================

    def _options(self) -> ReplyOptions:
        return ReplyOptions(reason_budget_s=REASON_BUDGET_S, preview_budget_bytes=FILE_LIMIT_BYTES, excerpt_format="mp3")

    async def _start(self, reply: ThreadReply, keys: PlatformKeys, video: dict[str, Any], text: str) -> None:
        """Fetch the video, then start the conversation in the thread."""

        async def call(sink: EventSink, options: ReplyOptions) -> Reply:
            log.info("slack: %s starts a conversation in %s/%s with file %s", keys.user_id, keys.channel_id,
                     keys.thread_id, video.get("id"))  # fmt: skip
            await reply.open("Fetching your video…")
            file = await resolve_file(self.client, video)
            data = await fetch_file(self.http, file, token=self._token, max_bytes=self.settings.max_upload_bytes,
                                    allowed_hosts=self.file_hosts)  # fmt: skip
            await reply.open("Listening to your video…")
            return await self.service.start(
                keys, video=data, text=text, video_name=str(file.get("name") or "video"), events=sink, options=options
            )

        await self._turn(reply, call)

    async def _turn(
        self,
        reply: ThreadReply,
        call: Callable[[EventSink, ReplyOptions], Awaitable[Reply]],
    ) -> None:
        """Run one service call and render it; every failure becomes a sentence for the user.

        The placeholder appears with the service's first status event (a start posts its own at
        once), so a refused click (not the owner, an old card) leaves nothing in the thread.
        """
        if self.limiter is not None:
            decision = await self.limiter.acquire(platform=PLATFORM, user_key=reply.user_id)
            if not decision.allowed:  # nothing public: a private note saying when to come back
                wait = max(1, math.ceil(decision.retry_after_s))
                log.info("slack: %s is cooling down (%d s)", reply.user_id, wait)
                await self._ephemeral(reply.channel, reply.user_id, COOLDOWN.format(seconds=wait), thread_ts=reply.thread_ts)
                return
        try:
            result = await call(reply.sink, self._options())
            await reply.finish(result)
        except EPHEMERAL_ERRORS as exc:
            await self._ephemeral(reply.channel, reply.user_id, exc.user_message, thread_ts=reply.thread_ts)
            await reply.withdraw()
        except Exception as exc:  # noqa: BLE001 - typed errors carry a sentence; the rest is a bug
            message = getattr(exc, "user_message", None)
            if not isinstance(message, str):
                log.exception("Slack turn in %s/%s failed", reply.channel, reply.thread_ts)
                message = APOLOGY
            else:
                log.info("Slack turn in %s/%s: %s: %s", reply.channel, reply.thread_ts, type(exc).__name__, exc)
            await reply.fail(message)

    async def _ephemeral(self, channel: str, user: str, text: str, *, thread_ts: str | None = None) -> None:
        """A note only `user` sees (not the owner, an old card, a second click)."""
        try:
            await self.client.chat_postEphemeral(channel=channel, user=user, text=text, thread_ts=thread_ts)
        except (SlackApiError, SlackClientError) as exc:
            log.warning("ephemeral note in %s failed: %s", channel, _error(exc))


def _where(body: dict[str, Any]) -> tuple[str, str, str, str]:
    """(channel, thread_ts, user, team) of a block action on a message in a thread."""
    container = body.get("container") or {}
    message = body.get("message") or {}
    channel = (body.get("channel") or {}).get("id") or container.get("channel_id", "")
    thread_ts = message.get("thread_ts") or container.get("thread_ts") or message.get("ts") or container.get("message_ts", "")
    user = (body.get("user") or {}).get("id", "")
    team = (body.get("team") or {}).get("id", "") or (body.get("user") or {}).get("team_id", "")
    return channel, thread_ts, user, team


def _error(exc: BaseException) -> str:
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error", "error"))
    return type(exc).__name__

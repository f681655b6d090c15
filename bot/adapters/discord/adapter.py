"""The Discord adapter: thin I/O between discord.py and the conversation service.

Entry points (all work with default intents):
- `/music video:<attachment> [prompt]`, and the message context menu "Find music for this video"
  (Discord sends the target message's attachments without the message-content intent);
- a message that @mentions the bot with a video, and a video in a DM;
- in a conversation's thread: @mentions, replies to the bot and (with the message-content intent)
  every message are feedback turns; the card's buttons (components.py) and the Feedback… modal.

One conversation per thread. The first card goes into the deferred interaction response (or the
bot's reply to an @mention); a thread is then opened from that message. A thread started from a
message has the message's id, so the conversation is keyed from the start as
`(platform="discord", channel_id=<parent>, thread_id=<that message id>)`, before the thread exists,
and is found again by SQL (`service.find`), never from discord.py's cache: a restarted bot
continues every thread. A DM holds one conversation per video (keyed by its first card); a DM
message belongs to the card it replies to, else to the newest card (read from the cards' button
ids in the DM's history, which Discord keeps across restarts). Everything after the
first card goes through bot-token REST in the thread (`send`, message edits), never through
interaction follow-ups (their token dies after 15 minutes), except ephemeral notes.

Buttons on older cards: the service decides (OutdatedActionError: "that suggestion is outdated",
shown ephemerally; Start over always works). Buttons are the owner's (NotOwnerError, ephemeral);
a second "Use this" on one card is refused (DuplicateActionError, ephemeral).

Limits, all answered with a sentence: the attachment's type and announced size before any
download (then a byte cap, timeouts, Discord's CDN hosts only: bot/adapters/download.py); an
optional per-user cooldown kept in SQL (`limiter`); at most MAX_STARTS_PER_CHANNEL videos worked
on at once per channel; optional allowed guilds/channels. Uploads are budgeted per attachment
(render.upload_budget) and a 413/40005 becomes a sentence. Typed errors (ConversationError,
MediaError, DownloadError) show their own sentence; anything else is logged with its traceback
and answered with APOLOGY. /music-admin lives in admin.py.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import aiohttp
import discord
from discord import app_commands

from bot.adapters.discord import render
from bot.adapters.discord.admin import admin_group
from bot.adapters.discord.components import (
    ACTION_TEMPLATE,
    ActionButton,
    FeedbackModal,
    modal_text,
)
from bot.adapters.discord.live import (
    EDIT_INTERVAL_S,
    ChannelTarget,
    InteractionTarget,
    LiveMessage,
    ReplyStream,
    Target,
)
from bot.adapters.download import (
    DownloadError,
    DownloadLimits,
    check_announced_size,
    download_capped,
    safe_url,
)
from bot.service.contract import Action, ActionKind, PlatformKeys, ReplyOptions
from bot.service.errors import SettingsError

log = logging.getLogger(__name__)

PLATFORM = "discord"
DISCORD_CDN_HOSTS = frozenset({"cdn.discordapp.com", "media.discordapp.net"})  # where attachments live
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".webm", ".mkv", ".m4v", ".avi"})
REASON_BUDGET_S = 30.0  # seconds the reasoner may write (the card is shown at once and edited)
EXCERPT_FORMAT = "ogg"  # Discord plays .ogg (opus) attachments inline
THREAD_ARCHIVE_MINUTES = 1440
CONTEXT_MENU_NAME = "Find music for this video"
DM_HISTORY_LIMIT = 25  # messages looked through for a DM's newest card
MAX_STARTS_PER_CHANNEL = 2  # videos worked on at once in one channel (per bot process)
TOO_LARGE_CODE = 40005  # Discord: "Request entity too large"

APOLOGY = "Sorry, something went wrong on my side. Nothing was lost; please try again in a moment."
NOT_A_VIDEO = "That file is not a video I can use: send an mp4, mov or webm clip."
HOW_TO_START = "Send me a video (mp4, mov or webm) with your message, or use /music."
NO_VIDEO = "That message has no video attached: use this on a message with an mp4, mov or webm clip."
EMPTY_FEEDBACK = "Write a few words about what should change, e.g. “less sad, more drums”."
VIDEO_IN_THREAD = "This thread already has its video. For a new one, use /music in the channel."
CHANNEL_BUSY = "I am already working on {n} videos in this channel; please try again in a minute."
COOLDOWN = "You are going a bit fast: please try again in {s} s."
NOT_HERE = "I am not enabled in this channel; ask a server admin where to use me."


def _user_errors() -> tuple[type[BaseException], ...]:
    """The typed errors whose `user_message` goes to the chat (imported late: the service is heavy)."""
    from bot.service.errors import ConversationError
    from engine.media import MediaError

    return (ConversationError, MediaError, DownloadError)


def _quiet_errors() -> tuple[type[BaseException], ...]:
    """Errors answered only to the presser (ephemeral), never in the channel."""
    from bot.service.errors import (
        DuplicateActionError,
        NotOwnerError,
        OutdatedActionError,
    )

    return (NotOwnerError, OutdatedActionError, DuplicateActionError)


def is_video(att: discord.Attachment) -> bool:
    ctype = (att.content_type or "").split(";")[0].strip().lower()
    if ctype:
        return ctype.startswith("video/")
    return PurePath(att.filename).suffix.lower() in VIDEO_SUFFIXES


def first_video(attachments: Collection[discord.Attachment]) -> discord.Attachment | None:
    return next((a for a in attachments if is_video(a)), None)


def _ids(value: Any) -> frozenset[int]:
    """Discord ids from a setting: a list, or a comma-separated string ("123,456"); empty: no limit."""
    if not value:
        return frozenset()
    items = value.split(",") if isinstance(value, str) else value
    return frozenset(int(str(v).strip()) for v in items if str(v).strip())


def strip_mentions(text: str, bot_id: int) -> str:
    return re.sub(rf"<@!?{bot_id}>", " ", text or "").strip()


class RedactInteractionTokens(logging.Filter):
    """Blank interaction/webhook tokens in discord.py's logs (its debug lines print request URLs)."""

    PATTERN = re.compile(r"(/(?:webhooks|interactions)/\d+/)[A-Za-z0-9_.\-]+")

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        redacted = self.PATTERN.sub(r"\1<token>", text)
        if redacted != text:
            record.msg, record.args = redacted, ()
        return True


def _redact_discord_logs() -> None:
    for name in ("discord.http", "discord.webhook.async_", "discord.interactions"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactInteractionTokens) for f in logger.filters):
            logger.addFilter(RedactInteractionTokens())


@dataclass(frozen=True)
class Home:
    """Where a conversation's messages go: its thread (or DM), and where to go when that is gone."""

    channel: discord.abc.Messageable
    fallback: discord.abc.Messageable | None = None


# =================================================================================================
# commands (module-level callbacks: discord.py reads their annotations for the option types)
# =================================================================================================


@app_commands.describe(video="Your video (mp4, mov or webm)", prompt="Optional: what you want, e.g. calm piano")
@app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
async def _music(interaction: discord.Interaction, video: discord.Attachment, prompt: str | None = None) -> None:
    """Suggest background music for a video."""
    await interaction.client.adapter.on_music(interaction, video, prompt or "")  # type: ignore[attr-defined]


@app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
async def _find_music(interaction: discord.Interaction, message: discord.Message) -> None:
    await interaction.client.adapter.on_find_music(interaction, message)  # type: ignore[attr-defined]


class MuseChatClient(discord.Client):
    """discord.py's client with the command tree, the persistent buttons and the adapter's handlers."""

    def __init__(self, adapter: DiscordAdapter, *, intents: discord.Intents) -> None:
        super().__init__(intents=intents, allowed_mentions=discord.AllowedMentions.none())
        self.adapter = adapter
        self.tree = app_commands.CommandTree(self)
        self.tree.add_command(
            app_commands.Command(name="music", description="Suggest background music for a video", callback=_music)
        )
        self.tree.add_command(app_commands.ContextMenu(name=CONTEXT_MENU_NAME, callback=_find_music))
        self.tree.add_command(admin_group())

    async def setup_hook(self) -> None:
        self.add_dynamic_items(ActionButton)

    async def on_ready(self) -> None:
        log.info("discord: connected as %s to %d guild(s)", self.user, len(self.guilds))

    async def on_message(self, message: discord.Message) -> None:
        await self.adapter.on_message(message)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        if interaction.type is discord.InteractionType.modal_submit:
            custom_id = (interaction.data or {}).get("custom_id", "")
            if ACTION_TEMPLATE.fullmatch(custom_id):
                await self.adapter.on_modal_submit(interaction, custom_id)


# =================================================================================================
# the adapter
# =================================================================================================


class DiscordAdapter:
    """`DiscordAdapter(service, settings)`; `await run()` until `await close()`; `ready` for /readyz.

    `cdn_hosts`: hosts attachments may be downloaded from (Discord's CDN; tests pass their fake's).
    `download_limits`: byte cap and timeouts (default: settings.max_upload_bytes, download.py's timeouts).
    `edit_interval_s`: least time between two edits of one message while a reason streams.
    `allowed_guild_ids` / `allowed_channel_ids`: where the bot answers (empty: everywhere; a thread
    counts as its parent channel; DMs always). Default: settings `discord_guild_ids` /
    `discord_channel_ids` when the settings have them.
    `catalog_admin`: the catalog admin for /music-admin (None: the command says it is not enabled here);
    `admin_role_ids`: roles allowed besides Manage Server (default: settings `discord_admin_role_ids`).
    `limiter`: per-user cooldowns kept in SQL (storage.rate_limit_store.RateLimitStore, built by serve):
    `await limiter.acquire(platform=, user_key=)` -> a decision with `allowed` and `retry_after_s`;
    None: no cooldown.
    """

    name = PLATFORM  # for serve's health report

    def __init__(
        self,
        service: Any,
        settings: Any,
        *,
        cdn_hosts: Collection[str] = DISCORD_CDN_HOSTS,
        download_limits: DownloadLimits | None = None,
        edit_interval_s: float = EDIT_INTERVAL_S,
        intents: discord.Intents | None = None,
        max_starts_per_channel: int = MAX_STARTS_PER_CHANNEL,
        allowed_guild_ids: Collection[int] | None = None,
        allowed_channel_ids: Collection[int] | None = None,
        catalog_admin: Any | None = None,
        admin_role_ids: Collection[int] | None = None,
        limiter: Any | None = None,
    ) -> None:
        self.service = service
        self.settings = settings
        self.cdn_hosts = frozenset(cdn_hosts)
        self.download_limits = download_limits or DownloadLimits(max_bytes=int(settings.max_upload_bytes))
        self.edit_interval_s = edit_interval_s
        if intents is None:
            intents = discord.Intents.default()  # no members, no presences
            intents.message_content = bool(getattr(settings, "discord_message_content", False))
        self.client = MuseChatClient(self, intents=intents)
        _redact_discord_logs()
        self._session: aiohttp.ClientSession | None = None
        self._thread_parents: dict[int, int | None] = {}  # channel id -> parent id (threads), None (not a thread)
        self.max_starts_per_channel = max_starts_per_channel
        self._starting: dict[int, int] = {}  # channel id -> videos being started there now
        pick = lambda given, name: frozenset(given) if given is not None else _ids(getattr(settings, name, None))
        self.allowed_guild_ids = pick(allowed_guild_ids, "discord_guild_ids")
        self.allowed_channel_ids = pick(allowed_channel_ids, "discord_channel_ids")
        self.catalog_admin = catalog_admin
        self.admin_role_ids = pick(admin_role_ids, "discord_admin_role_ids")
        self.limiter = limiter

    # --- lifecycle ------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Connected to the gateway and past READY."""
        return self.client.is_ready() and not self.client.is_closed()

    def _token(self) -> str:
        token = getattr(self.settings, "discord_token", None)
        if token is None:
            raise SettingsError("MUSECHAT_DISCORD_TOKEN is not set")
        return token.get_secret_value() if hasattr(token, "get_secret_value") else str(token)

    async def login(self) -> None:
        """Log in over REST only (no gateway): for registering commands, and for tests."""
        await self.client.login(self._token())

    async def run(self) -> None:
        """Log in and hold the gateway connection until `close()` (discord.py reconnects by itself)."""
        try:
            await self.client.start(self._token())
        except discord.LoginFailure:
            log.error("discord: the token was refused; check MUSECHAT_DISCORD_TOKEN")
            raise
        except discord.PrivilegedIntentsRequired:
            log.error(
                "discord: the gateway refused the message-content intent: enable it for the bot in the developer "
                "portal, or unset MUSECHAT_DISCORD_MESSAGE_CONTENT (the bot works without it)"
            )
            raise
        finally:
            await self._close_session()

    async def close(self) -> None:
        await self.client.close()
        await self._close_session()

    async def _close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def sync_commands(self, *, guild_id: int | None = None) -> list[str]:
        """Register /music and the context menu with Discord (after `login()`); to one guild for development.

        Not done on every start: registration is rate limited and global commands take a while to spread.
        """
        if guild_id is not None:
            guild = discord.Object(id=guild_id)
            self.client.tree.copy_global_to(guild=guild)
            commands = await self.client.tree.sync(guild=guild)
        else:
            commands = await self.client.tree.sync()
        log.info("discord: registered %d command(s)%s", len(commands), f" in guild {guild_id}" if guild_id else " globally")
        return [c.name for c in commands]

    # --- helpers ----------------------------------------------------------------------------------------

    def _options(self, budget: int) -> ReplyOptions:
        return ReplyOptions(reason_budget_s=REASON_BUDGET_S, preview_budget_bytes=budget, excerpt_format=EXCERPT_FORMAT)

    def _check_attachment(self, att: discord.Attachment) -> None:
        """Refuse before downloading: not a video, or over the byte cap (the size Discord announced)."""
        if not is_video(att):
            raise DownloadError(NOT_A_VIDEO, f"content type {att.content_type!r}, name {att.filename!r}")
        check_announced_size(att.size, self.download_limits, name="your video")

    async def _download(self, att: discord.Attachment) -> bytes:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        data = await download_capped(
            self._session,
            att.url,
            limits=self.download_limits,
            allowed_hosts=self.cdn_hosts,
            announced_size=att.size,
            name="your video",
        )
        log.info("discord: downloaded %s (%d bytes) from %s", att.filename, len(data), safe_url(att.url))
        return data

    @staticmethod
    def _live(target: Target, interval: float) -> LiveMessage:
        return LiveMessage(target, min_interval_s=interval)

    async def _show_error(self, live: LiveMessage, sentence: str, *, keep_card: bool = False) -> None:
        """Put a sentence where the reply was going (above a card already shown); never raise."""
        if keep_card:
            live.show(content=render.clip(sentence, render.MAX_CONTENT_CHARS))
        else:
            live.show(content=render.clip(sentence, render.MAX_CONTENT_CHARS), embeds=[], view=None)
        try:
            await live.flush()
        except Exception:
            log.exception("discord: could not show an error message")

    async def _thread_parent(self, channel: Any) -> int | None:
        """The parent channel id when `channel` is a thread (cache first, then one REST lookup), else None."""
        if isinstance(channel, discord.Thread):
            return channel.parent_id
        if isinstance(channel, discord.abc.GuildChannel):
            return None
        cid = channel.id
        if cid not in self._thread_parents:
            try:
                fetched = await self.client.fetch_channel(cid)
            except discord.HTTPException as exc:
                log.warning("discord: could not look up channel %s: %s", cid, exc)
                return None
            self._thread_parents[cid] = fetched.parent_id if isinstance(fetched, discord.Thread) else None
        return self._thread_parents[cid]

    def _thread_home(self, channel: Any, thread_id: int, guild_id: int | None) -> Home:
        """The thread started from message `thread_id` (same id), with its parent channel as the fallback."""
        thread = self.client.get_partial_messageable(thread_id, guild_id=guild_id, type=discord.ChannelType.public_thread)
        return Home(thread, fallback=channel)

    async def _allowed(self, guild_id: int | None, channel: Any) -> bool:
        """DMs always; in a guild, the allowed guilds and channels (a thread counts as its parent)."""
        if guild_id is None:
            return True
        if self.allowed_guild_ids and guild_id not in self.allowed_guild_ids:
            return False
        if self.allowed_channel_ids and channel is not None:
            parent = await self._thread_parent(channel)
            return (parent or channel.id) in self.allowed_channel_ids
        return True

    async def _wait_s(self, user_id: int) -> int:
        """Seconds this user must wait before another turn (0: go ahead); the limiter's SQL buckets survive restarts."""
        if self.limiter is None:
            return 0
        try:
            decision = await self.limiter.acquire(platform=PLATFORM, user_key=str(user_id))
        except Exception:
            log.exception("discord: the cooldown check failed for user %s", user_id)
            return 0
        return 0 if decision.allowed else max(1, math.ceil(decision.retry_after_s))

    async def _refuse_fast(self, interaction: discord.Interaction) -> bool:
        """Answer COOLDOWN ephemerally (True) when the user must wait."""
        wait = await self._wait_s(interaction.user.id)
        if not wait:
            return False
        await interaction.response.send_message(COOLDOWN.format(s=wait), ephemeral=True)
        return True

    async def _refuse_here(self, interaction: discord.Interaction) -> bool:
        """Answer NOT_HERE ephemerally (True) where the bot is not enabled."""
        if await self._allowed(interaction.guild_id, interaction.channel):
            return False
        await interaction.response.send_message(NOT_HERE, ephemeral=True)
        return True

    async def _home_for_component(self, interaction: discord.Interaction) -> Home:
        """Where the reply to a button or modal goes: the card's thread (or DM)."""
        channel = interaction.channel
        if isinstance(channel, (discord.Thread, discord.DMChannel)) or interaction.guild_id is None:
            return Home(channel)  # type: ignore[arg-type]
        if await self._thread_parent(channel) is not None:
            return Home(channel)  # type: ignore[arg-type]
        assert interaction.message is not None
        # a card in the channel itself is the first card: its thread has the message's id
        return self._thread_home(channel, interaction.message.id, interaction.guild_id)

    async def _keys_for(self, channel: Any, *, user: discord.abc.User, anchor_id: int, guild_id: int | None) -> tuple[PlatformKeys, bool]:
        """The conversation's keys for a start in `channel`, and whether a thread must be opened."""
        user_id, name = str(user.id), getattr(user, "display_name", "") or user.name
        if guild_id is None or isinstance(channel, discord.DMChannel):
            # one DM holds many conversations, one per video: keyed by the first card (see _dm_conversation)
            return PlatformKeys(PLATFORM, str(channel.id), user_id, str(anchor_id), user_name=name), False
        parent = await self._thread_parent(channel)
        if parent is not None:  # started inside a thread: the conversation lives there
            return PlatformKeys(PLATFORM, str(parent), user_id, str(channel.id), str(guild_id), name), False
        return PlatformKeys(PLATFORM, str(channel.id), user_id, str(anchor_id), str(guild_id), name), True

    async def _open_thread(self, channel: Any, message_id: int, video_name: str) -> None:
        try:
            if getattr(channel, "guild", None) is None:  # not in discord.py's cache (a fresh process): ask
                channel = await self.client.fetch_channel(channel.id)
            thread = await channel.get_partial_message(message_id).create_thread(
                name=render.thread_name(video_name), auto_archive_duration=THREAD_ARCHIVE_MINUTES
            )
        except (discord.HTTPException, AttributeError, ValueError) as exc:
            # the buttons still work: their replies go to the channel itself
            log.warning("discord: could not open a thread on message %s in %s: %s", message_id, getattr(channel, "id", "?"), exc)
            return
        log.info("discord: opened thread %s in channel %s", thread.id, thread.parent_id)

    # --- starting a conversation ----------------------------------------------------------------------

    async def on_music(self, interaction: discord.Interaction, video: discord.Attachment, prompt: str) -> None:
        """/music: check the attachment, defer, then start a conversation."""
        await self._start_from_interaction(interaction, video, prompt)

    async def on_find_music(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """The context menu on a message: its first video starts a conversation."""
        video = first_video(message.attachments)
        if video is None:
            await interaction.response.send_message(NO_VIDEO, ephemeral=True)
            return
        await self._start_from_interaction(interaction, video, "")

    async def _start_from_interaction(self, interaction: discord.Interaction, att: discord.Attachment, text: str) -> None:
        if await self._refuse_here(interaction):
            return
        try:
            self._check_attachment(att)
        except DownloadError as exc:
            log.info("discord: refused %s from user %s: %s", att.filename, interaction.user.id, exc)
            await interaction.response.send_message(exc.user_message, ephemeral=True)
            return
        channel_id = interaction.channel_id or 0
        if self._starting.get(channel_id, 0) >= self.max_starts_per_channel:
            await interaction.response.send_message(CHANNEL_BUSY.format(n=self._starting[channel_id]), ephemeral=True)
            return
        if await self._refuse_fast(interaction):
            return
        with self._slot(channel_id):
            response = await interaction.response.defer(thinking=True)  # within Discord's 3 s
            message_id = response.message_id if response is not None and response.message_id else (await interaction.original_response()).id
            keys, make_thread = await self._keys_for(
                interaction.channel, user=interaction.user, anchor_id=message_id, guild_id=interaction.guild_id
            )
            budget = render.upload_budget(interaction=interaction)
            live = self._live(InteractionTarget(interaction), self.edit_interval_s)
            live.show(content=render.status_text("Fetching your video…"))
            if await self._start(keys, att, text, live, budget) and make_thread:
                await self._open_thread(interaction.channel, message_id, att.filename)

    async def _start_from_message(self, message: discord.Message, att: discord.Attachment, text: str) -> None:
        """A video that @mentions the bot (or sent in a DM): reply, start, open a thread from the reply."""
        try:
            self._check_attachment(att)
        except DownloadError as exc:
            await message.reply(exc.user_message, mention_author=False)
            return
        channel_id = message.channel.id
        if self._starting.get(channel_id, 0) >= self.max_starts_per_channel:
            await message.reply(CHANNEL_BUSY.format(n=self._starting[channel_id]), mention_author=False)
            return
        if wait := await self._wait_s(message.author.id):
            await message.reply(COOLDOWN.format(s=wait), mention_author=False)
            return
        with self._slot(channel_id):
            status = await message.reply(render.status_text("Fetching your video…"), mention_author=False)
            guild_id = message.guild.id if message.guild else getattr(message.channel, "guild_id", None)
            keys, make_thread = await self._keys_for(message.channel, user=message.author, anchor_id=status.id, guild_id=guild_id)
            budget = render.upload_budget(guild=message.guild)
            live = self._live(ChannelTarget(message.channel, message=status), self.edit_interval_s)
            if await self._start(keys, att, text, live, budget) and make_thread:
                await self._open_thread(message.channel, status.id, att.filename)

    @contextlib.contextmanager
    def _slot(self, channel_id: int) -> Iterator[None]:
        """Count a start in a channel while it runs (the per-channel cap)."""
        self._starting[channel_id] = self._starting.get(channel_id, 0) + 1
        try:
            yield
        finally:
            self._starting[channel_id] -= 1
            if not self._starting[channel_id]:
                del self._starting[channel_id]

    async def _start(self, keys: PlatformKeys, att: discord.Attachment, text: str, live: LiveMessage, budget: int) -> bool:
        """Download, start the conversation, render it onto `live`; False (and a sentence shown) on failure."""
        stream = ReplyStream(live, budget=budget)
        try:
            data = await self._download(att)
            log.info("discord: user %s starts a conversation in %s/%s", keys.user_id, keys.channel_id, keys.thread_id or "-")
            reply = await self.service.start(
                keys, video=data, text=text, video_name=att.filename, events=stream, options=self._options(budget)
            )
            await stream.finish(reply)
        except Exception as exc:  # noqa: BLE001 - every failure gets a sentence; untyped ones are logged
            sentence = self._sentence(exc, budget, f"start by user {keys.user_id}")
            await self._show_error(live, sentence, keep_card=stream.reply is not None)
            return stream.reply is not None  # a card was shown: its thread is still worth opening
        finally:
            await live.close()
        return True

    def _sentence(self, exc: BaseException, budget: int, what: str) -> str:
        """The chat sentence for an error: typed -> its own sentence; 40005 -> the upload limit; else an apology."""
        if isinstance(exc, (DownloadError, *_user_errors())):
            log.info("discord: %s refused: %s", what, exc)
            return exc.user_message  # type: ignore[attr-defined]
        if isinstance(exc, discord.HTTPException) and exc.code == TOO_LARGE_CODE:
            log.warning("discord: %s: upload over the channel's limit (%d bytes)", what, budget)
            return render.too_large_sentence(budget)
        log.error("discord: %s failed", what, exc_info=exc)
        return APOLOGY

    # --- the conversation's turns ------------------------------------------------------------------------

    async def on_button(self, interaction: discord.Interaction, action: Action) -> None:
        """A card's button: Feedback… opens the modal; the others go to the service."""
        if await self._refuse_here(interaction):
            return
        if action.kind is ActionKind.REFINE:
            await interaction.response.send_modal(FeedbackModal(action))
            return
        if await self._refuse_fast(interaction):
            return
        await interaction.response.defer()  # a deferred update: nothing visible until the reply
        await self._act(interaction, action)

    async def on_modal_submit(self, interaction: discord.Interaction, custom_id: str) -> None:
        """The Feedback… modal's text: a REFINE action on the card's turn."""
        if await self._refuse_here(interaction):
            return
        action = Action.parse(custom_id, text=modal_text(interaction.data).strip())
        if not action.text:
            await interaction.response.send_message(EMPTY_FEEDBACK, ephemeral=True)
            return
        if await self._refuse_fast(interaction):
            return
        await interaction.response.defer()
        await self._act(interaction, action)

    async def _act(self, interaction: discord.Interaction, action: Action) -> None:
        user_id = str(interaction.user.id)
        budget = render.upload_budget(interaction=interaction)
        home = await self._home_for_component(interaction)
        live = self._live(ChannelTarget(home.channel, fallback=home.fallback), self.edit_interval_s)
        stream = ReplyStream(live, budget=budget)
        log.info("discord: user %s pressed %s", user_id, action.custom_id())
        try:
            reply = await self.service.act(action, user_id=user_id, events=stream, options=self._options(budget))
            await stream.finish(reply)
        except Exception as exc:  # noqa: BLE001 - every failure gets a sentence; untyped ones are logged
            sentence = self._sentence(exc, budget, f"{action.kind.value} by user {user_id}")
            with contextlib.suppress(Exception):
                await live.flush()  # a status shown before the error has landed (or failed) by now
            posted = getattr(live.target, "message", None) is not None
            if posted and not isinstance(exc, _quiet_errors()):
                # the message the turn started becomes the answer (above its card, if one was shown)
                await self._show_error(live, sentence, keep_card=stream.reply is not None)
            else:
                await self._note(interaction, sentence)  # only the presser sees it
        finally:
            await live.close()

    async def _note(self, interaction: discord.Interaction, sentence: str) -> None:
        """An ephemeral note to whoever pressed (a follow-up of the deferred press)."""
        try:
            await interaction.followup.send(sentence, ephemeral=True)
        except discord.HTTPException:
            log.exception("discord: could not send an ephemeral note")

    async def on_message(self, message: discord.Message) -> None:
        """Route a message: feedback in a conversation's thread or DM, or a new video for the bot."""
        if message.author.bot or self.client.user is None:
            return
        try:
            await self._on_message(message)
        except Exception:
            log.exception("discord: message %s in channel %s failed", message.id, message.channel.id)

    async def _conversation_of(self, message: discord.Message) -> tuple[int | None, Home | None]:
        """The conversation a message belongs to (SQL lookup by its thread or DM), and where to answer."""
        channel = message.channel
        guild_id = message.guild.id if message.guild else getattr(channel, "guild_id", None)
        if guild_id is None:
            cid = await self._dm_conversation(message)
            return cid, Home(channel) if cid is not None else None
        if (parent := await self._thread_parent(channel)) is not None:
            key, home = (str(parent), str(channel.id)), Home(channel)
        elif message.reference is not None and message.reference.message_id is not None:
            # a reply, in the channel, to a first card: the conversation of the thread started from it
            ref = message.reference.message_id
            key, home = (str(channel.id), str(ref)), self._thread_home(channel, ref, guild_id)
        else:
            return None, None
        cid = await self.service.find(platform=PLATFORM, channel_id=key[0], thread_id=key[1])
        return cid, home if cid is not None else None

    async def _dm_conversation(self, message: discord.Message) -> int | None:
        """A DM's conversation: the one of the card the message replies to, else of the newest card.

        DMs have no threads, and one DM holds a conversation per video, so the conversation is read
        from the cards themselves (their buttons carry its id; Discord keeps them across restarts).
        """
        ref = message.reference.resolved if message.reference is not None else None
        if isinstance(ref, discord.Message) and (cid := self._card_conversation(ref)) is not None:
            return cid
        async for earlier in message.channel.history(limit=DM_HISTORY_LIMIT, before=message):
            if (cid := self._card_conversation(earlier)) is not None:
                return cid
        return None

    def _card_conversation(self, message: discord.Message) -> int | None:
        """The conversation id a bot card's buttons name, if it is one of this bot's cards."""
        if self.client.user is None or message.author.id != self.client.user.id:
            return None
        for row in message.components:
            for item in getattr(row, "children", ()):
                custom_id = getattr(item, "custom_id", None) or ""
                if ACTION_TEMPLATE.fullmatch(custom_id):
                    return Action.parse(custom_id).conversation_id
        return None

    async def _on_message(self, message: discord.Message) -> None:
        me = self.client.user
        assert me is not None
        guild_id = message.guild.id if message.guild else getattr(message.channel, "guild_id", None)
        if not await self._allowed(guild_id, message.channel):
            return
        mentioned = any(u.id == me.id for u in message.mentions)
        is_dm = message.guild is None and getattr(message.channel, "guild_id", None) is None
        video = first_video(message.attachments)
        text = strip_mentions(message.content, me.id)
        cid, home = (None, None) if is_dm and video is not None else await self._conversation_of(message)
        if cid is None:  # (a video in a DM always starts a new conversation: a DM holds many)
            if video is not None and (mentioned or is_dm):
                await self._start_from_message(message, video, text)
            elif mentioned or is_dm:  # someone talks to the bot outside a conversation: say how to start
                await message.reply(NOT_A_VIDEO if message.attachments else HOW_TO_START, mention_author=False)
            return
        assert home is not None
        if not text:
            if video is not None and mentioned:
                await message.reply(VIDEO_IN_THREAD, mention_author=False)
            return  # without the message-content intent, others' words arrive empty
        await self._feedback(message, cid, text, home, mentioned=mentioned)

    async def _feedback(self, message: discord.Message, cid: int, text: str, home: Home, *, mentioned: bool) -> None:
        from bot.service.errors import NotOwnerError

        user_id = str(message.author.id)
        if wait := await self._wait_s(message.author.id):
            with contextlib.suppress(discord.HTTPException):
                await message.reply(COOLDOWN.format(s=wait), mention_author=False)
            return
        budget = render.upload_budget(guild=message.guild)
        live = self._live(ChannelTarget(home.channel, fallback=home.fallback), self.edit_interval_s)
        stream = ReplyStream(live, budget=budget)
        log.info("discord: user %s wrote feedback in conversation %s", user_id, cid)
        try:
            reply = await self.service.message(cid, text, user_id=user_id, events=stream, options=self._options(budget))
            await stream.finish(reply)
        except NotOwnerError as exc:
            # other people talk in threads too: answer them only when they address the bot
            if mentioned:
                with contextlib.suppress(discord.HTTPException):
                    await message.reply(exc.user_message, mention_author=False)
        except Exception as exc:  # noqa: BLE001 - every failure gets a sentence; untyped ones are logged
            sentence = self._sentence(exc, budget, f"feedback by user {user_id} in conversation {cid}")
            await self._show_error(live, sentence, keep_card=stream.reply is not None)
        finally:
            await live.close()

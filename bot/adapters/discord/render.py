"""Discord rendering of the service's replies: an embed card, the excerpt as an audio attachment,
and the action buttons. Pure functions over `Reply` / `TrackCard` (no network), so they are tested
on their own; the buttons' classes live in components.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import discord

from bot.adapters.discord.components import BUTTONS, ActionButton
from bot.service.contract import Action, ActionKind, MediaFile

if TYPE_CHECKING:
    from bot.service import Reply, TrackCard

CARD_COLOUR = 0x1DB954  # the card's side bar
MAX_TITLE_CHARS = 256  # Discord embed limits (characters)
MAX_DESCRIPTION_CHARS = 4096
MAX_FIELD_CHARS = 1024
MAX_CONTENT_CHARS = 2000
MAX_THREAD_NAME_CHARS = 100
TAGS_SHOWN = 6  # tags on a card
CURSOR = " ▌"  # shown after a reason that is still being written



def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def upload_budget(*, interaction: discord.Interaction | None = None, guild: discord.Guild | None = None) -> int:
    """Bytes one attachment may have here: the interaction's limit, else the guild's, else 10 MiB.

    Discord checks the limit per attachment (2025-04 change log); an interaction carries
    `attachment_size_limit` (boost tier and the invoker's Nitro). Never a hard-coded 25 MiB.
    """
    if interaction is not None and interaction.filesize_limit:
        return int(interaction.filesize_limit)
    if guild is None and interaction is not None:
        guild = interaction.guild
    if guild is not None:
        return int(guild.filesize_limit)
    return discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES


def mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def too_large_sentence(budget: int) -> str:
    return (
        f"The preview is larger than this channel's upload limit ({mib(budget)}), so Discord refused it. "
        "Try a shorter clip, or ask a server admin about the upload limit."
    )


def track_tags(track: TrackCard) -> list[str]:
    """The tags a card shows: the automatic MTT/MSD tags first, then the others, without repeats."""
    seen: dict[str, None] = {}
    for tag in (*track.mtt_tags, *track.msd_tags, *track.tags):
        tag = str(tag).strip()
        if tag and tag.lower() not in {t.lower() for t in seen}:
            seen[tag] = None
    return list(seen)[:TAGS_SHOWN]


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 60}:{s % 60:02d}"


def card_embed(reply: Reply, track: TrackCard, *, reason: str | None = None, writing: bool = False) -> discord.Embed:
    """The embed card of one track: title, artist, tags, tempo, licence, mode, reason.

    `reason`: the text shown (the streamed reason so far); None: the track's own reason.
    `writing`: the reason is still being written (a cursor follows it).
    """
    text = track.reason if reason is None else reason
    if writing:
        text = clip(text or "✍️ writing a reason", MAX_DESCRIPTION_CHARS - len(CURSOR)) + CURSOR
    embed = discord.Embed(
        title=clip(f"🎵 {track.title}", MAX_TITLE_CHARS),
        description=clip(text, MAX_DESCRIPTION_CHARS) if text else None,
        colour=CARD_COLOUR,
    )
    embed.add_field(name="Artist", value=clip(track.artist or "unknown", MAX_FIELD_CHARS), inline=True)
    if track.tempo_bpm:
        embed.add_field(name="Tempo", value=f"{track.tempo_bpm:.0f} BPM", inline=True)
    if track.duration_s:
        embed.add_field(name="Length", value=_duration(track.duration_s), inline=True)
    tags = track_tags(track)
    if tags:
        embed.add_field(name="Tags", value=clip(", ".join(tags), MAX_FIELD_CHARS), inline=False)
    embed.add_field(name="Licence", value=clip(track.licence or "unknown", MAX_FIELD_CHARS), inline=True)
    embed.add_field(name="Mode", value=reply.mode, inline=True)
    if reply.understood:
        embed.add_field(name="Understood", value=clip(reply.understood, MAX_FIELD_CHARS), inline=False)
    if reply.unmatched:
        embed.add_field(name="Not understood", value=clip(", ".join(reply.unmatched), MAX_FIELD_CHARS), inline=False)
    if reply.unavailable:
        embed.add_field(name="Nothing in the catalog for", value=clip(", ".join(reply.unavailable), MAX_FIELD_CHARS), inline=False)
    if reply.filters:
        embed.add_field(name="Filters", value=clip(reply.filters, MAX_FIELD_CHARS), inline=False)
    if track.excerpt is None and track.excerpt_note:
        embed.add_field(name="Excerpt", value=clip(track.excerpt_note, MAX_FIELD_CHARS), inline=False)
    footer = f"Suggestion {reply.turn_index}"
    if track.reason_source and not writing:
        footer += f" · reason: {track.reason_source}"
    embed.set_footer(text=footer)
    return embed


def card_embeds(reply: Reply, *, reason: str | None = None, writing: bool = False) -> list[discord.Embed]:
    """One embed per track (the first carries the streamed reason)."""
    embeds = []
    for i, track in enumerate(reply.tracks[:10]):  # Discord: at most 10 embeds a message
        if i == 0:
            embeds.append(card_embed(reply, track, reason=reason, writing=writing))
        else:
            embeds.append(card_embed(reply, track))
    return embeds


def media_file(media: MediaFile) -> discord.File:
    """An attachment from a service file, under the service's file name (Discord plays .ogg/.mp3 inline)."""
    return discord.File(media.path, filename=media.filename)


def card_media(reply: Reply, budget: int) -> list[MediaFile]:
    """The excerpts to attach (the ones that fit the upload budget), first track first."""
    return [t.excerpt for t in reply.tracks[:10] if t.excerpt is not None and t.excerpt.size <= budget]


def action_buttons(reply: Reply) -> list[discord.ui.Item]:
    """The reply's buttons as persistent dynamic items (their custom ids carry conversation and turn)."""
    kinds: Sequence[ActionKind] = reply.actions
    return [
        ActionButton(Action(kind, reply.conversation_id, reply.turn_index))
        for kind in BUTTONS
        if kind in kinds
    ]


def action_view(reply: Reply) -> discord.ui.View | None:
    """A view holding the reply's buttons; None when it offers none."""
    items = action_buttons(reply)
    if not items:
        return None
    view = discord.ui.View(timeout=None)
    for item in items:
        view.add_item(item)
    return view


def thread_name(video_name: str) -> str:
    stem = video_name.rsplit(".", 1)[0] if "." in video_name else video_name
    return clip(f"🎵 {stem or 'your video'}", MAX_THREAD_NAME_CHARS)


def status_text(message: str) -> str:
    return clip(f"⏳ {message}", MAX_CONTENT_CHARS)

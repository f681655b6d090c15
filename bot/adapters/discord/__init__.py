"""Discord: /music, the "Find music for this video" context menu, @mentions and DMs; one thread per
conversation; persistent buttons; the reason streamed by message edits (research/platforms.md §1).

Modules: adapter (entry points, routing, errors), components (buttons, the feedback modal),
render (embeds, files, buttons, upload budget), live (throttled message edits while a reply streams).
"""

from bot.adapters.discord.adapter import DISCORD_CDN_HOSTS, DiscordAdapter

__all__ = ["DISCORD_CDN_HOSTS", "DiscordAdapter"]

"""The Slack adapter (slack-bolt, async): thin I/O over the conversation service (DESIGN.md, "Layout").

One module per concern: `adapter` (entry points, listeners, lifecycle), `render` (Block Kit),
`streaming` (one reply drawn from the service's events), `files` (capped Bearer downloads),
`dedup` (each delivery processed once).
"""

from bot.adapters.slack.adapter import SlackAdapter

__all__ = ["SlackAdapter"]

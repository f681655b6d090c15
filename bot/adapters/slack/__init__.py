"""The Slack adapter (slack-bolt, async): thin I/O over the conversation service (DESIGN.md, "Layout")."""

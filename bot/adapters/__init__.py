"""Thin I/O over the conversation service: terminal, Discord, Slack (DESIGN.md, "The adapter contract")."""

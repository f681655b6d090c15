"""MuseChat bot: the application (settings, CLI, conversation service, platform adapters)."""

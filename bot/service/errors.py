"""Typed errors of the conversation service: each carries a sentence fit for the chat (`user_message`).

An adapter shows `user_message` as it is; anything that is not one of these (or an
`engine.media.MediaError`) is a bug: logged with its traceback, answered with a short apology."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class ConversationError(Exception):
    """A request the service cannot serve; `user_message` is fit for the chat."""

    def __init__(self, user_message: str, detail: str | None = None) -> None:
        super().__init__(detail or user_message)
        self.user_message = user_message


class UnknownConversationError(ConversationError, LookupError):
    """No conversation with that id (or platform keys)."""


class ConversationExistsError(ConversationError):
    """`start` on a channel/thread that already holds a conversation."""


class EmptyCatalogError(ConversationError):
    """The live catalog holds no track (or none is live)."""


class NothingToAskError(ConversationError, ValueError):
    """A start with neither a video nor any words about the music."""


class VideoGoneError(ConversationError):
    """The conversation's video and its features were both removed by the media store's retention."""


class CatalogMismatchError(ConversationError):
    """The live catalog's vectors do not fit the loaded models (built for another profile)."""


class BusyError(ConversationError):
    """The conversation's previous turn is still running after the lock timeout."""




class NotOwnerError(ConversationError):
    """A button of someone else's conversation."""


class OutdatedActionError(ConversationError):
    """A button of an older card: the conversation has moved on since."""


class DuplicateActionError(ConversationError):
    """The same action on the same turn again (a double click): already done."""


class NothingLeftError(ConversationError):
    """No track left that the user has not heard (or that matches the filters)."""


class ShuttingDownError(ConversationError):
    """The process is stopping (SIGTERM): requests in flight finish, new ones are refused."""


class SettingsError(ValueError):
    """A setting (an environment variable) with a value the bot cannot run with; `str(e)` names it."""

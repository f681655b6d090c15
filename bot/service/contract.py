"""The adapter contract: what the terminal, Discord and Slack share (DESIGN.md, "The adapter contract").

An adapter is thin I/O over the conversation service. It turns a platform event into one of three
requests and renders what comes back:

- **start**: a video (a path or bytes) and/or words, with the platform keys of where the
  conversation lives (`PlatformKeys`: platform, workspace, channel, thread, user);
- **message**: free words in an existing conversation ("less sad, more drums", "another one");
- **action**: a structured button press (`Action`: use this, another, refine with words, start
  over) that names its conversation and turn, so no English is parsed to understand a click.
  `Action.custom_id()` / `Action.parse()` give the versioned string a button carries
  (Discord `custom_id` <= 100 chars, Slack button `value`).

While a request runs, the service emits events to the adapter's `EventSink`, in this order:

1. `StatusEvent` (zero or more): progress, and the queue position while model work waits;
2. `CardEvent` (once per recommendation): the chosen track, as soon as it is chosen; its reason
   is the tag summary, marked `reason_pending` when an LLM is still writing the real one;
3. `ReasonTokenEvent` (zero or more): the LLM's reason, piece by piece, in order;
4. `FinalEvent` (exactly once): the finished `Reply`, also returned by the call.

The card never waits for the reason: a platform passes its own reason budget
(`ReplyOptions.reason_budget_s`: a terminal waits about 3 s; a chat platform much longer, since it
edits its message as tokens arrive).

Every file the service hands out is a `MediaFile` with a file name (with its extension), a MIME
type and a size. Excerpts come in formats chat clients play inline (ogg/opus and mp3, per
`ReplyOptions.excerpt_format`); a preview is re-encoded to fit `ReplyOptions.preview_budget_bytes`
(Discord's per-attachment limit), or the reply says plainly why it cannot.

Errors: every user-facing failure is a `ConversationError` subclass (bot/service/errors.py) or an
`engine.media.MediaError`, each with a `user_message` sentence for the chat. Anything else is a
bug: the adapter logs it with its traceback and answers with a short apology.
"""

from __future__ import annotations

import enum
import mimetypes
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from bot.service.replies import Reply

ACTION_VERSION = "mc1"  # prefix of every custom id; bump it when the format changes
MAX_CUSTOM_ID_CHARS = 100  # Discord's limit on a component's custom_id
MAX_REFINE_CHARS = 300  # longest "refine" text a modal accepts
DEFAULT_EXCERPT_FORMAT = "ogg"  # ogg/opus: Discord and browsers play it inline
MIME_TYPES = {  # the formats the service writes; mimetypes' table varies between systems
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".m4a": "audio/mp4",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mov": "video/quicktime",
}


# =================================================================================================
# requests
# =================================================================================================


@dataclass(frozen=True)
class PlatformKeys:
    """Where a conversation lives and who owns it (SQL: unique per platform, channel and thread)."""

    platform: str  # "terminal" | "discord" | "slack" | "cli"
    channel_id: str
    user_id: str  # the conversation's owner (only they may press its buttons)
    thread_id: str = ""  # Discord thread id / Slack thread_ts; "" for the channel itself
    workspace_id: str = ""  # Discord guild id / Slack team id
    user_name: str = ""


class ActionKind(enum.StrEnum):
    USE = "use"  # "use this": record the choice and render the preview
    ANOTHER = "another"  # a different track; the current one becomes a negative example
    REFINE = "refine"  # words that steer the next pick ("more drums"), from a modal
    START_OVER = "restart"  # forget the feedback so far; a fresh pick for the same video


_ACTION_RE = re.compile(rf"^{ACTION_VERSION}:(?P<kind>[a-z]+):(?P<conv>\d+):(?P<turn>\d+)$")


@dataclass(frozen=True)
class Action:
    """A button press: which action, on which conversation, from the card of which turn."""

    kind: ActionKind
    conversation_id: int
    turn_index: int  # the turn whose card carried the button
    text: str = ""  # REFINE: the user's words (from the modal)

    def custom_id(self) -> str:
        """The string a button carries, e.g. "mc1:use:12:3" (versioned, <= 100 characters)."""
        value = f"{ACTION_VERSION}:{self.kind.value}:{self.conversation_id}:{self.turn_index}"
        assert len(value) <= MAX_CUSTOM_ID_CHARS
        return value

    @classmethod
    def parse(cls, value: str, *, text: str = "") -> Action:
        """The action a button's custom id names; ValueError for anything else (an old format, junk)."""
        m = _ACTION_RE.match(value or "")
        if m is None:
            raise ValueError(f"not a MuseChat action id: {value[:MAX_CUSTOM_ID_CHARS]!r}")
        try:
            kind = ActionKind(m["kind"])
        except ValueError:
            raise ValueError(f"unknown action {m['kind']!r}") from None
        return cls(kind, int(m["conv"]), int(m["turn"]), text=text[:MAX_REFINE_CHARS])


@dataclass(frozen=True)
class ReplyOptions:
    """What a platform can show; passed with every request."""

    reason_budget_s: float | None = None  # seconds the LLM may write the reason; None: the service's default
    preview_budget_bytes: int | None = None  # largest preview file the platform accepts; None: no limit
    excerpt_format: str = DEFAULT_EXCERPT_FORMAT  # "ogg" | "mp3"
    k: int = 1  # tracks per reply


# =================================================================================================
# media
# =================================================================================================


def mime_type_for(name: str | Path) -> str:
    suffix = Path(name).suffix.lower()
    return MIME_TYPES.get(suffix) or mimetypes.guess_type(str(name))[0] or "application/octet-stream"


@dataclass(frozen=True)
class MediaFile:
    """A file the service hands to an adapter: where it is, what to call it, what it is, how big."""

    path: Path
    filename: str  # with its extension, safe for an attachment name
    mime_type: str
    size: int  # bytes

    @classmethod
    def of(cls, path: Path, filename: str) -> MediaFile:
        return cls(Path(path), filename, mime_type_for(filename), Path(path).stat().st_size)


def safe_filename(text: str, *, max_chars: int = 60) -> str:
    """A file-name stem from a title: letters, digits, dashes (e.g. "Battle Epic!" -> "battle-epic")."""
    stem = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (stem[:max_chars].rstrip("-")) or "track"


# =================================================================================================
# events
# =================================================================================================


@dataclass(frozen=True)
class StatusEvent:
    message: str  # "decoding and embedding your video", "2 requests ahead of you; yours is queued"
    ahead: int | None = None  # requests ahead in the model queue, when waiting


@dataclass(frozen=True)
class CardEvent:
    """The chosen track(s), sent as soon as chosen. `reply.reason_pending`: the LLM's reason follows."""

    reply: Reply


@dataclass(frozen=True)
class ReasonTokenEvent:
    text: str  # the next piece of the reason


@dataclass(frozen=True)
class FinalEvent:
    reply: Reply


Event = Union[StatusEvent, CardEvent, ReasonTokenEvent, FinalEvent]
EventSink = Callable[[Event], Awaitable[None] | None]


__all__ = [
    "ACTION_VERSION",
    "Action",
    "ActionKind",
    "CardEvent",
    "Event",
    "EventSink",
    "FinalEvent",
    "MAX_CUSTOM_ID_CHARS",
    "MediaFile",
    "PlatformKeys",
    "ReasonTokenEvent",
    "ReplyOptions",
    "StatusEvent",
    "mime_type_for",
    "safe_filename",
]

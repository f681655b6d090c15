"""Block Kit for MuseChat on Slack: the track card, its buttons, the placeholder, and the two modals.

Pure functions from the service's `Reply` / `TrackCard` (bot/service) to Slack's JSON: no I/O, so
every card a user can see is tested here. Buttons carry `Action.custom_id()` in their `value`
("mc1:another:12:3"): the conversation and turn travel with the click, so any process, after any
restart, handles any click; the `action_id` only picks the handler. "Refine…" opens a modal whose
`private_metadata` carries the same id plus the thread to answer in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.service.contract import MAX_REFINE_CHARS, Action, ActionKind

if TYPE_CHECKING:
    from bot.service import Reply, TrackCard

Block = dict[str, Any]

# action_id per button (the handler); the button's value says which conversation and turn
ACTION_IDS: dict[ActionKind, str] = {
    ActionKind.USE: "mc_use",
    ActionKind.ANOTHER: "mc_another",
    ActionKind.REFINE: "mc_refine",
    ActionKind.START_OVER: "mc_restart",
}
BUTTON_LABELS: dict[ActionKind, str] = {
    ActionKind.USE: "Use this",
    ActionKind.ANOTHER: "Another",
    ActionKind.REFINE: "Refine…",
    ActionKind.START_OVER: "Start over",
}
REFINE_VIEW = "mc_refine_view"  # callback_id of the "Refine…" modal
REFINE_BLOCK, REFINE_INPUT = "refine", "text"
MUSIC_VIEW = "mc_music_view"  # callback_id of the /music modal
VIDEO_BLOCK, VIDEO_INPUT = "video", "file"
WORDS_BLOCK, WORDS_INPUT = "words", "text"
SHORTCUT_CALLBACK = "mc_find_music"  # the message shortcut "Find music for this video"
VIDEO_FILETYPES = ("mp4", "mov", "webm", "mkv", "m4v", "avi")  # the modal's file_input accepts these

HEADER_MAX_CHARS = 150  # Slack: a header block's text
SECTION_MAX_CHARS = 3000  # Slack: a section's text
FIELD_MAX_CHARS = 2000  # Slack: a section field
MAX_TAGS_SHOWN = 8
PENDING_REASON = "_Writing why this track fits…_"
STREAMED_REASON = "_Why this track: in the message below._"


def escape(text: str) -> str:
    """Slack mrkdwn escaping: &, < and > are control characters (links, mentions)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _duration(seconds: float | None) -> str:
    if not seconds:
        return "?"
    s = int(round(seconds))
    return f"{s // 60}:{s % 60:02d}"


def _tags(card: TrackCard) -> list[str]:
    seen = dict.fromkeys([*card.mtt_tags, *card.msd_tags, *card.tags])
    return [t for t in seen if t][:MAX_TAGS_SHOWN]


# =================================================================================================
# the card
# =================================================================================================


def buttons(reply: Reply) -> Block | None:
    """The actions block of the buttons this reply offers, in the service's order."""
    elements = []
    for kind in reply.actions:
        action = Action(ActionKind(kind), reply.conversation_id, reply.turn_index)
        button: Block = {
            "type": "button",
            "action_id": ACTION_IDS[action.kind],
            "text": {"type": "plain_text", "text": BUTTON_LABELS[action.kind]},
            "value": action.custom_id(),
        }
        if action.kind is ActionKind.USE:
            button["style"] = "primary"
        elements.append(button)
    if not elements:
        return None
    return {"type": "actions", "block_id": f"mc_actions:{reply.conversation_id}:{reply.turn_index}", "elements": elements}


def reason_text(card: TrackCard, *, pending: bool = False, streamed: bool = False, partial: str = "") -> str:
    """What the card's reason section says: the final reason, the part written so far, or a note."""
    if streamed:
        return STREAMED_REASON
    if partial:
        return _cut(escape(partial) + " …", SECTION_MAX_CHARS)
    if pending:
        return PENDING_REASON
    return _cut(escape(card.reason or "(no reason given)"), SECTION_MAX_CHARS)


def track_blocks(card: TrackCard, *, mode: str, reason: str) -> list[Block]:
    """One track: header, artist and facts, the reason, its source."""
    facts = {
        "Tags": ", ".join(_tags(card)) or "—",
        "Tempo": f"{card.tempo_bpm:.0f} BPM" if card.tempo_bpm else "—",
        "Licence": card.licence or "unknown",
        "Length": _duration(card.duration_s),
        "Mode": mode,
    }
    blocks: list[Block] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(f"🎵 {card.title}", HEADER_MAX_CHARS)}},
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": _cut(f"by *{escape(card.artist or 'unknown artist')}*", SECTION_MAX_CHARS)},
            "fields": [
                {"type": "mrkdwn", "text": _cut(f"*{name}*\n{escape(value)}", FIELD_MAX_CHARS)} for name, value in facts.items()
            ],
        },
        {"type": "section", "block_id": "reason", "text": {"type": "mrkdwn", "text": reason}},
    ]
    notes = [f"reason: {card.reason_source}"] if card.reason_source and reason not in (PENDING_REASON, STREAMED_REASON) else []
    if card.excerpt is None and card.excerpt_note:
        notes.append(card.excerpt_note)
    if notes:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": escape(" · ".join(notes))}]})
    return blocks


def card_blocks(reply: Reply, *, streamed: bool = False, partial: str = "") -> list[Block]:
    """The whole card of a RECOMMENDATION reply (or the message of an EXHAUSTED / PREVIEW one) + buttons."""
    blocks: list[Block] = []
    for i, card in enumerate(reply.tracks):
        first = i == 0
        reason = reason_text(
            card, pending=first and reply.reason_pending, streamed=first and streamed, partial=partial if first else ""
        )
        if i:
            blocks.append({"type": "divider"})
        blocks += track_blocks(card, mode=reply.mode, reason=reason)
    context = []
    if reply.understood:
        context.append(f"understood: {reply.understood}")
    if reply.unmatched:
        context.append(f"not understood: {', '.join(reply.unmatched)}")
    if reply.unavailable:
        context.append(f"nothing in the catalog for: {', '.join(reply.unavailable)}")
    if reply.filters:
        context.append(f"filters: {reply.filters}")
    if not reply.tracks and reply.message:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _cut(escape(reply.message), SECTION_MAX_CHARS)}})
    elif reply.message:
        context.append(reply.message)
    if context:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": escape(" · ".join(context))}]})
    actions = buttons(reply)
    if actions is not None:
        blocks.append(actions)
    return blocks


def card_text(reply: Reply) -> str:
    """The plain-text fallback (notifications, screen readers) of a card."""
    if reply.track is not None:
        return f"🎵 {reply.track.title} by {reply.track.artist or 'unknown artist'}"
    return reply.message or "No track this time."


# =================================================================================================
# progress, notes
# =================================================================================================


def placeholder(status: str, ahead: int | None = None) -> tuple[str, list[Block]]:
    """The progress message a request shows until its card replaces it: (text, blocks)."""
    text = f"🎧 {status}"
    if ahead:
        text += f" ({ahead} ahead of you)"
    return text, [{"type": "context", "elements": [{"type": "mrkdwn", "text": escape(text)}]}]


def note_blocks(text: str) -> list[Block]:
    return [{"type": "section", "text": {"type": "mrkdwn", "text": _cut(escape(text), SECTION_MAX_CHARS)}}]


# =================================================================================================
# modals
# =================================================================================================


@dataclass(frozen=True)
class RefineTarget:
    """What a "Refine…" modal submission answers: the action and the thread to reply in."""

    action_id: str  # Action.custom_id() of the REFINE action (conversation and turn)
    channel: str
    thread_ts: str

    def dump(self) -> str:
        return json.dumps({"a": self.action_id, "c": self.channel, "t": self.thread_ts})

    @classmethod
    def load(cls, metadata: str) -> RefineTarget:
        data = json.loads(metadata)
        return cls(str(data["a"]), str(data["c"]), str(data["t"]))


def refine_modal(target: RefineTarget) -> dict[str, Any]:
    """The "Refine…" modal: one text box for the words that steer the next pick."""
    return {
        "type": "modal",
        "callback_id": REFINE_VIEW,
        "private_metadata": target.dump(),
        "title": {"type": "plain_text", "text": "Refine the pick"},
        "submit": {"type": "plain_text", "text": "Find it"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "input",
                "block_id": REFINE_BLOCK,
                "label": {"type": "plain_text", "text": "What should change?"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": REFINE_INPUT,
                    "max_length": MAX_REFINE_CHARS,
                    "placeholder": {"type": "plain_text", "text": "more drums, less sad, under 2 minutes, CC-BY only"},
                },
            }
        ],
    }


def music_modal(*, channel: str, words: str = "") -> dict[str, Any]:
    """The /music modal: a video file (slash commands carry no files) and what the user wants."""
    words_element: Block = {
        "type": "plain_text_input",
        "action_id": WORDS_INPUT,
        "max_length": MAX_REFINE_CHARS,
        "placeholder": {"type": "plain_text", "text": "calm piano, no vocals, under 2 minutes"},
    }
    if words:
        words_element["initial_value"] = words[:MAX_REFINE_CHARS]
    return {
        "type": "modal",
        "callback_id": MUSIC_VIEW,
        "private_metadata": json.dumps({"c": channel}),
        "title": {"type": "plain_text", "text": "Music for a video"},
        "submit": {"type": "plain_text", "text": "Find music"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "input",
                "block_id": VIDEO_BLOCK,
                "label": {"type": "plain_text", "text": "Your video"},
                "element": {"type": "file_input", "action_id": VIDEO_INPUT, "filetypes": list(VIDEO_FILETYPES), "max_files": 1},
            },
            {
                "type": "input",
                "block_id": WORDS_BLOCK,
                "optional": True,
                "label": {"type": "plain_text", "text": "What are you looking for?"},
                "element": words_element,
            },
        ],
    }


def modal_value(view: dict[str, Any], block_id: str, action_id: str) -> dict[str, Any]:
    """The state of one input of a submitted view ({} when absent)."""
    return dict(((view.get("state") or {}).get("values") or {}).get(block_id, {}).get(action_id) or {})


def mention_free(text: str, bot_user_id: str | None) -> str:
    """A message's words without the bot's @mention."""
    if bot_user_id:
        text = text.replace(f"<@{bot_user_id}>", "")
    return " ".join(text.split())


def first_video(files: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The first shared file that is a video (by MIME type or file type)."""
    for f in files or ():
        if str(f.get("mimetype", "")).startswith("video/") or str(f.get("filetype", "")).lower() in VIDEO_FILETYPES:
            return f
    return None


"""The card's buttons and the feedback modal.

Buttons are `DynamicItem`s: the custom id is the service's versioned action id
("mc1:another:12:3", `Action.custom_id()`), so any process, including one started after the card
was sent, turns a press into an `Action` without state of its own (discord.py matches the
template in `add_dynamic_items`). Who may press (the owner), which turn still counts, and
"never twice" are the service's rules: its typed errors come back as ephemeral notes.

"Feedback…" opens a modal whose custom id is the same REFINE action id. The submit is handled
from `on_interaction` by that id (not by the modal object kept in memory), so a restart between
opening and submitting loses nothing.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord

from bot.service.contract import ACTION_VERSION, MAX_REFINE_CHARS, Action, ActionKind

if TYPE_CHECKING:
    from bot.adapters.discord.adapter import DiscordAdapter

FEEDBACK_INPUT_ID = "text"  # custom id of the modal's text box
MODAL_TIMEOUT_S = 15 * 60.0  # the modal object is dropped after this (the submit still works: see above)
ACTION_TEMPLATE = re.compile(
    rf"{ACTION_VERSION}:(?P<kind>{'|'.join(k.value for k in ActionKind)}):(?P<conv>\d+):(?P<turn>\d+)"
)


def _adapter(interaction: discord.Interaction) -> DiscordAdapter:
    return interaction.client.adapter  # type: ignore[attr-defined]


# The buttons, in the order a card shows them.
BUTTONS: dict[ActionKind, tuple[str, discord.ButtonStyle]] = {
    ActionKind.USE: ("Use this", discord.ButtonStyle.success),
    ActionKind.ANOTHER: ("Another", discord.ButtonStyle.primary),
    ActionKind.REFINE: ("Feedback…", discord.ButtonStyle.secondary),
    ActionKind.START_OVER: ("Start over", discord.ButtonStyle.secondary),
}


class ActionButton(discord.ui.DynamicItem[discord.ui.Button], template=ACTION_TEMPLATE):
    """One of a card's buttons: Use this / Another / Feedback… / Start over."""

    def __init__(self, action: Action) -> None:
        label, style = BUTTONS[action.kind]
        super().__init__(discord.ui.Button(label=label, style=style, custom_id=action.custom_id()))
        self.action = action

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ActionButton:
        return cls(Action.parse(match.group(0)))

    async def callback(self, interaction: discord.Interaction) -> None:
        """Hand the press to the adapter (the modal for Feedback…, the service for the others)."""
        await _adapter(interaction).on_button(interaction, self.action)


class FeedbackModal(discord.ui.Modal, title="What should change?"):
    """A text box for words that steer the next pick ("less sad, more drums")."""

    def __init__(self, action: Action) -> None:
        super().__init__(custom_id=action.custom_id(), timeout=MODAL_TIMEOUT_S)
        self.add_item(
            discord.ui.Label(
                text="Tell me what to change",
                component=discord.ui.TextInput(
                    custom_id=FEEDBACK_INPUT_ID,
                    style=discord.TextStyle.paragraph,
                    placeholder="less sad, more drums",
                    max_length=MAX_REFINE_CHARS,
                    required=True,
                ),
            )
        )

    async def on_submit(self, interaction: discord.Interaction, /) -> None:
        """Nothing: the adapter's on_interaction handles every submit by its custom id (see above)."""


def modal_text(data: Any) -> str:
    """The text box's value from a modal-submit payload (labels (type 18) or action rows (type 1))."""
    for comp in (data or {}).get("components", []):
        inner = [comp["component"]] if comp.get("type") == 18 else comp.get("components", [])
        for c in inner:
            if c.get("custom_id") == FEEDBACK_INPUT_ID:
                return str(c.get("value") or "")
    return ""

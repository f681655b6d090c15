"""The platform-neutral conversation service (DESIGN.md, "Layout"): one module per concern.

- contract.py: requests, actions, events and media files shared by every adapter;
- conversation.py: the service (turn logic and persistence); turns.py: a turn's retrieval;
- videos.py: the video-feature cache; assets.py: what the indexer left per track;
- reasons.py: the LLM's reason or the tag summary; media.py: excerpts and previews;
- intents.py and filters.py: what the user's words ask for; pool.py: model work off the loop;
- errors.py: typed errors with a chat sentence; replies.py: the reply and its track card;
- catalog_admin.py, catalog_layout.py, scheduler.py: catalog administration and refreshes.

The names below are imported lazily (the models load torch): `from bot.service import X` costs
nothing until X is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConversationService": "bot.service.conversation",
    "ConversationState": "bot.service.conversation",
    "ServiceConfig": "bot.service.conversation",
    "Reply": "bot.service.replies",
    "ReplyKind": "bot.service.replies",
    "TrackCard": "bot.service.replies",
    "ScoredTrack": "bot.service.replies",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bot.service' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_EXPORTS)

"""Intents in the user's words: "use this", "another (one)"; everything else is feedback (bot/service/filters.py cuts filters out)."""

from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)


# "another", "next", "skip": a rejection (with words after it, the words are feedback)
ANOTHER_RE = re.compile(
    r"^\s*(?:/another\b|(?:give\s+me\s+|show\s+me\s+|try\s+|play\s+)?(?:another|next|skip|something\s+else|a\s+different)"
    r"(?:\s+(?:one|track|song|tune|pick|please|then))*)[\s,.;:!-]*",
    re.I,
)
USE_RE = re.compile(
    r"^\s*(?:/use|use\s+(?:this|it|that)(?:\s+one)?|i'?ll\s+take\s+(?:it|this)|this\s+one|perfect|that'?s\s+it)\s*[.!]*\s*$", re.I
)

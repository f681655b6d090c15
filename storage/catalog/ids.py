"""Catalog point ids: the UUID of the first 128 bits of a track's sha256 content hash.

The catalog takes integers or UUIDs as point ids; this one is deterministic across refreshes and
processes, and the full hash stays in the payload (`content_hash`) and keys the SQL `tracks` row.
"""

from __future__ import annotations

import re
import uuid


def track_id_for(content_hash: str) -> str:
    """The catalog point id of a track: the UUID of the first 128 bits of its sha256 (module docstring)."""
    if not re.fullmatch(r"[0-9a-f]{64}", content_hash):
        raise ValueError(f"not a sha256 hex digest: {content_hash!r}")
    return str(uuid.UUID(hex=content_hash[:32]))

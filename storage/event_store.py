"""Idempotency of platform events (DESIGN.md, "Data flow" step 1).

Slack retries an event it thinks was not acknowledged in 3 s, and a reconnecting Discord gateway
can replay an interaction: the adapter calls :meth:`EventStore.mark_processed` first and drops the
event when it returns False. The unique (platform, event_id) constraint makes the check atomic
across tasks and processes: exactly one caller wins the insert.
"""

from __future__ import annotations

import logging
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import read_only, upsert_insert, utcnow
from storage.models import processed_events

log = logging.getLogger(__name__)


class EventStore:
    """The set of platform event ids already handled."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reader = read_only(engine)

    async def mark_processed(self, *, platform: str, event_id: str) -> bool:
        """Record the event; True only for the first caller with this (platform, event_id)."""
        async with self._engine.begin() as conn:
            insert = (
                upsert_insert(conn, processed_events)
                .values(platform=platform, event_id=event_id, processed_at=utcnow())
                .on_conflict_do_nothing(index_elements=["platform", "event_id"])
                .returning(processed_events.c.id)
            )
            first = (await conn.execute(insert)).first() is not None
        if not first:
            log.info("dropped duplicate %s event %s", platform, event_id)
        return first

    async def was_processed(self, *, platform: str, event_id: str) -> bool:
        query = sa.select(processed_events.c.id).where(
            processed_events.c.platform == platform, processed_events.c.event_id == event_id
        )
        async with self._reader.connect() as conn:
            return (await conn.execute(query)).first() is not None

    async def prune(self, *, older_than: datetime) -> int:
        """Forget events processed before ``older_than`` (platforms retry within minutes); return how many."""
        async with self._engine.begin() as conn:
            result = await conn.execute(sa.delete(processed_events).where(processed_events.c.processed_at < older_than))
        return int(result.rowcount)

"""Per-user rate limits as token buckets in SQL, shared by every bot process.

Each (platform, user, bucket) holds ``tokens`` (at most ``capacity``) that refill at
``refill_per_s``; a request costs tokens and is refused when too few are left. The refill and the
spend happen in one conditional UPDATE, so concurrent requests from several tasks or processes
cannot spend the same token twice: PostgreSQL re-evaluates the UPDATE's condition on the row
version a concurrent writer left, SQLite runs one writer at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import upsert_insert
from storage.models import rate_limits

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    remaining: float  # tokens left after this request
    retry_after_s: float  # 0 when allowed; else seconds until ``cost`` tokens are back


class RateLimitStore:
    """A token bucket per user for one kind of request (``bucket``)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        capacity: float,
        refill_per_s: float,
        bucket: str = "turns",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if capacity <= 0 or refill_per_s <= 0:
            raise ValueError("capacity and refill_per_s must be positive")
        self._engine = engine
        self.capacity = float(capacity)  # tokens
        self.refill_per_s = float(refill_per_s)  # tokens per second
        self.bucket = bucket
        self._clock = clock  # epoch seconds

    async def acquire(self, *, platform: str, user_key: str, cost: float = 1.0) -> RateDecision:
        """Spend ``cost`` tokens of this user's bucket if it has them (atomic)."""
        if not 0 < cost <= self.capacity:
            raise ValueError(f"cost {cost} must be in (0, capacity={self.capacity:g}]")
        now = float(self._clock())
        c = rate_limits.c
        key = sa.and_(c.platform == platform, c.user_key == user_key, c.bucket == self.bucket)
        # Clocks of several processes disagree a little: never refill for negative elapsed time.
        elapsed = sa.case((c.refilled_at < now, now - c.refilled_at), else_=0.0)
        refilled = c.tokens + elapsed * self.refill_per_s
        level = sa.case((refilled > self.capacity, self.capacity), else_=refilled)
        async with self._engine.begin() as conn:
            create = (
                upsert_insert(conn, rate_limits)
                .values(platform=platform, user_key=user_key, bucket=self.bucket, tokens=self.capacity, refilled_at=now)
                .on_conflict_do_nothing(index_elements=["platform", "user_key", "bucket"])
            )
            await conn.execute(create)
            spend = (
                sa.update(rate_limits)
                .where(key, level >= cost)
                .values(tokens=level - cost, refilled_at=sa.case((c.refilled_at < now, now), else_=c.refilled_at))
                .returning(c.tokens)
            )
            remaining = (await conn.execute(spend)).scalar_one_or_none()
            if remaining is None:
                available = (await conn.execute(sa.select(level).where(key))).scalar_one()
        if remaining is not None:
            return RateDecision(allowed=True, remaining=float(remaining), retry_after_s=0.0)
        wait = (cost - float(available)) / self.refill_per_s
        log.info("rate limit: %s user %s refused in bucket %s for %.1f s", platform, user_key, self.bucket, wait)
        return RateDecision(allowed=False, remaining=float(available), retry_after_s=max(wait, 0.0))

    async def reset(self, *, platform: str, user_key: str) -> None:
        """Forget a user's bucket (it starts full again)."""
        c = rate_limits.c
        async with self._engine.begin() as conn:
            await conn.execute(
                sa.delete(rate_limits).where(c.platform == platform, c.user_key == user_key, c.bucket == self.bucket)
            )

"""Process each Slack delivery once (research/platforms.md §2.4).

Slack redelivers an event it thinks was not acknowledged within 3 s (at once, after ~1 min, after
~5 min; in Socket Mode too), and a message that mentions the bot arrives twice, as `message` and
as `app_mention`, with different event ids. So:

- every Events API delivery is claimed on its envelope's `event_id` before anything runs; a second
  claim of the same id (a retry of a delivery already taken) is answered 200 and dropped;
- a user's message is claimed again on `(channel, ts)` before its work starts, so the two events
  of one message make one reply.

Retries are never dropped for carrying `X-Slack-Retry-Num`: when the first delivery was lost, the
retry is the only copy, and it wins the claim. The claim lives in Redis (`SET key 1 NX EX 3600`)
when one is configured (several bot processes share it), else in the SQL event store
(storage/event_store.py: a unique row per event id, atomic across processes on one database).
When the store cannot be reached, the delivery is processed (a duplicate reply is better than a
lost one) and a warning is logged.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

log = logging.getLogger(__name__)

PLATFORM = "slack"
CLAIM_TTL_S = 3600  # seconds a claim is kept: Slack's last retry comes ~5 min after the first
DEFAULT_REDIS_PREFIX = "musechat:slack:seen:"


class Claims(Protocol):
    async def claim(self, key: str) -> bool:
        """True for the first caller with `key` (within the TTL), False for every later one."""
        ...

    async def close(self) -> None: ...


class RedisClaims:
    """Claims in Redis: `SET <prefix><key> 1 NX EX 3600`."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_REDIS_PREFIX, ttl_s: int = CLAIM_TTL_S) -> None:
        import redis.asyncio as redis

        self._redis: Any = redis.from_url(url)
        self._prefix = prefix
        self._ttl_s = ttl_s

    async def claim(self, key: str) -> bool:
        return bool(await self._redis.set(self._prefix + key, b"1", nx=True, ex=self._ttl_s))

    async def close(self) -> None:
        await self._redis.aclose()


class SqlClaims:
    """Claims in the SQL event store (one row per (platform, event id))."""

    def __init__(self, engine: Any) -> None:
        from storage.event_store import EventStore

        self._store = EventStore(engine)

    async def claim(self, key: str) -> bool:
        return await self._store.mark_processed(platform=PLATFORM, event_id=key)

    async def close(self) -> None:
        return None


class MemoryClaims:
    """Claims in this process only: for one process without any store (tests, a quick local run)."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    async def claim(self, key: str) -> bool:
        if key in self._seen:
            return False
        self._seen.add(key)
        return True

    async def close(self) -> None:
        return None


async def first_time(claims: Claims, key: str) -> bool:
    """Claim `key`; on a store failure, log and say yes (never lose a delivery to an outage)."""
    try:
        first = await claims.claim(key)
    except Exception as exc:  # noqa: BLE001 - Redis or SQL down: process rather than drop
        log.warning("could not record Slack delivery %s (%s); processing it anyway", key, type(exc).__name__)
        return True
    if not first:
        log.info("dropped a repeated Slack delivery %s", key)
    return first


def event_key(body: dict[str, Any]) -> str | None:
    """The claim key of an Events API body (its envelope's event_id), None for other payloads."""
    if body.get("type") != "event_callback" or not body.get("event_id"):
        return None
    return f"evt:{body['event_id']}"


def message_key(channel: str, ts: str) -> str:
    return f"msg:{channel}:{ts}"

"""Conversations, their turns, recommendations and feedback (DESIGN.md, "Data flow" steps 2 and 6).

Every step of a conversation is persisted so that a restart resumes it: the turn's inputs (the
video's content hash and media-store reference, the user's words, the candidate track that the
paper's turn k >= 2 feeds back as x_mc, section 4), the ranked recommendations with their reasons,
which recommender answered, the timings, and the user's feedback on each pick.

Turn indexes are allocated by incrementing ``conversations.turn_count`` in the same transaction
that inserts the turn, so they are unique and contiguous (1, 2, 3...) even without the
conversation lock: the UPDATE takes the conversation's row lock on PostgreSQL, and SQLite write
transactions start with BEGIN IMMEDIATE. The lock (``storage.locks``) is still what keeps the
bot's read-recommend-write cycle of one conversation from interleaving.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.db import NotFoundError, as_utc, read_only, upsert_insert, utcnow
from storage.models import (
    ConversationStatus,
    FeedbackKind,
    conversations,
    feedback,
    recommendations,
    turns,
    users,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class User:
    id: int
    platform: str
    platform_user_id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Conversation:
    id: int
    platform: str
    workspace_id: str  # Discord guild / Slack team; "" for the terminal
    channel_id: str
    thread_id: str  # "" when the conversation is not in a thread
    user_id: int
    status: ConversationStatus
    profile: str
    model_version: str
    turn_count: int  # index of the last stored turn, 0 before the first
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Recommendation:
    rank: int  # 1 = best
    track_id: str  # track content hash (storage.models docstring)
    score: float  # cosine similarity
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Turn:
    id: int
    conversation_id: int
    index: int  # 1-based, contiguous per conversation
    user_text: str
    video_sha256: str | None
    video_ref: str | None
    candidate_track_id: str | None
    mode: str
    timings: Mapping[str, float]
    created_at: datetime
    recommendations: tuple[Recommendation, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Feedback:
    id: int
    conversation_id: int
    turn_id: int
    kind: FeedbackKind
    text: str
    track_id: str | None
    created_at: datetime


class ConversationStore:
    """Users, conversations, turns, recommendations and feedback in SQL."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reader = read_only(engine)

    # --- users and conversations -----------------------------------------------------------

    async def get_or_create_user(self, *, platform: str, platform_user_id: str, name: str = "") -> User:
        """Return the user, creating it; a non-empty ``name`` replaces the stored display name."""
        async with self._engine.begin() as conn:
            return _user(await _upsert_user(conn, platform=platform, platform_user_id=platform_user_id, name=name))

    async def get_user(self, *, user_id: int) -> User | None:
        """The user with this (SQL) id: who owns a conversation."""
        async with self._reader.connect() as conn:
            row = (await conn.execute(sa.select(users).where(users.c.id == user_id))).mappings().first()
        return None if row is None else _user(row)

    async def get_or_create_conversation(
        self,
        *,
        platform: str,
        channel_id: str,
        thread_id: str = "",
        workspace_id: str = "",
        platform_user_id: str,
        user_name: str = "",
        profile: str,
        model_version: str = "",
    ) -> Conversation:
        """Return the conversation of (platform, channel, thread), creating it and its user.

        An existing conversation is returned as stored: it keeps the profile and model version
        it started with, and its original user (whoever writes in the thread later).
        """
        now = utcnow()
        async with self._engine.begin() as conn:
            user = await _upsert_user(conn, platform=platform, platform_user_id=platform_user_id, name=user_name)
            insert = (
                upsert_insert(conn, conversations)
                .values(
                    platform=platform,
                    workspace_id=workspace_id,
                    channel_id=channel_id,
                    thread_id=thread_id,
                    user_id=user["id"],
                    status=ConversationStatus.ACTIVE.value,
                    profile=profile,
                    model_version=model_version,
                    turn_count=0,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=["platform", "channel_id", "thread_id"])
                .returning(*conversations.c)
            )
            row = (await conn.execute(insert)).mappings().first()
            if row is None:  # already there (perhaps created by a concurrent transaction just now)
                row = (await conn.execute(_by_keys(platform, channel_id, thread_id))).mappings().one()
            else:
                log.info("conversation %d opened on %s channel %s thread %r", row["id"], platform, channel_id,
                         thread_id)  # fmt: skip
        return _conversation(row)

    async def get_conversation(self, *, platform: str, channel_id: str, thread_id: str = "") -> Conversation | None:
        """Return the conversation of (platform, channel, thread), or None."""
        async with self._reader.connect() as conn:
            row = (await conn.execute(_by_keys(platform, channel_id, thread_id))).mappings().first()
        return None if row is None else _conversation(row)

    async def get_conversation_by_id(self, *, conversation_id: int) -> Conversation | None:
        async with self._reader.connect() as conn:
            query = sa.select(conversations).where(conversations.c.id == conversation_id)
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else _conversation(row)

    async def set_status(self, *, conversation_id: int, status: ConversationStatus | str) -> Conversation:
        """Set the conversation's status (e.g. closed after "use this"); raise NotFoundError if absent."""
        status = ConversationStatus(status)
        async with self._engine.begin() as conn:
            update = (
                sa.update(conversations)
                .where(conversations.c.id == conversation_id)
                .values(status=status.value, updated_at=utcnow())
                .returning(*conversations.c)
            )
            row = (await conn.execute(update)).mappings().first()
        if row is None:
            raise NotFoundError(f"conversation {conversation_id} does not exist")
        return _conversation(row)

    # --- turns ------------------------------------------------------------------------------

    async def add_turn(
        self,
        *,
        conversation_id: int,
        mode: str,
        user_text: str = "",
        video_sha256: str | None = None,
        video_ref: str | None = None,
        candidate_track_id: str | None = None,
        timings: Mapping[str, float] | None = None,
        recommendations: Sequence[Recommendation] = (),
        feedback_on_previous: PendingFeedback | None = None,
        status: ConversationStatus | None = None,
    ) -> Turn:
        """Store the next turn of a conversation with its recommendations, all or nothing.

        The turn gets index ``turn_count + 1``; `feedback_on_previous` (the user's answer to the
        turn before, which led to this one) and a new `status` are written in the same transaction:
        if anything fails before the commit, neither the feedback, the turn, its recommendations,
        the status nor the counter change.
        """
        now = utcnow()
        timings_json = {k: float(v) for k, v in (timings or {}).items()}
        async with self._engine.begin() as conn:
            # First statement is a write: it takes the conversation's row lock (PostgreSQL).
            bump = (
                sa.update(conversations)
                .where(conversations.c.id == conversation_id)
                .values(turn_count=conversations.c.turn_count + 1, updated_at=now)
                .returning(conversations.c.turn_count)
            )
            index = (await conn.execute(bump)).scalar_one_or_none()
            if index is None:
                raise NotFoundError(f"conversation {conversation_id} does not exist")
            insert = (
                sa.insert(turns)
                .values(
                    conversation_id=conversation_id,
                    turn_index=index,
                    user_text=user_text,
                    video_sha256=video_sha256,
                    video_ref=video_ref,
                    candidate_track_id=candidate_track_id,
                    mode=mode,
                    timings=timings_json,
                    created_at=now,
                )
                .returning(turns.c.id)
            )
            turn_id = (await conn.execute(insert)).scalar_one()
            await self._insert_recommendations(conn, turn_id, recommendations)
            if feedback_on_previous is not None:
                await _insert_feedback(conn, conversation_id, feedback_on_previous, now)
            if status is not None:
                await conn.execute(
                    sa.update(conversations).where(conversations.c.id == conversation_id).values(status=ConversationStatus(status).value)
                )
        log.debug("conversation %d: stored turn %d (%d recommendations)", conversation_id, index, len(recommendations))
        return Turn(
            id=turn_id,
            conversation_id=conversation_id,
            index=index,
            user_text=user_text,
            video_sha256=video_sha256,
            video_ref=video_ref,
            candidate_track_id=candidate_track_id,
            mode=mode,
            timings=timings_json,
            created_at=now,
            recommendations=tuple(sorted(recommendations, key=lambda r: r.rank)),
        )

    @staticmethod
    async def _insert_recommendations(
        conn: AsyncConnection, turn_id: int, recs: Sequence[Recommendation]
    ) -> None:
        if not recs:
            return
        rows = [
            {"turn_id": turn_id, "rank": r.rank, "track_id": r.track_id, "score": float(r.score), "reason": r.reason}
            for r in recs
        ]
        await conn.execute(sa.insert(recommendations), rows)

    async def list_turns(self, *, conversation_id: int) -> list[Turn]:
        """All turns of a conversation in order, each with its recommendations by rank."""
        async with self._reader.connect() as conn:
            turn_rows = (
                (
                    await conn.execute(
                        sa.select(turns).where(turns.c.conversation_id == conversation_id).order_by(turns.c.turn_index)
                    )
                )
                .mappings()
                .all()
            )
            rec_rows = (
                (
                    await conn.execute(
                        sa.select(recommendations)
                        .join(turns, turns.c.id == recommendations.c.turn_id)
                        .where(turns.c.conversation_id == conversation_id)
                        .order_by(recommendations.c.turn_id, recommendations.c.rank)
                    )
                )
                .mappings()
                .all()
            )
        by_turn: dict[int, list[Recommendation]] = {}
        for r in rec_rows:
            by_turn.setdefault(r["turn_id"], []).append(
                Recommendation(rank=r["rank"], track_id=r["track_id"], score=r["score"], reason=r["reason"])
            )
        return [_turn(row, tuple(by_turn.get(row["id"], ()))) for row in turn_rows]

    async def shown_track_ids(self, *, conversation_id: int) -> tuple[str, ...]:
        """Every track recommended so far in the conversation, in the order shown, without repeats.

        The catalog search excludes these (DESIGN.md, "Data flow" step 3).
        """
        query = (
            sa.select(recommendations.c.track_id)
            .join(turns, turns.c.id == recommendations.c.turn_id)
            .where(turns.c.conversation_id == conversation_id)
            .order_by(turns.c.turn_index, recommendations.c.rank)
        )
        async with self._reader.connect() as conn:
            ids = (await conn.execute(query)).scalars().all()
        return tuple(dict.fromkeys(ids))

    # --- feedback ---------------------------------------------------------------------------

    async def record_feedback(
        self, *, turn_id: int, kind: FeedbackKind | str, text: str = "", track_id: str | None = None,
        status: ConversationStatus | None = None,
    ) -> Feedback:  # fmt: skip
        """Store the user's answer to a turn: accept ("use this"), another, or refine with words.

        With `status`, the conversation's status changes in the same transaction ("use this" closes it).
        """
        kind = FeedbackKind(kind)
        now = utcnow()
        async with self._engine.begin() as conn:
            conversation_id = (
                await conn.execute(sa.select(turns.c.conversation_id).where(turns.c.id == turn_id))
            ).scalar_one_or_none()
            if conversation_id is None:
                raise NotFoundError(f"turn {turn_id} does not exist")
            insert = (
                sa.insert(feedback)
                .values(
                    conversation_id=conversation_id,
                    turn_id=turn_id,
                    kind=kind.value,
                    text=text,
                    track_id=track_id,
                    created_at=now,
                )
                .returning(feedback.c.id)
            )
            feedback_id = (await conn.execute(insert)).scalar_one()
            values: dict[str, Any] = {"updated_at": now}
            if status is not None:
                values["status"] = ConversationStatus(status).value
            await conn.execute(sa.update(conversations).where(conversations.c.id == conversation_id).values(**values))
        return Feedback(
            id=feedback_id,
            conversation_id=conversation_id,
            turn_id=turn_id,
            kind=kind,
            text=text,
            track_id=track_id,
            created_at=now,
        )

    async def set_reason(self, *, turn_id: int, rank: int, reason: str) -> None:
        """Replace a recommendation's reason (the LLM's, written after the card was shown)."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                sa.update(recommendations)
                .where(recommendations.c.turn_id == turn_id, recommendations.c.rank == rank)
                .values(reason=reason)
            )
        if result.rowcount == 0:
            raise NotFoundError(f"turn {turn_id} has no recommendation of rank {rank}")

    async def list_feedback(self, *, conversation_id: int) -> list[Feedback]:
        """All feedback of a conversation, oldest first."""
        query = sa.select(feedback).where(feedback.c.conversation_id == conversation_id).order_by(feedback.c.id)
        async with self._reader.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            Feedback(
                id=r["id"],
                conversation_id=r["conversation_id"],
                turn_id=r["turn_id"],
                kind=FeedbackKind(r["kind"]),
                text=r["text"],
                track_id=r["track_id"],
                created_at=_ts(r["created_at"]),
            )
            for r in rows
        ]


# --- row → domain ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingFeedback:
    """The user's answer to a turn, written with the turn it leads to (`add_turn`)."""

    turn_id: int
    kind: FeedbackKind
    text: str = ""
    track_id: str | None = None


async def _insert_feedback(conn: AsyncConnection, conversation_id: int, fb: PendingFeedback, now: datetime) -> None:
    owner = (await conn.execute(sa.select(turns.c.conversation_id).where(turns.c.id == fb.turn_id))).scalar_one_or_none()
    if owner != conversation_id:
        raise NotFoundError(f"turn {fb.turn_id} is not a turn of conversation {conversation_id}")
    await conn.execute(
        sa.insert(feedback).values(
            conversation_id=conversation_id, turn_id=fb.turn_id, kind=FeedbackKind(fb.kind).value,
            text=fb.text, track_id=fb.track_id, created_at=now,
        )  # fmt: skip
    )


async def _upsert_user(conn: AsyncConnection, *, platform: str, platform_user_id: str, name: str) -> RowMapping:
    now = utcnow()
    insert = upsert_insert(conn, users).values(
        platform=platform, platform_user_id=platform_user_id, name=name, created_at=now, updated_at=now
    )
    if name:
        insert = insert.on_conflict_do_update(
            index_elements=["platform", "platform_user_id"],
            set_={"name": insert.excluded.name, "updated_at": now},
            where=users.c.name != insert.excluded.name,
        )
    else:
        insert = insert.on_conflict_do_nothing(index_elements=["platform", "platform_user_id"])
    row = (await conn.execute(insert.returning(*users.c))).mappings().first()
    if row is None:  # conflict and nothing to update
        query = sa.select(users).where(users.c.platform == platform, users.c.platform_user_id == platform_user_id)
        row = (await conn.execute(query)).mappings().one()
    return row


def _by_keys(platform: str, channel_id: str, thread_id: str) -> sa.Select[Any]:
    return sa.select(conversations).where(
        conversations.c.platform == platform,
        conversations.c.channel_id == channel_id,
        conversations.c.thread_id == thread_id,
    )


def _ts(value: datetime) -> datetime:
    out = as_utc(value)
    assert out is not None
    return out


def _user(row: RowMapping) -> User:
    return User(
        id=row["id"],
        platform=row["platform"],
        platform_user_id=row["platform_user_id"],
        name=row["name"],
        created_at=_ts(row["created_at"]),
    )


def _conversation(row: RowMapping) -> Conversation:
    return Conversation(
        id=row["id"],
        platform=row["platform"],
        workspace_id=row["workspace_id"],
        channel_id=row["channel_id"],
        thread_id=row["thread_id"],
        user_id=row["user_id"],
        status=ConversationStatus(row["status"]),
        profile=row["profile"],
        model_version=row["model_version"],
        turn_count=row["turn_count"],
        created_at=_ts(row["created_at"]),
        updated_at=_ts(row["updated_at"]),
    )


def _turn(row: RowMapping, recs: tuple[Recommendation, ...]) -> Turn:
    return Turn(
        id=row["id"],
        conversation_id=row["conversation_id"],
        index=row["turn_index"],
        user_text=row["user_text"],
        video_sha256=row["video_sha256"],
        video_ref=row["video_ref"],
        candidate_track_id=row["candidate_track_id"],
        mode=row["mode"],
        timings=dict(row["timings"]),
        created_at=_ts(row["created_at"]),
        recommendations=recs,
    )

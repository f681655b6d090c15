"""Initial schema: users, conversations, turns, recommendations, feedback, tracks, catalog
versions, jobs, processed platform events and rate limits.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Frozen copy of the schema as first shipped: it does not import storage.models, which moves on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("platform_user_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False, server_default=""),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("platform", "platform_user_id", name="uq_users_platform_platform_user_id"),
    )
    op.create_table(
        "conversations",
        sa.Column("id", Id, autoincrement=True),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("workspace_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("channel_id", sa.String(64), nullable=False),
        sa.Column("thread_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("profile", sa.String(32), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False, server_default=""),
        sa.Column("turn_count", sa.Integer(), nullable=False, server_default="0"),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_conversations"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_conversations_user_id_users"),
        sa.UniqueConstraint(
            "platform", "channel_id", "thread_id", name="uq_conversations_platform_channel_id_thread_id"
        ),
    )
    op.create_index("ix_conversations_user_id", "conversations", ["user_id"])
    op.create_table(
        "turns",
        sa.Column("id", Id, autoincrement=True),
        sa.Column("conversation_id", Id, nullable=False),
        sa.Column("turn_index", sa.Integer(), nullable=False),
        sa.Column("user_text", sa.Text(), nullable=False, server_default=""),
        sa.Column("video_sha256", sa.String(64), nullable=True),
        sa.Column("video_ref", sa.String(512), nullable=True),
        sa.Column("candidate_track_id", sa.String(64), nullable=True),
        sa.Column("mode", sa.String(32), nullable=False),
        sa.Column("timings", sa.JSON(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_turns"),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_turns_conversation_id_conversations",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("conversation_id", "turn_index", name="uq_turns_conversation_id_turn_index"),
    )
    op.create_table(
        "recommendations",
        sa.Column("id", Id, autoincrement=True),
        sa.Column("turn_id", Id, nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("track_id", sa.String(64), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("id", name="pk_recommendations"),
        sa.ForeignKeyConstraint(
            ["turn_id"], ["turns.id"], name="fk_recommendations_turn_id_turns", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("turn_id", "rank", name="uq_recommendations_turn_id_rank"),
    )
    op.create_table(
        "feedback",
        sa.Column("id", Id, autoincrement=True),
        sa.Column("conversation_id", Id, nullable=False),
        sa.Column("turn_id", Id, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False, server_default=""),
        sa.Column("track_id", sa.String(64), nullable=True),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_feedback_conversation_id_conversations",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["turn_id"], ["turns.id"], name="fk_feedback_turn_id_turns", ondelete="CASCADE"),
    )
    op.create_index("ix_feedback_conversation_id", "feedback", ["conversation_id"])
    op.create_index("ix_feedback_turn_id", "feedback", ["turn_id"])
    op.create_table(
        "catalog_versions",
        sa.Column("id", Id, autoincrement=True),
        sa.Column("collection", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("track_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("failed_count", sa.Integer(), nullable=False, server_default="0"),
        _ts("started_at"),
        _ts("finished_at", nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_catalog_versions"),
    )
    op.create_index("ix_catalog_versions_status", "catalog_versions", ["status"])
    op.create_table(
        "tracks",
        sa.Column("id", Id, autoincrement=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("title", sa.String(512), nullable=False),
        sa.Column("artist", sa.String(512), nullable=False, server_default=""),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("licence", sa.String(128), nullable=False, server_default=""),
        sa.Column("source_path", sa.Text(), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("catalog_version_id", Id, nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_tracks"),
        sa.ForeignKeyConstraint(
            ["catalog_version_id"],
            ["catalog_versions.id"],
            name="fk_tracks_catalog_version_id_catalog_versions",
            ondelete="SET NULL",
        ),
        sa.UniqueConstraint("content_hash", name="uq_tracks_content_hash"),
    )
    op.create_index("ix_tracks_catalog_version_id", "tracks", ["catalog_version_id"])
    op.create_table(
        "catalog_version_tracks",
        sa.Column("catalog_version_id", Id, nullable=False),
        sa.Column("track_id", Id, nullable=False),
        sa.PrimaryKeyConstraint("catalog_version_id", "track_id", name="pk_catalog_version_tracks"),
        sa.ForeignKeyConstraint(
            ["catalog_version_id"],
            ["catalog_versions.id"],
            name="fk_catalog_version_tracks_catalog_version_id_catalog_versions",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["track_id"], ["tracks.id"], name="fk_catalog_version_tracks_track_id_tracks", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_catalog_version_tracks_track_id", "catalog_version_tracks", ["track_id"])
    op.create_table(
        "jobs",
        sa.Column("id", Id, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _ts("started_at"),
        _ts("finished_at", nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_kind_started_at", "jobs", ["kind", "started_at"])
    op.create_table(
        "job_schedules",
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("cron", sa.String(128), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("kind", name="pk_job_schedules"),
    )
    op.create_table(
        "processed_events",
        sa.Column("id", Id, autoincrement=True),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        _ts("processed_at"),
        sa.PrimaryKeyConstraint("id", name="pk_processed_events"),
        sa.UniqueConstraint("platform", "event_id", name="uq_processed_events_platform_event_id"),
    )
    op.create_index("ix_processed_events_processed_at", "processed_events", ["processed_at"])
    op.create_table(
        "rate_limits",
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("user_key", sa.String(64), nullable=False),
        sa.Column("bucket", sa.String(32), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("refilled_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("platform", "user_key", "bucket", name="pk_rate_limits"),
    )


def downgrade() -> None:
    for table in (
        "rate_limits",
        "processed_events",
        "job_schedules",
        "jobs",
        "catalog_version_tracks",
        "tracks",
        "catalog_versions",
        "feedback",
        "recommendations",
        "turns",
        "conversations",
        "users",
    ):
        op.drop_table(table)

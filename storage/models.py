"""SQL schema of MuseChat (DESIGN.md, "Storage" and "Data flow of one conversation").

SQLAlchemy Core tables, the head of the Alembic history in ``storage/migrations``: the
migrations are the source of truth for existing databases, and ``tests/storage/test_migrations``
checks that these definitions and the migrated schema do not drift apart.

Portable across SQLite and PostgreSQL: ``sa.JSON`` (JSON text on SQLite, ``json`` on PostgreSQL),
timestamps as ``DateTime(timezone=True)`` written in UTC, 64-bit ids on PostgreSQL and SQLite's
rowid integers. Track identity across stores is the track's content hash (sha256 hex of the
audio file): the Qdrant catalog, recommendations and feedback all use it, so it is stable across
catalog versions and needs no join to the ``tracks`` table.
"""

from __future__ import annotations

import enum

import sqlalchemy as sa

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# 64-bit on PostgreSQL; SQLite autoincrements only an INTEGER PRIMARY KEY (its 64-bit rowid).
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

PLATFORM_LEN = 16  # "discord" | "slack" | "terminal"
PLATFORM_ID_LEN = 64  # Discord snowflakes, Slack ids and thread timestamps fit easily
HASH_LEN = 64  # sha256 hex
STATUS_LEN = 16


class ConversationStatus(enum.StrEnum):
    ACTIVE = "active"
    CLOSED = "closed"


class FeedbackKind(enum.StrEnum):
    ACCEPT = "accept"  # "use this": the user took the track (the preview is rendered)
    ANOTHER = "another"  # "another one" without words: a negative example
    REFINE = "refine"  # words that steer the next pick ("more upbeat")
    RESTART = "restart"  # "start over": feedback before this is forgotten (the video and shown tracks stay)


class CatalogStatus(enum.StrEnum):
    BUILDING = "building"
    LIVE = "live"  # the one version serving queries (at most one, unique partial index)
    RETIRED = "retired"  # was live, replaced by a newer version
    FAILED = "failed"


class JobStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def _created() -> sa.Column[object]:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


users = sa.Table(
    "users",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("platform", sa.String(PLATFORM_LEN), nullable=False),
    sa.Column("platform_user_id", sa.String(PLATFORM_ID_LEN), nullable=False),
    sa.Column("name", sa.String(255), nullable=False, server_default=""),
    _created(),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("platform", "platform_user_id"),
)

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("platform", sa.String(PLATFORM_LEN), nullable=False),
    sa.Column("workspace_id", sa.String(PLATFORM_ID_LEN), nullable=False, server_default=""),  # guild / team
    sa.Column("channel_id", sa.String(PLATFORM_ID_LEN), nullable=False),
    sa.Column("thread_id", sa.String(PLATFORM_ID_LEN), nullable=False, server_default=""),  # "" = none
    sa.Column("user_id", Id, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("status", sa.String(STATUS_LEN), nullable=False),
    sa.Column("profile", sa.String(32), nullable=False),  # model profile: paper | lite | tiny
    sa.Column("model_version", sa.String(128), nullable=False, server_default=""),
    sa.Column("turn_count", sa.Integer(), nullable=False, server_default="0"),  # last turn index
    _created(),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("platform", "channel_id", "thread_id"),
    sa.Index(None, "user_id"),
)

turns = sa.Table(
    "turns",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("conversation_id", Id, sa.ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False),
    sa.Column("turn_index", sa.Integer(), nullable=False),  # 1, 2, 3... contiguous per conversation
    sa.Column("user_text", sa.Text(), nullable=False, server_default=""),
    sa.Column("video_sha256", sa.String(HASH_LEN), nullable=True),
    sa.Column("video_ref", sa.String(512), nullable=True),  # media store reference of the upload
    sa.Column("candidate_track_id", sa.String(HASH_LEN), nullable=True),  # the x_mc input, turn k >= 2
    sa.Column("mode", sa.String(32), nullable=False),  # which recommender answered: zero-shot | fusion
    sa.Column("timings", sa.JSON(), nullable=False),  # {"decode_s": ..., "search_s": ...}
    _created(),
    sa.UniqueConstraint("conversation_id", "turn_index"),
    sa.Index(None, "video_sha256"),  # revision 0002
)

recommendations = sa.Table(
    "recommendations",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("turn_id", Id, sa.ForeignKey("turns.id", ondelete="CASCADE"), nullable=False),
    sa.Column("rank", sa.Integer(), nullable=False),  # 1 = best
    sa.Column("track_id", sa.String(HASH_LEN), nullable=False),  # track content hash
    sa.Column("score", sa.Float(), nullable=False),  # cosine similarity (paper section 4)
    sa.Column("reason", sa.Text(), nullable=False, server_default=""),  # the reasoner's justification
    sa.UniqueConstraint("turn_id", "rank"),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("conversation_id", Id, sa.ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False),
    sa.Column("turn_id", Id, sa.ForeignKey("turns.id", ondelete="CASCADE"), nullable=False),
    sa.Column("kind", sa.String(STATUS_LEN), nullable=False),  # FeedbackKind
    sa.Column("text", sa.Text(), nullable=False, server_default=""),
    sa.Column("track_id", sa.String(HASH_LEN), nullable=True),  # the track the feedback is about
    _created(),
    sa.Index(None, "conversation_id"),
    sa.Index(None, "turn_id"),
)

catalog_versions = sa.Table(
    "catalog_versions",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("collection", sa.String(128), nullable=False),  # Qdrant collection / edge shard name
    sa.Column("status", sa.String(STATUS_LEN), nullable=False),  # CatalogStatus
    sa.Column("track_count", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("failed_count", sa.Integer(), nullable=False, server_default="0"),  # files that failed to index
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Index(None, "status"),
    # revision 0002: at most one live version, enforced by the database.
    sa.Index(
        "uq_catalog_versions_one_live",
        "status",
        unique=True,
        sqlite_where=sa.text("status = 'live'"),
        postgresql_where=sa.text("status = 'live'"),
    ),
)

tracks = sa.Table(
    "tracks",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("content_hash", sa.String(HASH_LEN), nullable=False, unique=True),
    sa.Column("title", sa.String(512), nullable=False),
    sa.Column("artist", sa.String(512), nullable=False, server_default=""),
    sa.Column("duration_s", sa.Float(), nullable=False),
    sa.Column("tags", sa.JSON(), nullable=False),  # ["orchestral", "epic", ...]
    sa.Column("licence", sa.String(128), nullable=False, server_default=""),
    sa.Column("source_path", sa.Text(), nullable=False),
    sa.Column("attributes", sa.JSON(), nullable=False),  # tempo_bpm, loudness_db, tag sources...
    # the latest catalog version that indexed this track (membership: catalog_version_tracks)
    sa.Column(
        "catalog_version_id", Id, sa.ForeignKey("catalog_versions.id", ondelete="SET NULL"), nullable=True
    ),
    _created(),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index(None, "catalog_version_id"),
)

catalog_version_tracks = sa.Table(
    "catalog_version_tracks",
    metadata,
    sa.Column(
        "catalog_version_id", Id, sa.ForeignKey("catalog_versions.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("track_id", Id, sa.ForeignKey("tracks.id", ondelete="CASCADE"), primary_key=True),
    sa.Index(None, "track_id"),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),  # "catalog_refresh", ...
    sa.Column("status", sa.String(STATUS_LEN), nullable=False),  # JobStatus
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("detail", sa.JSON(), nullable=False),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Index(None, "kind", "started_at"),
)

job_schedules = sa.Table(
    "job_schedules",
    metadata,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("cron", sa.String(128), nullable=False),  # crontab expression, read by the scheduler
    sa.Column("enabled", sa.Boolean(), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

processed_events = sa.Table(
    "processed_events",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("platform", sa.String(PLATFORM_LEN), nullable=False),
    sa.Column("event_id", sa.String(255), nullable=False),  # Slack event_id, Discord interaction id
    sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("platform", "event_id"),
    sa.Index(None, "processed_at"),  # pruning
)

rate_limits = sa.Table(
    "rate_limits",
    metadata,
    sa.Column("platform", sa.String(PLATFORM_LEN), primary_key=True),
    sa.Column("user_key", sa.String(PLATFORM_ID_LEN), primary_key=True),
    sa.Column("bucket", sa.String(32), primary_key=True),
    sa.Column("tokens", sa.Float(), nullable=False),  # token bucket level after the last refill
    sa.Column("refilled_at", sa.Float(), nullable=False),  # epoch seconds of that refill
)

# revision 0003: music folders registered by admins (`musechat catalog add`); a refresh indexes
# every audio file under each of them (bot/service/catalog_admin.py).
catalog_sources = sa.Table(
    "catalog_sources",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("path", sa.String(1024), nullable=False),  # absolute folder path on the indexing machine
    sa.Column("manifest_path", sa.String(1024), nullable=True),  # admin manifest (CSV or JSON), if any
    sa.Column("licence", sa.String(128), nullable=False, server_default=""),  # the folder's default licence
    sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("path"),
)

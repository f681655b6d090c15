"""Index turns by video content hash; at most one live catalog version.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

- ``ix_turns_video_sha256``: find earlier turns on the same upload (the video's features are
  computed once and reused, DESIGN.md "Data flow" step 2).
- ``uq_catalog_versions_one_live``: a partial unique index (both SQLite and PostgreSQL have
  them) so that two refreshes finishing at once cannot both leave their version live. A database
  that somehow holds several live versions keeps the newest live and retires the others first.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = sa.text("status = 'live'")


def upgrade() -> None:
    op.create_index("ix_turns_video_sha256", "turns", ["video_sha256"])
    op.execute(
        "UPDATE catalog_versions SET status = 'retired' WHERE status = 'live' "
        "AND id < (SELECT max(id) FROM catalog_versions WHERE status = 'live')"
    )
    op.create_index(
        "uq_catalog_versions_one_live",
        "catalog_versions",
        ["status"],
        unique=True,
        sqlite_where=LIVE,
        postgresql_where=LIVE,
    )


def downgrade() -> None:
    op.drop_index("uq_catalog_versions_one_live", table_name="catalog_versions")
    op.drop_index("ix_turns_video_sha256", table_name="turns")

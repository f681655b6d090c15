"""Music folders registered for the catalog.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

``catalog_sources``: one row per music folder an admin added (``musechat catalog add``), with
its optional manifest and default licence; a catalog refresh indexes every audio file under
each folder (bot/service/catalog_admin.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "catalog_sources",
        sa.Column("id", Id, autoincrement=True),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("manifest_path", sa.String(1024), nullable=True),
        sa.Column("licence", sa.String(128), nullable=False, server_default=""),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_catalog_sources"),
        sa.UniqueConstraint("path", name="uq_catalog_sources_path"),
    )


def downgrade() -> None:
    op.drop_table("catalog_sources")

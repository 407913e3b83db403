"""Persistent clustering state and retry times for files that were still being written.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "clusters",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("centroid", sa.LargeBinary, nullable=False),
        sa.Column("weight", sa.Float, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
    )
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("retry_after", sa.Float))
        batch.create_index("ix_images_cluster_id", ["cluster_id"])


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_cluster_id")
        batch.drop_column("retry_after")
    op.drop_table("clusters")

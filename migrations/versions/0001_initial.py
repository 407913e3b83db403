"""Initial schema: settings, roots and images with their vectors.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "roots",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("path", sa.Text, nullable=False, unique=True),
        sa.Column("added_at", sa.Float, nullable=False),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("path", sa.Text, nullable=False, unique=True),
        sa.Column(
            "root_id",
            sa.Integer,
            sa.ForeignKey("roots.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("mtime_ns", sa.Integer, nullable=False),
        sa.Column("content_hash", sa.Text),
        sa.Column("width", sa.Integer),
        sa.Column("height", sa.Integer),
        sa.Column("format", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("model", sa.Text),
        sa.Column("vector", sa.LargeBinary),
        sa.Column("cluster_id", sa.Integer),
        sa.Column("updated_at", sa.Float, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_images_content_hash", "images", ["content_hash"])
    op.create_index("ix_images_status", "images", ["status"])


def downgrade() -> None:
    op.drop_table("images")
    op.drop_table("roots")
    op.drop_table("meta")

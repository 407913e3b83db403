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

#: PostgreSQL keeps file names as raw bytes (see ``imgindex.db.schema.FsPath``) and integers that
#: pass 2**31 as BIGINT; SQLite's on-disk schema is what it always was.
PATH = sa.Text().with_variant(sa.LargeBinary(), "postgresql")
INT64 = sa.Integer().with_variant(sa.BigInteger(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "roots",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("path", PATH, nullable=False, unique=True),
        sa.Column("added_at", sa.Float, nullable=False),
    )
    op.create_table(
        "images",
        sa.Column("id", INT64, primary_key=True, autoincrement=True),
        sa.Column("path", PATH, nullable=False, unique=True),
        sa.Column(
            "root_id",
            sa.Integer,
            sa.ForeignKey("roots.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("size", INT64, nullable=False),
        sa.Column("mtime_ns", INT64, nullable=False),
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

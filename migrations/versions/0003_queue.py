"""The daemon's pending queue: paths seen by the watcher, waiting for their quiet period.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: raw bytes on PostgreSQL, see ``imgindex.db.schema.FsPath``
PATH = sa.Text().with_variant(sa.LargeBinary(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "queue",
        sa.Column("path", PATH, primary_key=True),
        sa.Column("due_at", sa.Float, nullable=False),
        sa.Column("enqueued_at", sa.Float, nullable=False),
    )
    op.create_index("ix_queue_due_at", "queue", ["due_at"])


def downgrade() -> None:
    op.drop_table("queue")

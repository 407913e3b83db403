"""What people see and use: an ImageNet label and a perceptual hash per image, and each
cluster's computed label and user-given name (kept apart from the clustering state, which is
rewritten at every batch, so a name follows its cluster id).

Columns are added with plain ALTER TABLE (no table copy), so the ``index_log`` triggers of
revision 0004 stay in place.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INT64 = sa.Integer().with_variant(sa.BigInteger(), "postgresql")  # BIGINT on PostgreSQL


def upgrade() -> None:
    op.add_column("images", sa.Column("label", sa.Integer))  # ImageNet top-1 class index
    op.add_column("images", sa.Column("phash", INT64))  # 64-bit DCT hash, signed
    op.create_table(
        "cluster_labels",
        sa.Column("cluster_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("label", sa.Text),  # from the members' top-1 classes, kept current
        sa.Column("name", sa.Text),  # the user's own, from `imgindex clusters name`
    )


def downgrade() -> None:
    op.drop_table("cluster_labels")
    op.drop_column("images", "phash")
    op.drop_column("images", "label")

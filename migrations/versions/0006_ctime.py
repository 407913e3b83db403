"""Each file's inode change time (``st_ctime_ns``), so a file that failed is tried again after a
chmod or chown, which changes the ctime but not the size or the mtime (a file that could not be
read stayed failed once it could). Rows from before have none: a failed one is tried once more.

A plain ALTER TABLE (no table copy), so the ``index_log`` triggers of revision 0004 stay.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

INT64 = sa.Integer().with_variant(sa.BigInteger(), "postgresql")  # BIGINT on PostgreSQL


def upgrade() -> None:
    op.add_column("images", sa.Column("ctime_ns", INT64))


def downgrade() -> None:
    op.drop_column("images", "ctime_ns")

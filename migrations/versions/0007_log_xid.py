"""The changes log under concurrency: each ``index_log`` row records the id of the transaction
that wrote it (``xid``), so that a reader's catch-up finds the rows of transactions that commit
out of ``seq`` order (several writers on PostgreSQL; see ``imgindex.db.changes``).

PostgreSQL: ``xid BIGINT NOT NULL DEFAULT pg_current_xact_id()`` (the 64-bit ``xid8``, cast), so
the trigger function of revision 0004 stays as it is; rows logged before get the migration's
own id, and a FAISS file recorded before has no ``xmin``, which reads as 0: its first catch-up
replays every row still in the log (correct, and the log is trimmed at each save). SQLite:
``DEFAULT 0``, never read (one writer at a time commits in ``seq`` order); a plain ALTER TABLE
with a constant default, so no table copy and the triggers stay.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

INT64 = sa.Integer().with_variant(sa.BigInteger(), "postgresql")  # BIGINT on PostgreSQL

PG_DEFAULT = "(pg_current_xact_id()::text::bigint)"


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    default = sa.text(PG_DEFAULT) if postgresql else sa.text("0")
    op.add_column("index_log", sa.Column("xid", INT64, nullable=False, server_default=default))


def downgrade() -> None:
    op.drop_column("index_log", "xid")

"""The changes log of the FAISS cache: one row each time an image enters, leaves or changes in
the set of indexed vectors, written by triggers so that no code path can forget it.

A FAISS file records the log position it reflects; opening it replays only the rows after that
(instead of comparing every id), and a reader overlays them on a memory-mapped file.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TRIGGERS = {
    "images_log_insert": """
        CREATE TRIGGER images_log_insert AFTER INSERT ON images
        WHEN NEW.status = 'indexed'
        BEGIN INSERT INTO index_log (image_id) VALUES (NEW.id); END""",
    "images_log_update": """
        CREATE TRIGGER images_log_update AFTER UPDATE OF status, vector ON images
        WHEN (OLD.status = 'indexed' OR NEW.status = 'indexed')
         AND (OLD.status IS NOT NEW.status OR OLD.vector IS NOT NEW.vector)
        BEGIN INSERT INTO index_log (image_id) VALUES (NEW.id); END""",
    "images_log_delete": """
        CREATE TRIGGER images_log_delete AFTER DELETE ON images
        WHEN OLD.status = 'indexed'
        BEGIN INSERT INTO index_log (image_id) VALUES (OLD.id); END""",
}


def upgrade() -> None:
    op.create_table(
        "index_log",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("image_id", sa.Integer, nullable=False),
        sqlite_autoincrement=True,
    )
    for sql in TRIGGERS.values():
        op.execute(sql)
    # the FAISS file of an older version has no log position: the next open rebuilds it
    op.execute("DELETE FROM meta WHERE key = 'index_version'")


def downgrade() -> None:
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table("index_log")

"""The changes log of the FAISS cache: one row each time an image enters, leaves or changes in
the set of indexed vectors, written by triggers so that no code path can forget it.

SQLite: three triggers with inline bodies. PostgreSQL: the same three triggers (same names, same
conditions), FOR EACH ROW, calling one PL/pgSQL function ``images_log()`` that appends the row.

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

INT64 = sa.Integer().with_variant(sa.BigInteger(), "postgresql")  # BIGINT on PostgreSQL

SQLITE_TRIGGERS = {
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


PG_FUNCTION = """
    CREATE FUNCTION images_log() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO index_log (image_id) VALUES (OLD.id);
        ELSE
            INSERT INTO index_log (image_id) VALUES (NEW.id);
        END IF;
        RETURN NULL;
    END $$"""

PG_TRIGGERS = {
    "images_log_insert": """
        CREATE TRIGGER images_log_insert AFTER INSERT ON images FOR EACH ROW
        WHEN (NEW.status = 'indexed')
        EXECUTE FUNCTION images_log()""",
    "images_log_update": """
        CREATE TRIGGER images_log_update AFTER UPDATE OF status, vector ON images FOR EACH ROW
        WHEN ((OLD.status = 'indexed' OR NEW.status = 'indexed')
          AND (OLD.status IS DISTINCT FROM NEW.status OR OLD.vector IS DISTINCT FROM NEW.vector))
        EXECUTE FUNCTION images_log()""",
    "images_log_delete": """
        CREATE TRIGGER images_log_delete AFTER DELETE ON images FOR EACH ROW
        WHEN (OLD.status = 'indexed')
        EXECUTE FUNCTION images_log()""",
}


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    op.create_table(
        "index_log",
        sa.Column("seq", INT64, primary_key=True, autoincrement=True),
        sa.Column("image_id", INT64, nullable=False),
        sqlite_autoincrement=True,
    )
    if _postgresql():
        op.execute(PG_FUNCTION)
    for sql in (PG_TRIGGERS if _postgresql() else SQLITE_TRIGGERS).values():
        op.execute(sql)
    # the FAISS file of an older version has no log position: the next open rebuilds it
    op.execute("DELETE FROM meta WHERE key = 'index_version'")


def downgrade() -> None:
    on = " ON images" if _postgresql() else ""
    for name in SQLITE_TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}{on}")
    if _postgresql():
        op.execute("DROP FUNCTION IF EXISTS images_log()")
    op.drop_table("index_log")

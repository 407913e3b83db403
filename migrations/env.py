"""Alembic environment. imgindex runs migrations from code (``imgindex.db.migrate``), passing the
open connection in ``config.attributes["connection"]``; the ``alembic`` CLI also works with
``-x db=PATH`` (or ``-x db=postgresql+psycopg://...``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from imgindex.db.schema import metadata

config = context.config


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    db = context.get_x_argument(as_dictionary=True).get("db", "imgindex.db")  # or a URL
    with create_engine(db if "://" in db else f"sqlite:///{db}").connect() as conn:
        _run(conn)

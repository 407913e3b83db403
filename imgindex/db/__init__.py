"""The storage layer: every SQL statement of imgindex, in SQLAlchemy Core where it can be.

Modules (each function takes an open ``Connection``; callers own the transaction, so one batch
of images, its vectors and its cluster update commit together or not at all):

- ``engine``: engines, read-only opening, one-snapshot reads, the SQLite pragmas;
- ``dialect``: statements whose syntax depends on the database (upserts, sequences, checks);
- ``schema``: the tables; ``migrate``: the Alembic runner that creates and upgrades them;
- ``meta``: settings and counters, one typed accessor per key;
- ``images``, ``roots``, ``queue``, ``clusters``: the rows of each table; ``changes``: the
  FAISS cache's changes log (``index_log``).

Other modules may hold a ``Connection`` or an ``Engine`` as an opaque handle (a transaction
they own) and catch ``DatabaseError``; they import those names from here.
"""

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DatabaseError, OperationalError

__all__ = ["Connection", "DatabaseError", "Engine", "OperationalError"]

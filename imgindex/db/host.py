"""The host a connection works for: rows of paths (roots, images, the queue) belong to one host
(revision 0008), and every query of files on disk is scoped to the connection's host.

The host travels with the engine as an execution option (``for_host``), so two libraries of two
hosts may share one database in one process (tests do); ``Library`` sets it when it opens. A
connection without it works for ``hosts.row_host`` of its database (the process's own host)."""

from __future__ import annotations

from sqlalchemy import Connection, Engine

from imgindex import hosts

OPTION = "imgindex_host"


def for_host(engine: Engine, name: str) -> Engine:
    """``engine``, whose connections work for host ``name`` (same pool, same database)."""
    return engine.execution_options(**{OPTION: name})


def host_of(conn: Connection | Engine) -> str:
    """The host ``conn`` (or an engine's connections) works for: the one ``for_host`` gave,
    else this process's (``hosts.row_host``)."""
    name = conn.get_execution_options().get(OPTION)
    return name if isinstance(name, str) else hosts.row_host(conn.dialect.name)

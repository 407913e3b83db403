"""The ``meta`` table: library-wide settings and counters as key/value text, read and written
only through the typed accessors below (one per key), so no key is spelt twice.

A few keys are a host's own (its mount points, its daemon's status): ``KEY@HOST`` for the
connection's host (``host.host_of``), plain ``KEY`` for ``hosts.LOCAL``, as before hosts."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, select

from imgindex.db.dialect import increment, upsert
from imgindex.db.host import host_of
from imgindex.db.schema import meta

# --- the keys ---------------------------------------------------------------------------------

_MODEL = "model"  # the embedding model's name
_DIM = "dim"  # its vector dimension
_K = "k"  # the number of clusters, or "auto"
_LIBRARY_ID = "library_id"  # index files are recorded as this library's
_CREATED_AT = "created_at"
_CONFIG_VERSION = "config_version"  # bumped when roots or settings change: the daemon reloads
_EMBEDDED_TOTAL = "embedded_total"  # images embedded over the library's life
_MOUNT_POINTS = "mount_points"  # JSON list of sub-folders of roots seen as mount points
_DAEMON_STATUS = "status.daemon"  # JSON: what the running daemon publishes for `status`
_DAEMON_PREFIX = "daemon."  # daemon.<name>: the daemon's settings, as the user wrote them
_HTTP_PASSWORD = "http.password"  # scrypt$N$r$p$salt$hash of the web page's password
_CACHE_PREFIX = "cache."  # cache.<file name>: an index file's record (JSON)
_LOG_TRIMMED = "index_log_trimmed"  # index_log rows up to this seq were deleted
_LOG_TRIMMED_XMIN = "index_log_trimmed_xmin"  # PostgreSQL: ... and of transactions below this
_LOG_TRIM_MARKS = "index_log_trim_marks"  # PostgreSQL: JSON [[time, seq, xmin], ...] saved
_CLUSTER_N_STEPS = "cluster_n_steps"  # MiniBatchKMeans state
_CLUSTER_SINCE_REASSIGN = "cluster_since_reassign"
_CLUSTER_CONSOLIDATED_AT = "cluster_consolidated_at"  # library size at the last consolidation
_CLUSTER_NEXT_ID = "cluster_next_id"  # the next new cluster's id
_CLUSTER_GROUPS = "cluster_groups"  # JSON: the groups of clusters (``Groups``)
_CLUSTER_AUTO_K = "cluster_auto_k"  # JSON: the last choice of k by silhouette
# older libraries may hold "index.flat_max" (tests wrote it); it is ignored: the IVF threshold
# is ``VectorCache(flat_max=...)``, passed through ``Library.open``


def _get(conn: Connection, key: str) -> str | None:
    return conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar()


def _set(conn: Connection, key: str, value: object) -> None:
    upsert(conn, meta, [{"key": key, "value": str(value)}], key="key", update=["value"])


def _int(conn: Connection, key: str, default: int = 0) -> int:
    return int(_get(conn, key) or default)


def _add(conn: Connection, key: str, amount: int) -> int:
    """Add to a counter in one statement: writers on several hosts never lose an addition."""
    return increment(conn, meta, key, amount)


def _own(conn: Connection, key: str) -> str:
    """``key`` of the connection's host."""
    host = host_of(conn)
    return f"{key}@{host}" if host else key


def _delete(conn: Connection, keys: Iterable[str]) -> None:
    conn.execute(delete(meta).where(meta.c.key.in_(list(keys))))


# --- the library --------------------------------------------------------------------------------


def model(conn: Connection) -> str | None:
    """The model the library's vectors come from (None before ``imgindex init`` set one)."""
    return _get(conn, _MODEL)


def dim(conn: Connection) -> int:
    """The library's vector dimension (0 before ``imgindex init`` set a model)."""
    return _int(conn, _DIM)


def set_model(conn: Connection, name: str, dimension: int) -> None:
    _set(conn, _MODEL, name)
    _set(conn, _DIM, dimension)


def k_setting(conn: Connection) -> str | None:
    """The k the user set (a number, or "auto"); None when never set."""
    return _get(conn, _K)


def set_k_setting(conn: Connection, k: str) -> None:
    _set(conn, _K, k)


def library_id(conn: Connection) -> str | None:
    return _get(conn, _LIBRARY_ID)


def set_library_id(conn: Connection, value: str) -> None:
    _set(conn, _LIBRARY_ID, value)


def set_created_at(conn: Connection, when: float) -> None:
    _set(conn, _CREATED_AT, when)


def config_version(conn: Connection) -> int:
    """Changes whenever roots or the daemon's settings change."""
    return _int(conn, _CONFIG_VERSION)


def bump_config_version(conn: Connection) -> int:
    return _add(conn, _CONFIG_VERSION, 1)


def embedded_total(conn: Connection) -> int:
    return _int(conn, _EMBEDDED_TOTAL)


def add_embedded(conn: Connection, count: int) -> int:
    return _add(conn, _EMBEDDED_TOTAL, count)


def mount_points(conn: Connection) -> list[str]:
    """Sub-folders of this host's roots that a walk found to be mount points."""
    return json.loads(_get(conn, _own(conn, _MOUNT_POINTS)) or "[]")


def set_mount_points(conn: Connection, points: Iterable[str]) -> None:
    _set(conn, _own(conn, _MOUNT_POINTS), json.dumps(sorted(points)))


# --- the daemon -------------------------------------------------------------------------------


def daemon_status(conn: Connection) -> dict[str, Any]:
    """What this host's daemon last published about itself (``{}``: never ran)."""
    raw = _get(conn, _own(conn, _DAEMON_STATUS))
    return json.loads(raw) if raw else {}


def publish_daemon_status(conn: Connection, info: dict[str, Any]) -> None:
    _set(conn, _own(conn, _DAEMON_STATUS), json.dumps(info))


def daemon_settings(conn: Connection) -> dict[str, str]:
    """``{name: value as written}`` of every stored daemon setting."""
    q = select(meta.c.key, meta.c.value).where(
        meta.c.key.startswith(_DAEMON_PREFIX, autoescape=True)
    )
    return {
        key[len(_DAEMON_PREFIX) :]: value
        for key, value in conn.execute(q)
        if key.startswith(_DAEMON_PREFIX)
    }


def set_daemon_setting(conn: Connection, name: str, raw: str) -> None:
    _set(conn, _DAEMON_PREFIX + name, raw)


def http_password(conn: Connection) -> str | None:
    """The web page's password, as its salted hash (None: not set)."""
    return _get(conn, _HTTP_PASSWORD)


def set_http_password(conn: Connection, hashed: str | None) -> None:
    if hashed is None:
        _delete(conn, [_HTTP_PASSWORD])
    else:
        _set(conn, _HTTP_PASSWORD, hashed)


# --- the FAISS cache --------------------------------------------------------------------------


def cache_record(conn: Connection, file_name: str) -> str | None:
    """The record (JSON) saved with index file ``file_name`` of the connection's host (each
    host keeps its own files in its own data dir), or None."""
    return _get(conn, _own(conn, _CACHE_PREFIX + file_name))


def set_cache_record(conn: Connection, file_name: str, record: str) -> None:
    _set(conn, _own(conn, _CACHE_PREFIX + file_name), record)


def drop_cache_records_except(conn: Connection, file_name: str) -> None:
    """Forget the records of every index file of the connection's host but ``file_name``
    (other hosts' records are theirs)."""
    host = host_of(conn)
    key = meta.c.key
    mine = key.endswith(f"@{host}", autoescape=True) if host else ~key.contains("@")
    conn.execute(
        delete(meta).where(
            key.like(_CACHE_PREFIX + "vectors.%"),
            mine,
            key != _own(conn, _CACHE_PREFIX + file_name),
        )
    )


def adopted_key(key: str, host: str) -> str:
    """``key`` once ``adopt_host_keys(conn, host)`` ran: a per-host key of the library's only
    host (no ``@``) becomes ``host``'s; any other key stays."""
    per_host = key in (_MOUNT_POINTS, _DAEMON_STATUS) or key.startswith(_CACHE_PREFIX + "vectors.")
    return f"{key}@{host}" if per_host and "@" not in key else key


def adopt_host_keys(conn: Connection, host: str) -> None:
    """Make the per-host keys of the library's only host (a SQLite library's) ``host``'s:
    what a library copied into a shared database does for the host copying it."""
    for key in list(conn.execute(select(meta.c.key)).scalars()):
        if (new := adopted_key(key, host)) != key:
            conn.execute(meta.update().where(meta.c.key == key).values(key=new))


def log_trimmed(conn: Connection) -> tuple[int, int]:
    """``(seq, xmin)``: ``index_log`` rows up to ``seq`` were deleted (on PostgreSQL only
    those of transactions whose id is below ``xmin``; SQLite's is 0)."""
    return _int(conn, _LOG_TRIMMED), _int(conn, _LOG_TRIMMED_XMIN)


def set_log_trimmed(conn: Connection, seq: int, xmin: int = 0) -> None:
    _set(conn, _LOG_TRIMMED, seq)
    if xmin:
        _set(conn, _LOG_TRIMMED_XMIN, xmin)


def log_trim_marks(conn: Connection) -> list[tuple[float, int, int]]:
    """``(server time, seq, xmin)`` of the log positions saved files reflected, oldest first:
    the log is trimmed up to one of them once it is old enough (PostgreSQL)."""
    return [
        (float(t), int(s), int(x)) for t, s, x in json.loads(_get(conn, _LOG_TRIM_MARKS) or "[]")
    ]


def set_log_trim_marks(conn: Connection, marks: Iterable[tuple[float, int, int]]) -> None:
    _set(conn, _LOG_TRIM_MARKS, json.dumps([list(m) for m in marks]))


# --- clustering -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AutoK:
    """The last choice of k by silhouette: ``k``, the library size ``at`` which it was made,
    the score of every k tried, and how many vectors were scored (None: not recorded)."""

    k: int
    at: int
    silhouette: dict[int, float] = field(default_factory=dict)
    sample: int | None = None


def auto_k(conn: Connection) -> AutoK | None:
    raw = _get(conn, _CLUSTER_AUTO_K)
    if raw is None:
        return None
    d = json.loads(raw)
    scores = {int(k): float(v) for k, v in d.get("silhouette", {}).items()}
    sample = d.get("sample")
    return AutoK(int(d["k"]), int(d.get("at", 0)), scores, None if sample is None else int(sample))


def set_auto_k(conn: Connection, choice: AutoK) -> None:
    value = {"k": choice.k, "at": choice.at, "silhouette": choice.silhouette}
    if choice.sample is not None:
        value["sample"] = choice.sample
    _set(conn, _CLUSTER_AUTO_K, json.dumps(value))


@dataclass
class Groups:
    """The second level: ``of`` maps a cluster id to its group's id; ``titles`` a group id to
    its ``{"label", "name"}``; ``next_id``: the next fresh group id."""

    of: dict[int, int] = field(default_factory=dict)
    titles: dict[int, dict[str, str | None]] = field(default_factory=dict)
    next_id: int = 1


def groups(conn: Connection) -> Groups:
    """The groups of clusters (empty when there are none)."""
    raw = _get(conn, _CLUSTER_GROUPS)
    if raw is None:
        return Groups()
    d = json.loads(raw)
    return Groups(
        {int(c): int(g) for c, g in d["of"].items()},
        {int(g): t for g, t in d["titles"].items()},
        int(d["next_id"]),
    )


def set_groups(conn: Connection, value: Groups) -> None:
    _set(
        conn,
        _CLUSTER_GROUPS,
        json.dumps({"of": value.of, "titles": value.titles, "next_id": value.next_id}),
    )


def cluster_steps(conn: Connection) -> tuple[int, int]:
    """MiniBatchKMeans' ``(n_steps, steps since its last reassignment)``."""
    return _int(conn, _CLUSTER_N_STEPS), _int(conn, _CLUSTER_SINCE_REASSIGN)


def set_cluster_steps(conn: Connection, n_steps: int, since_reassign: int) -> None:
    _set(conn, _CLUSTER_N_STEPS, n_steps)
    _set(conn, _CLUSTER_SINCE_REASSIGN, since_reassign)


def consolidated_at(conn: Connection) -> int:
    """The number of indexed images at the last consolidation (0: none yet)."""
    return _int(conn, _CLUSTER_CONSOLIDATED_AT)


def set_consolidated_at(conn: Connection, count: int) -> None:
    _set(conn, _CLUSTER_CONSOLIDATED_AT, count)


def next_cluster_id(conn: Connection) -> int:
    return _int(conn, _CLUSTER_NEXT_ID, 1)


def set_next_cluster_id(conn: Connection, value: int) -> None:
    _set(conn, _CLUSTER_NEXT_ID, value)


def forget_clustering(conn: Connection) -> None:
    """Drop what the next consolidation must not build on (another model's vectors)."""
    _delete(conn, (_CLUSTER_CONSOLIDATED_AT, _CLUSTER_AUTO_K, _CLUSTER_N_STEPS))

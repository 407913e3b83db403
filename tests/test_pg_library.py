"""A library whose table of record is a real PostgreSQL server: `init --database`, the URL the
data dir records (never a password), a host that only reads, and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import cli, cli_json, run_process
from imaging import make_photos
from sqlalchemy import make_url

#: seconds of a real PostgreSQL server or service process each: the full suite, not the quick run
pytestmark = pytest.mark.slow


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    make_photos(root / "reds", "red", 6)
    make_photos(root / "blues", "blue", 6, fmt="PNG")
    return root


def _with_password(url: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    user, rest = rest.split("@", 1)
    return f"{scheme}://{user}:{password}@{rest}"


def test_init_database_makes_a_postgresql_library_the_data_dir_points_at(
    tmp_path: Path, photos: Path, postgres_url: str
) -> None:
    data = tmp_path / "data"
    url = _with_password(postgres_url, "s3cret-pw")  # the test server trusts; libpq sends it
    out = cli(data, "--database", url, "init", photos, "--model", "thumbnail", "--k", "2")
    assert "postgresql database" in out.stderr and "s3cret-pw" not in out.stderr
    recorded = (data / "database.url").read_text()
    assert recorded.startswith("postgresql://postgres@/") and "s3cret-pw" not in recorded
    assert not (data / "imgindex.db").exists()  # the table of record is the server

    # every later command on this host finds the library through the data dir alone
    assert cli_json(data, "index")["embedded"] == 12
    st = cli_json(data, "status")
    assert st["database"]["backend"] == "postgresql"
    assert st["database"]["database"] == make_url(postgres_url).database
    assert "s3cret-pw" not in json.dumps(st) and st["indexed"] == 12
    text = cli(data, "status").stdout
    assert "database: postgresql database t" in text and "s3cret-pw" not in text
    hits = cli_json(data, "similar", photos / "reds" / "red_000.jpg")
    assert hits[0]["path"].startswith(str(photos / "reds"))
    assert sum(c["size"] for c in cli_json(data, "clusters", "--list")) == 12


def test_a_host_that_only_reads_needs_the_url_and_nothing_else(
    tmp_path: Path, photos: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli(tmp_path / "a", "--database", postgres_url, "init", photos, "--model", "thumbnail")
    cli(tmp_path / "a", "index")
    monkeypatch.setenv("IMGINDEX_DATABASE_URL", postgres_url)
    reader = tmp_path / "reader"  # never created: a reader keeps nothing on disk
    assert cli_json(reader, "status")["indexed"] == 12
    assert len(cli_json(reader, "similar", photos / "blues" / "blue_001.png")) == 10
    assert not reader.exists()


def test_sqlite_stays_the_default_and_status_says_so(tmp_path: Path, photos: Path) -> None:
    data = tmp_path / "data"
    cli(data, "init", photos, "--model", "thumbnail")
    st = cli_json(data, "status")
    assert st["database"] == {"backend": "sqlite", "path": str(data / "imgindex.db")}
    text = cli(data, "status").stdout
    assert "database: sqlite " in text and "host: this machine" in text


def test_a_data_dir_belongs_to_one_library(
    tmp_path: Path, photos: Path, postgres_server: object
) -> None:
    first, second = postgres_server.create_database(), postgres_server.create_database()  # type: ignore[attr-defined]
    cli(tmp_path / "pg", "--database", first, "init", photos, "--model", "thumbnail")
    out = cli(tmp_path / "pg", "--database", second, "status", code=1)
    assert out.stderr.startswith("error: data dir ") and "belongs to the library" in out.stderr

    cli(tmp_path / "lite", "init", photos, "--model", "thumbnail")
    out = cli(tmp_path / "lite", "--database", second, "status", code=1)
    assert "holds a SQLite library; `imgindex migrate --to URL`" in out.stderr


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://u@h/db", "takes a postgresql:// URL, not mysql://"),
        ("postgresql://u@h", "names no database"),
        ("::not a url::", "takes a URL like postgresql://"),
    ],
)
def test_a_bad_database_url_is_one_error_line(tmp_path: Path, url: str, says: str) -> None:
    out = cli(tmp_path, "--database", url, "status", code=1)
    assert out.stderr.count("\n") == 1 and says in out.stderr


def test_an_unreachable_server_is_one_error_line_naming_it(tmp_path: Path) -> None:
    gone = tmp_path / "no-server-here"
    gone.mkdir()
    url = f"postgresql://postgres@/lib?host={gone}"
    done = run_process("--data-dir", str(tmp_path / "d"), "--database", url, "status")
    assert done.returncode == 1
    assert done.stderr.startswith("error: the library's database server cannot be reached")
    assert str(gone) in done.stderr and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


def test_migrate_to_moves_a_sqlite_library_to_postgresql_verified(
    tmp_path: Path, photos: Path, postgres_server: object
) -> None:
    data = tmp_path / "data"
    cli(data, "init", photos, "--model", "thumbnail", "--k", "2")
    cli(data, "index")
    cli(data, "clusters", "name", "1", "Sunsets")
    before = cli_json(data, "clusters", "--list")
    hits = cli_json(data, "similar", photos / "reds" / "red_002.jpg")
    url = postgres_server.create_database()  # type: ignore[attr-defined]

    out = cli(data, "migrate", "--to", url)
    assert "copied and verified: " in out.stderr and "identical in the copy" in out.stderr
    assert "now uses postgresql database" in out.stderr
    assert not (data / "imgindex.db").exists()  # kept beside, never deleted
    assert (data / "imgindex.db.moved-to-postgresql").is_file()
    assert cli_json(data, "status")["database"]["backend"] == "postgresql"
    assert cli_json(data, "clusters", "--list") == before  # names and members came along
    # the same answers; the SQLite library's only host ('') is now this host, by name
    here = cli_json(data, "status")["host"]
    assert here and cli_json(data, "similar", photos / "reds" / "red_002.jpg") == [
        {**h, "host": here} for h in hits
    ]
    assert cli_json(data, "index")["unchanged"] == 12  # nothing re-embedded

    again = cli(data, "migrate", "--to", url, code=1)
    assert again.stderr.startswith("error: the library is in postgresql database")


def test_migrate_to_a_database_that_holds_a_library_changes_nothing(
    tmp_path: Path, photos: Path, postgres_url: str
) -> None:
    cli(tmp_path / "pg", "--database", postgres_url, "init", photos, "--model", "thumbnail")
    cli(tmp_path / "pg", "index")
    data = tmp_path / "data"
    cli(data, "init", photos, "--model", "thumbnail")
    out = cli(data, "migrate", "--to", postgres_url, code=1)
    assert out.stderr.count("\n") == 1 and "already holds an imgindex library" in out.stderr
    assert cli_json(data, "status")["database"]["backend"] == "sqlite"
    assert (data / "imgindex.db").is_file() and not (data / "database.url").exists()

"""The web page's HTTP API and its security, against a real server (uvicorn on a real socket,
in a thread of the test) over a real library (``thumbnail`` model, real files).

What the attacks tried: changes without, with a wrong, and with another session's CSRF
token; a tampered session cookie; a wrong password; a non-loopback bind without a password;
``--no-auth`` without ``--read-only``; changes on a read-only server; path traversal in every
parameter (ids, static file names, query strings); oversized, empty and non-image uploads;
unknown ids; a foreign Host header (DNS rebinding)."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers import cli, cli_json, query
from imaging import make_photos
from PIL import Image

from imgindex.web.app import MAX_UPLOAD
from imgindex.web.server import WebServer

FAMILIES = ("red", "blue", "green")
pytestmark = pytest.mark.slow  # a library and servers: ~20 s; CI runs it


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("web")
    photos, data = root / "photos", root / "data"
    for fam in FAMILIES:
        make_photos(photos / fam, fam, 8)
    shutil.copy(photos / "red" / "red_000.jpg", photos / "red_copy.jpg")
    (photos / "broken.jpg").write_bytes(b"not a picture")
    cli(data, "init", photos, "--model", "thumbnail", "--k", "3")
    cli(data, "index")
    return photos, data


def start(data: Path, address: str = "127.0.0.1:0", **kw: Any) -> WebServer:
    server = WebServer(data, address, **kw)
    server.start()
    deadline = time.monotonic() + 10
    while not server.server.started:
        assert time.monotonic() < deadline, "the web server did not start"
        time.sleep(0.02)
    return server


@pytest.fixture(scope="module")
def server(library) -> Iterator[WebServer]:
    s = start(library[1])
    yield s
    s.stop()


class Browser:
    """A client with its own cookie jar, as one browser is."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = requests.Session()
        self.csrf = ""

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.http.get(self.base + path, timeout=30, **kw)

    def post(self, path: str, token: str | None = None, **kw: Any) -> requests.Response:
        headers = kw.pop("headers", {})
        if token is not None:
            headers["X-CSRF-Token"] = token
        return self.http.post(self.base + path, headers=headers, timeout=30, **kw)

    def session(self) -> dict[str, Any]:
        body = self.get("/api/session").json()
        self.csrf = body["csrf"]
        return body


def browser(server: WebServer) -> Browser:
    b = Browser(server.url)
    b.session()
    return b


def image_id(data: Path, name: str) -> int:
    return next(i for i, p in query(data, "SELECT id, path FROM images") if p.endswith(name))


# --- the API ----------------------------------------------------------------------------------


def test_api_answers_in_the_shapes_of_the_cli(library, server):
    photos, data = library
    b = browser(server)
    status = b.get("/api/status").json()
    cli_status = cli_json(data, "status")
    assert {k: status[k] for k in ("indexed", "failed", "clusters", "model")} == {
        k: cli_status[k] for k in ("indexed", "failed", "clusters", "model")
    }
    clusters = b.get("/api/clusters").json()
    assert [(c["id"], c["size"]) for c in clusters] == [
        (c["id"], c["size"]) for c in cli_json(data, "clusters")
    ]
    first = clusters[0]
    page = b.get(f"/api/clusters/{first['id']}", params={"offset": 1, "limit": 2}).json()
    whole = cli_json(data, "clusters", "show", str(first["id"]))
    by_id = sorted(whole["members"], key=lambda m: m["id"])  # pages go by id
    assert [m["path"] for m in page["members"]] == [m["path"] for m in by_id[1:3]]
    assert page["size"] == whole["size"] and page["title"] == first["title"]
    rest = b.get(f"/api/clusters/{first['id']}", params={"offset": 2, "limit": 500}).json()
    assert len(rest["members"]) == whole["size"] - 2

    red = image_id(data, "red/red_001.jpg")
    photo = b.get(f"/api/images/{red}").json()
    assert photo["path"].endswith("red_001.jpg") and photo["status"] == "indexed"
    assert len(photo["neighbours"]) == 20
    similar = cli_json(data, "similar", "-k", "20", photos / "red" / "red_001.jpg")
    assert [n["path"] for n in photo["neighbours"]] == [m["path"] for m in similar]
    assert all(isinstance(n["id"], int) for n in photo["neighbours"])

    dup = b.get(f"/api/images/{image_id(data, 'red_copy.jpg')}").json()
    assert [Path(d["path"]).name for d in dup["duplicates"]] == ["red_000.jpg"]

    broken = b.get(f"/api/images/{image_id(data, 'broken.jpg')}").json()
    assert broken["status"] == "failed" and "not an image" in broken["reason"]

    spec = b.get("/api/openapi.json").json()
    assert {"/api/status", "/api/clusters", "/api/images/{image_id}", "/api/search"} <= set(
        spec["paths"]
    )


def test_thumbnails_are_webp_cached_with_an_etag(library, server):
    _, data = library
    b = browser(server)
    red = image_id(data, "red/red_002.jpg")
    got = b.get(f"/api/images/{red}/thumb")
    assert got.status_code == 200 and got.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(got.content)) as img:
        assert img.format == "WEBP" and max(img.size) == 256
    assert list((data / "thumbs").rglob(f"{red}-256-*.webp"))  # cached in the data dir
    again = b.get(f"/api/images/{red}/thumb", headers={"If-None-Match": got.headers["etag"]})
    assert again.status_code == 304 and not again.content
    preview = b.get(f"/api/images/{red}/preview")
    with Image.open(io.BytesIO(preview.content)) as img:
        assert img.size == (320, 240)  # never enlarged


def test_search_by_upload_finds_the_photo_and_writes_nothing(library, server):
    photos, _ = library
    before = sorted(p for p in photos.rglob("*"))
    b = browser(server)
    body = (photos / "blue" / "blue_003.jpg").read_bytes()
    got = b.post("/api/search", b.csrf, data=body)
    assert got.status_code == 200, got.text
    results = got.json()
    assert results[0]["path"].endswith("blue_003.jpg") and results[0]["score"] > 0.999
    assert all("blue" in Path(r["path"]).name for r in results[:5])
    assert sorted(p for p in photos.rglob("*")) == before  # nothing written into the root


def test_rename_a_cluster(library, server):
    _, data = library
    b = browser(server)
    got = b.post("/api/clusters/1/name", b.csrf, json={"name": "Beach 2024"})
    assert got.status_code == 200, got.text
    assert next(c for c in cli_json(data, "clusters") if c["id"] == 1)["name"] == "Beach 2024"
    assert b.get("/api/clusters/1").json()["title"] == "Beach 2024"
    b.post("/api/clusters/1/name", b.csrf, json={"name": ""})
    assert next(c for c in cli_json(data, "clusters") if c["id"] == 1)["name"] is None


def test_resolve_and_undo_through_the_api(library, server, tmp_path):
    photos, data = library
    b = browser(server)
    assert b.post("/api/duplicates/resolve", b.csrf, json={"keep": 1}).status_code == 400
    cli(data, "config", "quarantine", str(tmp_path / "aside"))
    digest = hashlib.sha256((photos / "red_copy.jpg").read_bytes()).hexdigest()
    groups = b.get("/api/duplicates").json()["groups"]
    [group] = [g for g in groups if any(m["path"].endswith("red_copy.jpg") for m in g["members"])]
    keep = next(m["id"] for m in group["members"] if m["path"].endswith("red_000.jpg"))
    done = b.post("/api/duplicates/resolve", b.csrf, json={"keep": keep}).json()
    assert [Path(m["src"]).name for m in done["moved"]] == ["red_copy.jpg"]
    assert not (photos / "red_copy.jpg").exists() and (tmp_path / "aside" / "red_copy.jpg").exists()
    assert b.get("/api/duplicates").json()["undoable"] == 1
    back = b.post("/api/duplicates/undo", b.csrf).json()
    assert [Path(m["dest"]).name for m in back[0]["moved"]] == ["red_copy.jpg"]
    assert hashlib.sha256((photos / "red_copy.jpg").read_bytes()).hexdigest() == digest


# --- security ---------------------------------------------------------------------------------


def test_every_change_needs_the_sessions_csrf_token(library, server):
    _, data = library
    a, other = browser(server), browser(server)
    for token in (None, "", "forged", other.csrf):
        for path, kw in (
            ("/api/clusters/1/name", {"json": {"name": "pwned"}}),
            ("/api/duplicates/resolve", {"json": {"keep": 2}}),
            ("/api/duplicates/undo", {}),
            ("/api/search", {"data": b"x"}),
        ):
            got = a.post(path, token, **kw)
            assert got.status_code == 403, (path, token, got.text)
    assert all(c["name"] != "pwned" for c in cli_json(data, "clusters"))
    # a forged cookie is a new session: its token is not the old one
    forged = Browser(server.url)
    forged.http.cookies.set("imgindex_session", "e30.AAAA")
    assert forged.post("/api/clusters/1/name", a.csrf, json={"name": "pwned"}).status_code == 403


@pytest.mark.parametrize(
    "path",
    [
        "/api/images/..%2F..%2Fetc%2Fpasswd/thumb",
        "/api/images/%2Fetc%2Fpasswd",
        "/api/images/-1",
        "/api/images/0/preview",
        "/api/images/1e3",
        "/api/images/99999999/thumb",
        "/api/images/99999999",
        "/api/clusters/99999",
        "/api/clusters/1%2F..%2F2",
        "/api/clusters/1?offset=-1",
        "/api/clusters/1?limit=100000",
        "/static/..%2F..%2Fapp.py",
        "/static/%2Fetc%2Fpasswd",
        "/static/app.py",
        "/../../etc/passwd",
    ],
)
def test_traversal_and_unknown_ids_get_4xx(server, path):
    b = browser(server)
    got = b.get(path)
    assert 400 <= got.status_code < 500, (path, got.status_code)
    assert b"root:" not in got.content


def test_a_thumbnail_never_comes_from_a_path_in_the_request(library, server):
    _, data = library
    b = browser(server)
    red = image_id(data, "red/red_003.jpg")
    got = b.get(f"/api/images/{red}/thumb", params={"path": "/etc/passwd", "file": "../x"})
    with Image.open(io.BytesIO(got.content)) as img:
        assert img.format == "WEBP"  # the image's own picture, the parameters ignored


def test_uploads_are_capped_and_must_be_pictures(library, server):
    photos, _ = library
    b = browser(server)
    big = b.post("/api/search", b.csrf, data=b"\xff\xd8" + b"\0" * MAX_UPLOAD)
    assert big.status_code == 413
    assert b.post("/api/search", b.csrf, data=b"").status_code == 400
    text = b.post("/api/search", b.csrf, data=b"#!/bin/sh\nrm -rf /\n" * 20)
    assert text.status_code == 400 and "not an image" in text.json()["detail"]
    cut = (photos / "red" / "red_004.jpg").read_bytes()[:200]
    assert b.post("/api/search", b.csrf, data=cut).status_code == 400


def test_a_foreign_host_name_is_refused_on_loopback(server):
    got = requests.get(server.url + "/api/status", headers={"Host": "evil.example"}, timeout=10)
    assert got.status_code == 421


def test_binds_loopback_by_default_and_refuses_others_without_a_password(library):
    _, data = library
    out = cli(data, "serve", "--http", "0.0.0.0:0", code=1)
    assert "set a password first" in out.stderr
    out = cli(data, "serve", "--http", "0.0.0.0:0", "--no-auth", code=1)
    assert "--no-auth is only allowed with --read-only" in out.stderr
    assert "127.0.0.1:8760" in cli(data, "serve", "--help").stdout


def test_read_only_no_auth_refuses_every_change(library):
    _, data = library
    s = start(data, "0.0.0.0:0", read_only=True, no_auth=True)
    try:
        b = browser(s)
        assert b.session()["read_only"] is True
        assert b.get("/api/status").status_code == 200
        for path, kw in (
            ("/api/clusters/1/name", {"json": {"name": "x"}}),
            ("/api/duplicates/resolve", {"json": {"keep": 2}}),
            ("/api/duplicates/undo", {}),
        ):
            got = b.post(path, b.csrf, **kw)
            assert got.status_code == 403 and "read-only" in got.text, path
    finally:
        s.stop()


def test_a_password_guards_everything_with_signed_sessions(library):
    _, data = library
    cli(data, "config", "http_password", input="correct horse battery\n")
    stored = query(data, "SELECT value FROM meta WHERE key = 'http.password'")[0][0]
    assert stored.startswith("scrypt$") and "correct horse" not in stored
    cli(data, "config", "http_password", input="correct horse battery\n")
    again = query(data, "SELECT value FROM meta WHERE key = 'http.password'")[0][0]
    assert again != stored  # salted: the same password hashes differently
    cli(data, "config", "http_password", input="short\n", code=1)
    s = start(data, "0.0.0.0:0")
    try:
        b = browser(s)
        assert b.session()["login_required"] is True
        assert b.get("/api/status").status_code == 401
        assert b.get("/api/clusters").status_code == 401
        assert b.get("/api/images/2/thumb").status_code == 401
        assert b.post("/api/login", b.csrf, json={"password": "wrong one!"}).status_code == 403
        ok = b.post("/api/login", b.csrf, json={"password": "correct horse battery"})
        assert ok.status_code == 200
        assert b.get("/api/status").status_code == 200
        cookie = b.http.cookies.get("imgindex_session")
        assert cookie and "correct" not in cookie
        # a cookie changed by the client is not a session
        body, mac = cookie.rsplit(".", 1)
        tampered = Browser(s.url)
        tampered.http.cookies.set("imgindex_session", body + "." + mac[::-1])
        assert tampered.get("/api/status").status_code == 401
        # the old token died with the login: a fresh session's is needed
        token = ok.json()["csrf"]
        assert b.post("/api/clusters/2/name", token, json={"name": "Garden"}).status_code == 200
        b.post("/api/logout", token)
        assert b.get("/api/status").status_code == 401
    finally:
        s.stop()
        cli(data, "config", "http_password", "-")


def test_imgindex_serve_is_a_real_server_and_stops_on_sigterm(library):
    _, data = library
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgindex", "--data-dir", str(data), "serve", "--http",
         "127.0.0.1:0"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        assert url, line
        assert requests.get(url.group(1) + "/api/status", timeout=30).json()["indexed"] == 25
        page = requests.get(url.group(1) + "/", timeout=30).text
        assert "/static/app.js" in page and "http://" not in page and "https://" not in page
    finally:
        proc.send_signal(signal.SIGTERM)
    # a graceful stop: uvicorn shuts down, then exits by the signal it caught (as systemd expects)
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)


def test_the_http_setting_is_checked(library):
    _, data = library
    assert "HOST:PORT" in cli(data, "config", "http", "nonsense", code=1).stderr
    cli(data, "config", "http", "127.0.0.1:8761")
    assert cli_json(data, "config", "http") == {"http": "127.0.0.1:8761"}
    cli(data, "config", "http", "")

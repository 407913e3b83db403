"""The web page end to end: a real daemon (``--http`` on loopback, the ``thumbnail`` model) over
real files, driven by a real headless Chromium through Playwright; and schemathesis against
its OpenAPI document. Screenshots of each page go to ``$IMGINDEX_ARTIFACTS`` (default
``.ci/artifacts``).

Skips when Chromium (Debian's ``chromium``) or Playwright is missing."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from daemon_helpers import DaemonProcess, settled, wait_for
from helpers import cli, cli_json
from imaging import make_photos

pytestmark = [pytest.mark.slow, pytest.mark.daemon]

FAMILIES = ("red", "blue", "green")
DEFAULT_ARTIFACTS = Path(__file__).parents[1] / ".ci" / "artifacts"
ARTIFACTS = Path(os.environ.get("IMGINDEX_ARTIFACTS") or DEFAULT_ARTIFACTS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """A library of three families and an exact copy, a cluster view and a quarantine
    folder; its daemon serving the page on a loopback port."""
    root = tmp_path_factory.mktemp("site")
    photos, data, view, aside = (root / n for n in ("photos", "data", "view", "aside"))
    for fam in FAMILIES:
        make_photos(photos / fam, fam, 8)
    shutil.copy(photos / "red" / "red_000.jpg", photos / "red_copy.jpg")
    cli(data, "init", photos, "--model", "thumbnail", "--k", "3")
    view.mkdir()
    cli(data, "config", "view_dir", str(view))
    cli(data, "config", "quarantine", str(aside))
    port = free_port()
    with DaemonProcess(data, "--http", f"127.0.0.1:{port}") as d:
        wait_for(lambda: settled(data, 25), 60, d.log_text)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url), 30, d.log_text)
        yield {"url": url, "photos": photos, "data": data, "view": view, "aside": aside, "d": d}


def _answers(url: str) -> bool:
    try:
        return requests.get(url + "/api/session", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def tab(site) -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium to drive (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = context.new_page()
        outside: list[str] = []
        pg.on(
            "request",
            lambda r: outside.append(r.url) if not r.url.startswith(site["url"]) else None,
        )
        pg.set_default_timeout(20_000)
        yield pg
        assert not outside, f"the page asked for something elsewhere: {outside}"
        browser.close()


def shot(pg: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"web-{name}.png"), full_page=True)


def test_overview_shows_the_counts_and_the_daemon(site, tab):
    tab.goto(site["url"] + "/#/")
    tab.wait_for_selector("[data-stat=indexed] b")
    assert tab.inner_text("[data-stat=indexed] b") == "25"
    assert tab.inner_text("[data-stat=clusters] b") == "3"
    assert tab.inner_text("#daemon-state").split()[0] in ("watching", "idle", "scanning")
    first = tab.inner_text("#updated")
    wait_for(lambda: tab.inner_text("#updated") != first, 10, "the overview is not live")
    shot(tab, "overview")


def test_clusters_open_a_cluster_rename_it_and_the_folder_view_follows(site, tab):
    tab.goto(site["url"] + "/#/clusters")
    tab.wait_for_selector(".card")
    cards = tab.query_selector_all(".card")
    assert len(cards) == 3
    shot(tab, "clusters")
    cid = int(cards[0].get_attribute("data-cluster"))
    size = next(c["size"] for c in cli_json(site["data"], "clusters") if c["id"] == cid)
    card = f".card[data-cluster='{cid}']"
    tab.click(f"{card} .rename-button")
    tab.fill(f"{card} input[type=text]", "Beach 2024")
    tab.press(f"{card} input[type=text]", "Enter")
    tab.wait_for_selector(f"{card} .name:text('Beach 2024')")
    assert next(c for c in cli_json(site["data"], "clusters") if c["id"] == cid)["name"] == (
        "Beach 2024"
    )
    wait_for(lambda: (site["view"] / f"{cid}-Beach-2024").is_dir(), 30, site["d"].log_text)
    tab.click(f"{card} a.thumbs")
    tab.wait_for_selector("#members a")
    assert len(tab.query_selector_all("#members a")) == size
    assert "Beach 2024" in tab.inner_text("h1")
    shot(tab, "cluster")


def test_click_a_photo_and_see_its_neighbours(site, tab):
    tab.goto(site["url"] + "/#/clusters")
    tab.click(".card a.thumbs")
    tab.wait_for_selector("#members a")
    tab.click("#members a >> nth=0")
    tab.wait_for_selector("#neighbours a")
    assert len(tab.query_selector_all("#neighbours a")) == 20
    scores = [float(s) for s in tab.locator("#neighbours .score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)
    wait_for(lambda: tab.eval_on_selector(".preview img", "i => i.naturalWidth") > 0, 10)
    assert tab.query_selector("#cluster-link") is not None
    facts = tab.inner_text("#facts")
    assert "Path" in facts and str(site["photos"]) in facts and "object" not in facts
    shot(tab, "photo")


def test_upload_a_photo_and_get_results(site, tab, tmp_path):
    outside = tmp_path / "query.jpg"
    shutil.copy(site["photos"] / "green" / "green_003.jpg", outside)
    tab.goto(site["url"] + "/#/search")
    tab.set_input_files("#upload", str(outside))
    tab.wait_for_selector("#results a")
    first = tab.get_attribute("#results a >> nth=0", "title")
    assert first is not None and first.endswith("green_003.jpg")
    titles = [tab.get_attribute(f"#results a >> nth={i}", "title") for i in range(5)]
    assert all("green" in Path(t or "").name for t in titles)
    shot(tab, "search")


def test_resolve_a_duplicate_group_and_undo_it(site, tab):
    photos, aside = site["photos"], site["aside"]
    before = digests(photos)
    tab.goto(site["url"] + "/#/duplicates")
    tab.wait_for_selector(".group")
    assert len(tab.query_selector_all(".group")) == 1
    shot(tab, "duplicates")
    tab.click(".group .set-aside")
    tab.wait_for_selector("text=No duplicates.")
    assert not (photos / "red_copy.jpg").exists() and (aside / "red_copy.jpg").exists()
    tab.click("#undo")
    tab.wait_for_selector(".group")
    assert digests(photos) == before  # every file back, byte for byte
    assert digests(aside) == {}


def test_the_map(site, tab):
    tab.goto(site["url"] + "/#/map")
    tab.wait_for_selector("canvas#map")
    assert "25 images" in tab.inner_text("h1")
    shot(tab, "map")


def test_no_api_input_makes_a_server_error(site):
    """schemathesis against the OpenAPI document, with a session and its CSRF token so the
    changes are reached too: any 5xx fails."""
    http = requests.Session()
    token = http.get(site["url"] + "/api/session", timeout=10).json()["csrf"]
    cookie = http.cookies.get("imgindex_session")
    done = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run",
            site["url"] + "/api/openapi.json",
            "--checks", "not_a_server_error",
            "--max-examples", "15",
            "--suppress-health-check", "all",
            "-H", f"X-CSRF-Token: {token}",
            "-H", f"Cookie: imgindex_session={cookie}",
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "passed" in done.stdout

"""``imgindex report``: one self-contained HTML file, checked in a real headless Chromium.

The browser tests skip when no Chromium is installed (CI installs Debian's ``chromium``). Set
``IMGINDEX_ARTIFACTS`` to a folder to keep the screenshots they take.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import cli, cli_json, execute, query
from imaging import make_photos
from PIL import Image

from imgindex import report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FAMILIES = ("red", "blue", "green")


def chromium() -> str:
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        pytest.skip("no Chromium to render the report in (apt-get install chromium)")
    return found


def headless(*args: str, timeout: float = 120) -> str:
    cmd = [chromium(), "--headless=new", "--disable-gpu", "--no-sandbox", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    return done.stdout


def keep(path: Path) -> None:
    """Copy a screenshot to $IMGINDEX_ARTIFACTS, when set."""
    if folder := os.environ.get("IMGINDEX_ARTIFACTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / path.name)


def assert_not_blank(png: Path) -> None:
    with Image.open(png) as img:
        assert img.format == "PNG" and img.width >= 800
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 50, "the screenshot is (nearly) blank"


def page_data(text: str) -> dict[str, Any]:
    blob = re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
    assert blob, "the report has no data block"
    return json.loads(blob.group(1))


def attributes(dom: str, tag: str) -> dict[str, str]:
    found = re.search(rf"<{tag}\b([^>]*)>", dom)
    assert found, f"no <{tag}> in the DOM"
    return dict(re.findall(r'([\w-]+)="([^"]*)"', found.group(1)))


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Any]:
    """A library of three families (one photo deleted after indexing, one broken file) and
    its report."""
    root = tmp_path_factory.mktemp("report")
    photos, data, out = root / "photos", root / "data", root / "out" / "report.html"
    for fam in FAMILIES:
        make_photos(photos / fam, fam, 9)
    (photos / "broken.jpg").write_bytes(b"not a picture")
    cli(data, "init", photos, "--model", "thumbnail", "--k", "3")
    cli(data, "index")
    gone = photos / "green" / "green_004.jpg"
    gone.unlink()  # indexed, but its file is gone when the report is made
    out.parent.mkdir()
    result = cli(data, "report", "--out", out)
    return {
        "data": data,
        "out": out,
        "gone": str(gone.resolve()),
        "stderr": result.stderr,
        "clusters": cli_json(data, "clusters"),
    }


def test_the_report_is_one_self_contained_file_with_every_indexed_image(made):
    out = made["out"]
    text = out.read_text(encoding="utf-8")
    assert f"{out} (" in made["stderr"] and " KB)" in made["stderr"]
    assert "27 points, 3 clusters" in made["stderr"]
    assert "<link" not in text and "@import" not in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), "fetches something"
    data = page_data(text)
    points = data["points"]
    assert len(points["x"]) == 27 and all(0 <= v <= report.GRID for v in points["x"])
    names = {f"{points['dirs'][d]}/{f}" for d, f in zip(points["d"], points["f"], strict=True)}
    assert made["gone"] in names and not any(n.endswith("broken.jpg") for n in names)
    # every image got a thumbnail but the deleted one, which gets a placeholder
    thumbs = [data["thumbs"][t] for t in points["t"]]
    missing = [n for n, t in zip(points["f"], thumbs, strict=True) if not t]
    assert missing == [Path(made["gone"]).name]
    sheets = {c["id"]: c for c in data["clusters"]}
    assert set(sheets) == {c["id"] for c in made["clusters"]}
    assert sorted(i for c in sheets.values() for i in c["members"]) == list(range(27))
    assert {c["size"] for c in sheets.values()} == {9}
    # the silhouette plot: k was fixed (3), so the scores are computed and both k are marked
    assert text.count('class="dot') == len(re.findall(r"<circle ", text)) >= 5
    assert "k = 3 (yours" in text and "k is set to 3" in text


@pytest.mark.slow  # Chromium
def test_the_report_renders_in_chromium_without_script_errors(made, tmp_path):
    out = made["out"]
    dom = headless("--dump-dom", out.as_uri())
    assert "data-errors" not in attributes(dom, "html"), attributes(dom, "html")
    body = attributes(dom, "body")
    assert body.get("data-ready") == "1", "the page's script did not finish"
    assert body["data-points"] == "27" and body["data-sheets"] == "3"
    sheets = re.findall(r'<section class="sheet" id="cluster-(\d+)" data-cluster="\d+">', dom)
    assert sorted(map(int, sheets)) == sorted(c["id"] for c in made["clusters"])
    assert len(re.findall(r'<img src="data:image/jpeg;base64,', dom)) == 26
    assert dom.count(">no preview<") == 1  # the deleted photo
    shot = tmp_path / "report.png"
    headless(f"--screenshot={shot}", "--window-size=1200,2000", out.as_uri())
    assert_not_blank(shot)
    keep(shot)


@pytest.mark.slow  # Chromium
def test_script_errors_would_be_caught(made, tmp_path, monkeypatch):
    """The check above is not vacuous: a page whose script throws is reported as such."""
    shipped = report.asset
    monkeypatch.setattr(
        report,
        "asset",
        lambda name: ('throw new Error("boom");' if name == "report.js" else "") + shipped(name),
    )
    broken = tmp_path / "broken.html"
    broken.write_text(report.render(page_data_for(made)), encoding="utf-8")
    dom = headless("--dump-dom", broken.as_uri())
    assert "boom" in attributes(dom, "html").get("data-errors", "")
    assert "data-ready" not in attributes(dom, "body")


def page_data_for(made: dict[str, Any]) -> dict[str, Any]:
    from imgindex.library import Library

    with Library.open(made["data"]) as lib:
        return report.gather(lib)


class DevTools:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (the DevTools protocol on
    file descriptors 3 and 4, NUL-separated JSON), with the standard library only."""

    def __init__(self, profile: Path, timeout: float = 60) -> None:
        to_chrome, self._write = os.pipe()
        self._read, from_chrome = os.pipe()
        # out of the way of 3 and 4, which the child gets
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome, from_chrome)]
        for fd in (to_chrome, from_chrome):
            os.close(fd)

        def wire() -> None:
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        cmd = [chromium(), "--headless=new", "--disable-gpu", "--no-sandbox"]
        cmd += ["--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
        self.proc = subprocess.Popen(
            cmd,
            preexec_fn=wire,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fd in high:
            os.close(fd)
        self.timeout, self.events, self._buf, self._id = timeout, [], b"", 0

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._write, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    assert "error" not in reply, reply
                    return reply["result"]
                self.events.append(reply)
            left = deadline - time.monotonic()
            assert left > 0 and select.select([self._read], [], [], left)[0], f"{method}: no reply"
            chunk = os.read(self._read, 1 << 20)
            assert chunk, "Chromium went away"
            self._buf += chunk

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate",
            session,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self.proc.wait(timeout=10)
        except (AssertionError, OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._write)
            os.close(self._read)


FIRST_DRAWN_PIXEL = """(() => {
  const c = document.getElementById("map"), r = c.getBoundingClientRect();
  const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data, s = c.width / r.width;
  for (let y = 0; y < c.height; y += 2) for (let x = 0; x < c.width; x += 2)
    if (px[(y * c.width + x) * 4 + 3] > 200) return [r.left + x / s, r.top + y / s];
  return null;
})()"""

TOOLTIP = """(async () => {
  const tip = document.getElementById("tip"), img = tip.querySelector("img");
  if (img) await img.decode();
  return {shown: getComputedStyle(tip).display, text: tip.innerText,
          img: img ? img.src.slice(0, 23) : null, width: img ? img.naturalWidth : 0};
})()"""


@pytest.mark.slow  # Chromium
def test_hovering_a_point_shows_its_thumbnail_and_file_name(made, tmp_path):
    browser = DevTools(tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target, flatten=True)
        session = session["sessionId"]
        browser.call("Runtime.enable", session)
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=1200,
            height=1400,
            deviceScaleFactor=1,
            mobile=False,
        )
        browser.call("Page.navigate", session, url=made["out"].as_uri())
        deadline = time.monotonic() + 60
        while browser.evaluate(session, "document.body && document.body.dataset.ready") != "1":
            assert time.monotonic() < deadline, "the page's script never finished"
            time.sleep(0.1)
        x, y = browser.evaluate(session, FIRST_DRAWN_PIXEL)
        browser.call("Input.dispatchMouseEvent", session, type="mouseMoved", x=x, y=y)
        tip = browser.evaluate(session, TOOLTIP)
        shot = browser.call("Page.captureScreenshot", session, format="png")["data"]
        thrown = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]
    finally:
        browser.close()
    assert not thrown, thrown
    assert tip["shown"] == "block"
    name = tip["text"].split("\n")[0]
    assert re.fullmatch(r"(red|blue|green)_\d{3}\.jpg", name), tip
    if name != Path(made["gone"]).name:
        assert tip["img"] == "data:image/jpeg;base64," and tip["width"] == report.THUMB_PX
    png = tmp_path / "report-hover.png"
    png.write_bytes(base64.b64decode(shot))
    assert_not_blank(png)
    keep(png)


def test_a_library_with_k_chosen_by_silhouette_plots_the_stored_scores(tmp_path):
    photos, data = tmp_path / "photos", tmp_path / "data"
    for fam in FAMILIES:
        make_photos(photos / fam, fam, 10)
    cli(data, "init", photos, "--model", "thumbnail", "--k", "auto")
    cli(data, "index")
    out = tmp_path / "r.html"
    cli(data, "report", "-o", out, "--thumbnails", "4")
    text = out.read_text(encoding="utf-8")
    stored = json.loads(query(data, "SELECT value FROM meta WHERE key = 'cluster_auto_k'")[0][0])
    plotted = [int(k) for k in re.findall(r'<circle [^>]*data-k="(\d+)"', text)]
    assert plotted == sorted(int(k) for k in stored["silhouette"]) and len(plotted) >= 3
    assert f"k = {stored['k']} (chosen)" in text
    assert stored["sample"] == 30 and "at 30 images, 30 of them scored" in text
    data_ = page_data(text)
    assert sum(1 for t in data_["thumbs"] if t) == 4 and len(data_["points"]["x"]) == 30
    # each sheet still lists its members; those past the cap show a placeholder
    assert len(data_["clusters"]) == stored["k"] and all(c["members"] for c in data_["clusters"])


def test_the_report_reads_the_scores_stored_by_the_clustering_not_its_own(tmp_path):
    photos, data = tmp_path / "photos", tmp_path / "data"
    for fam in FAMILIES:
        make_photos(photos / fam, fam, 4)
    cli(data, "init", photos, "--model", "thumbnail", "--k", "auto")
    cli(data, "index")
    stored = {"k": 3, "at": 12, "sample": 12, "silhouette": {"2": 0.123456, "3": 0.654321}}
    execute(
        data,
        "UPDATE meta SET value = :v WHERE key = 'cluster_auto_k'",
        [{"v": json.dumps(stored)}],
    )
    out = tmp_path / "r.html"
    cli(data, "report", "-o", out)
    text = out.read_text(encoding="utf-8")
    assert re.findall(r'<circle [^>]*data-k="(\d+)"', text) == ["2", "3"]
    assert "k = 2: silhouette 0.123" in text and "k = 3 (chosen): 0.654" in text


def test_failing_to_write_the_report_is_one_error_line_naming_the_file(made, tmp_path):
    bad = tmp_path / "missing-folder" / "report.html"
    result = cli(made["data"], "report", "--out", bad, code=1)
    assert result.stderr.startswith(f"error: cannot write {bad}:")
    assert not bad.exists()

"""`imgindex similar` on a photo outside the library, answered by a running daemon over its Unix
socket (model already loaded), and the CLI's own embedding when no daemon answers."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, settled, wait_for
from helpers import cli, cli_json, run_process
from imaging import make_photos

from imgindex.client import ask_similar, ping
from imgindex.models import load_embedder
from imgindex.paths import LibraryPaths
from imgindex.service import QueryService

pytestmark = pytest.mark.usefixtures("backend")  # every test on SQLite and on PostgreSQL

# The CLI in a fresh interpreter; prints which embedding modules the process itself imported.
PROBE = """
import json, sys
from imgindex.cli import main
sys.argv = ["imgindex", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    code = e.code or 0
loaded = [m for m in ("imgindex.decode", "imgindex.models.thumbnail") if m in sys.modules]
print(json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
"""


def probe(data: Path, *args: str) -> tuple[dict, str, str]:
    """Run the CLI in a fresh process; (probe report, stdout, stderr without the report)."""
    run = subprocess.run(
        [sys.executable, "-c", PROBE, "--data-dir", str(data), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    *err, report = run.stderr.rstrip("\n").split("\n")
    return json.loads(report), run.stdout, "\n".join(err)


@pytest.fixture()
def lib(tmp_path: Path) -> tuple[Path, Path]:
    photos, data = tmp_path / "photos", tmp_path / "data"
    make_photos(photos / "reds", "red", 4)
    make_photos(photos / "blues", "blue", 4)
    cli(data, "init", photos, "--model", "thumbnail", "--k", "2")
    return photos, data


@pytest.mark.daemon
def test_the_daemon_answers_for_a_photo_outside_the_library(lib, tmp_path):
    photos, data = lib
    outside = make_photos(tmp_path / "elsewhere", "blue", 1, start=100)[0]
    bad = tmp_path / "elsewhere" / "notes.jpg"
    bad.write_text("not a picture")
    with DaemonProcess(data) as d:
        wait_for(lambda: settled(data, 8), 30)
        wait_for(lambda: ping(LibraryPaths(data)), 30, d.log_text)
        report, out, err = probe(data, "-v", "similar", outside, "-k", "3", "--json")
        assert report == {"code": 0, "loaded": []}, err  # neither decoder nor model here
        assert "answered by the daemon" in err
        assert [m["path"].split("/")[-2] for m in json.loads(out)] == ["blues"] * 3

        # a failure is the local one's single error line, even from the daemon
        report, out, err = probe(data, "similar", bad)
        assert report == {"code": 1, "loaded": []} and out == ""
        assert err == f"error: {bad}: not an image (format not recognised)", err

        # what the daemon indexes later is found: its reader keeps up with its writer
        new = make_photos(photos / "greens", "green", 1)[0]
        wait_for(lambda: settled(data, 9), 30)
        query = make_photos(tmp_path / "elsewhere", "green", 1, start=50)[0]
        top = ask_similar(LibraryPaths(data), query, 1)
        assert top is not None and [m.path for m in top] == [str(new.resolve())]
    assert not (data / "daemon.sock").exists()  # removed on shutdown


@pytest.mark.slow  # a real process
def test_a_stale_socket_is_ignored_and_similar_works_locally(lib, tmp_path):
    _photos, data = lib
    cli(data, "index")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(data / "daemon.sock"))  # a crashed daemon's: bound, nobody listening
    stale.close()
    outside = make_photos(tmp_path / "elsewhere", "red", 1, start=100)[0]
    assert ask_similar(LibraryPaths(data), outside, 3) is None
    matches = cli_json(data, "similar", outside, "-k", "3")
    assert [m["path"].split("/")[-2] for m in matches] == ["reds"] * 3
    result = run_process("--data-dir", data, "-v", "similar", outside)
    assert result.returncode == 0 and "answered by the daemon" not in result.stderr


def test_no_socket_means_no_answer(tmp_path):
    photo = make_photos(tmp_path, "red", 1)[0]
    assert ask_similar(LibraryPaths(tmp_path / "nothing"), photo, 5) is None
    assert ping(LibraryPaths(tmp_path / "nothing")) is None


def test_the_service_in_process_replaces_a_stale_socket_and_cleans_up(lib, tmp_path):
    photos, data = lib
    cli(data, "index")
    paths = LibraryPaths(data)
    paths.socket.write_text("left behind")
    service = QueryService(data, load_embedder("thumbnail"))
    service.start()
    try:
        assert service.ready.wait(30)
        assert ping(paths) == {"ok": True, "model": "thumbnail"}
        photo = make_photos(tmp_path / "q", "red", 1, start=7)[0]
        found = ask_similar(paths, photo, 2)
        assert found and all("/reds/" in m.path for m in found)
        assert "bad request" in send_garbage(paths.socket)  # answered; the service goes on
        assert ask_similar(paths, photos / "blues" / "blue_000.jpg", 1)
    finally:
        service.stop()
    assert not paths.socket.exists() and not service._thread.is_alive()


def send_garbage(path: Path) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(b"hello\n")
        sock.shutdown(socket.SHUT_WR)
        return sock.makefile("rb").readline().decode()


@pytest.mark.daemon
def test_a_socket_path_too_long_is_not_offered_and_nothing_breaks(tmp_path):
    data = tmp_path / ("d" * (100 - len(str(tmp_path))))  # data/daemon.sock: > 107 bytes
    photos = tmp_path / "photos"
    make_photos(photos, "red", 3)
    cli(data, "init", photos, "--model", "thumbnail", "--k", "1")
    with pytest.raises(Exception, match="AF_UNIX"):
        QueryService(data, load_embedder("thumbnail")).start()
    with DaemonProcess(data) as d:
        wait_for(lambda: settled(data, 3), 30)
        outside = make_photos(tmp_path / "q", "red", 1, start=9)[0]
        assert len(cli_json(data, "similar", outside, "-k", "2")) == 2
        assert d.proc.poll() is None
        assert "AF_UNIX" in d.log_text()

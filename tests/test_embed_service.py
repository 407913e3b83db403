"""The remote embedding service: a real ``imgindex embed-server`` process on loopback, real
HTTP, real libraries indexed through it by ``imgindex index`` and by the daemon."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daemon_helpers import DaemonProcess, settled, status, wait_for
from helpers import cli, cli_json, row_count, run_process
from imaging import make_photos

#: seconds of a real PostgreSQL server or service process each: the full suite, not the quick run
pytestmark = pytest.mark.slow

pytest.importorskip("fastapi", reason="the embedding service needs the embed extra")
pytest.importorskip("uvicorn", reason="the embedding service needs the embed extra")

TOKEN = "s3cret-token-for-tests"


class EmbedServer:
    """``python -m imgindex embed-server`` as a subprocess; ``url`` once it listens."""

    def __init__(self, log: Path, *args: str, port: int = 0, env: dict[str, str] | None = None):
        self.log_path = log
        self.log = open(log, "ab")  # noqa: SIM115
        self.start = self.log.tell()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imgindex", "embed-server", "--port", str(port), *args],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            env={**os.environ, **(env or {})},
        )
        self.url = wait_for(self._listening, 120, self.text)
        self.port = int(self.url.rsplit(":", 1)[1])

    def _listening(self) -> str | None:
        assert self.proc.poll() is None, f"embed-server exited: {self.text()}"
        found = re.search(r"listening on (http://[0-9.]+:\d+)", self.text())
        return found.group(1) if found else None

    def text(self) -> str:
        return self.log_path.read_bytes()[self.start :].decode(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture()
def servers(tmp_path: Path):
    """Start servers with ``servers(*args)``; all are stopped after the test."""
    started: list[EmbedServer] = []

    def start(*args: str, **kw: Any) -> EmbedServer:
        started.append(EmbedServer(tmp_path / "server.log", *args, **kw))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def library(tmp_path: Path, name: str, model: str = "thumbnail", count: int = 6) -> Path:
    photos = tmp_path / "photos"
    if not photos.exists():
        for family in ("red", "blue", "green"):
            make_photos(photos, family, count)
    data = tmp_path / name
    cli(data, "init", photos, "--model", model, "--k", "3")
    return data


def rows(data: Path) -> dict[str, tuple[np.ndarray, Any]]:
    """``{path: (vector, label)}`` of the indexed images."""
    with sqlite3.connect(data / "imgindex.db") as conn:
        found = conn.execute("SELECT path, vector, label FROM images WHERE status='indexed'")
        return {p: (np.frombuffer(v, np.float32), label) for p, v, label in found}


def same_library(a: Path, b: Path, min_cosine: float) -> None:
    ra, rb = rows(a), rows(b)
    assert sorted(ra) == sorted(rb) and ra
    cosines = [float(ra[p][0] @ rb[p][0]) for p in ra]
    assert min(cosines) >= min_cosine, sorted(cosines)[:5]
    assert [ra[p][1] for p in sorted(ra)] == [rb[p][1] for p in sorted(rb)]


def consistent(data: Path, count: int) -> None:
    """Every photo indexed exactly once, each embedded once, and `check` finds nothing."""
    s = status(data)
    assert (s["indexed"], s["index_size"], s["failed"], s["pending"]) == (count, count, 0, 0)
    assert s["embedded_total"] == count  # no image was embedded (and committed) twice
    assert cli_json(data, "check")["problems"] == []


def post(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST" if body is not None else "GET", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def batch_headers(count: int, model: str = "thumbnail", token: str | None = TOKEN) -> dict:
    head = {"X-Imgindex-Model": model, "X-Imgindex-Format": "raw", "X-Imgindex-Count": str(count)}
    return {**head, "Authorization": f"Bearer {token}"} if token else head


def pixels(count: int) -> bytes:
    return np.random.default_rng(0).integers(0, 255, (count, 224, 224, 3), np.uint8).tobytes()


# --- the library through the service ---------------------------------------------------------


@pytest.mark.slow
def test_index_through_the_service_gives_the_local_vectors(tmp_path, servers):
    here = library(tmp_path, "local")
    cli(here, "index")
    server = servers("--model", "thumbnail")
    there = library(tmp_path, "remote")
    cli(there, "config", "embed_url", server.url)
    cli(there, "config", "embed_fallback", "wait")  # no local model: the service or nothing
    cli(there, "index", "--batch-size", "4")
    same_library(here, there, 0.999999)
    consistent(there, 18)


def test_index_refuses_a_service_that_runs_another_model(tmp_path, servers):
    server = servers("--model", "thumbnail")
    data = library(tmp_path, "lib", model="efficientnet_lite0")
    cli(data, "config", "embed_url", server.url)
    result = cli(data, "index", code=1)
    assert "runs model 'thumbnail', the library uses efficientnet_lite0" in result.stderr
    assert "--model efficientnet_lite0" in result.stderr
    assert status(data)["indexed"] == 0


@pytest.mark.slow
def test_index_embeds_locally_while_the_service_is_down(tmp_path):
    data = library(tmp_path, "lib")
    cli(data, "config", "embed_url", f"http://127.0.0.1:{free_port()}")
    result = run_process("--data-dir", data, "index")
    assert result.returncode == 0, result.stderr
    assert "Connection refused; embedding locally until it answers" in result.stderr
    consistent(data, 18)


def test_embed_settings_are_checked(tmp_path):
    data = library(tmp_path, "lib")
    for name, value, why in (
        ("embed_url", "ftp://nas/x", "expected http://HOST:PORT"),
        ("embed_url", "http://desktop:99999", "expected http://HOST:PORT"),
        ("embed_fallback", "maybe", "expected local or wait"),
        ("embed_token_file", "token.txt", "expected an absolute path"),
    ):
        assert why in cli(data, "config", name, value, code=1).stderr
    cli(data, "config", "embed_url", "http://desktop.lan:8765")
    assert cli_json(data, "config")["embed_url"] == "http://desktop.lan:8765"


@pytest.mark.slow
def test_the_default_model_agrees_through_the_service_without_torch_here(tmp_path, servers):
    """efficientnet_lite0 on CPU both ways: cosine >= 0.999 and the same ImageNet classes; the
    client, waiting for the service rather than falling back, never imports torch."""
    here = library(tmp_path, "local", model="efficientnet_lite0", count=4)
    cli(here, "index")
    server = servers("--model", "efficientnet_lite0", "--device", "cpu")
    there = library(tmp_path, "remote", model="efficientnet_lite0")
    cli(there, "config", "embed_url", server.url)
    cli(there, "config", "embed_fallback", "wait")
    script = (
        "import sys; from imgindex.cli import main\n"
        f"sys.argv = ['imgindex', '--data-dir', {str(there)!r}, 'index']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"  # the model ran on the service only
    same_library(here, there, 0.999)
    consistent(there, 12)


# --- failures: the service goes away, and comes back ----------------------------------------


@pytest.mark.slow
def test_index_waits_through_a_kill_mid_batch_and_a_restart(tmp_path, servers):
    """The default model on the service, so that it is busy with a batch most of the time."""
    model = ("--model", "efficientnet_lite0", "--device", "cpu")
    server = servers(*model)
    data = library(tmp_path, "lib", model="efficientnet_lite0", count=20)
    cli(data, "config", "embed_url", server.url)
    cli(data, "config", "embed_fallback", "wait")
    log = open(tmp_path / "index.log", "wb")  # noqa: SIM115
    index = subprocess.Popen(
        [sys.executable, "-m", "imgindex", "--data-dir", str(data), "index", "--batch-size", "4"],
        stderr=log,
    )
    wait_for(lambda: row_count(data) >= 4, 120, lambda: (tmp_path / "index.log").read_text())
    server.kill()  # mid-batch: the connection is reset
    done = row_count(data)
    assert 0 < done < 60
    wait_for(lambda: "holding the queue" in (tmp_path / "index.log").read_text(), 20)
    time.sleep(1)
    assert index.poll() is None and row_count(data) == done  # held, not failed
    servers(*model, port=server.port)
    assert index.wait(120) == 0, (tmp_path / "index.log").read_text()
    assert "is back: embedding there" in (tmp_path / "index.log").read_text()
    consistent(data, 60)


@pytest.mark.slow
@pytest.mark.daemon
def test_the_daemon_holds_its_queue_while_the_service_is_gone(tmp_path, servers):
    server = servers("--model", "thumbnail")
    data = library(tmp_path, "lib", count=2)
    photos = tmp_path / "photos"
    cli(data, "config", "embed_url", server.url)
    cli(data, "config", "embed_fallback", "wait")
    with DaemonProcess(data, "--timing", "embed_retry=0.5") as d:
        wait_for(lambda: settled(data, 6), 30, d.log_text)
        assert status(data)["daemon"]["embedder"]["using"] == "service", d.log_text()
        server.proc.send_signal(signal.SIGSTOP)
        make_photos(photos / "new", "red", 8, start=100)
        time.sleep(2)  # the new photos' batch is sent, and hangs
        server.kill()  # mid-batch
        waiting = wait_for(
            lambda: (e := status(data)["daemon"]["embedder"])["using"] == "waiting" and e, 30
        )
        assert waiting["waiting"] > 0 and waiting["problem"]
        text = cli(data, "status").stdout
        assert f"embedding: waiting for {server.url}" in text and "images held" in text
        time.sleep(1.5)
        assert status(data)["indexed"] == 6 and status(data)["queued"] > 0  # held, not dropped
        servers("--model", "thumbnail", port=server.port)
        wait_for(lambda: settled(data, 14), 30, d.log_text)
        assert status(data)["daemon"]["embedder"]["using"] == "service"
    consistent(data, 14)


@pytest.mark.slow
@pytest.mark.daemon
def test_the_daemon_embeds_locally_then_picks_the_service_up_again(tmp_path, servers):
    port = free_port()
    data = library(tmp_path, "lib", count=2)
    photos = tmp_path / "photos"
    cli(data, "config", "embed_url", f"http://127.0.0.1:{port}")
    with DaemonProcess(data, "--timing", "embed_retry=0.5") as d:
        wait_for(lambda: settled(data, 6), 30, d.log_text)
        assert status(data)["daemon"]["embedder"]["using"] == "local"
        assert "embedding: local" in cli(data, "status").stdout
        servers("--model", "thumbnail", port=port)
        time.sleep(1)  # past embed_retry: the next batch asks the service
        make_photos(photos / "new", "blue", 4, start=100)
        wait_for(lambda: settled(data, 10), 30, d.log_text)
        assert status(data)["daemon"]["embedder"]["using"] == "service"
        assert "is back: embedding there" in d.log_text()
    consistent(data, 10)


# --- security --------------------------------------------------------------------------------


def test_a_non_loopback_bind_needs_a_token(tmp_path):
    result = run_process("embed-server", "--host", "0.0.0.0", "--model", "thumbnail", timeout=60)
    assert result.returncode == 1
    assert "reachable from other machines: set a shared token first" in result.stderr


def test_hostile_requests_get_4xx_and_the_server_keeps_serving(tmp_path, servers):
    server = servers(
        "--model", "thumbnail", "--max-batch", "4", env={"IMGINDEX_EMBED_TOKEN": TOKEN}
    )
    url = server.url

    def still_serves() -> None:
        code, answer = post(url, "/v1/embed", pixels(2), batch_headers(2))
        assert code == 200 and answer["count"] == 2 and answer["model"] == "thumbnail"

    still_serves()
    cases = [
        (401, batch_headers(2, token=None), pixels(2)),
        (401, batch_headers(2, token="s3cret-token-for-test"), pixels(2)),
        (409, batch_headers(2, model="efficientnet_lite0"), pixels(2)),
        (413, batch_headers(5), pixels(5)),  # more images than --max-batch
        (400, batch_headers(2), pixels(1)),  # the body is not 2 images
        (400, batch_headers(2), b"\x00garbage"),
        (400, {**batch_headers(1), "X-Imgindex-Format": "jpeg"}, b"\x00\x00\x00\x04abcd"),
        (400, {**batch_headers(1), "X-Imgindex-Count": "-1"}, pixels(1)),
        (400, {**batch_headers(1), "X-Imgindex-Format": "png"}, pixels(1)),
    ]
    for code, headers, body in cases:
        got, answer = post(url, "/v1/embed", body, headers)
        assert (got, bool(answer["detail"])) == (code, True), (code, headers, answer)
        still_serves()
    assert post(url, "/v1/info", None, {})[0] == 401
    info = post(url, "/v1/info", None, {"Authorization": f"Bearer {TOKEN}"})[1]
    assert info["model"] == "thumbnail" and info["max_batch"] == 4

    # a body larger than any batch may be: refused on its declared length, unread
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        head = "".join(f"{k}: {v}\r\n" for k, v in batch_headers(4).items())
        head += "Content-Length: 10000000000\r\n"
        raw.sendall(f"POST /v1/embed HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
        assert raw.recv(100).startswith(b"HTTP/1.1 413")
    # not HTTP at all
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400")
    still_serves()
    assert server.alive()
    refusals = [line for line in server.text().splitlines() if "POST /v1/embed from" in line]
    assert len(refusals) >= len(cases)  # one log line each
    assert TOKEN not in server.text()


@pytest.mark.slow
def test_a_client_without_the_token_is_told_how_to_fix_it(tmp_path, servers):
    server = servers("--model", "thumbnail", env={"IMGINDEX_EMBED_TOKEN": TOKEN})
    data = library(tmp_path, "lib")
    cli(data, "config", "embed_url", server.url)
    result = cli(data, "index", code=1)
    assert "answered 401" in result.stderr and "IMGINDEX_EMBED_TOKEN" in result.stderr
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    cli(data, "config", "embed_token_file", str(token_file))
    cli(data, "config", "embed_fallback", "wait")
    cli(data, "index")
    consistent(data, 18)

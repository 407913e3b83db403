"""Downloading torchvision weights: once, verified, atomic, via a mirror; all on loopback.

The expected sha256 prefix comes from the file name of the canonical URL. To serve our own
(random) weights with a name that matches their hash, the tests replace ``zoo.weights_url``
(the one place that asks torchvision for the canonical URL) and point
``IMGINDEX_WEIGHTS_MIRROR`` at a local HTTP server; everything else runs unchanged.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from imgindex.errors import WeightsUnavailable
from imgindex.models import load_embedder, zoo
from imgindex.models.weights import CANONICAL_BASE, cached_download, expected_hash, mirrored


class Server:
    """A loopback HTTP server: ``files`` maps a URL path to (bytes, Content-Length or None)."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, int | None]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                if self.path not in server.files:
                    self.send_error(404)
                    return
                body, length = server.files[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/weights/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch) -> Iterator[Server]:
    srv = Server()
    monkeypatch.setenv("IMGINDEX_WEIGHTS_MIRROR", srv.base)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def mobilenet_bytes() -> bytes:
    """A randomly initialised mobilenet_v2 state dict, serialised."""
    import torch
    import torchvision

    buf = io.BytesIO()
    torch.save(torchvision.models.get_model("mobilenet_v2", weights=None).state_dict(), buf)
    return buf.getvalue()


def _publish(monkeypatch, data: bytes) -> str:
    """Make mobilenet_v2's canonical URL name DATA's own hash; returns the file name."""
    name = f"mobilenet_v2-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    monkeypatch.setattr(zoo, "weights_url", lambda model: CANONICAL_BASE + name)
    return name


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_real_urls_carry_hashes_and_follow_the_mirror(monkeypatch) -> None:
    url = zoo.weights_url("mobilenet_v2")  # torchvision metadata only, no network
    assert url == CANONICAL_BASE + "mobilenet_v2-7ebf99e0.pth"
    assert expected_hash(url) == "7ebf99e0"
    for name in ("resnet50", "vgg16", "convnext_tiny", "efficientnet_b0"):
        assert len(expected_hash(zoo.weights_url(name)) or "") == 8, name
    monkeypatch.delenv("IMGINDEX_WEIGHTS_MIRROR", raising=False)
    assert mirrored(url) == url
    monkeypatch.setenv("IMGINDEX_WEIGHTS_MIRROR", "http://mirror.example/torch")
    assert mirrored(url) == "http://mirror.example/torch/mobilenet_v2-7ebf99e0.pth"
    assert mirrored("https://elsewhere.example/x-1234abcd.pth").startswith("https://elsewhere")


def test_downloads_once_into_cache(server, monkeypatch, mobilenet_bytes, tmp_path, capfd) -> None:
    name = _publish(monkeypatch, mobilenet_bytes)
    server.files[f"/weights/{name}"] = (mobilenet_bytes, None)
    cache = tmp_path / "weights"

    first = load_embedder("mobilenet_v2", cache_dir=cache, device="cpu")
    assert server.requests == [f"/weights/{name}"]
    assert [p.name for p in cache.iterdir()] == [name]
    assert (cache / name).read_bytes() == mobilenet_bytes
    out, err = capfd.readouterr()
    assert out == "" and f"downloading {name} (" in err and "downloaded" in err

    second = load_embedder("mobilenet_v2", cache_dir=cache, device="cpu", progress=False)
    assert len(server.requests) == 1  # served from the cache
    pixels = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_allclose(first.embed(pixels), second.embed(pixels), atol=1e-6)
    assert first.embed(pixels).shape == (2, 1280)


def test_corrupt_download_leaves_nothing(server, monkeypatch, mobilenet_bytes, tmp_path) -> None:
    name = _publish(monkeypatch, mobilenet_bytes)
    server.files[f"/weights/{name}"] = (mobilenet_bytes[:-100] + b"x" * 100, None)
    cache = tmp_path / "weights"
    with pytest.raises(WeightsUnavailable) as err:
        load_embedder("mobilenet_v2", cache_dir=cache, device="cpu", progress=False)
    msg = str(err.value)
    assert "corrupt" in msg and server.base + name in msg and "--weights FILE" in msg
    assert "\n" not in msg
    assert list(cache.iterdir()) == []


def test_truncated_download_leaves_nothing(server, tmp_path) -> None:
    data = b"0123456789" * 1000
    url = f"{CANONICAL_BASE}blob-{hashlib.sha256(data).hexdigest()[:8]}.bin"
    server.files["/weights/" + url.rsplit("/", 1)[1]] = (data[:5000], len(data))
    with pytest.raises(WeightsUnavailable, match="cannot download weights from http://127"):
        cached_download(url, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_downloaded_file_gets_the_mode_other_library_files_get(server, tmp_path) -> None:
    """The weights live in the library's data directory, where another user reading the
    library needs them too: 0666 less the umask, as ``open`` gives (they were 0600)."""
    data = b"0123456789" * 1000
    url = f"{CANONICAL_BASE}blob-{hashlib.sha256(data).hexdigest()[:8]}.bin"
    server.files["/weights/" + url.rsplit("/", 1)[1]] = (data, None)
    umask = os.umask(0o022)
    try:
        got = cached_download(url, tmp_path, progress=False)
    finally:
        os.umask(umask)
    assert got.read_bytes() == data and got.stat().st_mode & 0o777 == 0o644
    assert list(tmp_path.iterdir()) == [got]


def test_missing_file_on_server(server, monkeypatch, tmp_path) -> None:
    _publish(monkeypatch, b"never served")
    with pytest.raises(WeightsUnavailable, match="HTTP 404"):
        load_embedder("mobilenet_v2", cache_dir=tmp_path, device="cpu", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_says_what_to_do(monkeypatch, tmp_path) -> None:
    base = f"http://127.0.0.1:{_closed_port()}/models/"
    monkeypatch.setenv("IMGINDEX_WEIGHTS_MIRROR", base)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with pytest.raises(WeightsUnavailable) as err:
        load_embedder("resnet50", cache_dir=tmp_path / "w", device="cpu", progress=False)
    msg = str(err.value)
    assert msg.startswith(f"cannot download weights from {base}resnet50-11ad3fa6.pth: ")
    assert msg.endswith("download it elsewhere and pass --weights FILE")
    assert "\n" not in msg
    assert list((tmp_path / "w").iterdir()) == []


def test_file_mirror_for_offline_machines(monkeypatch, tmp_path) -> None:
    data = b"weights" * 100
    name = f"thing-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / name).write_bytes(data)
    monkeypatch.setenv("IMGINDEX_WEIGHTS_MIRROR", (tmp_path / "mirror").as_uri())
    got = cached_download(CANONICAL_BASE + name, tmp_path / "cache", progress=False)
    assert got == tmp_path / "cache" / name and got.read_bytes() == data


def test_cached_file_is_trusted_without_network(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMGINDEX_WEIGHTS_MIRROR", f"http://127.0.0.1:{_closed_port()}/")
    (tmp_path / "vgg16-397923af.pth").write_bytes(b"already here")
    got = cached_download(CANONICAL_BASE + "vgg16-397923af.pth", tmp_path, progress=False)
    assert got.read_bytes() == b"already here"

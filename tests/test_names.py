"""Any name a Linux file system holds: indexed, stored losslessly, shown on one line, and
returned by ``--json`` so that the original bytes can be recovered (issue 9, defect 1)."""

from __future__ import annotations

import base64
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, cli_json, run_process
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imaging import draw, make_photos

from imgindex import names
from imgindex.ingest import Ingestor
from imgindex.library import Library
from imgindex.scan import is_candidate

pytestmark = pytest.mark.usefixtures("backend")  # every test on SQLite and on PostgreSQL


def jpeg(seed: int, family: str = "red") -> bytes:
    buf = io.BytesIO()
    draw(family, seed, size=(96, 72)).save(buf, "JPEG")
    return buf.getvalue()


def write(path: bytes, content: bytes) -> bytes:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(content)
    return path


def recovered(entry: dict) -> bytes:
    """The exact bytes of an entry's path, the way README says a consumer gets them."""
    raw = os.fsencode(entry["path"])  # Python: \\udcXX escapes are the undecodable bytes
    if "path_b64" in entry:
        assert base64.b64decode(entry["path_b64"]) == raw
    else:
        assert names.is_utf8(entry["path"])
    return raw


def rows_by_bytes(data: Path) -> dict[bytes, dict]:
    return {recovered(r): r for r in json.loads(cli(data, "export", "--json", "-").stdout)}


def test_latin1_newline_and_undecodable_folder_names_are_indexed_and_shown(tmp_path):
    base = os.fsencode(tmp_path / "photos")
    good = [
        write(base + b"/caf\xe9.jpg", jpeg(1)),  # Latin-1, as old Samba shares write it
        write(base + b"/two\nlines.jpg", jpeg(2)),
        write(base + b"/\xff\xfe folder/inside.jpg", jpeg(3)),
        write(base + b"/plain.jpg", jpeg(4)),
    ]
    broken = write(base + b"/bad \xe9\x1b[31m.jpg", b"plain text, not a picture")
    data = tmp_path / "data"
    cli(data, "init", os.fsdecode(base), "--model", "thumbnail")
    result = cli(data, "index")
    assert "4 embedded" in result.stderr and "1 failed" in result.stderr

    rows = rows_by_bytes(data)
    assert {p: rows[p]["status"] for p in good} == dict.fromkeys(good, "indexed")
    assert rows[broken]["status"] == "failed" and rows[broken]["reason"]

    # text: one line per neighbour, unprintable names quoted so they paste back into bash
    text = cli(data, "similar", os.fsdecode(good[0]), "-k", "3").stdout
    lines = text.splitlines()
    assert len(lines) == 3
    assert f"$'{os.fsdecode(base)}/two\\nlines.jpg'" in text
    assert f"$'{os.fsdecode(base)}/\\xff\\xfe folder/inside.jpg'" in text
    text.encode("ascii")  # nothing raw: the escapes say it all

    got = cli_json(data, "similar", os.fsdecode(good[0]), "-k", "3")
    assert {recovered(m) for m in got} == set(good[1:])

    failed = cli(data, "status", "--failed").stdout.splitlines()
    assert failed == [
        f"$'{os.fsdecode(base)}/bad \\xe9\\x1b[31m.jpg'\tfailed: " + (rows[broken]["reason"])
    ]


def test_a_root_whose_own_name_is_not_utf8(tmp_path):
    root = os.fsencode(tmp_path) + b"/Fotos \xe9t\xe9"
    photo = write(root + b"/a.jpg", jpeg(5))
    data = tmp_path / "data"
    cli(data, "init", os.fsdecode(root), "--model", "thumbnail")
    cli(data, "index")
    (entry,) = cli_json(data, "status")["roots"]
    assert recovered(entry) == root and entry["available"]
    assert rows_by_bytes(data)[photo]["status"] == "indexed"
    assert "$'" in cli(data, "status").stdout  # the root, quoted


@pytest.mark.slow  # real processes
def test_a_real_process_prints_such_names_under_a_strict_utf8_terminal(tmp_path):
    """A terminal whose encoding refuses undecodable bytes (the CliRunner is lenient)."""
    base = os.fsencode(tmp_path / "photos")
    photo = write(base + b"/caf\xe9.jpg", jpeg(6))
    other = write(base + b"/other.jpg", jpeg(7))
    data = tmp_path / "data"
    cli(data, "init", os.fsdecode(base), "--model", "thumbnail")
    env = {"PYTHONIOENCODING": "utf-8:strict"}
    done = run_process("--data-dir", data, "index", env=env)
    assert done.returncode == 0, done.stderr
    for args in (["similar", os.fsdecode(other), "-k", "1"], ["clusters", "--list"]):
        done = run_process("--data-dir", data, *args, env=env)
        assert done.returncode == 0 and "\\xe9" in done.stdout, (args, done.stderr)
        assert "Traceback" not in done.stderr
    done = run_process("--data-dir", data, "similar", os.fsdecode(photo), "--json", env=env)
    assert done.returncode == 0
    assert [recovered(m) for m in json.loads(done.stdout)] == [other]


# Any byte but "/" and NUL, as Linux allows in a name ("." and ".." are the folder's own).
NAME = st.binary(min_size=1, max_size=40).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)


@pytest.mark.slow  # 25 generated trees, each indexed
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(NAME, st.booleans()), min_size=1, max_size=6, unique_by=lambda t: t[0]))
def test_every_byte_name_is_indexed_or_failed_and_round_trips(entries):
    with tempfile.TemporaryDirectory() as tmp:
        base = os.fsencode(tmp) + b"/photos"
        os.makedirs(base)
        paths = {}
        for i, (name, is_photo) in enumerate(entries):
            content = jpeg(i) if is_photo else b"plain text, not a picture"
            paths[write(base + b"/" + name, content)] = is_photo
        data = Path(tmp) / "data"
        cli(data, "init", os.fsdecode(base), "--model", "thumbnail")
        cli(data, "index")
        rows = rows_by_bytes(data)
        for path, is_photo in paths.items():
            if not is_candidate(os.fsdecode(os.path.basename(path))):
                assert path not in rows  # hidden names and partial downloads are skipped
                continue
            assert rows[path]["status"] == ("indexed" if is_photo else "failed"), path
            assert is_photo or rows[path]["reason"]
        shown = cli(data, "status", "--failed").stdout.splitlines()
        assert len(shown) == sum(r["status"] == "failed" for r in rows.values())
        for line in shown:  # PATH <tab> status: reason, on one line
            assert all(part.isprintable() and names.is_utf8(part) for part in line.split("\t"))


@pytest.mark.parametrize(
    "raw",
    [
        b"plain",
        b"caf\xe9",
        b"a\nb",
        b"tab\there",
        b"quote'\\back",
        b"\x1b[31m",
        "żółw\u0085".encode(),
    ],
)
def test_shown_names_are_bash_ansi_c_strings_of_the_same_bytes(raw):
    """A printable name is printed as it is; any other is quoted so that, pasted into bash,
    it names the same bytes."""
    import subprocess

    text = names.shown(os.fsdecode(raw))
    assert text.isprintable() and "\n" not in text
    if not text.startswith("$'"):
        assert text.encode() == raw
        return
    out = subprocess.run(["bash", "-c", f"printf %s {text}"], capture_output=True, check=True)
    assert out.stdout == raw


class FailsOnBlue:
    """A fake embedder (colour means) whose model refuses blue pictures, as a real model may
    refuse one odd input (an out-of-memory size, a NaN)."""

    dim = 192

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        means = pixels.reshape(len(pixels), -1, 3).mean(axis=1)
        if (means[:, 2] > means[:, 0]).any():
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        out = np.zeros((len(pixels), self.dim), dtype=np.float32)
        out[:, :3] = means
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_a_file_the_model_fails_on_fails_alone_not_its_batch(tmp_path):
    photos, data = tmp_path / "photos", tmp_path / "data"
    make_photos(photos, "red", 6)
    (blue,) = make_photos(photos, "blue", 1)
    cli(data, "init", photos, "--model", "thumbnail")
    with Library.open(data, write=True) as lib:
        report = Ingestor(lib, batch_size=16, embedder=FailsOnBlue()).run()
    assert (report.embedded, report.failed) == (6, 1)
    (row,) = cli_json(data, "status", "--failed")
    assert row["path"] == str(blue.resolve()) and "illegal memory access" in row["reason"]
    assert cli_json(data, "status")["indexed"] == 6


@pytest.mark.daemon
def test_the_daemon_indexes_such_names_and_keeps_running(tmp_path):
    from daemon_helpers import DaemonProcess, settled, wait_for

    photos, data = tmp_path / "photos", tmp_path / "data"
    make_photos(photos / "seed", "green", 4)
    cli(data, "init", photos, "--model", "thumbnail", "--k", "2")
    base = os.fsencode(photos)
    with DaemonProcess(data) as daemon:
        wait_for(lambda: settled(data, 4), 30, daemon.log_text)
        added = [
            write(base + b"/caf\xe9.jpg", jpeg(1)),
            write(base + b"/\xff new folder/one\nline.jpg", jpeg(2)),
        ]
        broken = write(base + b"/\xe9t\xe9.jpg", b"plain text, not a picture")
        wait_for(lambda: settled(data, 6), 30, daemon.log_text)
        assert daemon.proc.poll() is None
        rows = rows_by_bytes(data)
        assert all(rows[p]["status"] == "indexed" for p in added)
        wait_for(lambda: broken in rows_by_bytes(data), 10, daemon.log_text)
        assert rows_by_bytes(data)[broken]["status"] == "failed"
    with DaemonProcess(data) as daemon:  # and again after a restart
        wait_for(lambda: settled(data, 6), 30, daemon.log_text)
        assert daemon.proc.poll() is None

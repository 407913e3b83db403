"""``imgindex index --ray``: passes on a real two-node Ray cluster on this machine
(``ray.cluster_utils.Cluster``), driven through the real CLI in subprocesses: the result equals a
local pass, killing the driver or a worker node mid-run loses nothing and embeds nothing twice,
and a node that cannot read a root fails the run before any work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import assert_consistent, cli, query, row_count, run_process
from imaging import make_photos

from imgindex.errors import RayStalled
from imgindex.raypass import watched

#: seconds of a real Ray cluster each: the full suite, not the quick run
pytestmark = pytest.mark.slow


def start_cluster() -> Any:
    """A head and one worker node, two CPUs each, not connected to this process."""
    cluster_utils = pytest.importorskip("ray.cluster_utils", reason="Ray is the ray extra")
    cluster = cluster_utils.Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 2, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    return cluster


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    cluster = start_cluster()
    yield cluster
    cluster.shutdown()


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """Three families of 40 photos and one file that is no picture, in a new library."""
    photos, data = tmp_path / "photos", tmp_path / "data"
    for fam in ("red", "blue", "green"):
        make_photos(photos / fam, fam, 40)
    (photos / "broken.jpg").write_bytes(b"plain text, not a picture")
    cli(data, "init", photos, "--model", "thumbnail", "--k", "3")
    return photos, data


def ray_index(data: Path, address: str, *more: str) -> dict[str, Any]:
    result = run_process(
        "--data-dir", data, "index", "--ray", address, "--batch-size", "8", *more, "--json"
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def vectors(data: Path) -> dict[str, np.ndarray]:
    rows = query(data, "SELECT id, vector FROM images WHERE status = 'indexed'", raw=True)
    paths = dict(query(data, "SELECT id, path FROM images WHERE status = 'indexed'"))
    return {paths[i]: np.frombuffer(v, dtype=np.float32) for i, v in rows}


@pytest.mark.usefixtures("backend")  # on SQLite and on PostgreSQL
def test_a_ray_pass_on_two_nodes_equals_a_local_pass(ray_cluster, tree, tmp_path, monkeypatch):
    photos, data = tree
    report = ray_index(data, ray_cluster.address)
    assert report["embedded"] == 120 and report["failed"] == 1
    assert report["ray"]["nodes"] == 2 and report["ray"]["nodes_used"] == 2  # both did work
    assert_consistent(data, photos, 120)

    mine = vectors(data)
    local = tmp_path / "local"  # the same files, a local pass, a SQLite library of its own
    monkeypatch.delenv("IMGINDEX_DATABASE_URL", raising=False)
    cli(local, "init", photos, "--model", "thumbnail")
    cli(local, "index")
    theirs = vectors(local)
    assert mine.keys() == theirs.keys()
    assert min(float(mine[p] @ theirs[p]) for p in mine) >= 0.999
    monkeypatch.undo()  # back to the library's backend
    reasons = query(data, "SELECT path, reason FROM images WHERE status = 'failed'")
    assert [(Path(p).name, "not an image" in e) for p, e in reasons] == [("broken.jpg", True)]

    # unchanged files are skipped, as by a local pass; a new one is all a second run embeds
    make_photos(photos / "red", "red", 1, start=40)
    again = ray_index(data, ray_cluster.address)
    assert (again["embedded"], again["unchanged"]) == (1, 121)

    # a moved folder: its photos' content is indexed, so no worker decodes them again and the
    # writer re-links each row (same id) to its new path
    before = dict(query(data, "SELECT path, id FROM images WHERE status = 'indexed'"))
    (photos / "green").rename(photos / "verde")
    moved = ray_index(data, ray_cluster.address)
    assert (moved["embedded"], moved["moved"]) == (0, 40)
    after = dict(query(data, "SELECT path, id FROM images WHERE status = 'indexed'"))
    old = str((photos / "green" / "green_007.jpg").resolve())
    assert after[str((photos / "verde" / "green_007.jpg").resolve())] == before[old]


def test_ray_local_starts_a_ray_of_its_own_for_the_run(tree):
    photos, data = tree
    result = run_process("--data-dir", data, "index", "--json", "--ray", "local")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["embedded"] == 120 and report["ray"]["nodes"] == 1
    assert_consistent(data, photos, 120)


IMGINDEX = [sys.executable, "-m", "imgindex"]


def start_pass(data: Path, address: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*IMGINDEX, f"--data-dir={data}", "index", "--json", "--batch-size=4", f"--ray={address}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_rows(data: Path, proc: subprocess.Popen, at_least: int) -> int:
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline:
        if (n := row_count(data)) >= at_least:
            return n
        time.sleep(0.02)
    raise AssertionError(f"no {at_least} rows before the pass ended: {proc.communicate()[1]}")


@pytest.mark.usefixtures("backend")
def test_killing_the_driver_mid_run_then_the_next_run_embeds_only_the_rest(ray_cluster, tree):
    photos, data = tree
    proc = start_pass(data, ray_cluster.address)
    wait_for_rows(data, proc, 8)
    proc.kill()
    proc.wait(timeout=60)
    committed = int(query(data, "SELECT count(*) FROM images WHERE status = 'indexed'")[0][0])
    assert 0 < committed < 120, committed  # the kill landed mid-run
    report = ray_index(data, ray_cluster.address)
    assert report["embedded"] == 120 - committed  # nothing embedded twice
    assert_consistent(data, photos, 120)


def test_killing_a_worker_node_mid_run_loses_nothing(tree):
    photos, data = tree
    cluster = start_cluster()
    try:
        proc = start_pass(data, cluster.address)
        wait_for_rows(data, proc, 4)
        worker = next(n for n in cluster.worker_nodes)
        cluster.remove_node(worker, allow_graceful=False)  # its raylet and workers are killed
        out, err = proc.communicate(timeout=300)
        first = json.loads(out)["embedded"] if proc.returncode == 0 else None
        committed = int(query(data, "SELECT count(*) FROM images WHERE status='indexed'")[0][0])
        report = ray_index(data, cluster.address)  # on the head alone now
    finally:
        cluster.shutdown()
    assert first in (None, committed), err  # what it said it embedded is what it committed
    assert report["embedded"] == 120 - committed and report["ray"]["nodes"] == 1
    assert_consistent(data, photos, 120)


def test_a_node_that_cannot_read_a_root_fails_the_run_before_any_work(ray_cluster, tree):
    """A node started in a mount namespace of its own where the photos' share is not mounted
    (an empty folder over the root), as on a host that lacks the share."""
    photos, data = tree
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("a node without the share needs root and unshare(1)")
    ray = Path(sys.executable).with_name("ray")
    script = (
        f"mount -t tmpfs tmpfs {photos} && exec {ray} start --address={ray_cluster.address} "
        "--num-cpus=1 --block"
    )
    node = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while _alive_nodes(ray_cluster.address) < 3:
            if node.poll() is not None:
                pytest.skip(f"cannot start a node without the share: {node.stderr.read()!r}")
            assert time.monotonic() < deadline, "the third node never joined"
            time.sleep(1)
        result = run_process("--data-dir", data, "index", "--ray", ray_cluster.address)
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: every Ray node must read the library's roots"), lines
    assert str(photos) in lines[-1] and "No such file" in lines[-1]
    assert row_count(data) == 0  # nothing was done


def _alive_nodes(address: str) -> int:
    code = (
        f"import ray; ray.init(address={address!r}, logging_level='error'); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else 0


def test_without_ray_the_flag_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where it is absent
    photos = tmp_path / "photos"
    make_photos(photos, "red", 2)
    result = cli(tmp_path / "data", "index", "--ray", "local", "--json", photos, code=1)
    assert "pip install 'imgindex[ray]'" in result.stderr
    assert not (tmp_path / "data").exists()  # nothing created


def test_a_cluster_that_sends_nothing_back_stops_the_run_with_the_reason():
    def stuck() -> Iterator[int]:
        yield 1
        time.sleep(30)  # a cluster that lost the resources to go on
        yield 2

    got = []
    with pytest.raises(RayStalled, match=r"in 0 s \(1 of 2 nodes alive\); what was committed"):
        for batch in watched(stuck(), 0.3, lambda: "1 of 2 nodes alive"):
            got.append(batch)
    assert got == [1]

"""Two hosts, one library: two real daemons (hosts ``a`` and ``b``: separate processes, data
dirs and roots) against one real PostgreSQL server, and a third host that only reads."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, wait_for
from helpers import cli, query, run_process
from imaging import make_photos

pytestmark = [pytest.mark.daemon, pytest.mark.slow]


def reader(url: str, *args: str) -> dict | list:
    """``imgindex ARGS --json`` run by host ``c``, which has only the URL and a data dir."""
    import json

    env = {"IMGINDEX_DATABASE_URL": url, "IMGINDEX_HOST": "c"}
    done = run_process("--data-dir", os.environ["READER_DATA"], *args, "--json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def holder(url: str) -> str | None:
    return reader(url, "status")["maintenance"]  # type: ignore[index,return-value]


def test_two_daemons_share_one_library_and_hand_over_the_maintenance(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("READER_DATA", str(tmp_path / "c" / "data"))
    roots = {h: tmp_path / h / "photos" for h in "ab"}
    data = {h: tmp_path / h / "data" for h in "ab"}
    make_photos(roots["a"] / "reds", "red", 6)
    make_photos(roots["b"] / "blues", "blue", 6)
    for h in "ab":  # b joins the library a created, adding its own root
        monkeypatch.setenv("IMGINDEX_HOST", h)
        cli(data[h], "--database", postgres_url, "init", roots[h], "--model", "thumbnail")
    monkeypatch.setenv("IMGINDEX_HOST", "a")

    daemons = {h: DaemonProcess(data[h], env={"IMGINDEX_HOST": h}) for h in "a"}
    daemons["a"].wait_ready()
    wait_for(lambda: (holder(postgres_url) or "").startswith("a "), 30, daemons["a"].log_text)
    daemons["b"] = DaemonProcess(data["b"], env={"IMGINDEX_HOST": "b"})
    try:
        daemons["b"].wait_ready()
        make_photos(roots["a"] / "more", "green", 4)
        make_photos(roots["b"] / "more", "green", 4, start=10)

        def whole(n: int) -> bool:
            s = reader(postgres_url, "status")
            return s["indexed"] == s["index_size"] == n and s["pending"] == 0  # type: ignore[index]

        wait_for(lambda: whole(20), 60, lambda: daemons["b"].log_text())
        rows = query(data["a"], "SELECT host, path, cluster_id FROM images")
        assert len(rows) == 20 and len({(h, p) for h, p, _ in rows}) == 20  # each once
        assert {h for h, _, _ in rows} == {"a", "b"}
        on_disk = {("a", str(p)) for p in roots["a"].rglob("*.jpg")}
        on_disk |= {("b", str(p)) for p in roots["b"].rglob("*.jpg")}
        assert {(h, p) for h, p, _ in rows} == on_disk

        # the third host sees the whole library: neighbours and clusters span both hosts
        hits = reader(postgres_url, "similar", str(roots["b"] / "more" / "green_010.jpg"))
        assert {h["host"] for h in hits} == {"a", "b"}  # type: ignore[index]
        wait_for(
            lambda: sum(c["size"] for c in reader(postgres_url, "clusters", "--list")) == 20,  # type: ignore[index]
            30,
            daemons["a"].log_text,
        )
        clustered = query(
            data["a"], "SELECT DISTINCT host FROM images WHERE cluster_id IS NOT NULL"
        )
        assert {h for (h,) in clustered} == {"a", "b"}

        # the host running the maintenance dies: the other one takes it over
        assert (holder(postgres_url) or "").startswith("a ")
        daemons["a"].proc.send_signal(signal.SIGKILL)
        daemons["a"].proc.wait(10)
        wait_for(lambda: (holder(postgres_url) or "").startswith("b "), 30, daemons["b"].log_text)
        make_photos(roots["b"] / "later", "red", 3, start=50)
        wait_for(
            lambda: (
                whole(23)
                and sum(c["size"] for c in reader(postgres_url, "clusters", "--list")) == 23
            ),  # type: ignore[index]
            60,
            daemons["b"].log_text,
        )
        assert daemons["b"].proc.poll() is None
    finally:
        for d in daemons.values():
            if d.proc.poll() is None:
                d.stop()
            else:
                d.close()

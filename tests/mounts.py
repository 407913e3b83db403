"""Real mounts made by tests (root only; a test skips, with the reason, where mounting is
refused), always undone at the test's end."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


class Mounts:
    """The mounts one test made, undone in reverse order by ``cleanup``."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def mount(self, *args: object) -> None:
        if os.geteuid() != 0:
            pytest.skip("mounting needs root")
        result = subprocess.run(["mount", *map(str, args)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount here: {result.stderr.strip()}")
        self.points.append(Path(str(args[-1])))

    def umount(self, point: Path) -> None:
        subprocess.run(["umount", str(point)], check=True)
        self.points.remove(point)

    def cleanup(self) -> None:
        for point in reversed(self.points):
            if subprocess.run(["umount", str(point)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(point)], check=False)
        self.points.clear()


@contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """``folder`` (created) as a tmpfs of ``size`` (e.g. ``24m``): a disk a test can fill."""
    folder.mkdir(exist_ok=True)
    mounts = Mounts()
    mounts.mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", folder)
    try:
        yield folder
    finally:
        mounts.cleanup()

"""Regenerate ``tests/data/library-0006/``: a tiny library as a released version writes it.

    .venv/bin/python tests/data/make_library_fixture.py

Run it with the code of the version whose on-disk format the fixture stands for (it was made
at commit 4d6d9ad, Alembic revision 0006), never with a newer one: the point of the fixture is
that a later version opens what an older one wrote. It builds, in a fixed place so the absolute
paths stored in the database are the same every time (``WORK``):

- ``photos/``: 12 small JPEGs from ``tests/imaging.py`` (three colour families) and one file
  that does not decode;
- ``data/``: the library, made by ``imgindex init --model thumbnail`` (k auto) and
  ``imgindex index``, one cluster named; ``imgindex.db`` and its ``vectors.N.faiss``;

then copies both into ``tests/data/library-0006/`` (lock files left out: they are empty).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from imaging import draw  # noqa: E402

WORK = Path("/tmp/imgindex-library-0006")
OUT = HERE / "library-0006"
FAMILIES = ("red", "blue", "green")
PER_FAMILY = 4


def imgindex(*args: str) -> str:
    """Run ``python -m imgindex --data-dir WORK/data ARGS``; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "imgindex", "--data-dir", str(WORK / "data"), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    for family in FAMILIES:
        folder = WORK / "photos" / family
        folder.mkdir(parents=True)
        for i in range(PER_FAMILY):
            draw(family, i, size=(96, 72)).save(folder / f"{family}_{i:03d}.jpg", quality=80)
    (WORK / "photos" / "broken.jpg").write_bytes(b"this is not a picture")
    imgindex("init", str(WORK / "photos"), "--model", "thumbnail")
    imgindex("index")
    imgindex("clusters", "name", "1", "First cluster")
    shutil.rmtree(OUT, ignore_errors=True)
    shutil.copytree(WORK / "photos", OUT / "photos")
    shutil.copytree(WORK / "data", OUT / "data", ignore=shutil.ignore_patterns("*.lock"))
    shutil.rmtree(WORK)
    for path in sorted(OUT.rglob("*")):
        print(path.relative_to(OUT), path.stat().st_size if path.is_file() else "")


if __name__ == "__main__":
    main()

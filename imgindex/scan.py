"""Finding image candidates on disk."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Names never indexed: NAS metadata and recycle folders, partial downloads.
IGNORED_NAMES = frozenset({"@eaDir", "#recycle", "#snapshot", ".stversions", "lost+found"})
IGNORED_SUFFIXES = (".part", ".tmp", ".crdownload")
#: Files that are certainly not photos (videos, sidecars, documents) are not even opened;
#: everything else is tried, and the content decides whether it is an image.
NOT_IMAGES = frozenset(
    [
        ".mp4",
        ".mov",
        ".m4v",
        ".mkv",
        ".avi",
        ".wmv",
        ".mts",
        ".m2ts",
        ".3gp",
        ".webm",
        ".mpg",
        ".mpeg",
        ".flv",
        ".mp3",
        ".m4a",
        ".wav",
        ".flac",
        ".aac",
        ".ogg",
        ".xmp",
        ".aae",
        ".thm",
        ".lrv",
        ".nfo",
        ".txt",
        ".md",
        ".json",
        ".xml",
        ".csv",
        ".ini",
        ".db",
        ".sqlite",
        ".pdf",
        ".doc",
        ".docx",
        ".xls",
        ".xlsx",
        ".zip",
        ".tar",
        ".gz",
        ".7z",
        ".rar",
        ".exe",
        ".py",
        ".html",
        ".htm",
        ".js",
        ".css",
        ".url",
        ".lnk",
        ".pp3",
        ".dop",
        ".log",
        ".srt",
        ".rst",
        ".ds_store",
    ]
)


@dataclass(frozen=True)
class FileStat:
    """A file as seen on disk."""

    path: str
    size: int
    mtime_ns: int


def is_ignored(name: str) -> bool:
    """Hidden files, AppleDouble ``._*`` files, NAS folders and partial downloads."""
    return name.startswith(".") or name in IGNORED_NAMES or name.lower().endswith(IGNORED_SUFFIXES)


def is_candidate(name: str) -> bool:
    return not is_ignored(name) and os.path.splitext(name)[1].lower() not in NOT_IMAGES


def walk(root: Path) -> Iterator[FileStat]:
    """Every candidate file under ``root`` (symlinked folders are not followed, so no loops).

    Raises OSError when ``root`` itself cannot be read; unreadable subfolders are logged and
    skipped.
    """
    stack = [str(root)]
    first = True
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            if first:
                raise
            log.warning("skipping unreadable folder %s: %s", folder, exc.strerror)
            continue
        first = False
        subfolders = []
        for entry in sorted(entries, key=lambda e: e.name):
            if is_ignored(entry.name):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(entry.path)
                elif is_candidate(entry.name) and entry.is_file():
                    st = entry.stat()
                    yield FileStat(entry.path, st.st_size, st.st_mtime_ns)
            except OSError:
                continue  # vanished or unreadable entry: the next pass sees it again
        stack.extend(reversed(subfolders))  # depth-first, folders in name order

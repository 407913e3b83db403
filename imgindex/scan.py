"""Finding image candidates on disk."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
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
    ctime_ns: int = 0  # inode change time: a chmod or chown changes it, the mtime stays


@dataclass
class Unseen:
    """What a walk could not look into, and the mount points it passed."""

    #: folders that could not be listed and entries that could not be looked at: the files
    #: under them are not known to be gone
    unreadable: list[str] = field(default_factory=list)
    #: sub-folders on another device than their parent folder (a mounted disk)
    mounts: list[str] = field(default_factory=list)


def is_ignored(name: str) -> bool:
    """Hidden files, AppleDouble ``._*`` files, NAS folders and partial downloads."""
    return name.startswith(".") or name in IGNORED_NAMES or name.lower().endswith(IGNORED_SUFFIXES)


def is_candidate(name: str) -> bool:
    return not is_ignored(name) and os.path.splitext(name)[1].lower() not in NOT_IMAGES


def walk(root: Path, unseen: Unseen | None = None) -> Iterator[FileStat]:
    """Every candidate file under ``root`` (symlinked folders are not followed, so no loops).

    Raises OSError when ``root`` itself cannot be read; unreadable subfolders and entries are
    logged, skipped and listed in ``unseen``, as are the mount points passed on the way.
    """
    unseen = unseen if unseen is not None else Unseen()
    stack = [(str(root), os.stat(root).st_dev)]
    first = True
    while stack:
        folder, device = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            if first:
                raise
            _unreadable(unseen, folder, exc)
            continue
        first = False
        subfolders = []
        for entry in sorted(entries, key=lambda e: e.name):
            if is_ignored(entry.name):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    dev = entry.stat(follow_symlinks=False).st_dev
                    if dev != device:
                        unseen.mounts.append(entry.path)
                    subfolders.append((entry.path, dev))
                elif is_candidate(entry.name) and entry.is_file():
                    st = entry.stat()
                    yield FileStat(entry.path, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            except (FileNotFoundError, NotADirectoryError):
                continue  # vanished since the listing: the next pass sees what is there
            except PermissionError as exc:  # a folder that can be listed but not searched
                _unreadable(unseen, folder, exc)
                subfolders = []
                break
            except OSError as exc:  # this entry only (an I/O error, a stale handle)
                _unreadable(unseen, entry.path, exc)
        stack.extend(reversed(subfolders))  # depth-first, folders in name order


def _unreadable(unseen: Unseen, path: str, exc: OSError) -> None:
    log.warning(
        "%s cannot be read (%s): its files are left as they are, nothing removed",
        path,
        exc.strerror or exc,
    )
    unseen.unreadable.append(path)


def vanished(path: str) -> bool:
    """True only when ``path`` is certainly gone: a path in a folder that cannot be searched,
    or on a disk that fails, is not known to be gone."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False

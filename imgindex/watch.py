"""Watching roots with watchdog: inotify where it works, polling where it cannot.

Handlers only enqueue raw events; the daemon's loop decides what they mean. Watchdog 7 only logs
a warning when the kernel's inotify queue overflows, so ``Watcher`` also listens to that log
record and raises ``missed_events``: the daemon then rescans, the guarantee that events only
speed up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from imgindex.diskspace import read_proc, unescape
from imgindex.fsafe import is_under

log = logging.getLogger(__name__)

#: File systems where inotify does not see changes made by other machines.
NETWORK_FS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "9p",
        "ceph",
        "glusterfs",
        "lustre",
        "davfs",
        "sshfs",
        "virtiofs",
    }
)
DEFAULT_POLL_S = 30.0
WATCH_LIMIT_FILE = Path("/proc/sys/fs/inotify/max_user_watches")


@dataclass(frozen=True)
class RawEvent:
    """What watchdog reported, untouched."""

    kind: str  # created | modified | attrib | closed | deleted | moved
    path: str
    dest: str
    is_dir: bool


class EventSink(FileSystemEventHandler):
    """The only handler: appends to a deque and wakes the daemon's loop."""

    IGNORED = frozenset({"opened", "closed_no_write"})

    def __init__(self) -> None:
        self.events: deque[RawEvent] = deque()
        self.wake = threading.Event()

    def on_any_event(self, event: FileSystemEvent) -> None:
        # a file's "attrib" is kept: a chmod makes a file that could not be read worth another
        # try, and ``touch`` changes the mtime with no other event
        if event.event_type in self.IGNORED or (
            event.is_directory and event.event_type in ("modified", "attrib")
        ):
            return
        self.events.append(
            RawEvent(
                event.event_type,
                os.fsdecode(event.src_path),
                os.fsdecode(event.dest_path or b""),
                event.is_directory,
            )
        )
        self.wake.set()

    def drain(self) -> list[RawEvent]:
        out = []
        while self.events:
            out.append(self.events.popleft())
        return out


class _OverflowSpy(logging.Handler):
    """Turns watchdog's "queue overflowed" warning into a flag."""

    def __init__(self, watcher: Watcher) -> None:
        super().__init__(logging.WARNING)
        self.watcher = watcher

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.watcher.missed_events = True
            self.watcher.sink.wake.set()


def mount_type(path: Path, mountinfo: str | None = None) -> str:
    """File-system type of the mount holding ``path`` (from /proc/self/mountinfo)."""
    if mountinfo is None:
        mountinfo = read_proc("mountinfo")
        if mountinfo is None:
            return "unknown"
    target = os.path.realpath(path)
    best, fstype = "", "unknown"
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        point = unescape(fields[4])
        if is_under(target, point) and len(point) >= len(best):
            best, fstype = point, right.split()[0]
    return fstype


def needs_polling(fstype: str) -> bool:
    return fstype in NETWORK_FS or (fstype.startswith("fuse.") and fstype != "fuse.portal")


def count_folders(root: Path, stop_at: int) -> int:
    """Folders under ``root`` (each needs one inotify watch), counting up to ``stop_at``."""
    n = 0
    for _dirpath, dirnames, _ in os.walk(root):
        n += 1
        if n >= stop_at:
            break
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return n


def watch_limit() -> int | None:
    try:
        return int(WATCH_LIMIT_FILE.read_text())
    except (OSError, ValueError):
        return None


class Watcher:
    """One inotify observer and one polling observer; each root scheduled on one of them."""

    def __init__(self, sink: EventSink, poll: float | None = None) -> None:
        self.sink = sink
        self.poll = poll
        self.modes: dict[Path, str] = {}
        self.missed_events = False
        self._watches: dict[Path, tuple[BaseObserver, ObservedWatch]] = {}
        self._inotify = Observer()
        self._polling = PollingObserver(timeout=poll or DEFAULT_POLL_S)
        self._inotify.start()
        self._polling.start()
        self._spy = _OverflowSpy(self)
        logging.getLogger("watchdog").addHandler(self._spy)

    def sync(self, roots: list[Path], available: dict[Path, bool]) -> list[Path]:
        """Watch available roots, drop the others; returns roots that just (re)appeared."""
        appeared = []
        for root in list(self._watches):
            if root not in roots or not available.get(root):
                self._unschedule(root)
                self.modes[root] = "frozen (unavailable)" if root in roots else ""
        for root in roots:
            if available.get(root) and root not in self._watches:
                self._schedule(root)
                appeared.append(root)
            elif not available.get(root):
                self.modes[root] = "frozen (unavailable)"
        self.modes = {r: m for r, m in self.modes.items() if m}
        return appeared

    def _schedule(self, root: Path) -> None:
        fstype = mount_type(root)
        reason = None
        if self.poll:
            reason = f"--poll {self.poll:g}"
        elif needs_polling(fstype):
            reason = f"{fstype} mount: inotify does not see remote changes"
        elif (limit := watch_limit()) and count_folders(root, limit) >= limit * 0.9:
            reason = (
                f"{root} has about as many folders as fs.inotify.max_user_watches "
                f"({limit}); raise it: sudo sysctl fs.inotify.max_user_watches={limit * 4}"
                " (and persist it in /etc/sysctl.d/)"
            )
        if reason is None:
            try:
                watch = self._inotify.schedule(self.sink, str(root), recursive=True)
                self._watches[root] = (self._inotify, watch)
                self.modes[root] = "inotify"
                return
            except OSError as exc:  # ENOSPC: out of watches
                reason = (
                    f"inotify failed ({exc.strerror}); raise fs.inotify.max_user_watches: "
                    "sudo sysctl fs.inotify.max_user_watches=524288"
                )
        if reason.startswith(str(root)) or reason.startswith("inotify"):
            log.warning("watching %s by polling: %s", root, reason)
        else:
            log.info("watching %s by polling: %s", root, reason)
        watch = self._polling.schedule(self.sink, str(root), recursive=True)
        self._watches[root] = (self._polling, watch)
        self.modes[root] = f"polling every {self._polling.timeout:g} s"

    def _unschedule(self, root: Path) -> None:
        observer, watch = self._watches.pop(root)
        with contextlib.suppress(KeyError, OSError):
            observer.unschedule(watch)

    def healthy(self) -> bool:
        return self._inotify.is_alive() and self._polling.is_alive()

    def stop(self) -> None:
        logging.getLogger("watchdog").removeHandler(self._spy)
        for observer in (self._inotify, self._polling):
            observer.stop()
        for observer in (self._inotify, self._polling):
            observer.join(timeout=5)

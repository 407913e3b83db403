"""sd_notify: a supervisor that stops reading its socket never stalls the daemon."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from imgindex.notify import Notifier


def test_a_supervisor_that_does_not_read_never_blocks_the_sender(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    unread = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unread.bind(str(path))  # the kernel queues a few datagrams (max_dgram_qlen), then is full
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    sender = threading.Thread(
        target=lambda: [notifier.status(f"{i}") for i in range(200)], daemon=True
    )
    sender.start()
    sender.join(timeout=20)
    try:
        assert not sender.is_alive(), "the daemon would hang in sd_notify"
        unread.settimeout(1)
        assert unread.recv(100) == b"STATUS=0"  # what fitted was delivered, in order
    finally:
        unread.close()

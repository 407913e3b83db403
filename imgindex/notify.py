"""systemd's notify protocol (``sd_notify``) without libsystemd: datagrams to $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends READY=1, STATUS=..., WATCHDOG=1 and STOPPING=1 when run under ``Type=notify``;
    does nothing otherwise."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):  # abstract namespace
            addr = "\0" + addr[1:]
        self.address = addr or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and (not pid or pid == str(os.getpid()))
        #: seconds between keep-alives: half the watchdog timeout, as systemd advises
        self.watchdog_interval = int(usec) / 2e6 if wanted else None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> None:
        """Send ``KEY=VALUE`` lines in one datagram, without waiting: a supervisor that does
        not read its socket never stalls the daemon (the message is dropped, as are errors:
        best effort)."""
        if self.address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), socket.MSG_DONTWAIT, self.address)
        except OSError:
            pass

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        self.send("RELOADING=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

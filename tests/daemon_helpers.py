"""A real `imgindex daemon` subprocess, with a NOTIFY_SOCKET the test reads."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers import cli_json

#: ``imgindex daemon --timing`` values of a quick daemon: a housekeeping round (roots
#: re-checked, settings re-read, STATUS= sent) every 0.3 s instead of 5 s.
QUICK_TIMINGS = ("housekeeping=0.3", "drain=0.5")


class DaemonProcess:
    """Starts ``python -m imgindex daemon`` on a library and reads its sd_notify messages."""

    def __init__(
        self,
        data: Path,
        *args: str,
        watchdog_usec: int | None = None,
        quick: bool = True,
        preexec_fn: Callable[[], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``quick``: short ``--debounce`` and ``--batch-seconds`` (else the settings'), and
        short housekeeping rounds and drains (``QUICK_TIMINGS``, else the daemon's own)."""
        self.data = data
        self.sock_path = data.parent / f"notify-{time.monotonic_ns()}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.sock_path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        # read all the time, as systemd does: the kernel keeps only a few unread datagrams
        self._reading = True
        self._reader = threading.Thread(target=self._read_all, daemon=True)
        self._reader.start()
        environ = {**os.environ, **(env or {}), "NOTIFY_SOCKET": str(self.sock_path)}
        if watchdog_usec:
            environ["WATCHDOG_USEC"] = str(watchdog_usec)
        self.log = open(data.parent / "daemon.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "imgindex",
                "--data-dir",
                str(data),
                "daemon",
                *(("--debounce", "0.3", "--batch-seconds", "0.2") if quick else ()),
                *(arg for t in QUICK_TIMINGS for arg in ("--timing", t) if quick),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=environ,
            preexec_fn=preexec_fn,
        )

    def _read_all(self) -> None:
        while self._reading:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return

    def read_messages(self) -> list[str]:
        time.sleep(0.05)  # what was sent just now is read
        return list(self.messages)

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(
            lambda: any("READY=1" in m for m in self.read_messages()),
            timeout,
            lambda: f"daemon not ready; log: {self.log_text()}",
        )

    def rounds(self) -> int:
        """Housekeeping rounds so far: each one sends a bare ``STATUS=`` message."""
        return sum(m.startswith("STATUS=") for m in self.read_messages())

    def wait_rounds(self, n: int, timeout: float = 30) -> None:
        """Return once ``n`` more housekeeping rounds have ended: whatever they re-check
        (roots, settings, pending retries) has been seen by then."""
        target = self.rounds() + n
        wait_for(lambda: self.rounds() >= target, timeout, self.log_text)

    def reloads(self) -> int:
        """Configuration reloads done so far (on SIGHUP or a changed setting): each ends with
        a new ``READY=1``, the first one aside."""
        return max(0, sum("READY=1" in m for m in self.read_messages()) - 1)

    def log_text(self) -> str:
        return (self.data.parent / "daemon.log").read_text(errors="replace")[-3000:]

    def signal(self, signo: int) -> None:
        self.proc.send_signal(signo)

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.read_messages()
        self.close()
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.close()

    def close(self) -> None:
        self._reading = False
        self._reader.join(timeout=5)
        self.sock.close()
        self.sock_path.unlink(missing_ok=True)
        self.log.close()

    def __enter__(self) -> DaemonProcess:
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.stop()


def wait_for(
    predicate: Callable[[], Any], timeout: float, message: Callable[[], str] | str = ""
) -> Any:
    """Poll ``predicate`` until it is truthy; fail with ``message`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message() if callable(message) else message)
        time.sleep(0.1)


def status(data: Path) -> dict:
    return cli_json(data, "status")


def settled(data: Path, indexed: int) -> bool:
    s = status(data)
    return (
        s["indexed"] == indexed
        and s["index_size"] == indexed
        and s["queued"] == 0
        and s["pending"] == 0
    )

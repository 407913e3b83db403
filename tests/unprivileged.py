"""Running ``python -m imgindex`` without root's power to ignore file modes.

Tests run as root here and in CI, and root reads a ``chmod 000`` file anyway. Switching to
another uid is not enough on machines where the interpreter lives under ``/root`` (mode 0700):
that user cannot even start it. So the child stays root but loses the two capabilities that
override file modes (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): modes then apply to it as to any
user. A non-root test run needs nothing: modes already apply.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def obey_file_modes() -> None:
    """``preexec_fn``: drop the mode-overriding capabilities before ``exec`` (root only)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_unprivileged(*args: Any, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m imgindex ARGS`` as a real subprocess that file modes apply to."""
    return subprocess.run(
        [sys.executable, "-m", "imgindex", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=obey_file_modes,
    )


def json_unprivileged(data: Path, *args: Any) -> Any:
    result = run_unprivileged("--data-dir", data, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def require_file_modes(tmp_path: Path) -> None:
    """Skip unless a child started by ``run_unprivileged`` is refused a ``chmod 000`` folder."""
    locked = tmp_path / "probe-locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        probe = subprocess.run(
            [sys.executable, "-c", f"import os; os.listdir({str(locked)!r})"],
            capture_output=True,
            text=True,
            preexec_fn=obey_file_modes,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot start a process that file modes apply to: {exc}")
    finally:
        locked.chmod(0o755)
        locked.rmdir()
    if "PermissionError" not in probe.stderr:
        pytest.skip("file modes do not apply even without CAP_DAC_OVERRIDE here")

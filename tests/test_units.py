"""The systemd units say what the daemon needs, and systemd accepts them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[1] / "systemd"


def directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_system_unit_is_notify_with_watchdog_state_dir_and_hardening():
    d = directives(UNITS / "imgindex.service")
    assert d["Type"] == ["notify"] and d["WatchdogSec"] and d["Restart"] == ["on-failure"]
    assert d["StateDirectory"] == ["imgindex"] and d["ReadWritePaths"] == ["/var/lib/imgindex"]
    assert d["User"] == ["imgindex"] and d["ExecReload"]
    for key, value in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "read-only"),
        ("PrivateTmp", "yes"),
        ("SystemCallFilter", "@system-service"),
        ("IOSchedulingClass", "idle"),
    ]:
        assert d[key] == [value], key
    assert "Nice" in d
    text = (UNITS / "imgindex.service").read_text()
    assert "#DeviceAllow=/dev/nvidia0 rw" in text and "#DeviceAllow=/dev/nvidiactl rw" in text


def test_user_unit_uses_the_shell_default_library():
    d = directives(UNITS / "user" / "imgindex.service")
    assert d["Type"] == ["notify"] and d["WatchdogSec"]
    assert d["Environment"] == ["IMGINDEX_DATA_DIR=%h/.local/share/imgindex"]
    assert d["WantedBy"] == ["default.target"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit", ["imgindex.service", "user/imgindex.service"])
def test_systemd_analyze_verify_accepts_the_units(tmp_path, unit):
    exe = str(Path(sys.executable).with_name("imgindex"))
    if not os.access(exe, os.X_OK):
        pytest.skip(f"{exe} is not installed")
    text = (UNITS / unit).read_text()
    text = text.replace("/usr/local/bin/imgindex", exe).replace("%h/.local/bin/imgindex", exe)
    copy = tmp_path / "imgindex.service"
    copy.write_text(text)
    user = ["--user"] if unit.startswith("user/") else []
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    result = subprocess.run(
        ["systemd-analyze", *user, "verify", str(copy)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr

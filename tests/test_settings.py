"""Settings and numeric arguments: each has a type and a range, checked when it is given; a
stored value that is not valid (an older version's) falls back to the default."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, settled, wait_for
from helpers import cli, cli_json, execute, run_process
from imaging import make_photos

pytestmark = pytest.mark.usefixtures("backend")  # every test on SQLite and on PostgreSQL

HUGE = "99999999999999999999999"


@pytest.fixture()
def lib(tmp_path: Path) -> tuple[Path, Path]:
    photos, data = tmp_path / "photos", tmp_path / "data"
    make_photos(photos / "reds", "red", 12)
    make_photos(photos / "blues", "blue", 12)
    cli(data, "init", photos, "--model", "thumbnail", "--k", "2")
    cli(data, "index")
    return photos, data


def one_error_line(result, needle: str) -> None:
    assert result.stderr.startswith("error: ") and needle in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_settings_out_of_type_or_range_are_refused_in_one_line(lib, tmp_path):
    photos, data = lib
    before = cli_json(data, "config")
    cases = [
        ("debounce", "nan"),
        ("debounce", "inf"),
        ("debounce", "0.001"),
        ("write_timeout", "1e999"),
        ("batch_size", "99999999999999999999"),
        ("batch_size", "0"),
        ("batch_size", "2.5"),
        ("batch_seconds", "nan"),
        ("rescan_interval", "0.5"),
        ("poll", "inf"),
        ("ignore", "["),
        ("ignore", "*.xmp,[ab"),
        ("ignore", "raw/*.cr2"),
        ("view_dir", str(photos / "view")),  # inside a root: it would be indexed itself
        ("view_dir", str(photos.parent)),  # around a root
        ("view_dir", "relative/dir"),
        ("view_mode", "hardlink"),
    ]
    for name, value in cases:
        one_error_line(cli(data, "config", name, value, code=1), name)
    assert cli_json(data, "config") == before
    for name, value in [
        ("debounce", "0.05"),
        ("batch_size", "4096"),
        ("poll", "0"),
        ("ignore", "*.[xX][mM][pP],[[]draft]*"),
        ("view_dir", str(tmp_path / "views")),
    ]:
        cli(data, "config", name, value)
    after = cli_json(data, "config")
    assert (after["debounce"], after["batch_size"]) == (0.05, 4096)
    assert after["ignore"] == ["*.[xX][mM][pP]", "[[]draft]*"]


@pytest.mark.slow  # a real process per argument
def test_numeric_arguments_out_of_range_are_one_error_line(lib, tmp_path):
    photos, data = lib
    photo = photos / "reds" / "red_000.jpg"
    usage = [  # Typer's ranges: usage errors, status 2
        ["clusters", "show", HUGE],
        ["clusters", "name", HUGE, "x"],
        ["similar", photo, "-k", HUGE],
        ["index", "--batch-size", HUGE],
        ["index", "--workers", HUGE],
        ["index", "--max-pixels", "0"],
        ["report", "--thumbnails", HUGE, "--out", tmp_path / "r.html"],
    ]
    for args in usage:
        one_error_line(cli(data, *args, code=2), "Invalid value")
    for args, needle in [
        (["init", photos, "--k", HUGE], "--k"),
        (["init", photos, "--k", "²"], "--k"),
        (["duplicates", "--max-distance", HUGE], "--max-distance"),
        (["duplicates", "--threshold", "nan"], "--threshold"),
    ]:
        one_error_line(cli(data, *args, code=1), needle)
    assert cli_json(data, "status")["k"] == "2"
    for flag, value in [
        ("--debounce", "nan"),
        ("--batch-size", HUGE),
        ("--rescan-interval", "inf"),
        ("--poll", "-1"),
    ]:
        result = run_process("--data-dir", data, "daemon", flag, value, timeout=60)
        assert result.returncode == 2, result.stderr
        one_error_line(result, flag)


def test_k_above_the_library_size_gives_clusters_of_several_images(tmp_path):
    photos, data = tmp_path / "photos", tmp_path / "data"
    make_photos(photos / "reds", "red", 12)
    make_photos(photos / "blues", "blue", 12)
    cli(data, "init", photos, "--model", "thumbnail", "--k", "4096")
    cli(data, "index")
    sizes = [c["size"] for c in cli_json(data, "clusters")]
    assert sum(sizes) == 24 and len(sizes) <= 12, sizes  # k is capped at half the images


@pytest.mark.daemon
def test_invalid_stored_settings_fall_back_to_defaults_with_a_warning(tmp_path):
    """Values an older imgindex accepted: the daemon starts, warns once per setting and
    indexes new files with the defaults (``quick=False``: no --debounce flag hides them)."""
    photos, data = tmp_path / "photos", tmp_path / "data"
    make_photos(photos / "seed", "red", 3)
    cli(data, "init", photos, "--model", "thumbnail", "--k", "2")
    stored = {
        "debounce": "nan",
        "batch_size": "99999999999999999999",
        "rescan_interval": "inf",
        "ignore": "[",
        "view_dir": str(photos / "view"),
    }
    execute(  # rows the CLI would refuse to write: as if another version had
        data,
        "UPDATE meta SET value = :v WHERE key = :k",
        [{"k": f"daemon.{n}", "v": v} for n, v in stored.items()],
    )
    execute(
        data,
        "INSERT INTO meta (key, value) SELECT :k, :v WHERE NOT EXISTS "
        "(SELECT 1 FROM meta WHERE key = :k)",
        [{"k": f"daemon.{n}", "v": v} for n, v in stored.items()],
    )
    with DaemonProcess(data, quick=False) as d:
        wait_for(lambda: settled(data, 3), 30, d.log_text)
        make_photos(photos / "new", "blue", 2)
        wait_for(lambda: settled(data, 5), 30, d.log_text)
        assert d.proc.poll() is None
    log = (tmp_path / "daemon.log").read_text()
    for name in stored:
        assert log.count(f"stored setting {name}:") == 1, log
    current = cli_json(data, "config")
    assert (current["debounce"], current["batch_size"], current["view_dir"]) == (1.0, 32, "")


@pytest.mark.parametrize(
    ("timing", "says"),
    [
        ("often=1", "NAME one of tick, housekeeping"),
        ("housekeeping", "expected a positive number of seconds"),
        ("housekeeping=0", "expected a positive number of seconds"),
        ("drain=nan", "expected a positive number of seconds"),
        ("rescan_jitter=1.5", "rescan_jitter: a fraction from 0 to 1"),
    ],
)
def test_a_wrong_daemon_timing_is_one_error_line(tmp_path, timing, says):
    """``--timing`` (hidden, for tests) is checked before the daemon opens anything."""
    result = cli(tmp_path / "none", "daemon", "--timing", timing, code=1)
    assert result.stderr.startswith(f"error: --timing {timing!r}: ") and says in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "none").exists()

"""``migrator sinbin list`` and ``release``, and ``migrator trace``, on a migrated archive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from migrator.demo.scp import StorageSCP
from scheduler.dispatch.embedded import run_embedded
from scheduler.plan.run import plan
from tests.support import CALLING_AE, Migration, prepare_migration


def _migrator(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "migrator", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "250"})


@pytest.fixture
def migrated(tmp_path: Path, sqlite_url: str) -> Iterator[tuple[Migration, dict[str, StorageSCP]]]:
    scps = {name: StorageSCP(name.upper(), tmp_path / name, [CALLING_AE]).start()
            for name in ("main", "nonpixel", "sinbin")}
    try:
        migration = prepare_migration(tmp_path, sqlite_url, {n: (s.ae_title, s.port) for n, s in scps.items()})
        plan(migration.settings, migration.sessions)
        run_embedded(migration.settings, migration.sessions)
        yield migration, scps
    finally:
        for scp in scps.values():
            scp.stop()


def test_list_filters_by_reason(migrated, tmp_path: Path) -> None:
    """Listing by reason shows exactly the items held back for it."""
    migration, _ = migrated
    result = _migrator(tmp_path / "migrator.toml", "sinbin", "list", "--reason", "orphan")
    assert result.returncode == 0, result.stderr
    orphans = [e for e in migration.expected("sinbin") if e.reason == "orphan"]
    assert f"Sin bin: {len(orphans)} item(s)" in result.stdout + result.stderr
    for expected in orphans:
        assert expected.rel_path in result.stdout + result.stderr


def test_list_shows_unreadable_files(migrated, tmp_path: Path) -> None:
    """Unparseable files are listed with the parse error and stay on disk."""
    migration, _ = migrated
    result = _migrator(tmp_path / "migrator.toml", "sinbin", "list", "--reason", "unreadable")
    output = result.stdout + result.stderr
    assert "empty file (0 bytes)" in output
    assert "on disk" in output
    for expected in migration.expected("unreadable"):
        assert (migration.archive.roots[expected.root] / expected.rel_path).exists()


def test_release_sends_corrected_and_audits(migrated, tmp_path: Path) -> None:
    """A released excluded-study item reaches main with corrections, and its outcome becomes sent."""
    migration, scps = migrated
    config = tmp_path / "migrator.toml"
    excluded = [e for e in migration.expected("sinbin") if e.reason == "excluded_study"]
    assert all(e.sop_instance_uid not in scps["main"].received for e in excluded)
    result = _migrator(config, "sinbin", "release", "--reason", "excluded_study", "--to", "main")
    assert result.returncode == 0, result.stdout + result.stderr
    outcomes = migration.outcomes()
    for expected in excluded:
        assert expected.sop_instance_uid in scps["main"].received
        assert outcomes[(expected.root, expected.rel_path)] == "sent"
        reasons = [a.reason or "" for a in migration.audit_of(expected)]
        assert reasons[-1].startswith("released from sin bin item")
    again = _migrator(config, "sinbin", "list", "--reason", "excluded_study")
    assert "Sin bin: 0 item(s)" in again.stdout + again.stderr


def test_trace_shows_corrections(migrated, tmp_path: Path) -> None:
    """Tracing a corrected file shows where it was found, what changed and where it went."""
    migration, scps = migrated
    expected = next(e for e in migration.expected("main") if "AccessionNumber" in e.corrections)
    result = _migrator(tmp_path / "migrator.toml", "trace", expected.sop_instance_uid)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert expected.rel_path in output
    assert "changed AccessionNumber" in output
    assert "sent to main" in output
    assert "0x0000" in output
    received = pydicom.dcmread(scps["main"].folder / f"{expected.sop_instance_uid}.dcm")
    assert received.AccessionNumber == expected.corrections["AccessionNumber"]


def test_config_check_reports_each_connection(migrated, tmp_path: Path) -> None:
    """config check passes with every SCP up and names the destination that is down."""
    migration, scps = migrated
    config = tmp_path / "migrator.toml"
    assert _migrator(config, "config", "check").returncode == 0
    scps["nonpixel"].stop()
    result = _migrator(config, "config", "check")
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "failed C-ECHO nonpixel" in " ".join(output.split())
    assert "refused the connection" in " ".join(output.split())


def test_release_dry_run_sends_nothing(migrated, tmp_path: Path) -> None:
    """--dry-run lists the matching items and leaves them in the sin bin."""
    migration, scps = migrated
    orphans = [e for e in migration.expected("sinbin") if e.reason == "orphan"]
    result = _migrator(tmp_path / "migrator.toml", "sinbin", "release", "--reason", "orphan",
                       "--to", "main", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"{len(orphans)} item(s) match; nothing was sent" in result.stdout
    assert all(e.sop_instance_uid not in scps["main"].received for e in orphans)
    outcomes = migration.outcomes()
    assert all(outcomes[(e.root, e.rel_path)] == "sinbinned" for e in orphans)


def test_status_counts_the_last_hour(migrated, tmp_path: Path) -> None:
    """status reports every delivery of the run just finished as within the last hour."""
    migration, _ = migrated
    delivered = len(migration.archive.expected) - len(migration.expected("unreadable"))
    result = _migrator(tmp_path / "migrator.toml", "status")
    assert result.returncode == 0, result.stderr
    assert f"instances delivered in the last hour: {delivered}" in result.stdout


def test_list_unknown_reason_names_known_ones(migrated, tmp_path: Path) -> None:
    """A reason that matches nothing gets the list of reasons the sin bin has."""
    result = _migrator(tmp_path / "migrator.toml", "sinbin", "list", "--reason", "bogus")
    assert result.returncode == 0, result.stderr
    assert "no item has a reason starting with 'bogus'" in result.stderr
    assert "orphan" in result.stderr
    assert "excluded_study" in result.stderr


def test_trace_unreadable_file(migrated, tmp_path: Path) -> None:
    """Tracing an unreadable file shows its parse error and that it was never sent."""
    migration, _ = migrated
    expected = migration.expected("unreadable")[0]
    result = _migrator(tmp_path / "migrator.toml", "trace", f"{expected.root}/{expected.rel_path}")
    assert result.returncode == 0, result.stderr
    assert "unreadable, not sent" in result.stdout
    assert "DIMSE status" not in result.stdout


def test_status_per_destination_and_batches(migrated, tmp_path: Path) -> None:
    """status shows the last hour per destination, the batch counts and the ETA."""
    migration, _ = migrated
    result = _migrator(tmp_path / "migrator.toml", "status")
    assert result.returncode == 0, result.stderr
    main = len(migration.expected("main"))
    assert f"main {main}" in result.stdout
    assert "batches: done" in result.stdout
    assert "estimated time left at the last hour's rate: 0.0 h" in result.stdout


def test_status_watch_redraws_until_interrupted(migrated, tmp_path: Path) -> None:
    """status --watch keeps drawing until Ctrl-C and then exits cleanly."""
    output = tmp_path / "watch.out"
    with output.open("w") as stdout_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "migrator", "status", "--watch", "0.3", "--config",
             str(tmp_path / "migrator.toml")],
            stdout=stdout_file, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "COLUMNS": "250"})
        # Interrupt only after the first drawing: a loaded machine may take seconds to start Python.
        deadline = time.monotonic() + 60
        while "Migration status" not in output.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            time.sleep(0.2)
        time.sleep(1)
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Migration status" in output.read_text()

"""Every C-STORE response status class ends in the right recorded outcome."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from migrator.demo.scp import StorageSCP
from scheduler.dispatch.embedded import run_embedded
from scheduler.plan.run import plan
from tests.support import CALLING_AE, prepare_migration

#: Statuses the destination returns for chosen instances (PS3.4 B.2.3).
STATUSES = {
    "warning coercion": (0xB000, "sent_with_warning"),
    "warning element discarded": (0xB006, "sent_with_warning"),
    "warning does not match SOP class": (0xB007, "sent_with_warning"),
    "out of resources": (0xA700, "failed"),
    "does not match SOP class": (0xA900, "failed"),
    "cannot understand": (0xC000, "failed"),
}


@pytest.fixture
def migrated(tmp_path: Path, sqlite_url: str):
    """Migrate the demo archive to a main SCP that returns the statuses above."""
    scps: dict[str, StorageSCP] = {}
    status_by_uid: dict[str, int] = {}
    scps["main"] = StorageSCP("MAIN", tmp_path / "main", [CALLING_AE],
                              status_for=lambda uid: status_by_uid.get(uid, 0)).start()
    scps["nonpixel"] = StorageSCP("NONPIXEL", tmp_path / "np", [CALLING_AE]).start()
    scps["sinbin"] = StorageSCP("SINBIN", tmp_path / "sb", [CALLING_AE]).start()
    try:
        migration = prepare_migration(tmp_path, sqlite_url,
                                      {n: (s.ae_title, s.port) for n, s in scps.items()})
        images = migration.expected("main")
        chosen = dict(zip(STATUSES, images, strict=False))
        for label, expected in chosen.items():
            status_by_uid[expected.sop_instance_uid] = STATUSES[label][0]
        plan(migration.settings, migration.sessions)
        run_embedded(migration.settings, migration.sessions)
        yield migration, chosen, scps
    finally:
        for scp in scps.values():
            scp.stop()


@pytest.mark.parametrize("label", list(STATUSES))
def test_status_recorded_as_outcome(migrated, label: str) -> None:
    """The response status decides sent, sent with warning or failed, and is kept."""
    migration, chosen, _ = migrated
    status, outcome = STATUSES[label]
    expected = chosen[label]
    assert migration.outcomes()[(expected.root, expected.rel_path)] == outcome
    last = migration.audit_of(expected)[-1]
    assert last.dimse_status == status
    assert last.destination == "main"
    assert f"0x{status:04X}" in (last.reason or "")


def test_failures_do_not_stop_the_batch(migrated) -> None:
    """Every other image is still sent after failures in the same batch."""
    migration, chosen, scps = migrated
    singled_out = {e.sop_instance_uid for e in chosen.values()}
    others = [e for e in migration.expected("main") if e.sop_instance_uid not in singled_out]
    outcomes = migration.outcomes()
    assert others
    assert all(outcomes[(e.root, e.rel_path)] == "sent" for e in others)
    assert all(e.sop_instance_uid in scps["main"].received for e in others)


def test_failed_instance_is_not_counted_as_sent(migrated) -> None:
    """A failure status leaves the instance failed and absent from the destination."""
    migration, chosen, scps = migrated
    for label in ("out of resources", "does not match SOP class", "cannot understand"):
        expected = chosen[label]
        assert expected.sop_instance_uid not in scps["main"].received
        assert [a.outcome for a in migration.audit_of(expected)] == ["failed"]


def test_status_lists_failed_instances(migrated, tmp_path: Path) -> None:
    """status --failed lists each failed instance with its DIMSE status in the reason."""
    migration, chosen, _ = migrated
    result = subprocess.run(
        [sys.executable, "-m", "migrator", "status", "--failed", "50", "--config",
         str(tmp_path / "migrator.toml")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})
    assert result.returncode == 0, result.stderr
    for label in ("out of resources", "does not match SOP class", "cannot understand"):
        assert chosen[label].rel_path in result.stdout
        assert f"0x{STATUSES[label][0]:04X}" in result.stdout
    assert chosen["warning coercion"].rel_path not in result.stdout

"""The collision policies at migration time, against real storage SCPs, and the collision report."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from migrator.config import CollisionConfig
from migrator.demo.scp import StorageSCP
from migrator.state.models import Instance, SinBinItem, StorageRoot
from scheduler.dispatch.embedded import run_embedded
from scheduler.plan.run import plan
from tests.scheduler.collision_archive import (
    CAROL_VARIANT,
    MISSPELLED,
    SC_EVE,
    STRANGER,
    CollisionArchive,
    File,
    build_collision_archive,
)


def _migrator(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "migrator", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "250"})


def _endpoints(scps: dict[str, StorageSCP]) -> dict[str, tuple[str, int]]:
    return {name: (scp.ae_title, scp.port) for name, scp in scps.items()}


def _results(archive: CollisionArchive) -> dict[File, tuple[str | None, str | None]]:
    """(root, path) -> (outcome, sin bin reason)."""
    with archive.migration.sessions() as session:
        reasons = {instance_id: reason for instance_id, reason in
                   session.execute(select(SinBinItem.instance_id, SinBinItem.reason))}
        return {(root, rel_path): (outcome, reasons.get(instance_id))
                for instance_id, root, rel_path, outcome in session.execute(
                    select(Instance.id, StorageRoot.name, Instance.rel_path, Instance.outcome)
                    .join(StorageRoot, StorageRoot.id == Instance.root_id))}


def _uses_policies(archive: CollisionArchive, **policies: str) -> None:
    settings = archive.migration.settings
    archive.migration.settings = settings.model_copy(
        update={"collisions": CollisionConfig.model_validate(policies)})


def _patient_values() -> list[str]:
    return [STRANGER, MISSPELLED, CAROL_VARIANT, "DEMO^EVE", "DEMO0005", "MULLER^JORG", "DEMO0002"]


def test_default_policies(tmp_path: Path, state_url: str, scps: dict[str, StorageSCP]) -> None:
    """Held-back files reach the sin bin with the collision as reason; the others go where reconciliation decides."""
    archive = build_collision_archive(tmp_path, state_url, _endpoints(scps))
    config = tmp_path / "migrator.toml"
    planned = _migrator(config, "plan")
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "Collisions" in planned.stdout
    for line in ("different_content", "uid_in_two_studies", "patient_id_two_names"):
        assert line in planned.stdout
    assert "byte-identical copies, sent once as duplicates: 2" in planned.stdout

    run_embedded(archive.migration.settings, archive.migration.sessions)
    results = _results(archive)
    assert None not in {outcome for outcome, _ in results.values()}

    for file in (*archive.same_size, *archive.other_size):
        outcome, reason = results[file]
        assert outcome == "sinbinned"
        assert (reason or "").startswith("different_content: 2 files with this SOP Instance UID have 2 "
                                         "different contents")
        assert "collisions.different_content = sinbin holds back every one" in (reason or "")
    original, old_copy = archive.two_studies
    assert results[original] == ("sent", None)
    outcome, reason = results[old_copy]
    assert outcome == "sinbinned"
    assert (reason or "").startswith("uid_in_two_studies: this SOP Instance UID is in 2 studies")
    assert f"collisions.uid_in_two_studies = follow_legacy_db sends {original[0]}/{original[1]}" in (reason or "")
    identical, copy = archive.identical
    assert results[identical] == ("sent", None)
    assert results[copy][0] == "sinbinned"
    assert (results[copy][1] or "").startswith("duplicate")
    for file in archive.eve_files():
        outcome, reason = results[file]
        assert outcome == "sinbinned", file
        assert (reason or "").startswith("patient_id_two_names: its Patient ID has 2 different patient names "
                                         "in 4 files"), reason
    assert results[archive.misspelled] == ("sent", None)
    assert results[archive.carol_variant][1] == "orphan: no row in the legacy database"

    main = scps["main"]
    uids = Counter(main.arrivals)
    assert uids[archive.uid(original)] == 1
    assert archive.uid(archive.same_size[0]) not in uids
    assert archive.uid(archive.other_size[0]) not in uids
    assert archive.uid(SC_EVE) not in uids
    received = pydicom.dcmread(main.folder / f"{archive.uid(archive.misspelled)}.dcm", stop_before_pixels=True)
    assert str(received.PatientName) == "MÜLLER^JÖRG"
    sinbin = Counter(scps["sinbin"].arrivals)
    assert sinbin[archive.uid(archive.same_size[0])] == 2

    listed = _migrator(config, "sinbin", "list", "--reason", "different_content")
    assert listed.returncode == 0, listed.stderr
    assert "Sin bin: 4 item(s)" in listed.stdout
    for file in (*archive.same_size, *archive.other_size):
        assert file[1] in listed.stdout
    listed = _migrator(config, "sinbin", "list", "--reason", "patient_id_two_names")
    assert "Sin bin: 4 item(s)" in listed.stdout

    report_file = tmp_path / "collisions.csv"
    report = _migrator(config, "collisions", "--csv", str(report_file))
    assert report.returncode == 0, report.stderr
    assert "different_content: 2 collision(s), 4 file(s); policy: collisions.different_content = sinbin" \
        in report.stdout
    assert "patient_id_two_names: 1 collision(s), 4 file(s)" in report.stdout
    assert f"wrote {report_file} (10 file(s))" in report.stdout
    with report_file.open(encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 10
    by_path = {(row["root"], row["path"]): row for row in rows}
    assert by_path[archive.same_size[1]]["kind"] == "different_content"
    assert {by_path[file]["variant"] for file in archive.same_size} == {"1", "2"}
    assert by_path[archive.same_size[1]]["outcome"] == "sinbinned"
    assert len(by_path[archive.same_size[1]]["content_sha256"]) == 64
    assert by_path[old_copy]["kind"] == "uid_in_two_studies"
    assert by_path[archive.stranger]["kind"] == "patient_id_two_names"
    assert len(by_path[archive.stranger]["key"]) == 32

    only = _migrator(config, "collisions", "--kind", "uid_in_two_studies")
    assert only.returncode == 0, only.stderr
    assert old_copy[1] in only.stdout
    assert archive.same_size[1][1] not in only.stdout

    # No output, and no column of the new tables, contains a patient's name or ID.
    output = planned.stdout + planned.stderr + listed.stdout + report.stdout + report_file.read_text()
    assert not [value for value in _patient_values() if value in output]


POLICY_CASES = {
    "send_newest": dict(different_content="send_newest", uid_in_two_studies="sinbin",
                        patient_id_two_names="send"),
    "send_all": dict(different_content="send_all"),
    "follow_legacy_db": dict(different_content="follow_legacy_db"),
}


@pytest.mark.parametrize("case", sorted(POLICY_CASES))
def test_configured_policies(case: str, tmp_path: Path, sqlite_url: str, scps: dict[str, StorageSCP]) -> None:
    """Each policy decides which copy is sent and which are held back, with the policy in the audit."""
    archive = build_collision_archive(tmp_path, sqlite_url, _endpoints(scps))
    _uses_policies(archive, **POLICY_CASES[case])
    plan(archive.migration.settings, archive.migration.sessions)
    run_embedded(archive.migration.settings, archive.migration.sessions)
    results = _results(archive)
    assert None not in {outcome for outcome, _ in results.values()}
    older, newer = archive.same_size
    arrivals = Counter(scps["main"].arrivals)
    uid = archive.uid(older)

    if case == "send_newest":
        assert results[newer] == ("sent", None)
        outcome, reason = results[older]
        assert outcome == "sinbinned"
        assert f"collisions.different_content = send_newest sends {newer[0]}/{newer[1]}" in (reason or "")
        received = pydicom.dcmread(scps["main"].folder / f"{uid}.dcm", stop_before_pixels=True)
        assert received.InstanceNumber == pydicom.dcmread(archive.path(newer)).InstanceNumber
        assert arrivals[uid] == 1
        # uid_in_two_studies = sinbin holds back the referenced file too.
        for file in archive.two_studies:
            assert results[file][0] == "sinbinned"
            assert (results[file][1] or "").startswith("uid_in_two_studies:")
        # patient_id_two_names = send lets the ECG patient's image through.
        assert results[SC_EVE] == ("sent", None)
        assert _route_rule(archive, SC_EVE).endswith("(collisions.patient_id_two_names = send)")
    elif case == "send_all":
        assert results[older] == ("sent", None)
        assert results[newer] == ("sent", None)
        assert arrivals[uid] == 2
        assert "collisions.different_content = send_all" in _route_rule(archive, newer)
    else:
        # The legacy database references the original, not the copy.
        assert results[older] == ("sent", None)
        outcome, reason = results[newer]
        assert outcome == "sinbinned"
        assert f"collisions.different_content = follow_legacy_db sends {older[0]}/{older[1]}" in (reason or "")
        assert arrivals[uid] == 1
        assert "follow_legacy_db chose this file" in _route_rule(archive, older)


def _route_rule(archive: CollisionArchive, file: File) -> str:
    from migrator.state.models import AuditEntry

    with archive.migration.sessions() as session:
        rule = session.scalar(
            select(AuditEntry.route_rule).join(Instance, Instance.id == AuditEntry.instance_id)
            .join(StorageRoot, StorageRoot.id == Instance.root_id)
            .where(StorageRoot.name == file[0], Instance.rel_path == file[1]).order_by(AuditEntry.id.desc()))
    return rule or ""

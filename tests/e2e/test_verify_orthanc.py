"""``migrator verify`` against Orthanc after migrating the demo archive.

One Orthanc plays the new PACS: the main and non-pixel destinations both
point at it and share ``verify_archive``, so they are verified as one
archive. A second Orthanc is the sin bin. The new PACS sends its Storage
Commitment reports to a port that a test listens on.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select, update
from typer.testing import CliRunner, Result

from migrator.cli import load_commands
from migrator.state.models import AuditEntry, Instance
from scheduler.dispatch.embedded import run_embedded
from scheduler.plan.run import plan
from tests.conftest import postgres_database
from tests.peers import OrthancPeer, free_port
from tests.support import CALLING_AE, Migration, prepare_migration


class ReportingOrthanc(OrthancPeer):
    """Orthanc that sends Storage Commitment reports to ``report_port`` on 127.0.0.1.

    Orthanc 1.10 opens an association of its own to the host and port of
    the requester's entry in DicomModalities to send the N-EVENT-REPORT.
    """

    def __init__(self, *args: Any, report_port: int, limits: dict[str, int] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.report_port = report_port
        self.limits = limits or {}

    def build_config(self) -> dict[str, Any]:
        config = super().build_config()
        for modality in config["DicomModalities"].values():
            modality["Port"] = self.report_port
        config.update(self.limits)
        return config

    def delete_instance(self, orthanc_id: str) -> None:
        self.session.delete(f"{self.url}/instances/{orthanc_id}", timeout=10).raise_for_status()

    def upload(self, dicom_file: bytes) -> None:
        self.session.post(f"{self.url}/instances", data=dicom_file, timeout=10).raise_for_status()

    def expanded(self, level: str) -> list[dict[str, Any]]:
        """Return every study or series (``level`` "studies" or "series") with its details."""
        response = self.session.get(f"{self.url}/{level}", params={"expand": ""}, timeout=10)
        response.raise_for_status()
        resources: list[dict[str, Any]] = response.json()
        return resources

    def study_uids(self) -> set[str]:
        return {study["MainDicomTags"]["StudyInstanceUID"] for study in self.expanded("studies")}


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Migration, ReportingOrthanc, Path]]:
    tmp = tmp_path_factory.mktemp("verify-e2e")
    report_port = free_port()
    with postgres_database() as url, \
            ReportingOrthanc(tmp / "pacs", "NEWPACS", [CALLING_AE], report_port=report_port) as pacs, \
            OrthancPeer(tmp / "sinbin", "SINBIN", [CALLING_AE]) as sinbin:
        endpoints = {"main": ("NEWPACS", pacs.dicom_port), "nonpixel": ("NEWPACS", pacs.dicom_port),
                     "sinbin": ("SINBIN", sinbin.dicom_port)}
        migration = prepare_migration(tmp, url, endpoints)
        plan(migration.settings, migration.sessions)
        run_embedded(migration.settings, migration.sessions)
        config = tmp / "migrator.toml"
        text = config.read_text(encoding="utf-8")
        for section in ("[destinations.main]\n", "[destinations.nonpixel]\n"):
            text = text.replace(section, f'{section}verify_archive = "newpacs"\n')
        config.write_text(text, encoding="utf-8")
        yield migration, pacs, config
        migration.sessions.kw["bind"].dispose()


def verify(config: Path, report: Path, *args: str) -> Result:
    return CliRunner().invoke(load_commands(), ["verify", "--config", str(config), "--output", str(report),
                                                *args])


def read_rows(report: Path) -> list[dict[str, str]]:
    with report.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def rows_of(rows: list[dict[str, str]], *results: str) -> list[dict[str, str]]:
    return [row for row in rows if row["result"] in results]


def sent_uids(migration: Migration) -> set[str]:
    return {e.sop_instance_uid for e in migration.expected("main") + migration.expected("nonpixel")}


def merged_instance(migration: Migration) -> tuple[str, str, str]:
    """Return (SOP Instance UID, indexed Study Instance UID, sent Study Instance UID) of a merged instance."""
    for expected in migration.expected("main"):
        if "StudyInstanceUID" in expected.corrections:
            with migration.sessions() as session:
                indexed = session.scalars(select(Instance.study_uid).where(
                    Instance.sop_instance_uid == expected.sop_instance_uid)).first()
            assert indexed is not None
            return expected.sop_instance_uid, indexed, expected.corrections["StudyInstanceUID"]
    raise AssertionError("the demo archive has no merged study")


def test_migrated_archive_verifies(migrated, tmp_path: Path) -> None:
    """Every study verifies, and the counts match the audit and Orthanc."""
    migration, pacs, config = migrated
    report = tmp_path / "report.csv"
    result = verify(config, report)
    assert result.exit_code == 0, result.output
    rows = read_rows(report)
    studies = [row for row in rows if row["sop_instance_uid"] == "" and row["study_instance_uid"]]
    assert {row["result"] for row in studies} == {"verified"}
    assert {row["destination"] for row in rows} == {"main+nonpixel"}
    assert {row["study_instance_uid"] for row in studies} == pacs.study_uids()
    expected = sum(int(row["expected_instances"]) for row in studies)
    found = sum(int(row["found_instances"]) for row in studies)
    assert expected == found == len(sent_uids(migration)) == len(pacs.instances())
    assert all(row["destination_instance_count"] == row["found_instances"] for row in studies)
    assert len(rows_of(rows, "finished")) == 1
    assert "every study verified" in result.stdout


def test_merged_study_verified_under_corrected_uid(migrated, tmp_path: Path) -> None:
    """An instance moved by a study merge counts in the study it was sent in."""
    migration, _, config = migrated
    _, indexed_study, sent_study = merged_instance(migration)
    report = tmp_path / "report.csv"
    assert verify(config, report).exit_code == 0
    study_uids = {row["study_instance_uid"] for row in read_rows(report)}
    assert sent_study in study_uids
    assert indexed_study not in study_uids


def test_sinbin_verifies(migrated, tmp_path: Path) -> None:
    """The sin bin archive stores exactly what the audit records as sinbinned."""
    migration, _, config = migrated
    report = tmp_path / "report.csv"
    result = verify(config, report, "--destination", "sinbin")
    assert result.exit_code == 0, result.output
    rows = read_rows(report)
    studies = rows_of(rows, "verified")
    assert {row["destination"] for row in rows} == {"sinbin"}
    assert sum(int(row["found_instances"]) for row in studies) == len(
        {e.sop_instance_uid for e in migration.expected("sinbin")})
    assert rows_of(rows, "missing", "unexpected") == []


@contextmanager
def deleted_from_orthanc(pacs: ReportingOrthanc, sop_instance_uid: str) -> Iterator[None]:
    """Delete one instance through Orthanc's REST API and store it again afterwards."""
    orthanc_id = pacs.find_sop_instance(sop_instance_uid)
    assert orthanc_id is not None
    stored = pacs.instance_file(orthanc_id)
    pacs.delete_instance(orthanc_id)
    try:
        yield
    finally:
        pacs.upload(stored)


def test_deleted_instance_reported_missing(migrated, tmp_path: Path) -> None:
    """An instance deleted from Orthanc is the one missing row, in the study it was sent in."""
    migration, pacs, config = migrated
    sop_instance_uid, _, sent_study = merged_instance(migration)
    report = tmp_path / "report.csv"
    with deleted_from_orthanc(pacs, sop_instance_uid):
        result = verify(config, report)
    assert result.exit_code == 1, result.output
    rows = read_rows(report)
    missing = rows_of(rows, "missing")
    assert [row["sop_instance_uid"] for row in missing] == [sop_instance_uid]
    assert missing[0]["study_instance_uid"] == sent_study
    assert missing[0]["audit_outcome"] == "sent"
    assert missing[0]["path"]
    assert rows_of(rows, "unexpected") == []
    mismatched = rows_of(rows, "count_mismatch")
    assert [row["study_instance_uid"] for row in mismatched] == [sent_study]
    assert int(mismatched[0]["found_instances"]) == int(mismatched[0]["expected_instances"]) - 1
    assert "differences found" in result.stdout


def test_recheck_checks_only_unverified_studies(migrated, tmp_path: Path) -> None:
    """--recheck queries only the study that the earlier report found a difference in."""
    migration, pacs, config = migrated
    sop_instance_uid, _, sent_study = merged_instance(migration)
    first = tmp_path / "first.csv"
    with deleted_from_orthanc(pacs, sop_instance_uid):
        assert verify(config, first).exit_code == 1
    second = tmp_path / "second.csv"
    result = verify(config, second, "--recheck", str(first))
    assert result.exit_code == 0, result.output
    studies = rows_of(read_rows(second), "verified")
    assert [row["study_instance_uid"] for row in studies] == [sent_study]


@contextmanager
def marked_failed(migration: Migration, sop_instance_uid: str) -> Iterator[None]:
    """Record the last audit entry of one sent instance as failed, and restore it afterwards."""
    with migration.sessions() as session:
        entry = session.scalars(
            select(AuditEntry).join(Instance, Instance.id == AuditEntry.instance_id)
            .where(Instance.sop_instance_uid == sop_instance_uid, AuditEntry.outcome == "sent")
            .order_by(AuditEntry.id.desc())).first()
        assert entry is not None
        entry_id, outcome, reason = entry.id, entry.outcome, entry.reason
        session.execute(update(AuditEntry).where(AuditEntry.id == entry_id)
                        .values(outcome="failed", reason="marked failed by the test"))
        session.commit()
    try:
        yield
    finally:
        with migration.sessions() as session:
            session.execute(update(AuditEntry).where(AuditEntry.id == entry_id)
                            .values(outcome=outcome, reason=reason))
            session.commit()


def test_failed_instance_reported_unexpected(migrated, tmp_path: Path) -> None:
    """An instance Orthanc stores but the audit records as failed is the one unexpected row."""
    migration, _, config = migrated
    sop_instance_uid = sorted(e.sop_instance_uid for e in migration.expected("main"))[0]
    report = tmp_path / "report.csv"
    with marked_failed(migration, sop_instance_uid):
        result = verify(config, report)
    assert result.exit_code == 1, result.output
    rows = read_rows(report)
    unexpected = rows_of(rows, "unexpected")
    assert [row["sop_instance_uid"] for row in unexpected] == [sop_instance_uid]
    assert unexpected[0]["audit_outcome"] == "failed"
    assert "marked failed by the test" in unexpected[0]["detail"]
    assert rows_of(rows, "missing") == []


def test_unknown_instance_reported_unexpected(migrated, tmp_path: Path) -> None:
    """An instance stored in a migrated study that no file of the archive has is unexpected."""
    migration, pacs, config = migrated
    sop_instance_uid, _, sent_study = merged_instance(migration)
    stored = pydicom.dcmread(io.BytesIO(pacs.instance_file(pacs.find_sop_instance(sop_instance_uid))))
    stored.SOPInstanceUID = stored.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    extra = io.BytesIO()
    stored.save_as(extra, enforce_file_format=True)
    pacs.upload(extra.getvalue())
    report = tmp_path / "report.csv"
    try:
        result = verify(config, report)
    finally:
        pacs.delete_instance(pacs.find_sop_instance(stored.SOPInstanceUID))
    assert result.exit_code == 1, result.output
    unexpected = rows_of(read_rows(report), "unexpected")
    assert [row["sop_instance_uid"] for row in unexpected] == [stored.SOPInstanceUID]
    assert unexpected[0]["study_instance_uid"] == sent_study
    assert unexpected[0]["audit_outcome"] == ""
    assert "no instance with this SOP Instance UID" in unexpected[0]["detail"]


def config_with(config: Path, tmp_path: Path, **main: object) -> Path:
    """Copy the configuration with other values for the main destination."""
    lines = config.read_text(encoding="utf-8").splitlines()
    start = lines.index("[destinations.main]")
    for key, value in main.items():
        literal = f'"{value}"' if isinstance(value, str) else str(value)
        index = next(i for i in range(start, len(lines)) if lines[i].startswith(f"{key} ="))
        lines[index] = f"{key} = {literal}"
    copy = tmp_path / "migrator.toml"
    copy.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return copy


def test_stopped_destination_named_in_error(migrated, tmp_path: Path) -> None:
    """A destination that is not listening is named with what to check, and exits 3."""
    _, _, config = migrated
    report = tmp_path / "report.csv"
    result = verify(config_with(config, tmp_path, port=free_port()), report)
    assert result.exit_code == 3, result.output
    assert "main+nonpixel was not verified" in result.output
    assert "refused the connection" in result.output
    assert [row["result"] for row in read_rows(report)] == ["not_verified"]


def test_rejected_association_named_in_error(migrated, tmp_path: Path) -> None:
    """Orthanc rejects a wrong called AE title, and the message names what to check."""
    _, _, config = migrated
    result = verify(config_with(config, tmp_path, ae_title="WRONGPACS"), tmp_path / "report.csv")
    assert result.exit_code == 3, result.output
    # The log wraps at the console's width, and the port number changes where.
    output = " ".join(result.output.split())
    assert "rejected the association" in output
    assert "WRONGPACS" in output


def test_result_limits_split_queries(migrated, tmp_path: Path) -> None:
    """Orthanc's C-FIND limits cut responses short; the split queries still verify every study.

    Two matches per response is less than the studies, the series of a
    study and the instances of a series, so every kind of split runs.
    """
    migration, pacs, config = migrated
    series = pacs.expanded("series")
    assert len(pacs.study_uids()) > 2
    assert max(len(one["Instances"]) for one in series) > 2
    limits = {"LimitFindResults": 2, "LimitFindInstances": 2}
    with ReportingOrthanc(tmp_path / "limited", "NEWPACS", [CALLING_AE], report_port=free_port(),
                          limits=limits) as limited:
        for orthanc_id in pacs.instances():
            limited.upload(pacs.instance_file(orthanc_id))
        report = tmp_path / "report.csv"
        result = verify(config_with(config, tmp_path, port=limited.dicom_port), report)
        log = limited.log_path.read_text(errors="replace")
    assert result.exit_code == 0, result.output
    assert "Too many results for an incoming C-FIND query" in log
    studies = rows_of(read_rows(report), "verified")
    assert {row["study_instance_uid"] for row in studies} == pacs.study_uids()
    assert sum(int(row["found_instances"]) for row in studies) == len(sent_uids(migration))


def test_commitment_report_on_own_association(migrated, tmp_path: Path) -> None:
    """Orthanc commits to every delivered instance and reports on an association of its own."""
    _, pacs, config = migrated
    report = tmp_path / "report.csv"
    result = verify(config, report, "--commit", "--commit-listen", f"127.0.0.1:{pacs.report_port}",
                    "--commit-timeout", "30")
    assert result.exit_code == 0, result.output
    assert rows_of(read_rows(report), "not_committed", "commit_unconfirmed") == []
    assert "on an association of its own" in result.stdout


def test_commitment_failure_for_deleted_instance(migrated, tmp_path: Path) -> None:
    """Orthanc does not commit to a deleted instance, and the report names it and the reason."""
    migration, pacs, config = migrated
    sop_instance_uid, _, sent_study = merged_instance(migration)
    report = tmp_path / "report.csv"
    with deleted_from_orthanc(pacs, sop_instance_uid):
        result = verify(config, report, "--commit", "--commit-listen", f"127.0.0.1:{pacs.report_port}",
                        "--commit-timeout", "30")
    assert result.exit_code == 1, result.output
    not_committed = rows_of(read_rows(report), "not_committed")
    assert [row["sop_instance_uid"] for row in not_committed] == [sop_instance_uid]
    assert not_committed[0]["study_instance_uid"] == sent_study
    assert "0x0112" in not_committed[0]["detail"]


def test_commitment_without_listener_explained(migrated, tmp_path: Path) -> None:
    """Without a listener no report arrives, and the output suggests --commit-listen."""
    _, _, config = migrated
    report = tmp_path / "report.csv"
    result = verify(config, report, "--commit", "--commit-timeout", "2")
    assert result.exit_code == 1, result.output
    assert rows_of(read_rows(report), "commit_unconfirmed")
    assert "--commit-listen" in result.stdout


def test_report_is_valid_csv(migrated, tmp_path: Path) -> None:
    """Every row has every column."""
    _, _, config = migrated
    report = tmp_path / "report.csv"
    verify(config, report)
    text = report.read_text(encoding="utf-8")
    widths = {len(row) for row in csv.reader(io.StringIO(text))}
    assert widths == {13}

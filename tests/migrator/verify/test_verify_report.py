"""The CSV report and reading it back for ``--recheck``."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrator.errors import MigratorError
from migrator.verify import Kind, ReportRow, ReportWriter, read_recheck
from migrator.verify.compare import StudyResult


def write_report(path: Path, rows: list[tuple[str, ReportRow]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = ReportWriter(file)
        for destination, row in rows:
            writer.write_row(destination, row)


def test_recheck_lists_unverified_studies(tmp_path: Path) -> None:
    report = tmp_path / "report.csv"
    write_report(report, [
        ("main", ReportRow(Kind.VERIFIED, "1.1", expected=2, found=2)),
        ("main", ReportRow(Kind.COUNT_MISMATCH, "1.2", expected=2, found=1)),
        ("main", ReportRow(Kind.MISSING, "1.2", "1.2.9")),
        ("main", ReportRow(Kind.QUERY_FAILED, "1.3", detail="C-FIND status 0xC000")),
        ("main", ReportRow(Kind.FINISHED, "")),
        ("sinbin", ReportRow(Kind.VERIFIED, "1.4")),
        ("sinbin", ReportRow(Kind.FINISHED, "")),
        ("nonpixel", ReportRow(Kind.VERIFIED, "1.5")),
        ("nonpixel", ReportRow(Kind.NOT_VERIFIED, "", detail="refused the connection")),
    ])
    assert read_recheck(report) == {"main": {"1.2", "1.3"}, "sinbin": set()}


def test_recheck_rejects_other_csv(tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(MigratorError, match="not a report written by 'migrator verify'"):
        read_recheck(other)


def test_recheck_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MigratorError, match="cannot read the previous report"):
        read_recheck(tmp_path / "absent.csv")


def test_study_result_rows_in_order(tmp_path: Path) -> None:
    result = StudyResult(ReportRow(Kind.COUNT_MISMATCH, "1.2", expected=2, found=1),
                         [ReportRow(Kind.MISSING, "1.2", "1.2.9", "1.2.1", detail="x, \"quoted\"")])
    report = tmp_path / "report.csv"
    with report.open("w", newline="", encoding="utf-8") as file:
        ReportWriter(file).write("main", result)
    lines = report.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("destination,result,study_instance_uid,sop_instance_uid")
    assert lines[1] == "main,count_mismatch,1.2,,,2,1,,,,,,"
    assert lines[2] == 'main,missing,1.2,1.2.9,1.2.1,,,,,,,,"x, ""quoted"""'

"""The verification report: a CSV row per study and per differing instance, and the totals."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from migrator.errors import MigratorError
from migrator.verify.compare import Kind, ReportRow, StudyResult

COLUMNS = ("destination", "result", "study_instance_uid", "sop_instance_uid", "series_instance_uid",
           "expected_instances", "found_instances", "destination_instance_count", "audit_outcome",
           "audit_destination", "root", "path", "detail")


class ReportWriter:
    """Writes report rows to a CSV file as they are produced."""

    def __init__(self, file: TextIO) -> None:
        self._writer = csv.writer(file, lineterminator="\n")
        self._writer.writerow(COLUMNS)
        self._file = file

    def write(self, destination: str, result: StudyResult) -> None:
        for row in result.rows:
            self.write_row(destination, row)

    def write_row(self, destination: str, row: ReportRow) -> None:
        recorded = row.recorded
        self._writer.writerow([
            destination, row.kind.value, row.study_uid, row.sop_instance_uid or "", row.series_uid or "",
            _number(row.expected), _number(row.found), _number(row.destination_count),
            recorded.outcome if recorded else "", (recorded.destination or "") if recorded else "",
            recorded.root if recorded else "", recorded.rel_path if recorded else "", row.detail or "",
        ])

    def flush(self) -> None:
        self._file.flush()


def _number(value: int | None) -> str:
    return "" if value is None else str(value)


@dataclass
class DestinationSummary:
    """The totals of one destination's verification."""

    name: str
    studies: int = 0
    verified: int = 0
    #: Studies with a difference; those whose query failed are counted apart.
    with_differences: int = 0
    query_failed: int = 0
    #: Instances the audit records as delivered, and instances found, in the studies queried.
    expected: int = 0
    found: int = 0
    missing: int = 0
    unexpected: int = 0
    not_committed: int = 0
    commit_unconfirmed: int = 0
    #: C-FIND requests sent.
    requests: int = 0
    seconds: float = 0.0
    #: Why the destination could not be verified, or not to the end.
    error: str | None = None
    #: Why Storage Commitment could not be requested, when it was asked for.
    commit_error: str | None = None
    #: Remarks for the operator, such as where Storage Commitment reports went.
    notes: list[str] = field(default_factory=list)

    def add(self, result: StudyResult) -> None:
        self.studies += 1
        kind = result.study.kind
        if kind is Kind.VERIFIED:
            self.verified += 1
        elif kind is Kind.QUERY_FAILED:
            self.query_failed += 1
        else:
            self.with_differences += 1
        self.expected += result.study.expected or 0
        self.found += result.study.found or 0
        self.missing += result.count(Kind.MISSING)
        self.unexpected += result.count(Kind.UNEXPECTED)

    def add_commitment(self, row: ReportRow) -> None:
        if row.kind is Kind.NOT_COMMITTED:
            self.not_committed += 1
        elif row.kind is Kind.COMMIT_UNCONFIRMED:
            self.commit_unconfirmed += 1

    @property
    def has_differences(self) -> bool:
        """True when anything was not verified: a difference, a failed query or a commitment."""
        return bool(self.with_differences or self.query_failed or self.not_committed
                    or self.commit_unconfirmed or self.commit_error)


def read_recheck(path: Path) -> dict[str, set[str]]:
    """Read a previous report and return the studies it did not verify, per destination.

    Only destinations whose verification finished (a "finished" row) are
    returned; a study counts when any of its rows has a result other than
    "verified". The caller checks every study of the other destinations.

    Raises
    ------
    MigratorError
        The file cannot be read or is not a verify report.
    """
    unverified: dict[str, set[str]] = {}
    finished: set[str] = set()
    try:
        with path.open(newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            missing = {"destination", "result", "study_instance_uid"} - set(reader.fieldnames or ())
            if missing:
                raise MigratorError(f"{path} is not a report written by 'migrator verify': it has no "
                                    f"column {', '.join(sorted(missing))}")
            for row in reader:
                destination, result = row["destination"], row["result"]
                if result == Kind.FINISHED.value:
                    finished.add(destination)
                elif result not in (Kind.VERIFIED.value, Kind.NOT_VERIFIED.value):
                    unverified.setdefault(destination, set()).add(row["study_instance_uid"])
    except OSError as exc:
        raise MigratorError(f"cannot read the previous report {path}: {exc.strerror or exc}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise MigratorError(f"{path} is not a valid CSV report: {exc}") from None
    return {destination: unverified.get(destination, set()) for destination in finished}

"""``migrator report`` on a migrated demo archive, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from contextlib import closing
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import numpy
import pydicom
import pytest
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from typer.testing import CliRunner

from migrator.cli import load_commands
from migrator.demo.scp import StorageSCP
from migrator.report import arrival_spread
from migrator.state.models import DELIVERED, AuditEntry, Instance
from scheduler.dispatch.embedded import run_embedded
from scheduler.plan.run import plan
from tests.support import Migration, prepare_migration

#: Identifying attributes of the demo patients, which the page must not contain.
PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames")


class _Tables(HTMLParser):
    """Collects the text of each table's cells by the table's id."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs).get("id") or "", [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self._table[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _tables(page: str) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


def _report(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(load_commands(), ["report", "--config", str(config), *args])
    return result.exit_code, result.output


def _seconds(cell: str) -> float:
    """Read "1,234.567 s (20.6 min)" as 1234.567."""
    return float(cell.split(" ")[0].replace(",", ""))


def _patient_values(migration: Migration) -> set[str]:
    """Patient names, name components, IDs and birth dates in the legacy database and the files."""
    values: set[str] = set()
    with closing(sqlite3.connect(migration.archive.legacy_db)) as legacy:
        for row in legacy.execute("SELECT pat_id, pat_name, pat_birthdate FROM patient"):
            values.update(str(value) for value in row if value)
    for root in migration.archive.roots.values():
        for path in root.rglob("*"):
            if not path.is_file():
                continue
            try:
                dataset = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, EOFError):
                continue
            values.update(str(dataset.get(keyword, "")) for keyword in PATIENT_KEYWORDS)
    for value in list(values):
        values.update(part for part in value.replace("^", " ").split() if len(part) >= 4)
    values.update(f"{value[:4]}-{value[4:6]}-{value[6:]}" for value in list(values)
                  if len(value) == 8 and value.isdigit())
    values.discard("")
    return values


def _study_spreads(migration: Migration) -> dict[str, float]:
    """Compute each study's arrival spread in Python from its delivered audit rows."""
    arrivals: dict[str, list[datetime]] = {}
    with migration.sessions() as session:
        rows = session.execute(
            select(Instance.study_uid, AuditEntry.finished_at)
            .join(Instance, Instance.id == AuditEntry.instance_id)
            .where(AuditEntry.outcome.in_([outcome.value for outcome in DELIVERED])))
        for study_uid, finished in rows:
            if study_uid is not None:
                arrivals.setdefault(study_uid, []).append(finished)
    return {study: (max(times) - min(times)).total_seconds() for study, times in arrivals.items()}


@pytest.fixture
def migrated(tmp_path: Path, state_url: str, scps: dict[str, StorageSCP]) -> Migration:
    migration = prepare_migration(tmp_path, state_url,
                                  {name: (scp.ae_title, scp.port) for name, scp in scps.items()})
    plan(migration.settings, migration.sessions)
    run_embedded(migration.settings, migration.sessions)
    return migration


def test_report_of_a_migration(migrated: Migration, tmp_path: Path) -> None:
    """The page has the charts, the database's outcome counts and the independently computed spread."""
    output = tmp_path / "report.html"
    code, text = _report(tmp_path / "migrator.toml", "--output", str(output))
    assert code == 0, text
    assert f"wrote {output}" in " ".join(text.split())
    page = output.read_text(encoding="utf-8")
    assert page.count("<svg") == 4
    assert "<script" not in page
    assert "<link" not in page
    assert {address for address in re.findall(r"https?://[^\"\s]+", page)
            if not address.startswith("http://www.w3.org/")} == set()
    tables = _tables(page)

    # Outcomes: the "all" row equals the outcomes recorded per instance.
    header, *rows = tables["outcomes"]
    counts = Counter(outcome or "pending" for outcome in migrated.outcomes().values())
    totals = dict(zip(header[1:], rows[-1][1:]))
    assert rows[-1][0] == "all"
    for outcome in ("pending", "sent", "sent_with_warning", "sinbinned", "failed", "skipped", "unreadable"):
        assert totals[outcome.replace("_", " ")] == f"{counts.get(outcome, 0):,}", outcome
    assert sorted(row[0] for row in rows[:-1]) == sorted(migrated.archive.roots)

    # Arrival spread: the stated statistics equal a computation from the audit rows.
    spreads = _study_spreads(migrated)
    values = sorted(spreads.values())
    header, stats = tables["spread"]
    assert stats[0] == f"{len(spreads):,}"
    assert _seconds(stats[1]) == pytest.approx(numpy.median(values), abs=0.0006)
    assert _seconds(stats[2]) == pytest.approx(numpy.percentile(values, 95), abs=0.0006)
    assert _seconds(stats[3]) == pytest.approx(values[-1], abs=0.0006)
    with migrated.sessions() as session:
        spread = arrival_spread(session)
    assert spread.studies == len(spreads)
    assert spread.median == pytest.approx(numpy.median(values), abs=1e-6)
    assert spread.percentiles[95] == pytest.approx(numpy.percentile(values, 95), abs=1e-6)
    assert spread.max_seconds == pytest.approx(values[-1], abs=1e-6)

    # The largest spreads, by Study Instance UID, largest first.
    _, *largest = tables["largest-spread"]
    assert {row[0] for row in largest} == set(spreads)
    listed = [spreads[row[0]] for row in largest]
    assert listed == sorted(listed, reverse=True)

    # Throughput: every root and destination has a series.
    names = {row[1] for row in tables["rates"][1:]}
    assert set(migrated.archive.roots) <= names
    assert {"main", "nonpixel", "sinbin"} <= names


def test_report_has_no_patient_data(migrated: Migration, tmp_path: Path) -> None:
    """No patient name, name component, ID or birth date of the demo appears in the page."""
    output = tmp_path / "report.html"
    code, text = _report(tmp_path / "migrator.toml", "-o", str(output))
    assert code == 0, text
    page = output.read_text(encoding="utf-8")
    values = _patient_values(migrated)
    assert "DEMO^ALICE" in values
    assert "DEMO0001" in values
    for value in sorted(values):
        assert value not in page, value


def test_report_window(migrated: Migration, tmp_path: Path) -> None:
    """A window after the run has no delivery; the outcome table still counts every instance."""
    output = tmp_path / "report.html"
    code, text = _report(tmp_path / "migrator.toml", "-o", str(output), "--since", "2999-01-01T00:00")
    assert code == 0, text
    page = output.read_text(encoding="utf-8")
    assert "No instance was delivered in this time window." in page
    assert "<svg" not in page
    assert "outcomes" in _tables(page)


def test_report_of_empty_state(tmp_path: Path, sqlite_url: str) -> None:
    """Before any plan, the page and the command output report that nothing is indexed yet."""
    prepare_migration(tmp_path, sqlite_url, {name: ("X", 104) for name in ("main", "nonpixel", "sinbin")})
    output = tmp_path / "report.html"
    code, text = _report(tmp_path / "migrator.toml", "-o", str(output))
    assert code == 0, text
    assert "no indexed instance yet" in text
    page = output.read_text(encoding="utf-8")
    assert 'id="empty"' in page
    assert "<svg" not in page


def test_report_rejects_reversed_window(tmp_path: Path, sqlite_url: str) -> None:
    """--since after --until is a usage error."""
    prepare_migration(tmp_path, sqlite_url, {name: ("X", 104) for name in ("main", "nonpixel", "sinbin")})
    code, text = _report(tmp_path / "migrator.toml", "--since", "2026-12-05", "--until", "2026-12-04")
    assert code == 2
    assert "--since must be before --until" in " ".join(text.split())

"""Tests for the legacy PACS database query, run against a real SQLite file."""

from __future__ import annotations

import datetime
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text

from migrator.config import LegacyConfig
from migrator.errors import LegacyDatabaseError
from migrator.reconcile.legacy import LegacyDatabase, legacy_values, to_dicom_string

INSTANCE_COUNT = 2500
UID_ROOT = "1.2.826.0.1.3680043.8.498."

SCHEMA = """
CREATE TABLE patient (
    pk INTEGER PRIMARY KEY,
    pat_id TEXT NOT NULL,
    pat_name TEXT,
    pat_birthdate TEXT
);
CREATE TABLE study (
    pk INTEGER PRIMARY KEY,
    patient_fk INTEGER NOT NULL REFERENCES patient (pk),
    study_iuid TEXT NOT NULL,
    accession_no TEXT
);
CREATE TABLE instance (
    pk INTEGER PRIMARY KEY,
    study_fk INTEGER NOT NULL REFERENCES study (pk),
    sop_iuid TEXT NOT NULL UNIQUE,
    file_path TEXT
);
"""

QUERY = """
SELECT i.sop_iuid AS SOPInstanceUID,
       p.pat_id AS PatientID,
       p.pat_name AS PatientName,
       p.pat_birthdate AS PatientBirthDate,
       s.study_iuid AS StudyInstanceUID,
       s.accession_no AS AccessionNumber,
       i.file_path AS FilePath
FROM instance i
JOIN study s ON s.pk = i.study_fk
JOIN patient p ON p.pk = s.patient_fk
WHERE i.sop_iuid IN :uids
"""


def instance_uid(number: int) -> str:
    return f"{UID_ROOT}{number}"


@pytest.fixture(scope="module")
def legacy_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding legacy.db: two patients, two studies, 2,500 instances."""
    folder = tmp_path_factory.mktemp("legacy")
    connection = sqlite3.connect(folder / "legacy.db")
    with connection:
        connection.executescript(SCHEMA)
        connection.executemany(
            "INSERT INTO patient VALUES (?, ?, ?, ?)",
            [(1, "P001", "DOE^JANE", "19700102"), (2, "P002", "MÜLLER^JÖRG", None)],
        )
        connection.executemany(
            "INSERT INTO study VALUES (?, ?, ?, ?)",
            [(1, 1, f"{UID_ROOT}1.1", "ACC001"), (2, 2, f"{UID_ROOT}1.2", "")],
        )
        connection.executemany(
            "INSERT INTO instance VALUES (?, ?, ?, ?)",
            [
                (number, 1 if number % 2 else 2, instance_uid(number),
                 f"\\\\pacs01\\share03\\{number:05d}.dcm")
                for number in range(1, INSTANCE_COUNT + 1)
            ],
        )
    connection.close()
    return folder


def legacy_config(**overrides: Any) -> LegacyConfig:
    return LegacyConfig(**{"url": "sqlite:///legacy.db", "query": QUERY, **overrides})


@pytest.fixture
def database(legacy_folder: Path) -> Iterator[LegacyDatabase]:
    database = LegacyDatabase(legacy_config(), base_dir=legacy_folder)
    yield database
    database.engine.dispose()


@pytest.fixture
def parameter_counts(database: LegacyDatabase) -> list[int]:
    """The number of bound parameters of each statement the engine sends."""
    counts: list[int] = []

    @event.listens_for(database.engine, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
               executemany: bool) -> None:
        counts.append(len(parameters))

    return counts


class TestFetch:
    def test_rows_keyed_by_sop_instance_uid(self, database: LegacyDatabase) -> None:
        """Each UID with a row maps to that row's columns."""
        rows = database.fetch([instance_uid(1), instance_uid(2)])

        assert set(rows) == {instance_uid(1), instance_uid(2)}
        assert rows[instance_uid(1)] == {
            "SOPInstanceUID": instance_uid(1),
            "PatientID": "P001",
            "PatientName": "DOE^JANE",
            "PatientBirthDate": "19700102",
            "StudyInstanceUID": f"{UID_ROOT}1.1",
            "AccessionNumber": "ACC001",
            "FilePath": "\\\\pacs01\\share03\\00001.dcm",
        }
        assert rows[instance_uid(2)]["PatientName"] == "MÜLLER^JÖRG"

    def test_uid_without_row_left_out(self, database: LegacyDatabase) -> None:
        """UIDs that the database does not hold are absent from the result."""
        rows = database.fetch([instance_uid(3), f"{UID_ROOT}999999"])

        assert set(rows) == {instance_uid(3)}

    def test_no_uids_no_query(self, database: LegacyDatabase, parameter_counts: list[int]) -> None:
        """An empty UID list returns no rows without querying."""
        assert database.fetch([]) == {}
        assert parameter_counts == []

    def test_chunks_of_chunk_size(self, database: LegacyDatabase, parameter_counts: list[int]) -> None:
        """2,500 UIDs with chunk_size 1000 take exactly 3 queries of at most 1000 parameters."""
        uids = [instance_uid(number) for number in range(1, INSTANCE_COUNT + 1)]

        rows = database.fetch(uids)

        assert len(rows) == INSTANCE_COUNT
        assert len(parameter_counts) == 3
        assert max(parameter_counts) <= 1000
        assert sorted(parameter_counts) == [500, 1000, 1000]

    def test_repeated_uids_bound_once(
        self, database: LegacyDatabase, parameter_counts: list[int]
    ) -> None:
        """A UID listed twice is bound as one parameter."""
        rows = database.fetch([instance_uid(5), instance_uid(5), instance_uid(6)])

        assert set(rows) == {instance_uid(5), instance_uid(6)}
        assert parameter_counts == [2]

    def test_smaller_chunk_size(self, legacy_folder: Path) -> None:
        """A smaller chunk_size gives more, smaller queries."""
        database = LegacyDatabase(legacy_config(chunk_size=300), base_dir=legacy_folder)
        counts: list[int] = []
        event.listen(database.engine, "before_cursor_execute",
                     lambda *args: counts.append(len(args[3])))

        rows = database.fetch([instance_uid(number) for number in range(1, 1001)])
        database.engine.dispose()

        assert len(rows) == 1000
        assert counts == [300, 300, 300, 100]


class TestColumnCheck:
    def test_unaliased_column_raises(self, legacy_folder: Path) -> None:
        """A column not aliased to a DICOM keyword raises an error naming it."""
        query = QUERY.replace("p.pat_name AS PatientName", "p.pat_name")
        database = LegacyDatabase(legacy_config(query=query), base_dir=legacy_folder)

        with pytest.raises(LegacyDatabaseError) as caught:
            database.fetch([instance_uid(1)])
        database.engine.dispose()

        assert "column 'pat_name'" in str(caught.value)
        assert "not a DICOM keyword" in str(caught.value)

    def test_path_column_needs_no_keyword(self, legacy_folder: Path) -> None:
        """The configured path column is exempt from the keyword check."""
        query = QUERY.replace("AS FilePath", "AS LegacyPath")
        database = LegacyDatabase(legacy_config(query=query, path_column="LegacyPath"),
                                  base_dir=legacy_folder)

        rows = database.fetch([instance_uid(1)])
        database.engine.dispose()

        assert rows[instance_uid(1)]["LegacyPath"] == "\\\\pacs01\\share03\\00001.dcm"

    def test_path_column_checked_when_not_configured(self, legacy_folder: Path) -> None:
        """Without a configured path column, a FilePath column fails the keyword check."""
        database = LegacyDatabase(legacy_config(path_column=None), base_dir=legacy_folder)

        with pytest.raises(LegacyDatabaseError) as caught:
            database.fetch([instance_uid(1)])
        database.engine.dispose()

        assert "column 'FilePath'" in str(caught.value)

    def test_failed_query_raises(self, legacy_folder: Path) -> None:
        """An SQL error is raised as LegacyDatabaseError naming the database."""
        query = QUERY.replace("FROM instance i", "FROM images i")
        database = LegacyDatabase(legacy_config(query=query), base_dir=legacy_folder)

        with pytest.raises(LegacyDatabaseError) as caught:
            database.fetch([instance_uid(1)])
        database.engine.dispose()

        assert "the reconciliation query failed on sqlite:///" in str(caught.value)
        assert "no such table: images" in str(caught.value)


class TestToDicomString:
    @pytest.mark.parametrize(
        ("keyword", "value", "expected"),
        [
            pytest.param("PatientBirthDate", datetime.date(1970, 1, 2), "19700102", id="date-DA"),
            pytest.param("StudyDate", datetime.datetime(2019, 1, 31, 14, 30, 5), "20190131",
                         id="datetime-DA"),
            pytest.param("StudyTime", datetime.datetime(2019, 1, 31, 14, 30, 5), "143005",
                         id="datetime-TM"),
            pytest.param("AcquisitionDateTime", datetime.datetime(2019, 1, 31, 14, 30, 5),
                         "20190131143005", id="datetime-DT"),
            pytest.param("StudyTime", datetime.time(8, 5, 0), "080500", id="time-TM"),
            pytest.param("SeriesNumber", 7, "7", id="int-IS"),
            pytest.param("InstanceNumber", Decimal("12"), "12", id="decimal-IS"),
            pytest.param("InstanceNumber", 3.0, "3", id="float-IS"),
            pytest.param("SliceThickness", Decimal("2.50"), "2.50", id="decimal-DS"),
            pytest.param("PatientID", "P001    ", "P001", id="padded-text"),
        ],
    )
    def test_converts_value(self, keyword: str, value: Any, expected: str) -> None:
        """Database values become the DICOM string form of the keyword's VR."""
        assert to_dicom_string(keyword, value) == expected

    @pytest.mark.parametrize("value", [None, "", "   "], ids=["none", "empty", "blank"])
    def test_empty_becomes_none(self, value: Any) -> None:
        """NULL, empty and blank values become None and leave the header unchanged."""
        assert to_dicom_string("PatientName", value) is None


def test_legacy_values_drops_key_path_and_empty() -> None:
    """legacy_values keeps non-empty DICOM values and drops the UID and path columns."""
    row = {
        "SOPInstanceUID": instance_uid(1),
        "PatientID": "P001",
        "PatientBirthDate": datetime.date(1970, 1, 2),
        "AccessionNumber": "",
        "PatientName": None,
        "FilePath": "\\\\pacs01\\share03\\00001.dcm",
    }

    assert legacy_values(row, "FilePath") == {"PatientID": "P001", "PatientBirthDate": "19700102"}


def test_lower_case_aliases_on_postgresql(postgres_url: str) -> None:
    """PostgreSQL folds unquoted aliases to lower case; rows still carry DICOM keywords."""
    engine = create_engine(postgres_url)
    with engine.begin() as connection:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                connection.execute(text(statement))
        connection.execute(text("INSERT INTO patient VALUES (1, 'P001', 'DOE^JANE', '19700102')"))
        connection.execute(text(f"INSERT INTO study VALUES (1, 1, '{UID_ROOT}1.1', 'ACC001')"))
        connection.execute(text(f"INSERT INTO instance VALUES (1, 1, '{instance_uid(1)}', 'x.dcm')"))
    engine.dispose()
    database = LegacyDatabase(legacy_config(url=postgres_url))

    rows = database.fetch([instance_uid(1)])
    database.engine.dispose()

    row = rows[instance_uid(1)]
    assert row["PatientID"] == "P001"
    assert row["StudyInstanceUID"] == f"{UID_ROOT}1.1"
    assert row["FilePath"] == "x.dcm"


def test_upper_case_aliases(legacy_folder: Path) -> None:
    """Oracle returns unquoted aliases in upper case; they match their keywords too."""
    query = QUERY.replace("AS PatientName", 'AS "PATIENTNAME"').replace("AS FilePath", 'AS "FILEPATH"')
    database = LegacyDatabase(legacy_config(query=query), base_dir=legacy_folder)

    rows = database.fetch([instance_uid(1)])
    database.engine.dispose()

    assert rows[instance_uid(1)]["PatientName"] == "DOE^JANE"
    assert rows[instance_uid(1)]["FilePath"] == "\\\\pacs01\\share03\\00001.dcm"


def test_missing_sop_instance_uid_column_raises(legacy_folder: Path) -> None:
    # The comment passes the configuration check, which only searches the text.
    query = QUERY.replace("AS SOPInstanceUID", "AS SeriesInstanceUID") + "-- SOPInstanceUID\n"
    database = LegacyDatabase(legacy_config(query=query), base_dir=legacy_folder)

    with pytest.raises(LegacyDatabaseError) as caught:
        database.fetch([instance_uid(1)])
    database.engine.dispose()

    assert "no SOPInstanceUID column" in str(caught.value)

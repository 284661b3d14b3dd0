"""The legacy PACS database, in the schema of the demo archive's SQLite database.

The tables and columns match ``migrator.demo.archive`` (patient, study, series,
instance), so the demo's reconciliation query works unchanged. They are
created through SQLAlchemy, so the database can also be PostgreSQL or SQL
Server. Merged studies have no study row: their series rows point at the
study they were merged into. Orphans have no instance row. Of a duplicate
pair, the instance row's file_path names one file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    inspect,
)
from sqlalchemy.engine import URL

from loadtest.archive.layout import ArchivePlan, PlannedFile

LOGGER = logging.getLogger(__name__)

#: The file server name in the legacy database's UNC paths.
LEGACY_HOST = "legacy-pacs"

#: Rows sent to the database in one executemany call.
_INSERT_CHUNK = 5_000

metadata = MetaData()
patient_table = Table(
    "patient", metadata,
    Column("pk", Integer, primary_key=True),
    Column("pat_id", String(64), nullable=False, unique=True),
    Column("pat_name", String(255), nullable=False),
    Column("pat_birthdate", String(8)),
    Column("pat_sex", String(16)),
)
study_table = Table(
    "study", metadata,
    Column("pk", Integer, primary_key=True),
    Column("patient_fk", Integer, ForeignKey("patient.pk"), nullable=False),
    Column("study_iuid", String(64), nullable=False, unique=True),
    Column("accession_no", String(16)),
    Column("study_date", String(8)),
    Column("study_desc", String(64)),
    Index("study_patient_fk", "patient_fk"),
)
series_table = Table(
    "series", metadata,
    Column("pk", Integer, primary_key=True),
    Column("study_fk", Integer, ForeignKey("study.pk"), nullable=False),
    Column("series_iuid", String(64), nullable=False, unique=True),
    Column("series_no", Integer),
    Column("modality", String(16)),
    Index("series_study_fk", "study_fk"),
)
instance_table = Table(
    "instance", metadata,
    Column("pk", Integer, primary_key=True),
    Column("series_fk", Integer, ForeignKey("series.pk"), nullable=False),
    Column("sop_iuid", String(64), nullable=False, unique=True),
    Column("sop_cuid", String(64), nullable=False),
    Column("inst_no", Integer),
    Column("file_path", String(1024), nullable=False),
    Index("instance_series_fk", "series_fk"),
)


def legacy_path_prefix(root: str) -> str:
    """Return what the legacy database puts before a path relative to ``root``."""
    return f"\\\\{LEGACY_HOST}\\{root}\\"


def legacy_file_path(root: str, rel_path: str) -> str:
    """Return the legacy database's file_path for a file: a Windows UNC path."""
    return legacy_path_prefix(root) + rel_path.replace("/", "\\")


class LegacyDatabaseWriter:
    """Adds the rows of a plan's instances, one file at a time, in one transaction."""

    def __init__(self, connection: Connection, plan: ArchivePlan) -> None:
        self._connection = connection
        self._plan = plan
        self._study_pks = self._insert_patients_and_studies()
        self._series_pks: dict[str, int] = {}
        self._series_rows: list[dict[str, Any]] = []
        self._instance_rows: list[dict[str, Any]] = []
        self._instances_added: set[int] = set()
        self.instance_rows = 0

    def _insert_patients_and_studies(self) -> dict[int, int]:
        """Insert a row per patient and per unmerged study; return study pk by study index."""
        patient_pks: dict[str, int] = {}
        patient_rows = []
        study_rows = []
        study_pks = {}
        for study in self._plan.studies:
            if study.merged_into is not None:
                continue
            patient = study.patient
            if patient.patient_id not in patient_pks:
                patient_pks[patient.patient_id] = len(patient_pks) + 1
                patient_rows.append({"pk": patient_pks[patient.patient_id], "pat_id": patient.patient_id,
                                     "pat_name": patient.name, "pat_birthdate": patient.birth_date,
                                     "pat_sex": patient.sex})
            study_pks[study.index] = study.index + 1
            study_rows.append({"pk": study.index + 1, "patient_fk": patient_pks[patient.patient_id],
                               "study_iuid": study.uid, "accession_no": study.accession_number,
                               "study_date": study.storage_date, "study_desc": study.description})
        self._connection.execute(patient_table.insert(), patient_rows)
        self._connection.execute(study_table.insert(), study_rows)
        for study in self._plan.studies:
            if study.merged_into is not None:
                study_pks[study.index] = study_pks[study.merged_into]
        return study_pks

    def add(self, file: PlannedFile) -> None:
        """Add the instance row of ``file``; an orphan or a second copy adds nothing."""
        if file.legacy_rel_path is None or file.instance_index in self._instances_added:
            return
        self._instances_added.add(file.instance_index)
        series_pk = self._series_pks.get(file.series.uid)
        if series_pk is None:
            series_pk = self._series_pks[file.series.uid] = len(self._series_pks) + 1
            self._series_rows.append({"pk": series_pk, "study_fk": self._study_pks[file.study.index],
                                      "series_iuid": file.series.uid, "series_no": file.series.number,
                                      "modality": file.series.kind})
        self._instance_rows.append({
            "pk": file.instance_index + 1, "series_fk": series_pk, "sop_iuid": file.sop_instance_uid,
            "sop_cuid": file.sop_class_uid, "inst_no": file.position + 1,
            "file_path": legacy_file_path(file.root, file.legacy_rel_path),
        })
        if len(self._instance_rows) >= _INSERT_CHUNK:
            self.flush()

    def flush(self) -> None:
        """Insert the rows added since the last flush."""
        if self._series_rows:
            self._connection.execute(series_table.insert(), self._series_rows)
            self._series_rows = []
        if self._instance_rows:
            self._connection.execute(instance_table.insert(), self._instance_rows)
            self.instance_rows += len(self._instance_rows)
            self._instance_rows = []


@contextmanager
def legacy_database(url: URL | str, plan: ArchivePlan) -> Iterator[LegacyDatabaseWriter]:
    """Create the legacy tables in an empty database and yield a writer for its rows.

    The rows are committed when the block ends without an error.

    Raises
    ------
    FileExistsError
        If the database already has one of the legacy tables.
    """
    engine = create_engine(url)
    try:
        existing = set(inspect(engine).get_table_names()) & set(metadata.tables)
        if existing:
            raise FileExistsError(
                f"the legacy database {engine.url.render_as_string(hide_password=True)} already has "
                f"the table(s) {', '.join(sorted(existing))}; give an empty database")
        with engine.begin() as connection:
            metadata.create_all(connection)
            writer = LegacyDatabaseWriter(connection, plan)
            yield writer
            writer.flush()
        LOGGER.info("Wrote %d instance rows to the legacy database", writer.instance_rows)
    finally:
        engine.dispose()

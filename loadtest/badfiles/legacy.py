"""Legacy database rows for the bad files, in the schema of the demo and the generated archives."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath

from sqlalchemy import Connection, Table, create_engine, func, select
from sqlalchemy.engine import URL

from loadtest.archive.legacy_db import (
    instance_table,
    metadata,
    patient_table,
    series_table,
    study_table,
)
from loadtest.badfiles.spec import BadFileSpec
from loadtest.badfiles.write import NAME_AFTER, PATIENT_ID


def _next_pk(connection: Connection, table: Table) -> int:
    return int(connection.scalar(select(func.coalesce(func.max(table.c.pk), 0))) or 0) + 1


def add_legacy_rows(url: URL | str, specs: Sequence[BadFileSpec], folder: str,
                    path_prefix: str) -> int:
    """Add a patient, a study, and a series and instance row per bad file; return the instance rows.

    Creates the legacy tables if the database has none.

    Parameters
    ----------
    folder
        The bad files' folder relative to its storage root, with ``/``.
    path_prefix
        What the legacy database puts before a path relative to the root,
        the root's ``legacy_path_prefix`` in migrator.toml, for example
        ``\\\\legacy-pacs\\share01\\``.

    Raises
    ------
    FileExistsError
        The database already has the bad files' patient, so rows were added before.
    """
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            metadata.create_all(connection, checkfirst=True)
            if connection.scalar(select(patient_table.c.pk).where(patient_table.c.pat_id == PATIENT_ID)):
                raise FileExistsError(f"the legacy database already has patient {PATIENT_ID}: the bad "
                                      "files' rows were added before")
            return _insert(connection, specs, folder, path_prefix)
    finally:
        engine.dispose()


def _insert(connection: Connection, specs: Sequence[BadFileSpec], folder: str, path_prefix: str) -> int:
    with_rows = [spec for spec in specs if spec.legacy_rel_path and spec.sop_instance_uid]
    if not with_rows:
        return 0
    patient_pk = _next_pk(connection, patient_table)
    connection.execute(patient_table.insert(), [{"pk": patient_pk, "pat_id": PATIENT_ID,
                                                 "pat_name": NAME_AFTER}])
    study_pk = _next_pk(connection, study_table)
    connection.execute(study_table.insert(), [{"pk": study_pk, "patient_fk": patient_pk,
                                               "study_iuid": with_rows[0].study_uid,
                                               "study_desc": "BAD AND ODD FILES"}])
    series_pk, instance_pk = _next_pk(connection, series_table), _next_pk(connection, instance_table)
    # A prefix of the Windows form ends with a backslash; the migrator compares either separator.
    separator = "\\" if "\\" in path_prefix else "/"
    series_pks: dict[str, int] = {}
    series_rows: list[dict[str, object]] = []
    instance_rows: list[dict[str, object]] = []
    seen: set[str] = set()
    for spec in with_rows:
        assert spec.sop_instance_uid is not None
        assert spec.series_uid is not None
        assert spec.legacy_rel_path is not None
        if spec.sop_instance_uid in seen:
            continue  # a symbolic link shares its target's row
        seen.add(spec.sop_instance_uid)
        if spec.series_uid not in series_pks:
            series_pks[spec.series_uid] = series_pk + len(series_pks)
            series_rows.append({"pk": series_pks[spec.series_uid], "study_fk": study_pk,
                                "series_iuid": spec.series_uid, "series_no": len(series_pks)})
        rel = str(PurePosixPath(folder, spec.legacy_rel_path)) if folder else spec.legacy_rel_path
        instance_rows.append({"pk": instance_pk + len(instance_rows), "series_fk": series_pks[spec.series_uid],
                              "sop_iuid": spec.sop_instance_uid, "sop_cuid": spec.sop_class_uid,
                              "inst_no": len(instance_rows) + 1,
                              "file_path": separator.join([path_prefix.rstrip("\\/"), *rel.split("/")])})
    connection.execute(series_table.insert(), series_rows)
    connection.execute(instance_table.insert(), instance_rows)
    return len(instance_rows)

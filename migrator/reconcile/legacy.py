"""The legacy PACS database, queried one chunk of SOP Instance UIDs at a time."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_dict
from sqlalchemy import Engine, bindparam, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from migrator.config import LegacyConfig
from migrator.errors import LegacyDatabaseError

LOGGER = logging.getLogger(__name__)

_KEYWORDS_BY_LOWER = {keyword.lower(): keyword for keyword in keyword_dict}

#: One legacy row: DICOM keyword -> value as the database returned it.
LegacyRow = dict[str, Any]
#: The key of ``legacy.transformation_column``'s value in a row. It is not
#: a keyword of pydicom's data dictionary, so it cannot collide with one.
TRANSFORMATION = "transformation"


def chunked(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class LegacyDatabase:
    """Runs the operator's reconciliation query with an expanding ``:uids`` list."""

    def __init__(self, config: LegacyConfig, base_dir: Path | None = None,
                 engine: Engine | None = None) -> None:
        self.config = config
        url = config.sqlalchemy_url(base_dir)
        if engine is None and url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            # SQLite would create an empty file and fail later with "no such table".
            if not Path(url.database).is_file():
                raise LegacyDatabaseError(
                    f"legacy database file not found: {url.database}; check legacy.url")
        # hide_parameters keeps a failed query's UID list out of the error message.
        self.engine = engine or create_engine(url, pool_pre_ping=True, hide_parameters=True)
        self._query = text(config.query).bindparams(bindparam("uids", expanding=True))
        self._names: dict[str, str] | None = None

    def _map_columns(self, columns: Iterable[str]) -> dict[str, str]:
        """Return column name -> DICOM keyword (or the path column), matched without regard to case.

        PostgreSQL folds unquoted aliases to lower case and Oracle to upper
        case, so ``AS PatientID`` arrives as ``patientid`` or ``PATIENTID``.
        """
        path_column = self.config.path_column
        transformation_column = self.config.transformation_column
        names: dict[str, str] = {}
        for column in columns:
            if path_column and column.lower() == path_column.lower():
                names[column] = path_column
                continue
            if transformation_column and column.lower() == transformation_column.lower():
                names[column] = TRANSFORMATION
                continue
            keyword = column if column in keyword_dict else _KEYWORDS_BY_LOWER.get(column.lower())
            if keyword is None:
                hint = (f" or correct legacy.path_column ('{path_column}') if this is the path column"
                        if path_column else "")
                raise LegacyDatabaseError(
                    f"the reconciliation query returns column '{column}', which is not a "
                    f"DICOM keyword; alias every column to a keyword such as PatientID{hint}"
                )
            names[column] = keyword
        if "SOPInstanceUID" not in names.values():
            raise LegacyDatabaseError("the reconciliation query returns no SOPInstanceUID column; "
                                      "select the SOP Instance UID AS SOPInstanceUID")
        if transformation_column and TRANSFORMATION not in names.values():
            # Without the column no instance would be held back for its transformation.
            raise LegacyDatabaseError(f"the reconciliation query returns no column "
                                      f"'{transformation_column}', which legacy.transformation_column "
                                      "names; add it to the query or remove the setting")
        return names

    def fetch(self, uids: Iterable[str]) -> dict[str, LegacyRow]:
        """Return the legacy row of each UID that has one.

        One query per chunk of at most ``chunk_size`` UIDs; SQL Server
        rejects statements with more than 2,100 parameters.
        """
        wanted = sorted(set(uids))
        rows: dict[str, LegacyRow] = {}
        try:
            with self.engine.connect() as connection:
                for chunk in chunked(wanted, self.config.chunk_size):
                    result = connection.execute(self._query, {"uids": list(chunk)})
                    if self._names is None:
                        self._names = self._map_columns(result.keys())
                    names = self._names
                    for row in result.mappings():
                        values = {names[column]: value for column, value in row.items()}
                        rows[str(values["SOPInstanceUID"]).strip()] = values
        except SQLAlchemyError as exc:
            url = self.engine.url.render_as_string(hide_password=True)
            raise LegacyDatabaseError(f"the reconciliation query failed on {url}: {exc}") from exc
        return rows


def to_dicom_string(keyword: str, value: Any) -> str | None:
    """Convert a database value to the DICOM string form of ``keyword``'s VR.

    Returns None for NULL or an empty value, which leave the header unchanged.
    """
    if value is None:
        return None
    vr = dictionary_VR(keyword)
    if isinstance(value, datetime.datetime):
        text_value = value.strftime("%Y%m%d%H%M%S") if vr == "DT" else value.strftime(
            "%H%M%S" if vr == "TM" else "%Y%m%d")
    elif isinstance(value, datetime.date):
        text_value = value.strftime("%Y%m%d")
    elif isinstance(value, datetime.time):
        text_value = value.strftime("%H%M%S")
    elif isinstance(value, Decimal | float) and vr in ("IS",):
        text_value = str(int(value))
    else:
        text_value = str(value)
    text_value = text_value.strip()
    return text_value or None


def legacy_values(row: LegacyRow, path_column: str | None) -> dict[str, str]:
    """Return the row's non-empty DICOM values as strings, without the key, path and transformation columns."""
    return {
        keyword: converted
        for keyword, value in row.items()
        if keyword not in ("SOPInstanceUID", path_column, TRANSFORMATION)
        and (converted := to_dicom_string(keyword, value)) is not None
    }

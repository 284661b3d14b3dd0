"""The transformation column of the reconciliation query, and the route that holds an instance back."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.datadict import keyword_dict

from migrator.config import LegacyConfig
from migrator.errors import LegacyDatabaseError
from migrator.reconcile.legacy import TRANSFORMATION, LegacyDatabase, legacy_values
from migrator.route import Route
from migrator.transform.hold import hold_for_transformation
from tests.transform.support import QUERY, QUERY_WITHOUT_TRANSFORMATION, write_legacy_db

UID = "1.2.826.0.1.3680043.8.498.7"


def _database(tmp_path: Path, query: str = QUERY, column: str | None = "transformation") -> LegacyDatabase:
    url = write_legacy_db(tmp_path / "legacy.sqlite", {UID: "rotate 180"})
    return LegacyDatabase(LegacyConfig(url=url, query=query, path_column=None, transformation_column=column))


def test_column_matched_without_regard_to_case(tmp_path: Path) -> None:
    row = _database(tmp_path).fetch([UID])[UID]
    assert row[TRANSFORMATION] == "rotate 180"
    assert legacy_values(row, None) == {}


def test_column_missing_from_query_rejected(tmp_path: Path) -> None:
    with pytest.raises(LegacyDatabaseError, match="returns no column 'transformation'"):
        _database(tmp_path, QUERY_WITHOUT_TRANSFORMATION).fetch([UID])


def test_column_without_setting_rejected(tmp_path: Path) -> None:
    with pytest.raises(LegacyDatabaseError, match="'Transformation', which is not a DICOM keyword"):
        _database(tmp_path, column=None).fetch([UID])


def test_listed_instance_held_without_legacy_value() -> None:
    result = hold_for_transformation(Route("image", "main", None), None, listed=True)
    assert result == Route("needs transformation", "skip", "needs transformation",
                           "listed by migrator transform load")


@pytest.mark.parametrize(("route", "value", "held"), [
    (Route("image", "main", None), "rotate 180", True),
    (Route("image", "main", None), "  ", False),
    (Route("image", "main", None), None, False),
    (Route("orphan", "sinbin", "orphan"), "rotate 180", False),
    (Route("skip", "skip", "test data"), "rotate 180", False),
])
def test_hold_only_instances_going_to_a_destination(route: Route, value: str | None, held: bool) -> None:
    result = hold_for_transformation(route, {"SOPInstanceUID": UID, TRANSFORMATION: value})
    if held:
        assert result == Route("needs transformation", "skip", "needs transformation",
                               "the legacy database records 'rotate 180'")
    else:
        assert result == route


def test_row_key_is_no_dicom_keyword() -> None:
    """The transformation's key in a legacy row cannot shadow a corrected DICOM attribute."""
    assert TRANSFORMATION not in keyword_dict

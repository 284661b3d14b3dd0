"""The CSV list: parsing, validation with line numbers, and loading into the state database."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from migrator.state.db import open_state
from migrator.state.models import TransformItem
from migrator.transform.input import (
    TransformListError,
    load_list,
    parse_list,
    read_list,
)
from migrator.transform.transformation import Transformation, parse_transformation

UID_A = "1.2.826.0.1.3680043.8.498.1"
UID_B = "1.2.826.0.1.3680043.8.498.2"
UID_C = "1.2.826.0.1.3680043.8.498.3"


@pytest.mark.parametrize(("text", "expected"), [
    ("rotate_90_cw", Transformation.ROTATE_90_CW),
    ("Rotate 90 clockwise", Transformation.ROTATE_90_CW),
    ("rotate clockwise 90 degrees", Transformation.ROTATE_90_CW),
    ("ROTATE-180", Transformation.ROTATE_180),
    ("rotate 90 anticlockwise", Transformation.ROTATE_90_CCW),
    ("rotate 90° counterclockwise", Transformation.ROTATE_90_CCW),
    ("rotate 270 clockwise", Transformation.ROTATE_90_CCW),
    ("flip horizontal", Transformation.FLIP_HORIZONTAL),
    ("flip_vertical", Transformation.FLIP_VERTICAL),
    ("rotate 90", None),
    ("flip", None),
    ("mirror", None),
])
def test_parse_transformation_spellings(text: str, expected: Transformation | None) -> None:
    assert parse_transformation(text) is expected


def test_header_columns_found_by_name() -> None:
    text = ("note;Transformation;SOPInstanceUID\n"
            f"first;rotate 180;{UID_A}\n"
            "\n"
            "# a comment line\n"
            f"second;flip vertical;{UID_B}\n")
    entries = parse_list(text, "list.csv")
    assert [(e.line, e.sop_instance_uid, e.transformation) for e in entries] == [
        (2, UID_A, Transformation.ROTATE_180), (5, UID_B, Transformation.FLIP_VERTICAL)]


def test_list_without_header() -> None:
    entries = parse_list(f"{UID_A},rotate_90_ccw\n{UID_B},\"rotate 90 clockwise\"\n", "list.csv")
    assert [(e.line, e.transformation) for e in entries] == [
        (1, Transformation.ROTATE_90_CCW), (2, Transformation.ROTATE_90_CW)]


def test_byte_order_mark_accepted(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfsop_instance_uid,transformation\r\n" + f"{UID_A},flip horizontal\r\n".encode())
    assert [e.sop_instance_uid for e in read_list(path)] == [UID_A]


def test_every_error_named_with_its_line() -> None:
    text = ("sop_instance_uid,transformation\n"
            f"{UID_A},rotate 180\n"
            "1.2..3,rotate 180\n"
            f"{UID_B},turn left\n"
            f"{UID_C}\n"
            f"{UID_A},flip vertical\n"
            "x.y,sideways\n")
    with pytest.raises(TransformListError) as raised:
        parse_list(text, "list.csv")
    message = str(raised.value)
    assert message.startswith("list.csv: 5 invalid line(s); nothing was loaded.")
    assert "line 3: SOP Instance UID '1.2..3' is invalid" in message
    assert "line 4: transformation 'turn left' is unknown" in message
    assert "line 5: 1 column(s), expected a SOP Instance UID and a transformation" in message
    assert (f"line 6: SOP Instance UID {UID_A} is listed on line 2 with rotate_180 and here with "
            "flip_vertical") in message
    assert "line 7: SOP Instance UID 'x.y' is invalid" in message
    assert "transformation 'sideways' is unknown" in message


def test_unknown_header_rejected() -> None:
    with pytest.raises(TransformListError, match="line 1: expected a header with the columns"):
        parse_list("uid,action\n1.2.3,rotate 180\n", "list.csv")


def test_repeated_identical_line_counts_once() -> None:
    entries = parse_list(f"{UID_A},rotate 180\n{UID_A},Rotate 180\n", "list.csv")
    assert len(entries) == 1


def test_empty_list_rejected() -> None:
    with pytest.raises(TransformListError, match="the list contains no SOP Instance UID"):
        parse_list("sop_instance_uid,transformation\n\n", "list.csv")


def test_missing_file_named(tmp_path: Path) -> None:
    with pytest.raises(TransformListError, match="missing.csv: file not found"):
        read_list(tmp_path / "missing.csv")


def test_load_adds_changes_and_reports_conflicts(sqlite_url: str) -> None:
    sessions = open_state(sqlite_url)
    with sessions() as session:
        first = load_list(session, parse_list(f"{UID_A},rotate 180\n{UID_B},rotate 180\n", "one.csv"), "one.csv")
        assert (first.added, first.changed, first.unchanged) == (2, 0, 0)
        session.scalars(select(TransformItem).where(TransformItem.sop_instance_uid == UID_B)).one().status = "sent"
        session.commit()
        second = load_list(session, parse_list(
            f"{UID_A},flip vertical\n{UID_B},flip vertical\n{UID_C},rotate 180\n", "two.csv"), "two.csv")
        assert (second.added, second.changed, second.unchanged) == (1, 1, 0)
        assert second.conflicts == [f"line 2: SOP Instance UID {UID_B} is already sent with rotate_180 "
                                    "(one.csv line 2); the list's flip_vertical was not applied"]
        items = {item.sop_instance_uid: (item.transformation, item.source_detail)
                 for item in session.scalars(select(TransformItem))}
    assert items == {UID_A: ("flip_vertical", "two.csv line 1"), UID_B: ("rotate_180", "one.csv line 2"),
                     UID_C: ("rotate_180", "two.csv line 3")}
    sessions.kw["bind"].dispose()


def test_stray_quote_names_line() -> None:
    """A quote that opens a field running past the csv module's limit is a line error, not a crash."""
    text = "sop_instance_uid,transformation\n1.2.3,rotate_180\n\"" + "x" * 200_000 + "\n"
    with pytest.raises(TransformListError, match=r"line 3: field larger than field limit"):
        parse_list(text, "stray.csv")

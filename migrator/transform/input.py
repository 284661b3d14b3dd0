"""The CSV list of SOP Instance UIDs and their transformations, validated and loaded.

The file is UTF-8 (a byte order mark is allowed), with comma, semicolon
or tab as the delimiter. A header row is optional. With one, the columns
``sop_instance_uid`` (or ``SOPInstanceUID``) and ``transformation`` are
found by name, in any order, and other columns are ignored. Without one,
the first two columns are the UID and the transformation. Blank lines and
lines starting with ``#`` are skipped. Every error names its line, and a
file with any error loads nothing.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from migrator import audit
from migrator.errors import MigratorError
from migrator.state.models import TransformItem, TransformStatus
from migrator.transform.transformation import (
    ACCEPTED,
    Transformation,
    parse_transformation,
)

SOURCE = "csv"
UID_HEADERS = {"sop_instance_uid", "sopinstanceuid", "sop instance uid"}
TRANSFORMATION_HEADERS = {"transformation"}
#: Digits and dots with no empty component, as DICOM PS3.5 encodes UIDs. Longer values than
#: its 64 characters and leading zeros occur in legacy archives and pass.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: Errors listed in one message; the rest are counted.
MAX_LISTED_ERRORS = 50


class TransformListError(MigratorError):
    """The CSV list is missing, unreadable or invalid; the message lists every error with its line."""


@dataclass(frozen=True)
class ListedTransformation:
    """One valid line of the list."""

    line: int
    sop_instance_uid: str
    transformation: Transformation


def read_list(path: Path) -> list[ListedTransformation]:
    """Read and validate the CSV at ``path``.

    Raises
    ------
    TransformListError
        The file cannot be read, or one or more lines are invalid.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TransformListError(f"{path}: file not found; give the path of the CSV list") from None
    except UnicodeDecodeError as exc:
        raise TransformListError(f"{path}: not UTF-8 (byte {exc.start}); save the list as UTF-8 CSV") from None
    except OSError as exc:
        raise TransformListError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    return parse_list(text, str(path))


def _delimiter(text: str) -> str:
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            counts = {delimiter: line.count(delimiter) for delimiter in (",", ";", "\t")}
            best = max(counts, key=lambda delimiter: counts[delimiter])
            return best if counts[best] else ","
    return ","


def parse_list(text: str, name: str) -> list[ListedTransformation]:
    """Parse the CSV ``text`` of the file ``name``.

    Raises
    ------
    TransformListError
        One or more lines are invalid; the message lists each with its line number.
    """
    errors: list[str] = []
    listed: list[ListedTransformation] = []
    first_line: dict[str, ListedTransformation] = {}
    columns: tuple[int, int] | None = None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
    for fields in _rows(reader, errors):
        line = reader.line_num
        cells = [cell.strip() for cell in fields]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if columns is None:
            columns, is_header = _columns(cells, line, errors)
            if columns is None:
                break  # without the columns no line can be read
            if is_header:
                continue
        entry = _parse_line(cells, columns, line, errors)
        if entry is None:
            continue
        earlier = first_line.get(entry.sop_instance_uid)
        if earlier is None:
            first_line[entry.sop_instance_uid] = entry
            listed.append(entry)
        elif earlier.transformation is not entry.transformation:
            errors.append(f"line {line}: SOP Instance UID {entry.sop_instance_uid} is listed on line "
                          f"{earlier.line} with {earlier.transformation.value} and here with "
                          f"{entry.transformation.value}; keep the one it needs")
    if errors:
        shown = errors[:MAX_LISTED_ERRORS]
        more = f"\n  ... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        raise TransformListError(f"{name}: {len(errors)} invalid line(s); nothing was loaded. Correct "
                                 "them and load the file again:\n  " + "\n  ".join(shown) + more)
    if not listed:
        raise TransformListError(f"{name}: the list contains no SOP Instance UID; expected lines of "
                                 "sop_instance_uid,transformation")
    return listed


def _rows(reader: Any, errors: list[str]) -> Iterator[list[str]]:
    """Yield the reader's rows; a row the csv module cannot read ends the list with an error."""
    try:
        yield from reader
    except csv.Error as exc:
        # The csv module names the line where it stopped, which a stray quote puts after the error.
        errors.append(f"line {reader.line_num}: {exc} (a stray double quote opens a field that "
                      "runs on; check this line and the one before it)")


def _columns(cells: list[str], line: int, errors: list[str]) -> tuple[tuple[int, int] | None, bool]:
    """Return the (UID, transformation) column indexes and whether ``cells`` is a header row."""
    if _UID.match(cells[0]):
        return (0, 1), False
    names = [cell.lower() for cell in cells]
    uid_column = next((index for index, cell in enumerate(names) if cell in UID_HEADERS), None)
    transformation_column = next((index for index, cell in enumerate(names) if cell in TRANSFORMATION_HEADERS),
                                 None)
    if uid_column is None or transformation_column is None:
        errors.append(f"line {line}: expected a header with the columns sop_instance_uid and transformation, "
                      f"or a first line that starts with a SOP Instance UID; found {','.join(cells)!r}")
        return None, True
    return (uid_column, transformation_column), True


def _parse_line(cells: list[str], columns: tuple[int, int], line: int,
                errors: list[str]) -> ListedTransformation | None:
    uid_column, transformation_column = columns
    if len(cells) <= max(columns):
        errors.append(f"line {line}: {len(cells)} column(s), expected a SOP Instance UID and a transformation")
        return None
    uid, name = cells[uid_column], cells[transformation_column]
    problems = []
    if not _UID.match(uid):
        problems.append(f"SOP Instance UID {uid!r} is invalid: a UID has digits and single dots only")
    transformation = parse_transformation(name)
    if transformation is None:
        problems.append(f"transformation {name!r} is unknown; expected one of {ACCEPTED}, or words "
                        "such as 'rotate 90 clockwise'")
    if problems:
        errors.append(f"line {line}: " + "; ".join(problems))
        return None
    assert transformation is not None
    return ListedTransformation(line, uid, transformation)


@dataclass
class LoadSummary:
    """The counts of loading one list into the state database."""

    added: int = 0
    #: Items not delivered transformed yet whose transformation the list changed.
    changed: int = 0
    unchanged: int = 0
    #: Items already delivered with another transformation, which the list does not change.
    conflicts: list[str] = field(default_factory=list)


#: Statuses whose transformation a new list may still change: nothing was delivered transformed.
_OPEN = (TransformStatus.PENDING.value, TransformStatus.FAILED.value, TransformStatus.SINBINNED.value)


def load_list(session: Session, entries: Iterable[ListedTransformation], name: str) -> LoadSummary:
    """Add each listed UID as a pending item, or update the transformation of one not delivered yet."""
    summary = LoadSummary()
    entries = list(entries)
    existing: dict[str, TransformItem] = {}
    uids = [entry.sop_instance_uid for entry in entries]
    for start in range(0, len(uids), 1000):
        for found in session.scalars(select(TransformItem).where(
                TransformItem.sop_instance_uid.in_(uids[start:start + 1000]))):
            existing[found.sop_instance_uid] = found
    for entry in entries:
        detail = f"{name} line {entry.line}"
        item = existing.get(entry.sop_instance_uid)
        if item is None:
            session.add(TransformItem(sop_instance_uid=entry.sop_instance_uid,
                                      transformation=entry.transformation.value, source=SOURCE,
                                      source_detail=detail, loaded_at=audit.now(), attempts=0,
                                      status=TransformStatus.PENDING.value))
            summary.added += 1
        elif item.transformation == entry.transformation.value:
            summary.unchanged += 1
        elif item.status in _OPEN:
            item.transformation = entry.transformation.value
            item.source, item.source_detail = SOURCE, detail
            summary.changed += 1
        else:
            summary.conflicts.append(f"line {entry.line}: SOP Instance UID {entry.sop_instance_uid} is "
                                     f"already {item.status} with {item.transformation} "
                                     f"({item.source_detail}); the list's {entry.transformation.value} "
                                     "was not applied")
    session.commit()
    return summary

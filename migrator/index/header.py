"""Reading a file's index fields: the header fields of :func:`migrator.dicom.read.read_header`
plus the keyed hashes of its Patient ID and Patient Name, from one parse of the header.
"""

from __future__ import annotations

import os

import pydicom

from migrator.collisions.patient import PatientHasher
from migrator.dicom.read import read_header_dataset


def read_index_fields(path: str | os.PathLike[str], hasher: PatientHasher) -> dict[str, object]:
    """Parse the header of ``path`` up to Pixel Data and return its index columns.

    Patient values leave this function only as keyed hashes.

    Raises
    ------
    UnreadableFile
        The file is empty, not DICOM, truncated, or lacks a UID the
        migration needs.
    """
    ds, header = read_header_dataset(path)
    fields: dict[str, object] = dict(header.__dict__)
    fields["patient_id_hash"] = hasher.patient_id(_text(ds, "PatientID"))
    fields["patient_name_hash"] = hasher.patient_name(_text(ds, "PatientName"))
    return fields


def _text(ds: pydicom.Dataset, keyword: str) -> str | None:
    """Return an element's value as text; a value that cannot be decoded counts as missing."""
    try:
        value = ds.get(keyword)
        return None if value is None else str(value)
    except Exception:  # a malformed value must not make the whole file unreadable
        return None

"""Reading a file's index fields: the header fields of :func:`migrator.dicom.read.read_header`
plus the keyed hashes of its Patient ID and Patient Name, from one parse of the header.
"""

from __future__ import annotations

import os

import pydicom
from pydicom.errors import InvalidDicomError

from migrator.collisions.patient import PatientHasher
from migrator.dicom.read import UnreadableFile, _next_tag_is_pixel_data, header_of


def read_index_fields(path: str | os.PathLike[str], hasher: PatientHasher) -> dict[str, object]:
    """Parse the header of ``path`` up to Pixel Data and return its index columns.

    The file is opened and parsed once, as by ``read_header``, whose
    messages the errors repeat. Patient values leave this function only as
    keyed hashes.

    Raises
    ------
    UnreadableFile
        The file is empty, not DICOM, truncated, or lacks a UID the
        migration needs.
    """
    # NOTE: this repeats read_header's reading and error handling because
    # read_header returns only its Header, without the data set.
    try:
        with open(path, "rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            if size == 0:
                raise UnreadableFile("empty file (0 bytes)")
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            at_end = fp.tell() >= size
            little_endian = ds.original_encoding[1] if ds.original_encoding[1] is not None else True
            has_pixel_data = _next_tag_is_pixel_data(fp, little_endian)
    except UnreadableFile:
        raise
    except InvalidDicomError:
        raise UnreadableFile(
            "not a DICOM Part 10 file: no 'DICM' prefix after the 128-byte preamble; "
            "check whether the file is DICOM at all"
        ) from None
    except EOFError as exc:
        raise UnreadableFile(f"truncated DICOM header: {exc}") from None
    except OSError as exc:
        raise UnreadableFile(f"cannot read the file: {exc.strerror or exc}") from None
    except Exception as exc:  # pydicom raises many kinds on malformed input
        raise UnreadableFile(f"cannot parse the DICOM header: {type(exc).__name__}: {exc}") from None
    fields: dict[str, object] = dict(header_of(ds, has_pixel_data, truncated=at_end and not has_pixel_data)
                                     .__dict__)
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

"""Reading DICOM files: the header for the index and for sending, or the whole file.

Header parsing stops before Pixel Data, so indexing never reads pixels and
sending never decodes them. Reading a whole file keeps encapsulated Pixel
Data as the stored bytes: a JPEG 2000 file is sent as JPEG 2000.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import pydicom
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

#: (7FE0,0008) Float Pixel Data, (7FE0,0009) Double Float Pixel Data, (7FE0,0010) Pixel Data.
PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}
REQUIRED = {
    "SOPClassUID": "(0008,0016) SOP Class UID",
    "SOPInstanceUID": "(0008,0018) SOP Instance UID",
    "StudyInstanceUID": "(0020,000D) Study Instance UID",
}


class UnreadableFile(Exception):
    """The file cannot be used as a DICOM instance. The message gives the reason."""


@dataclass(frozen=True)
class Header:
    """The index fields of one file."""

    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str | None
    modality: str | None
    has_pixel_data: bool


def _next_tag_is_pixel_data(fp: BinaryIO, little_endian: bool) -> bool:
    raw = fp.read(4)
    if len(raw) < 4:
        return False
    order: Literal["little", "big"] = "little" if little_endian else "big"
    group = int.from_bytes(raw[:2], order)
    element = int.from_bytes(raw[2:], order)
    return (group << 16 | element) in PIXEL_TAGS


def read_header(path: str | os.PathLike[str]) -> Header:
    """Parse the header of ``path`` up to Pixel Data.

    Raises
    ------
    UnreadableFile
        The file is empty, not DICOM, truncated, or lacks a UID the
        migration needs.
    """
    return read_header_dataset(path)[1]


def read_header_dataset(path: str | os.PathLike[str]) -> tuple[FileDataset, Header]:
    """Parse the header of ``path`` up to Pixel Data; return the data set and its :class:`Header`.

    Raises
    ------
    UnreadableFile
        The file is empty, not DICOM, truncated, or lacks a UID the
        migration needs.
    """
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
    return ds, header_of(ds, has_pixel_data, truncated=at_end and not has_pixel_data)


@dataclass(frozen=True)
class SendHeader:
    """A file's data set up to Pixel Data, and where the rest of the file starts."""

    dataset: FileDataset
    #: Byte offset of the Pixel Data element's tag, or the file size when the
    #: file has no Pixel Data. Meaningless for a deflated transfer syntax,
    #: whose data set is one zlib stream.
    pixel_offset: int
    size: int


def read_send_header(path: str | os.PathLike[str]) -> SendHeader:
    """Parse the File Meta Information and the data set of ``path`` up to Pixel Data.

    Raises
    ------
    UnreadableFile
        The file vanished, cannot be read, or does not parse.
    """
    try:
        with open(path, "rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            # pydicom seeks back to the start of the Pixel Data tag when it stops there.
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            return SendHeader(ds, fp.tell(), size)
    except FileNotFoundError:
        raise UnreadableFile(
            "file not found; it was indexed but is gone: check that the storage root is mounted"
        ) from None
    except OSError as exc:
        raise UnreadableFile(f"cannot read the file: {exc.strerror or exc}") from None
    except Exception as exc:  # pydicom raises many kinds on malformed input
        raise UnreadableFile(f"cannot parse the file: {type(exc).__name__}: {exc}") from None


def header_of(ds: Dataset, has_pixel_data: bool, truncated: bool = False) -> Header:
    """Take the index fields from a parsed dataset.

    ``truncated`` means that the file ended inside the header, which
    explains a missing UID better than the UID itself.
    """
    missing = [label for keyword, label in REQUIRED.items() if not ds.get(keyword)]
    if missing and truncated:
        raise UnreadableFile(f"truncated file: it ends before {', '.join(missing)}; "
                             "look for a complete copy of it")
    if missing:
        raise UnreadableFile(f"missing {', '.join(missing)}, which the migration needs to "
                             "identify the instance; inspect the file with dcmdump")
    return Header(
        transfer_syntax=str(transfer_syntax_of(ds)),
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID) if ds.get("SeriesInstanceUID") else None,
        modality=str(ds.Modality) if ds.get("Modality") else None,
        has_pixel_data=has_pixel_data,
    )


def transfer_syntax_of(ds: Dataset) -> UID:
    """Return the stored transfer syntax, from File Meta or from how the body was read."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return UID(meta.TransferSyntaxUID)
    implicit, little = ds.original_encoding
    if implicit:
        return pydicom.uid.ImplicitVRLittleEndian
    return pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian


def read_instance(path: Path) -> FileDataset:
    """Read a whole file for sending; encapsulated Pixel Data stays encoded.

    Raises
    ------
    UnreadableFile
        The file vanished, cannot be read, or does not parse.
    """
    try:
        return pydicom.dcmread(path)
    except FileNotFoundError:
        raise UnreadableFile(
            "file not found; it was indexed but is gone: check that the storage root is mounted"
        ) from None
    except OSError as exc:
        raise UnreadableFile(f"cannot read the file: {exc.strerror or exc}") from None
    except Exception as exc:
        raise UnreadableFile(f"cannot parse the file: {type(exc).__name__}: {exc}") from None

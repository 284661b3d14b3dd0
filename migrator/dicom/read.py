"""Reading DICOM files: the header for the index and for sending, or the whole file.

Header parsing stops before Pixel Data, so indexing never reads pixels and
sending never decodes them. Reading a whole file keeps encapsulated Pixel
Data as the stored bytes: a JPEG 2000 file is sent as JPEG 2000.

Legacy archives contain files that pydicom reads without complaint but that
cannot be sent as they are, so the header read also checks the file's
structure:

- A file without the preamble and File Meta Information (a bare data set,
  as some older archives store them) is read when it starts with an element
  of group 0002 or 0008. It is sent with File Meta Information built from
  the data set and the transfer syntax it was read in. A C-STORE carries no
  File Meta, so nothing of the file is lost. The file written for sending
  needs File Meta, because the senders take the SOP Class and Instance
  UIDs and the transfer syntax from it.
- A file that ends inside its header, or inside Pixel Data, is unreadable:
  pydicom returns the elements it found, and a destination would store a
  truncated instance.
- A DICOMDIR is unreadable: it indexes the files of a DICOM medium and is
  no instance.
- A deflated data set is inflated whole to find its Pixel Data.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import pydicom
from pydicom.dataelem import DataElement, RawDataElement
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
#: (0002,0002) of a DICOMDIR: Media Storage Directory Storage.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
NOT_DICOM = ("not a DICOM Part 10 file: no 'DICM' prefix after the 128-byte preamble, and it does not "
             "start with a DICOM element either; check whether the file is DICOM at all")
DICOMDIR = ("DICOMDIR (media directory), not an image: it lists the files of a DICOM medium and "
            "contains no instance to migrate; nothing to do")
#: The reason of an indexed file that is no longer there when it is sent.
FILE_GONE = "file not found; it was indexed but is gone: check that the storage root is mounted"
_UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM, _SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
#: Groups that a data set without File Meta Information may start with:
#: (0002) File Meta without its preamble, (0008) a bare data set.
_FIRST_GROUPS = {0x0002, 0x0008}


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


def _starts_like_data_set(head: bytes) -> bool:
    """Tell whether the first bytes of a file without the DICM prefix are a DICOM element's tag."""
    if len(head) < 8:
        return False
    return (int.from_bytes(head[:2], "little") in _FIRST_GROUPS
            or int.from_bytes(head[:2], "big") in _FIRST_GROUPS)


def _dcmread(fp: BinaryIO, stop_before_pixels: bool) -> FileDataset:
    """Read ``fp`` with pydicom, also when it lacks the preamble and File Meta Information.

    The data set's original encoding is set to the one its elements were
    read in. pydicom 3.0 reads a body that disagrees with its (0002,0010)
    in the body's encoding, but records the encoding that (0002,0010) names.

    Raises
    ------
    UnreadableFile
        The file neither has the DICM prefix nor starts with an element.
    """
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        fp.seek(0)
        if not _starts_like_data_set(fp.read(8)):
            raise UnreadableFile(NOT_DICOM) from None
        fp.seek(0)
        ds = pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels, force=True)
    for tag in ds.keys():
        element = ds.get_item(tag)
        if isinstance(element, RawDataElement):
            if (element.is_implicit_VR, element.is_little_endian) != ds.original_encoding:
                ds.set_original_encoding(element.is_implicit_VR, element.is_little_endian,
                                         ds.original_character_set)
            break
    return ds


def _is_deflated(ds: FileDataset) -> bool:
    syntax = ds.file_meta.get("TransferSyntaxUID")
    return syntax is not None and UID(syntax).is_deflated


def _drop_pixel_data(ds: Dataset) -> bool:
    """Remove Pixel Data and what follows it, as a read that stopped before it; tell whether it was there."""
    first = min((tag for tag in ds.keys() if tag in PIXEL_TAGS), default=None)
    if first is None:
        return False
    for tag in [tag for tag in ds.keys() if tag >= first]:
        del ds[tag]
    return True


def read_header(path: str | os.PathLike[str]) -> Header:
    """Parse the header of ``path`` up to Pixel Data.

    Raises
    ------
    UnreadableFile
        The file is empty, not DICOM, a DICOMDIR, truncated, or lacks a UID
        the migration needs.
    """
    return read_header_dataset(path)[1]


def read_header_dataset(path: str | os.PathLike[str]) -> tuple[FileDataset, Header]:
    """Parse the header of ``path`` up to Pixel Data; return the data set and its :class:`Header`.

    Raises
    ------
    UnreadableFile
        The file is empty, not DICOM, a DICOMDIR, truncated, or lacks a UID
        the migration needs.
    """
    try:
        with open(path, "rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            if size == 0:
                raise UnreadableFile("empty file (0 bytes)")
            ds = _dcmread(fp, stop_before_pixels=True)
            if ds.file_meta.get("MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY:
                raise UnreadableFile(DICOMDIR)
            if _is_deflated(ds):
                # The data set is one zlib stream, so no file offset locates its Pixel Data.
                fp.seek(0)
                ds = _dcmread(fp, stop_before_pixels=False)
                has_pixel_data = _drop_pixel_data(ds)
                at_end = True
            else:
                at_end = fp.tell() >= size
                implicit, little_endian = ds.original_encoding
                little_endian = True if little_endian is None else little_endian
                pixel_start = fp.tell()
                has_pixel_data = _next_tag_is_pixel_data(fp, little_endian)
                problem = (pixel_data_problem(fp, pixel_start, bool(implicit), little_endian)
                           if has_pixel_data else _end_problem(fp, ds, size))
                if problem is not None:
                    raise UnreadableFile(f"truncated file: {problem}; look for a complete copy of it")
    except UnreadableFile:
        raise
    except EOFError as exc:
        raise UnreadableFile(f"truncated DICOM header: {exc}") from None
    except struct.error:
        raise UnreadableFile("truncated file: it ends inside the header of an element; "
                             "look for a complete copy of it") from None
    except zlib.error as exc:
        raise UnreadableFile(f"the deflated data set cannot be inflated ({exc}): the file is "
                             "truncated or damaged; look for a complete copy of it") from None
    except OSError as exc:
        # The plan parses an unreadable file again only when its size or modification time changes.
        hint = _access_hint(exc, ", then touch it so that 'migrator plan' reads it again")
        raise UnreadableFile(f"cannot read the file: {exc.strerror or exc}{hint}") from None
    except Exception as exc:  # pydicom raises many kinds on malformed input
        raise UnreadableFile(f"cannot parse the DICOM header: {type(exc).__name__}: {exc}") from None
    return ds, header_of(ds, has_pixel_data, truncated=at_end and not has_pixel_data)


def _access_hint(exc: OSError, then: str = "") -> str:
    if isinstance(exc, PermissionError):
        return f"; give the user that runs the migrator read access to it{then}"
    return ""


def pixel_data_problem(fp: BinaryIO, start: int, implicit: bool, little_endian: bool) -> str | None:
    """Return how the Pixel Data element at offset ``start`` is cut short, or None if it is complete.

    A value of defined length must fit in the file. Encapsulated Pixel Data
    must end with a Sequence Delimitation Item, found after its items
    (PS3.5 A.4). The file position is left anywhere.
    """
    size = os.fstat(fp.fileno()).st_size
    order: Literal["<", ">"] = "<" if little_endian else ">"
    fp.seek(start)
    head = fp.read(8 if implicit else 12)
    if len(head) < (8 if implicit else 12):
        return "it ends inside the header of the Pixel Data element"
    length = struct.unpack(f"{order}I", head[-4:])[0]
    value_start = start + len(head)
    if length != _UNDEFINED_LENGTH:
        if value_start + length > size:
            return (f"Pixel Data declares {length} bytes but the file ends after "
                    f"{size - value_start} of them")
        return None
    delimiter = struct.pack(f"{order}HHI", _SEQUENCE_DELIMITER >> 16, _SEQUENCE_DELIMITER & 0xFFFF, 0)
    fp.seek(max(value_start, size - 8))
    if fp.read(8) == delimiter:
        return None  # the usual layout: nothing follows the encapsulated Pixel Data
    position = value_start
    while True:
        fp.seek(position)
        item = fp.read(8)
        if len(item) < 8:
            return "the encapsulated Pixel Data ends before its Sequence Delimitation Item"
        group, element, item_length = struct.unpack(f"{order}HHI", item)
        tag = group << 16 | element
        if tag == _SEQUENCE_DELIMITER:
            return None
        if tag != _ITEM or item_length == _UNDEFINED_LENGTH:
            return f"the encapsulated Pixel Data has no item at byte {position}"
        position += 8 + item_length
        if position > size:
            return "the encapsulated Pixel Data ends inside a fragment"


def _end_problem(fp: BinaryIO, ds: Dataset, size: int) -> str | None:
    """Return how a header without Pixel Data is cut short, or None if its last element is complete.

    pydicom stops quietly at the end of the file, with a shorter last value
    or without the element whose header was cut, so the last element read
    must end where the file ends.
    """
    last: RawDataElement | DataElement | None = None
    last_start = -1
    for tag in ds.keys():
        element = ds.get_item(tag)
        start = element.value_tell if isinstance(element, RawDataElement) else element.file_tell
        if start is not None and start > last_start:
            last, last_start = element, start
    if last is None:
        return None
    if isinstance(last, RawDataElement):
        if last.length == _UNDEFINED_LENGTH:
            return None  # pydicom read the value up to its delimiter
        end = last.value_tell + last.length
        if end > size:
            return (f"its last element, {last.tag}, declares {last.length} bytes but the file "
                    f"ends after {size - last.value_tell} of them")
        fp.seek(end)
        if fp.read(12).strip(b"\x00"):
            return f"it ends inside the header of the element after {last.tag}"
        return None
    if last.VR == "SQ" and last.is_undefined_length:
        order: Literal["<", ">"] = "<" if ds.original_encoding[1] is not False else ">"
        delimiter = struct.pack(f"{order}HHI", _SEQUENCE_DELIMITER >> 16, _SEQUENCE_DELIMITER & 0xFFFF, 0)
        fp.seek(max(0, size - 8))
        if fp.read(8) != delimiter:
            return f"it ends inside its last element, the sequence {last.tag}"
    return None


@dataclass(frozen=True)
class SendHeader:
    """A file's data set up to Pixel Data, and where the rest of the file starts."""

    dataset: FileDataset
    #: Byte offset of the Pixel Data element's tag, or the file size when the
    #: file has no Pixel Data. Meaningless for a deflated transfer syntax,
    #: whose data set is one zlib stream.
    pixel_offset: int
    size: int
    #: The file has the preamble, the DICM prefix and File Meta Information
    #: in Explicit VR Little Endian, so a sender can read it as stored. A
    #: file without it must get new File Meta Information to be sent.
    standard_file_meta: bool = True
    #: Pixel Data has an odd length, or a fragment of odd length, which the
    #: copy for sending pads.
    odd_pixel_data: bool = False
    #: The top-level elements whose odd-length values ``dataset`` has padded.
    padded: tuple[str, ...] = ()

    @property
    def sendable_as_stored(self) -> bool:
        """Tell whether the stored file, unchanged, is a Part 10 file with even lengths throughout."""
        return self.standard_file_meta and not self.odd_pixel_data and not self.padded


def _standard_file_meta(head: bytes) -> bool:
    """Tell whether a file's first 138 bytes are the preamble, DICM and an Explicit VR element of group 0002."""
    return (head[128:132] == b"DICM" and head[132:134] == b"\x02\x00"
            and len(head) == 138 and 0x40 < head[136] < 0x5B and 0x40 < head[137] < 0x5B)


def read_send_header(path: str | os.PathLike[str]) -> SendHeader:
    """Parse the File Meta Information and the data set of ``path`` up to Pixel Data.

    Top-level values of odd length are padded to an even length in the
    returned data set (see :mod:`migrator.dicom.padding`).

    Raises
    ------
    UnreadableFile
        The file vanished, cannot be read, or does not parse.
    """
    # The padding module imports this one for SendHeader and UnreadableFile.
    from migrator.dicom.padding import odd_pixel_data, pad_odd_values

    try:
        with open(path, "rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            standard = _standard_file_meta(fp.read(138))
            fp.seek(0)
            # pydicom seeks back to the start of the Pixel Data tag when it stops there.
            ds = _dcmread(fp, stop_before_pixels=True)
            pixel_offset = fp.tell()
            if _is_deflated(ds):
                return SendHeader(ds, pixel_offset, size, standard)
            implicit, little_endian = ds.original_encoding
            little_endian = little_endian is not False
            has_pixel_data = _next_tag_is_pixel_data(fp, little_endian)
            # The file may have changed since it was indexed: check it again as for the index.
            problem = (pixel_data_problem(fp, pixel_offset, bool(implicit), little_endian)
                       if has_pixel_data else _end_problem(fp, ds, size))
            if problem is not None:
                raise UnreadableFile(f"truncated file: {problem}; look for a complete copy of it")
            # Padding works on the values as read, so it goes before any value is converted.
            padded = pad_odd_values(ds)
            missing = [label for keyword, label in REQUIRED.items() if not ds.get(keyword)]
            if missing:
                raise UnreadableFile(f"missing {', '.join(missing)}: the file was cut short or changed "
                                     "after it was indexed; inspect it with dcmdump")
            odd = has_pixel_data and odd_pixel_data(fp, pixel_offset, bool(implicit), little_endian)
            return SendHeader(ds, pixel_offset, size, standard, odd, tuple(padded))
    except UnreadableFile:
        raise
    except FileNotFoundError:
        raise UnreadableFile(FILE_GONE) from None
    except OSError as exc:
        raise UnreadableFile(f"cannot read the file: {exc.strerror or exc}{_access_hint(exc)}") from None
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
        with open(path, "rb") as fp:
            return _dcmread(fp, stop_before_pixels=False)
    except UnreadableFile:
        raise
    except FileNotFoundError:
        raise UnreadableFile(FILE_GONE) from None
    except OSError as exc:
        raise UnreadableFile(f"cannot read the file: {exc.strerror or exc}{_access_hint(exc)}") from None
    except Exception as exc:
        raise UnreadableFile(f"cannot parse the file: {type(exc).__name__}: {exc}") from None

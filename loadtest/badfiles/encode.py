"""Byte-level encoding of the bad files: File Meta, data sets and single elements.

pydicom writes only well-formed files, so the malformed parts are encoded
here, element by element (PS3.5 section 7.1 gives the element layout).
"""

from __future__ import annotations

import struct

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info

#: The 128-byte preamble and the "DICM" prefix of a Part 10 file.
PREAMBLE = b"\x00" * 128 + b"DICM"
#: (FFFE,E000) Item, (FFFE,E00D) Item Delimitation Item, (FFFE,E0DD) Sequence Delimitation Item.
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF
#: Explicit VRs whose length field has 4 bytes after 2 reserved bytes (PS3.5 table 7.1-1).
LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def tag_bytes(tag: int, little_endian: bool = True) -> bytes:
    order = "<" if little_endian else ">"
    return struct.pack(f"{order}HH", tag >> 16, tag & 0xFFFF)


def explicit_element(tag: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    """Encode one Explicit VR Little Endian element; ``length`` overrides the value's length."""
    size = len(value) if length is None else length
    if vr in LONG_VRS:
        return tag_bytes(tag) + vr.encode("ascii") + b"\x00\x00" + struct.pack("<I", size) + value
    return tag_bytes(tag) + vr.encode("ascii") + struct.pack("<H", size) + value


def implicit_element(tag: int, value: bytes, length: int | None = None) -> bytes:
    """Encode one Implicit VR Little Endian element; ``length`` overrides the value's length."""
    return tag_bytes(tag) + struct.pack("<I", len(value) if length is None else length) + value


def data_set(ds: Dataset, implicit: bool, little_endian: bool = True) -> bytes:
    """Encode a data set without File Meta Information."""
    body = DicomBytesIO()
    body.is_implicit_VR, body.is_little_endian = implicit, little_endian
    write_dataset(body, ds)
    return body.getvalue()


def file_meta(meta: FileMetaDataset) -> bytes:
    """Encode File Meta Information as the standard requires: Explicit VR Little Endian."""
    out = DicomBytesIO()
    out.is_implicit_VR, out.is_little_endian = False, True
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue()


def file_meta_implicit(meta: FileMetaDataset) -> bytes:
    """Encode File Meta Information in Implicit VR Little Endian, as some old writers did."""
    elements = Dataset()
    for element in meta:
        if element.tag.element != 0:
            elements.add(element)
    body = data_set(elements, implicit=True)
    return implicit_element(0x00020000, struct.pack("<I", len(body))) + body


def replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    """Replace the single occurrence of ``old``.

    Raises
    ------
    ValueError
        ``old`` occurs more or less than once, so the patch would be ambiguous.
    """
    count = data.count(old)
    if count != 1:
        raise ValueError(f"expected one occurrence of {old!r} to patch, found {count}")
    return data.replace(old, new)

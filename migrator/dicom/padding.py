"""Even value lengths for the file to send: padding odd-length values and Pixel Data fragments.

PS3.5 7.1.1 requires every value length to be even, and PS3.5 A.4 every
fragment of encapsulated Pixel Data. Legacy archives still contain odd
ones: UIDs without their trailing NULL, JPEG 2000 codestreams without the
padding byte. A data set of odd length cannot arrive at a DCMTK-based
destination: DCMTK 3.6.7 aborts the association on a P-DATA value of odd
length ("DIMSE: Odd Fragment Length"). So the file written for sending
pads each odd value with one byte, as the standard prescribes: a space
for text, a NULL for UIDs and binary values. A fragment keeps its bytes
and gets a trailing NULL, which a JPEG 2000 or JPEG decoder ignores after
the end-of-codestream marker.

NOTE: only elements of the top-level data set and Pixel Data are padded.
An odd value inside a sequence of defined length would change the
sequence's length too, and is sent as stored. So are the values of a
deflated file, which prepare_file rewrites whole with pydicom, and pydicom
writes values as read when the encoding stays the same.
"""

from __future__ import annotations

import shutil
import struct
from typing import BinaryIO, Literal

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from migrator.dicom.read import SendHeader, UnreadableFile

_UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM, _SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
#: VRs padded with a space; every other VR gets a NULL byte (PS3.5 6.2).
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"}
_CHUNK = 1 << 20


def _pad_byte(element: RawDataElement) -> bytes:
    vr = element.VR
    if vr is None:
        try:
            vr = dictionary_VR(element.tag)
        except KeyError:  # a private element read in Implicit VR
            vr = "UN"
    return b" " if vr in _TEXT_VRS else b"\x00"


def pad_odd_values(ds: Dataset) -> list[str]:
    """Pad each top-level value of odd length that is still as read; return the padded tags."""
    padded: list[str] = []
    for tag in ds.keys():
        element = ds.get_item(tag)
        if (isinstance(element, RawDataElement) and element.length != _UNDEFINED_LENGTH
                and element.length % 2 and isinstance(element.value, bytes)):
            ds[tag] = element._replace(value=element.value + _pad_byte(element), length=element.length + 1)
            padded.append(str(element.tag))
    return padded


def _order(little_endian: bool) -> Literal["<", ">"]:
    return "<" if little_endian else ">"


def odd_pixel_data(fp: BinaryIO, start: int, implicit: bool, little_endian: bool) -> bool:
    """Tell whether the Pixel Data element at ``start`` has an odd length, or an odd fragment.

    A file cut short counts as even, so that the copy is left to fail. The
    file position is left anywhere.
    """
    order = _order(little_endian)
    fp.seek(start)
    head = fp.read(8 if implicit else 12)
    length = struct.unpack(f"{order}I", head[-4:])[0]
    if length != _UNDEFINED_LENGTH:
        return bool(length % 2)
    position = start + len(head)
    while True:
        fp.seek(position)
        item = fp.read(8)
        if len(item) < 8:
            return False
        group, element, item_length = struct.unpack(f"{order}HHI", item)
        if (group << 16 | element) != _ITEM or item_length == _UNDEFINED_LENGTH:
            return False
        if item_length % 2:
            return True
        position += 8 + item_length


def _copy_bytes(source: BinaryIO, target: BinaryIO, count: int) -> None:
    while count > 0:
        chunk = source.read(min(count, _CHUNK))
        if not chunk:
            raise UnreadableFile(f"the file ended {count} bytes before the end of Pixel Data; it "
                                 "changed since it was indexed: run 'migrator plan' again")
        target.write(chunk)
        count -= len(chunk)


def copy_pixel_data(source: BinaryIO, target: BinaryIO, header: SendHeader) -> None:
    """Copy the bytes of ``source`` from Pixel Data to the end, padding odd lengths.

    Everything is copied unchanged unless ``header.odd_pixel_data``. Then an
    odd value of defined length, or each odd fragment, gets one NULL byte
    and its length is written one larger.
    """
    source.seek(header.pixel_offset)
    if not header.odd_pixel_data:
        shutil.copyfileobj(source, target, _CHUNK)
        return
    implicit, little_endian = header.dataset.original_encoding
    order = _order(little_endian is not False)
    head = source.read(8 if implicit else 12)
    length = struct.unpack(f"{order}I", head[-4:])[0]
    if length != _UNDEFINED_LENGTH:
        target.write(head[:-4] + struct.pack(f"{order}I", length + length % 2))
        _copy_bytes(source, target, length)
        target.write(b"\x00" * (length % 2))
    else:
        target.write(head)
        while True:
            item = source.read(8)
            if len(item) < 8:
                raise UnreadableFile("the file ended inside the encapsulated Pixel Data; it changed "
                                     "since it was indexed: run 'migrator plan' again")
            group, element, item_length = struct.unpack(f"{order}HHI", item)
            if (group << 16 | element) != _ITEM:
                target.write(item)  # the Sequence Delimitation Item
                break
            target.write(item[:4] + struct.pack(f"{order}I", item_length + item_length % 2))
            _copy_bytes(source, target, item_length)
            target.write(b"\x00" * (item_length % 2))
    shutil.copyfileobj(source, target, _CHUNK)  # elements after Pixel Data

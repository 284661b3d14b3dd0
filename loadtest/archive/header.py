"""Fast DICOM Part 10 encoding from templates with slots for the values that change.

pydicom takes about a millisecond to build and write one CT header, which would
cap generation near 700 files per second. Here pydicom encodes the elements that
a whole series shares once, and each file only encodes its few changing values
(SOP Instance UID, Instance Number, position, ...) into the gaps between them.
Everything is Explicit VR Little Endian, the encoding that PS3.5 section A.4
prescribes for the data set of an encapsulated (JPEG 2000) transfer syntax and
that PS3.10 section 7.1 prescribes for the File Meta Information.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.uid import UID, generate_uid

#: The 128-byte preamble and the "DICM" prefix that start every Part 10 file.
PREAMBLE = b"\x00" * 128 + b"DICM"

#: Identifies files written by this generator, in (0002,0012) and (0002,0013).
IMPLEMENTATION_CLASS_UID = generate_uid(entropy_srcs=["pacs-migrator loadtest implementation"])
IMPLEMENTATION_VERSION_NAME = "PACSMIG_LOADTEST"

# Value representations whose explicit VR element has a 2-byte length field
# (PS3.5 section 7.1.2) and whose value is text. Slots accept only these.
_SHORT_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UI"}
)


def encode_elements(dataset: Dataset, encoding: str = "iso8859") -> list[tuple[int, bytes]]:
    """Encode each top-level element of ``dataset`` as Explicit VR Little Endian.

    Returns (tag, encoded element) pairs in ascending tag order. Sequences are
    encoded whole, items included.
    """
    encoded = []
    for element in dataset:
        buffer = DicomBytesIO()
        buffer.is_little_endian = True
        buffer.is_implicit_VR = False
        write_data_element(buffer, element, encoding)
        encoded.append((int(element.tag), buffer.getvalue()))
    return encoded


def encode_text_element(tag: int, vr: str, value: str, encoding: str) -> bytes:
    """Encode a text element with a 2-byte length field, padded to an even length.

    UIDs are padded with a NUL byte and every other VR with a space (PS3.5 section 6.2).
    """
    raw = value.encode(encoding)
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    if len(raw) > 0xFFFF:
        raise ValueError(f"value of ({tag >> 16:04X},{tag & 0xFFFF:04X}) is too long: {len(raw)} bytes")
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode("ascii"), len(raw)) + raw


class HeaderTemplate:
    """Encoded elements with slots for text values that differ from file to file.

    Parameters
    ----------
    fixed
        The elements every rendering shares. It must not contain a slot's keyword.
    slots
        Keywords of the elements each rendering fills, in the order that
        :meth:`render` takes their values. Only text VRs with a 2-byte length
        field are allowed.
    encoding
        Python codec of the dataset's Specific Character Set, for slot values.
    encoded
        More fixed elements, already encoded by :func:`encode_elements`, so
        that elements shared by many templates are encoded only once.

    Raises
    ------
    ValueError
        If a slot keyword is unknown or not a short text VR, or if a tag
        occurs twice among the slots, ``fixed`` and ``encoded``.
    """

    def __init__(self, fixed: Dataset, slots: Sequence[str], encoding: str = "iso8859",
                 encoded: Sequence[tuple[int, bytes]] = ()) -> None:
        self.encoding = encoding
        slot_specs: list[tuple[int, str, int]] = []
        for position, keyword in enumerate(slots):
            tag = tag_for_keyword(keyword)
            if tag is None:
                raise ValueError(f"unknown DICOM keyword for a slot: {keyword!r}")
            vr = dictionary_VR(tag)
            if vr not in _SHORT_TEXT_VRS:
                raise ValueError(f"slot {keyword} has VR {vr}; only short text VRs can be slots")
            slot_specs.append((tag, vr, position))
        slot_specs.sort()
        fixed_elements = sorted([*encode_elements(fixed, encoding), *encoded], key=lambda pair: pair[0])
        tags = [tag for tag, _ in fixed_elements] + [tag for tag, _, _ in slot_specs]
        if len(set(tags)) != len(tags):
            repeated = sorted({f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
                               for tag in tags if tags.count(tag) > 1})
            raise ValueError(f"the template has element(s) {', '.join(repeated)} more than once")

        # The template alternates fixed bytes and slots. Segment k contains the
        # fixed elements between slot k - 1 and slot k.
        segments: list[bytes] = []
        pending: list[bytes] = []
        remaining = iter(fixed_elements)
        next_fixed = next(remaining, None)
        for slot_tag, _, _ in slot_specs:
            while next_fixed is not None and next_fixed[0] < slot_tag:
                pending.append(next_fixed[1])
                next_fixed = next(remaining, None)
            segments.append(b"".join(pending))
            pending = []
        while next_fixed is not None:
            pending.append(next_fixed[1])
            next_fixed = next(remaining, None)
        segments.append(b"".join(pending))

        self._segments = segments
        self._slots = slot_specs

    def render(self, values: Sequence[str]) -> bytes:
        """Return the encoded elements, with ``values`` given in the order of the ``slots`` argument."""
        parts = [self._segments[0]]
        for (tag, vr, position), segment in zip(self._slots, self._segments[1:]):
            parts.append(encode_text_element(tag, vr, values[position], self.encoding))
            parts.append(segment)
        return b"".join(parts)


class FileMetaTemplate:
    """The File Meta Information (group 0002) of one SOP class and transfer syntax."""

    def __init__(self, sop_class_uid: str, transfer_syntax: str) -> None:
        meta = Dataset()
        meta.add(DataElement(0x00020001, "OB", b"\x00\x01"))  # File Meta Information Version
        meta.MediaStorageSOPClassUID = UID(sop_class_uid)
        meta.TransferSyntaxUID = UID(transfer_syntax)
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        self._template = HeaderTemplate(meta, ["MediaStorageSOPInstanceUID"])

    def render(self, sop_instance_uid: str) -> bytes:
        """Return the preamble, "DICM" and the group with its (0002,0000) group length."""
        group = self._template.render([sop_instance_uid])
        group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(group))
        return PREAMBLE + group_length + group


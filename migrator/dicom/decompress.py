"""Decoded copies for a destination that does not accept an instance's stored transfer syntax.

With ``on_transfer_syntax_rejected = "decompress"``, an instance stored in a
compressed transfer syntax (JPEG 2000, JPEG, RLE) whose presentation context
the destination did not accept is sent as a copy in Explicit VR Little
Endian. The copy contains the prepared file's header, corrections included,
then every frame decoded by pydicom's decoders (pylibjpeg-openjpeg for JPEG
2000), then the elements that follow Pixel Data, except Data Set Trailing
Padding.

The copy is written one frame at a time. The decoder reads one frame's
fragments from the file, and the decoded frame is written before the next
one is read, so a multi-frame instance never has more than one decoded frame
in memory.

Decoding returns the stored pixel values exactly, also from a transfer
syntax that allows lossy compression: whatever was lost, was lost when the
file was compressed. Such a source is marked ``lossy_source`` in the audit.
The new transfer syntax no longer shows that the pixels went through lossy
compression. So a header without (0028,2110) Lossy Image Compression gets
"01" and the (0028,2114) Lossy Image Compression Method of the source syntax
(PS3.3 C.7.6.1.1.5), and both are recorded as header changes.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from pydicom.dataset import Dataset, FileDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.pixels.decoders.base import Decoder, get_decoder
from pydicom.pixels.utils import as_pixel_options, get_nr_frames
from pydicom.uid import UID

from migrator.dicom.prepare import (
    PREAMBLE,
    Method,
    PreparedFile,
    ScratchFolder,
    build_file_meta,
    drop_group_lengths,
)
from migrator.dicom.read import SendHeader, UnreadableFile, read_send_header
from migrator.dicom.send import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    Conversion,
    StoreResult,
    StoreSession,
    is_compressed,
)
from migrator.steps import Change

LOGGER = logging.getLogger(__name__)

#: Compressed transfer syntaxes whose decoding returns the pixels as first acquired.
LOSSLESS_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.5",      # RLE Lossless
    "1.2.840.10008.1.2.4.57",   # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",   # JPEG Lossless, Process 14, Selection Value 1
    "1.2.840.10008.1.2.4.80",   # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",   # JPEG 2000 Image Compression (Lossless Only)
    "1.2.840.10008.1.2.4.92",   # JPEG 2000 Part 2 Multi-component (Lossless Only)
    "1.2.840.10008.1.2.4.201",  # High-Throughput JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.202",  # High-Throughput JPEG 2000 with RPCL Options (Lossless Only)
})

#: (0028,2114) Lossy Image Compression Method of the lossy syntaxes, as PS3.3 C.7.6.1.1.5.1 defines them.
LOSSY_METHODS = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",   # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",   # JPEG Extended
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",   # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",   # JPEG 2000
    "1.2.840.10008.1.2.4.93": "ISO_15444_2",   # JPEG 2000 Part 2 Multi-component
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",  # High-Throughput JPEG 2000
}

_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_TRAILING_PADDING = 0xFFFCFFFC
#: (7FE0,0001) Extended Offset Table and (7FE0,0002) its lengths describe encapsulated frames only.
_EXTENDED_OFFSETS = (0x7FE00001, 0x7FE00002)
#: A defined-length value has a 32-bit length, and 0xFFFFFFFF means undefined length (PS3.5 7.1.1).
_MAX_LENGTH = 0xFFFFFFFE


class DecompressError(Exception):
    """The Pixel Data cannot be decoded into a copy. The message gives the reason."""


class Decompressor:
    """Sends a decoded copy of each compressed file whose presentation context a destination rejected.

    The association must have proposed Explicit VR Little Endian for the
    file's SOP class (:func:`~migrator.dicom.send.with_decompressed_contexts`).
    Copies are written to ``scratch`` and deleted once their response arrives.
    """

    def __init__(self, name: str, scratch: ScratchFolder) -> None:
        self.name = name
        self._scratch = scratch

    def store(self, prepared: PreparedFile, session: StoreSession) -> StoreResult:
        """Send ``prepared`` as stored if the association accepted its context, or else a decoded copy.

        Raises
        ------
        DestinationError
            The association dropped and a new one could not be opened.
        """
        session.ensure_association()
        sop_class, syntax = prepared.sop_class_uid, prepared.transfer_syntax
        if session.accepts(sop_class, syntax) or not is_compressed(syntax):
            return session.store(prepared.path, sop_class, syntax)
        rejected = (f"destination {self.name} did not accept the presentation context {sop_class} "
                    f"with transfer syntax {syntax} ({UID(syntax).name})")
        if not session.accepts(sop_class, EXPLICIT_VR_LITTLE_ENDIAN):
            return StoreResult("failure", None, f"{rejected}, nor with {EXPLICIT_VR_LITTLE_ENDIAN} "
                               "(Explicit VR Little Endian) for a decompressed copy",
                               context_rejected=True)
        try:
            copy, conversion = decompress_file(prepared, self._scratch, rejected)
        except (DecompressError, UnreadableFile) as exc:
            return StoreResult("failure", None, f"{rejected}, and it could not be decompressed: {exc}")
        LOGGER.debug("%s: sending a copy decoded from %s", prepared.path, syntax)
        try:
            result = session.store(copy.path, copy.sop_class_uid, copy.transfer_syntax)
        finally:
            copy.discard()
        return replace(result, conversion=conversion)


def decompress_file(prepared: PreparedFile, scratch: ScratchFolder,
                    reason: str) -> tuple[PreparedFile, Conversion]:
    """Write a copy of ``prepared`` with decoded Pixel Data in Explicit VR Little Endian.

    ``reason`` explains why, for the audit. The copy keeps the SOP Instance UID
    and the header corrections of ``prepared``.

    Raises
    ------
    DecompressError
        No decoder is installed for the transfer syntax, or the Pixel Data
        cannot be decoded or does not match the image's attributes.
    UnreadableFile
        The prepared file vanished or does not parse.
    """
    header = read_send_header(prepared.path)
    syntax = UID(prepared.transfer_syntax)
    decoder = _decoder(syntax)
    lossy = syntax not in LOSSLESS_SYNTAXES
    if lossy:
        reason += ("; its transfer syntax allows lossy compression, and the copy contains the "
                   "stored pixel values, decoded without further loss")
    changes: list[Change] = []
    path = scratch.write(lambda target: _write_copy(target, prepared.path, header, syntax, decoder,
                                                    changes))
    copy = PreparedFile(path, prepared.sop_class_uid, prepared.sop_instance_uid,
                        EXPLICIT_VR_LITTLE_ENDIAN, prepared.changes, Method.DECOMPRESSED)
    return copy, Conversion(str(syntax), EXPLICIT_VR_LITTLE_ENDIAN, reason, lossy, tuple(changes))


def _decoder(syntax: UID) -> Decoder:
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DecompressError(f"pydicom has no decoder for {syntax.name} ({syntax})") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise DecompressError(f"no decoder for {syntax.name} is installed ({missing}); install one "
                              "on every worker machine")
    return decoder


def _write_copy(target: Path, source: Path, header: SendHeader, syntax: UID, decoder: Decoder,
                changes: list[Change]) -> None:
    """Write the header, each decoded frame and the trailing elements of ``source`` to ``target``."""
    changes.clear()  # a second call writes to disk after /dev/shm ran full
    ds = header.dataset
    try:
        options = as_pixel_options(ds)
        frames = get_nr_frames(ds)
    except (AttributeError, KeyError, ValueError, TypeError) as exc:
        raise DecompressError(f"the Image Pixel attributes are incomplete: {exc}") from None
    bits_allocated = int(options["bits_allocated"])
    if bits_allocated % 8:
        raise DecompressError(f"Bits Allocated {bits_allocated} is not a whole number of bytes")
    frame_length = (int(options["rows"]) * int(options["columns"]) * int(options["samples_per_pixel"])
                    * bits_allocated // 8)
    length = frame_length * frames
    if length + length % 2 > _MAX_LENGTH:
        raise DecompressError(f"the decoded Pixel Data would have {length} bytes, more than a "
                              "DICOM value can hold")
    with open(source, "rb") as stored, open(target, "wb") as out:
        stored.seek(header.pixel_offset)
        start = _enter_encapsulated(stored)
        frames_written = 0
        for array, properties in _decoded_frames(decoder, stored, syntax, options, frames):
            if frames_written == 0:
                changes.extend(_update_header(ds, properties, syntax))
                out.write(_encoded_header(ds))
                out.write(_pixel_data_header(bits_allocated, length + length % 2))
            data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            if len(data) != frame_length:
                raise DecompressError(f"frame {frames_written + 1} decoded to {len(data)} bytes, "
                                      f"but its Rows, Columns, Samples per Pixel and Bits Allocated "
                                      f"give {frame_length}")
            out.write(data)
            frames_written += 1
        if frames_written != frames:
            raise DecompressError(f"{frames_written} frame(s) decoded, but Number of Frames is {frames}")
        if length % 2:
            out.write(b"\x00")
        stored.seek(start)
        out.write(_trailing_elements(stored))


def _decoded_frames(decoder: Decoder, stored: BinaryIO, syntax: UID, options: dict[str, Any],
                    frames: int) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """Yield (array, Image Pixel properties) per frame, turning decoder errors into DecompressError."""
    iterator = decoder.iter_array(stored, as_rgb=True, transfer_syntax_uid=syntax,
                                  pixel_keyword="PixelData", **options)
    for index in range(frames + 1):
        try:
            item = next(iterator, None)
        except Exception as exc:  # each decoder plugin raises its own kinds
            raise DecompressError(f"cannot decode frame {index + 1} of {frames}: "
                                  f"{type(exc).__name__}: {exc}") from None
        if item is None:
            return
        yield item


def _update_header(ds: Dataset, properties: dict[str, Any], syntax: UID) -> list[Change]:
    """Make the Image Pixel attributes describe the decoded frames; return what changed."""
    changes: list[Change] = []

    def set_value(keyword: str, value: object) -> None:
        old = ds.get(keyword)
        old_text = None if old is None or old == "" else str(old)
        if old_text == str(value):
            return
        setattr(ds, keyword, value)
        changes.append(Change(keyword, old_text, str(value)))

    # The decoder converts YBR_RCT, YBR_ICT and YBR_FULL(_422) to RGB.
    set_value("PhotometricInterpretation", properties["photometric_interpretation"])
    if int(properties["samples_per_pixel"]) > 1:
        set_value("PlanarConfiguration", int(properties["planar_configuration"]))
    if syntax not in LOSSLESS_SYNTAXES and not ds.get("LossyImageCompression"):
        set_value("LossyImageCompression", "01")
        if syntax in LOSSY_METHODS and not ds.get("LossyImageCompressionMethod"):
            set_value("LossyImageCompressionMethod", LOSSY_METHODS[syntax])
    for tag in _EXTENDED_OFFSETS:
        if tag in ds:
            del ds[tag]
    drop_group_lengths(ds)
    return changes


def _encoded_header(ds: FileDataset) -> bytes:
    """Return the preamble, the File Meta Information and the data set up to Pixel Data, in Explicit VR LE."""
    meta = DicomBytesIO()
    meta.is_implicit_VR, meta.is_little_endian = False, True
    body = DicomBytesIO()
    body.is_implicit_VR, body.is_little_endian = False, True
    try:
        write_file_meta_info(meta, build_file_meta(ds, UID(EXPLICIT_VR_LITTLE_ENDIAN)),
                             enforce_standard=True)
        write_dataset(body, ds)
    except Exception as exc:  # pydicom raises many kinds for values it cannot encode
        raise DecompressError(f"cannot encode the header: {type(exc).__name__}: {exc}") from None
    return PREAMBLE + meta.getvalue() + body.getvalue()


def _pixel_data_header(bits_allocated: int, length: int) -> bytes:
    """Return the (7FE0,0010) tag, VR and 32-bit length of native Pixel Data (PS3.5 8.1.1)."""
    vr = b"OB" if bits_allocated <= 8 else b"OW"
    return struct.pack("<HH2s2xL", 0x7FE0, 0x0010, vr, length)


def _enter_encapsulated(stored: BinaryIO) -> int:
    """Read the Pixel Data element's tag, VR and length; return the offset of its first item."""
    raw = stored.read(12)
    if len(raw) < 12:
        raise DecompressError("the file ends before its Pixel Data")
    group, element, _, length = struct.unpack("<HH2s2xL", raw)
    if (group, element) != (0x7FE0, 0x0010):
        raise DecompressError(f"expected (7FE0,0010) Pixel Data, found ({group:04X},{element:04X})")
    if length != 0xFFFFFFFF:
        raise DecompressError("the Pixel Data has a defined length, so it is not encapsulated as "
                              "a compressed transfer syntax requires (PS3.5 A.4)")
    return stored.tell()


def _trailing_elements(stored: BinaryIO) -> bytes:
    """Skip the encapsulated items from the current offset; return the elements after them, encoded."""
    while True:
        raw = stored.read(8)
        if len(raw) < 8:
            raise DecompressError("the encapsulated Pixel Data ends without a Sequence Delimitation Item")
        group, element, length = struct.unpack("<HHL", raw)
        tag = group << 16 | element
        if tag == _SEQUENCE_DELIMITER:
            break
        if tag != _ITEM:
            raise DecompressError(f"unexpected tag ({group:04X},{element:04X}) in the encapsulated "
                                  "Pixel Data")
        stored.seek(length, os.SEEK_CUR)
    try:
        trailing = read_dataset(stored, is_implicit_VR=False, is_little_endian=True)
    except Exception as exc:  # pydicom raises many kinds on malformed input
        raise DecompressError(f"cannot parse the elements after Pixel Data: {type(exc).__name__}: "
                              f"{exc}") from None
    if _TRAILING_PADDING in trailing:
        del trailing[_TRAILING_PADDING]
    if not trailing:
        return b""
    body = DicomBytesIO()
    body.is_implicit_VR, body.is_little_endian = False, True
    try:
        write_dataset(body, trailing)
    except Exception as exc:  # pydicom raises many kinds for values it cannot encode
        raise DecompressError(f"cannot encode the elements after Pixel Data: {type(exc).__name__}: "
                              f"{exc}") from None
    return body.getvalue()

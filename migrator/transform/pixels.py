"""Transforming Pixel Data: decode every frame, rotate or flip it with numpy, encode it again.

Natively encoded pixel data (Implicit, Explicit or Deflated VR Little
Endian, Explicit VR Big Endian) stays in its transfer syntax. Whole pixel
words are moved, so bits outside Bits Stored keep their values. Bit-packed
data (Bits Allocated 1) and YBR_FULL_422 are decoded and written again,
YBR_FULL_422 as YBR_FULL, because a quarter turn cannot keep horizontal
chroma subsampling.

Encapsulated pixel data is decoded by pydicom's decoders (JPEG 2000 through
pylibjpeg-openjpeg, RLE Lossless, JPEG through Pillow) and encoded with
pydicom's encoders. RLE Lossless and JPEG 2000 Lossless stay in their
transfer syntax. Every other source is written as JPEG 2000 Lossless: a
lossy source (JPEG Baseline, lossy JPEG 2000) is not compressed with loss a
second time, and a lossless one without an installed encoder (JPEG
Lossless, JPEG-LS) stays lossless. The reason is returned as a note for the
audit. Every result is decoded again and compared with the transformed
array before it is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.utils import as_pixel_options, pack_bits
from pydicom.uid import (
    JPEG2000,
    JPEG2000MC,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    RLELossless,
)

from migrator.steps import Change
from migrator.transform.transformation import Transformation, apply

NATIVE = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian}
#: Encapsulated transfer syntaxes that are encoded again in themselves.
KEPT = {RLELossless, JPEG2000Lossless}
#: Transfer syntaxes whose encoding always loses information.
LOSSY = {JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless}
#: Transfer syntaxes whose codestream may be lossy or reversible. The value
#: "01" of (0028,2110) Lossy Image Compression marks a lossy one.
MAYBE_LOSSY = {JPEG2000, JPEG2000MC, UID("1.2.840.10008.1.2.4.203")}
#: The lossless transfer syntax for every other encapsulated source.
FALLBACK = JPEG2000Lossless
#: Native pixel words that move as whole numbers.
_WORD_TYPES = {8: "u1", 16: "u2", 32: "u4", 64: "u8"}
#: Above this many bytes of encoded frames the Basic Offset Table cannot
#: address them, so an Extended Offset Table is written, as pydicom's own compress() does.
_BASIC_OFFSET_LIMIT = 2**32 - 1


class PixelError(Exception):
    """The pixel data cannot be decoded, transformed or encoded. The message gives the reason and what to do."""


@dataclass
class PixelResult:
    """The changes and notes of transforming one data set's Pixel Data."""

    source_syntax: UID
    transfer_syntax: UID
    changes: list[Change] = field(default_factory=list)
    #: Why the transfer syntax changed, for the audit; empty when it did not.
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Layout:
    """The Image Pixel attributes that shape one Pixel Data value."""

    frames: int
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    planar: int
    photometric: str

    @classmethod
    def of(cls, ds: Dataset) -> _Layout:
        try:
            frames = int(ds.get("NumberOfFrames") or 1)
            return cls(frames=max(frames, 1), rows=int(ds.Rows), columns=int(ds.Columns),
                       samples=int(ds.get("SamplesPerPixel") or 1), bits_allocated=int(ds.BitsAllocated),
                       planar=int(ds.get("PlanarConfiguration") or 0),
                       photometric=str(ds.get("PhotometricInterpretation") or ""))
        except (AttributeError, TypeError, ValueError) as exc:
            raise PixelError(f"the Image Pixel attributes are missing or invalid ({exc}); inspect the "
                             "file with dcmdump") from None


def transfer_syntax_of(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not syntax:
        raise PixelError("the data set has no (0002,0010) Transfer Syntax UID, so its Pixel Data "
                         "cannot be decoded")
    return UID(str(syntax))


def target_syntax(source: UID, ds: Dataset) -> tuple[UID, str | None]:
    """Return the transfer syntax to encode the transformed pixels in, and the reason if it differs."""
    if source in NATIVE or source in KEPT:
        return source, None
    if source in LOSSY or (source in MAYBE_LOSSY and ds.get("LossyImageCompression") == "01"):
        return FALLBACK, (f"the source is lossy ({source.name}); the transformed pixels were encoded "
                          f"as {FALLBACK.name} instead of being compressed with loss a second time")
    if source in MAYBE_LOSSY:
        return FALLBACK, (f"the source is {source.name}, which pydicom encodes only with loss; the "
                          f"transformed pixels were encoded as {FALLBACK.name}")
    return FALLBACK, (f"no encoder for {source.name} is installed; the transformed pixels were "
                      f"encoded as {FALLBACK.name}, which is lossless too")


def transform_pixel_data(ds: Dataset, transformation: Transformation) -> PixelResult:
    """Transform every frame of ``ds`` and the Icon Image Sequence in place.

    Rows and Columns, the transfer syntax and, where encoding needs it,
    Photometric Interpretation, Planar Configuration, Bits Stored and Pixel
    Representation are updated to describe the new Pixel Data.

    Raises
    ------
    PixelError
        No decoder or encoder is available, a frame cannot be decoded or
        encoded, or the decoded result differs from the transformed array.
    """
    if "PixelData" not in ds:
        raise PixelError("the data set has no (7FE0,0010) Pixel Data")
    source = transfer_syntax_of(ds)
    target, note = target_syntax(source, ds)
    before = _Layout.of(ds)
    result = PixelResult(source, target, notes=[note] if note else [])
    result.changes += _transform_one(ds, transformation, source, target)
    result.changes.append(Change("PixelData", None, f"{transformation.description}, "
                                 f"{before.frames} frame(s)"))
    if target != source:
        result.changes.append(Change("TransferSyntaxUID", str(source), str(target)))
    for number, icon in enumerate(ds.get("IconImageSequence") or [], start=1):
        if "PixelData" in icon:
            result.changes += [_prefixed(f"IconImageSequence[{number}].", change)
                               for change in _transform_icon(icon, transformation, source, target)]
    return result


def _prefixed(prefix: str, change: Change) -> Change:
    return Change(prefix + change.keyword, change.old, change.new)


def _transform_icon(icon: Dataset, transformation: Transformation, source: UID, target: UID) -> list[Change]:
    # An icon may be encapsulated in the data set's transfer syntax or native
    # data. Only an encapsulated one has an undefined length, and it keeps its form.
    if icon["PixelData"].is_undefined_length:
        return _transform_one(icon, transformation, source, target)
    native = ExplicitVRBigEndian if source == ExplicitVRBigEndian else ExplicitVRLittleEndian
    return _transform_one(icon, transformation, native, native)


def _transform_one(ds: Dataset, transformation: Transformation, source: UID, target: UID) -> list[Change]:
    """Transform one Pixel Data value (the data set's or an icon's); return the attribute changes."""
    layout = _Layout.of(ds)
    changes = []
    if transformation.quarter_turn:
        changes = [Change("Rows", str(layout.rows), str(layout.columns)),
                   Change("Columns", str(layout.columns), str(layout.rows))]
    expected_layout = (layout.columns, layout.rows) if transformation.quarter_turn else (layout.rows, layout.columns)

    if source in NATIVE and _moves_words(layout):
        words = apply(_native_words(ds, source, layout), transformation)
        expected = apply(_decode(ds, source, layout), transformation)
        ds.Rows, ds.Columns = expected_layout
        _set_native(ds, source, _to_storage_order(words, layout))
    else:
        decoded, properties = _decode_with_properties(ds, source, layout)
        expected = apply(decoded, transformation)
        ds.Rows, ds.Columns = expected_layout
        changes += _describe_decoded(ds, properties, layout.photometric, target)
        if target in NATIVE:
            _write_native_array(ds, target, expected)
        else:
            _encode(ds, target, expected)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        # The decoders check the data set's own transfer syntax against theirs.
        meta.TransferSyntaxUID = target
    _check(ds, target, expected)
    return changes


def _moves_words(layout: _Layout) -> bool:
    return layout.bits_allocated in _WORD_TYPES and not layout.photometric.startswith("YBR_FULL_422") \
        and not layout.photometric.startswith("YBR_PARTIAL")


def _native_words(ds: Dataset, syntax: UID, layout: _Layout) -> NDArray[Any]:
    """Return the stored pixel words shaped (frames, rows, columns, samples)."""
    order = ">" if syntax == ExplicitVRBigEndian else "<"
    dtype = np.dtype(order + _WORD_TYPES[layout.bits_allocated])
    count = layout.frames * layout.rows * layout.columns * layout.samples
    data = ds.PixelData
    if len(data) < count * dtype.itemsize:
        raise PixelError(f"Pixel Data has {len(data)} bytes, fewer than the {count * dtype.itemsize} that "
                         f"{layout.frames} frame(s) of {layout.rows} x {layout.columns} pixels need; the "
                         "file is truncated or its Image Pixel attributes are wrong")
    words = np.frombuffer(data, dtype=dtype, count=count)
    if layout.planar == 1 and layout.samples > 1:
        planes = words.reshape(layout.frames, layout.samples, layout.rows, layout.columns)
        return planes.transpose(0, 2, 3, 1)
    return words.reshape(layout.frames, layout.rows, layout.columns, layout.samples)


def _to_storage_order(words: NDArray[Any], layout: _Layout) -> bytes:
    if layout.planar == 1 and layout.samples > 1:
        return np.ascontiguousarray(words.transpose(0, 3, 1, 2)).tobytes()
    return words.tobytes()


def _set_native(ds: Dataset, syntax: UID, data: bytes) -> None:
    if len(data) % 2:
        data += b"\x00"  # DICOM values have an even length
    vr = ds["PixelData"].VR
    ds.PixelData = data
    element = ds["PixelData"]
    element.is_undefined_length = False
    if vr not in ("OB", "OW"):
        vr = "OB" if int(ds.BitsAllocated) <= 8 else "OW"
    element.VR = vr
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]


def _decode(ds: Dataset, syntax: UID, layout: _Layout) -> NDArray[Any]:
    return _decode_with_properties(ds, syntax, layout)[0]


def _decode_with_properties(ds: Dataset, syntax: UID, layout: _Layout) -> tuple[NDArray[Any], dict[str, Any]]:
    """Decode every frame without color conversion; return (frames, rows, columns, samples) and its properties."""
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise PixelError(f"pydicom has no decoder for {syntax.name} ({syntax}), so the pixels cannot be "
                         "transformed") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise PixelError(f"no decoder for {syntax.name} is installed ({missing}); install one of "
                         "these packages and run the transformation again")
    try:
        array, properties = decoder.as_array(ds, raw=True)
    except Exception as exc:  # the decoding plugins raise many kinds on damaged codestreams
        raise PixelError(f"decoding the {syntax.name} pixel data failed: {type(exc).__name__}: {exc}") from None
    frames = int(properties.get("number_of_frames") or layout.frames)
    samples = int(properties.get("samples_per_pixel") or layout.samples)
    return array.reshape(frames, layout.rows, layout.columns, samples), dict(properties)


def _describe_decoded(ds: Dataset, properties: dict[str, Any], stored_photometric: str,
                      target: UID) -> list[Change]:
    """Set the Image Pixel attributes that the decoded array has; return those that changed."""
    changes = []
    photometric = str(properties.get("photometric_interpretation") or stored_photometric)
    if photometric == "YBR_FULL_422":
        # The decoders remove the subsampling, so the array contains full chroma.
        photometric = "YBR_FULL"
    if photometric == "RGB" and stored_photometric in ("YBR_RCT", "YBR_ICT") \
            and target in (JPEG2000Lossless, JPEG2000):
        # The JPEG 2000 decoder reverses the source's color transform and
        # returns RGB; YBR_RCT has the encoder apply the reversible one again.
        photometric = "YBR_RCT"
    wanted: dict[str, Any] = {"PhotometricInterpretation": photometric,
                              "BitsStored": properties.get("bits_stored"),
                              "PixelRepresentation": properties.get("pixel_representation")}
    if int(ds.get("SamplesPerPixel") or 1) > 1:
        wanted["PlanarConfiguration"] = 0
    for keyword, value in wanted.items():
        if value is None:
            continue
        old = ds.get(keyword)
        if old is None or str(old) != str(value):
            setattr(ds, keyword, value)
            changes.append(Change(keyword, None if old is None else str(old), str(value)))
    return changes


def _write_native_array(ds: Dataset, syntax: UID, frames: NDArray[Any]) -> None:
    bits = int(ds.BitsAllocated)
    if bits not in (1, *_WORD_TYPES):
        raise PixelError(f"Bits Allocated {bits} cannot be written natively; expected 1, 8, 16, 32 or 64")
    if bits == 1:
        _set_native(ds, syntax, pack_bits(frames.reshape(-1)))
        return
    order = ">" if syntax == ExplicitVRBigEndian else "<"
    kind = "i" if int(ds.get("PixelRepresentation") or 0) else "u"
    _set_native(ds, syntax, frames.astype(f"{order}{kind}{bits // 8}").tobytes())


def _pydicom_shape(frames: NDArray[Any]) -> NDArray[Any]:
    """Drop the frame and sample axes of length 1, the shape pydicom's encoders take."""
    array = frames
    if array.shape[-1] == 1:
        array = array[..., 0]
    if array.shape[0] == 1:
        array = array[0]
    return array


def _encode(ds: Dataset, target: UID, frames: NDArray[Any]) -> None:
    """Encode ``frames`` in the encapsulated ``target`` and set Pixel Data."""
    encoder = get_encoder(target)
    if not encoder.is_available:
        missing = "; ".join(encoder.missing_dependencies)
        raise PixelError(f"no encoder for {target.name} is installed ({missing}); install it and run the "
                         "transformation again")
    options = as_pixel_options(ds)
    options.pop("extended_offsets", None)
    try:
        encoded = list(encoder.iter_encode(_pydicom_shape(frames), **options))
    except Exception as exc:  # the encoding plugins raise ValueError, RuntimeError and their own kinds
        raise PixelError(f"encoding the transformed pixels as {target.name} failed: {type(exc).__name__}: "
                         f"{exc}") from None
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]
    total = sum(len(frame) for frame in encoded[:-1]) + 8 * (len(encoded) - 1)
    if total > _BASIC_OFFSET_LIMIT:
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(encoded)
    else:
        ds.PixelData = encapsulate(encoded)
    element = ds["PixelData"]
    element.is_undefined_length = True
    element.VR = "OB"


def _check(ds: Dataset, syntax: UID, expected: NDArray[Any]) -> None:
    """Decode the new Pixel Data and require it to equal ``expected``."""
    actual = _decode(ds, syntax, _Layout.of(ds))
    if actual.shape != expected.shape or not np.array_equal(actual, expected):
        raise PixelError(f"the transformed pixels, decoded again from {syntax.name}, differ from the "
                         "transformed array; nothing was sent")

"""Transforming Pixel Data of pydicom's test files in every transfer syntax it decodes, without a network."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from migrator.transform.pixels import PixelError, transform_pixel_data
from migrator.transform.transformation import Transformation, apply
from tests.transform.support import frames_of, sample

#: (test file, what it covers)
FILES = [
    ("SC_rgb.dcm", "Explicit VR Little Endian, RGB 8-bit"),
    ("SC_rgb_32bit_2frame.dcm", "RGB 32-bit, 2 frames"),
    ("rtdose.dcm", "Implicit VR Little Endian, 32-bit, 15 frames"),
    ("emri_small_big_endian.dcm", "Explicit VR Big Endian, 12-bit, 10 frames"),
    ("color-pl.dcm", "RGB with Planar Configuration 1"),
    ("SC_ybr_full_uncompressed.dcm", "YBR_FULL"),
    ("liver.dcm", "Bits Allocated 1, 3 frames"),
    ("OBXXXX1A_rle.dcm", "RLE Lossless, PALETTE COLOR"),
    ("SC_rgb_rle_16bit_2frame.dcm", "RLE Lossless, RGB 16-bit, 2 frames"),
    ("MR_small_jp2klossless.dcm", "JPEG 2000 Lossless, signed 16-bit"),
    ("GDCMJ2K_TextGBR.dcm", "JPEG 2000 Lossless, YBR_RCT"),
    ("SC_rgb_gdcm_KY.dcm", "JPEG 2000, lossy RGB"),
    ("SC_rgb_jpeg_lossy_gdcm.dcm", "JPEG Baseline, YBR_FULL"),
]
LOSSLESS_KEPT = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.5",
                 "1.2.840.10008.1.2.4.90"}


def _round_trip(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


@pytest.mark.parametrize("transformation", list(Transformation), ids=lambda t: t.value)
@pytest.mark.parametrize(("name", "covers"), FILES, ids=[name for name, _ in FILES])
def test_decoded_result_equals_numpy_transformation(name: str, covers: str,
                                                    transformation: Transformation) -> None:
    source = pydicom.dcmread(sample(name))
    ds = pydicom.dcmread(sample(name))
    result = transform_pixel_data(ds, transformation)
    written = _round_trip(ds)
    assert np.array_equal(frames_of(written), apply(frames_of(source), transformation)), covers
    source_syntax = str(source.file_meta.TransferSyntaxUID)
    if source_syntax in LOSSLESS_KEPT:
        assert written.file_meta.TransferSyntaxUID == source_syntax
        assert result.notes == []
    else:
        assert written.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
        assert result.notes and "the source is lossy" in result.notes[0]


def test_native_words_keep_bits_outside_bits_stored() -> None:
    """Moving whole words keeps bits above Bits Stored, which some archives use for overlays."""
    ds = pydicom.dcmread(sample("MR_small.dcm"))
    words = np.frombuffer(ds.PixelData, dtype="<u2").reshape(int(ds.Rows), int(ds.Columns)).copy()
    words[0, 0] |= 0x8000
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
    ds.PixelData = words.tobytes()
    transform_pixel_data(ds, Transformation.ROTATE_90_CW)
    rotated = np.frombuffer(ds.PixelData, dtype="<u2").reshape(int(ds.Rows), int(ds.Columns))
    assert np.array_equal(rotated, np.rot90(words, -1))


def test_changes_name_rows_columns_and_syntax() -> None:
    ds = pydicom.dcmread(sample("JPEG2000.dcm"))
    result = transform_pixel_data(ds, Transformation.ROTATE_90_CCW)
    changes = {change.keyword: (change.old, change.new) for change in result.changes}
    assert changes["Rows"] == ("1024", "256")
    assert changes["Columns"] == ("256", "1024")
    assert changes["TransferSyntaxUID"] == ("1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.90")
    assert changes["PixelData"] == (None, "rotated 90 degrees anticlockwise, 1 frame(s)")


def test_missing_decoder_named() -> None:
    """JPEG Lossless needs pylibjpeg-libjpeg or GDCM, which the environment lacks, and the error names them."""
    ds = pydicom.dcmread(sample("JPGLosslessP14SV1_1s_1f_8b.dcm"))
    with pytest.raises(PixelError, match="no decoder for JPEG Lossless.* is installed .*install one of"):
        transform_pixel_data(ds, Transformation.ROTATE_180)


def test_truncated_native_pixel_data_rejected() -> None:
    ds = pydicom.dcmread(sample("SC_rgb.dcm"))
    ds.PixelData = ds.PixelData[:1000]
    with pytest.raises(PixelError, match="Pixel Data has 1000 bytes, fewer than the 30000"):
        transform_pixel_data(ds, Transformation.FLIP_VERTICAL)

"""The grid attributes: refusals, spacings, Patient Orientation, patient geometry and ultrasound regions.

Patient geometry is checked pixel by pixel: every pixel's position in the
patient, computed from Image Position/Orientation (Patient) and Pixel
Spacing, must be the same before and after, at the pixel's new place.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from migrator.transform import geometry
from migrator.transform.geometry import Refused
from migrator.transform.transformation import Transformation, apply
from tests.transform.support import sample

ALL = pytest.mark.parametrize("transformation", list(Transformation), ids=lambda t: t.value)


def _floats(value: Any) -> NDArray[np.float64]:
    return np.array([float(part) for part in value])


def _positions(orientation: Any, position: Any, spacing: Any, rows: int, columns: int) -> NDArray[np.float64]:
    """Return the patient position of every pixel, shaped (rows, columns, 3)."""
    x, y = _floats(orientation)[:3], _floats(orientation)[3:]
    row_spacing, column_spacing = _floats(spacing)
    row, column = np.mgrid[0:rows, 0:columns]
    return _floats(position) + column[..., None] * column_spacing * x + row[..., None] * row_spacing * y


def _oblique_ct() -> Dataset:
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    ds.PixelSpacing = ["0.5", "0.8"]
    ds.ImageOrientationPatient = ["0.8", "0.6", "0", "0", "0", "-1"]
    ds.ImagePositionPatient = ["-12.5", "40.25", "7"]
    return ds


@ALL
def test_patient_position_of_every_pixel_kept(transformation: Transformation) -> None:
    ds = _oblique_ct()
    rows, columns = int(ds.Rows), int(ds.Columns)
    before = _positions(ds.ImageOrientationPatient, ds.ImagePositionPatient, ds.PixelSpacing, rows, columns)
    geometry.check(ds, transformation, allow_patient_geometry=True)
    geometry.update(ds, transformation, rows, columns)
    new_rows, new_columns = (columns, rows) if transformation.quarter_turn else (rows, columns)
    after = _positions(ds.ImageOrientationPatient, ds.ImagePositionPatient, ds.PixelSpacing, new_rows, new_columns)
    assert np.allclose(after, apply(before[None], transformation)[0], atol=1e-6)


@ALL
def test_functional_group_positions_kept(transformation: Transformation) -> None:
    """Plane Orientation in the shared groups and Plane Position per frame are recomputed together."""
    ds = Dataset()
    ds.Rows, ds.Columns, ds.NumberOfFrames = 4, 6, 2
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = ["0", "1", "0", "0.6", "0", "-0.8"]
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = ["1.5", "0.75"]
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence()
    for z in (10, 12.5):
        frame = Dataset()
        frame.PlanePositionSequence = Sequence([Dataset()])
        frame.PlanePositionSequence[0].ImagePositionPatient = ["3", "-4", str(z)]
        ds.PerFrameFunctionalGroupsSequence.append(frame)
    ds.PixelData = b"\x00" * 48

    def frame_positions(rows: int, columns: int) -> list[NDArray[np.float64]]:
        item = ds.SharedFunctionalGroupsSequence[0]
        return [_positions(item.PlaneOrientationSequence[0].ImageOrientationPatient,
                           frame.PlanePositionSequence[0].ImagePositionPatient,
                           item.PixelMeasuresSequence[0].PixelSpacing, rows, columns)
                for frame in ds.PerFrameFunctionalGroupsSequence]

    before = frame_positions(4, 6)
    with pytest.raises(Refused):
        geometry.check(ds, transformation, allow_patient_geometry=False)
    geometry.check(ds, transformation, allow_patient_geometry=True)
    geometry.update(ds, transformation, 4, 6)
    after = frame_positions(6, 4) if transformation.quarter_turn else frame_positions(4, 6)
    for old, new in zip(before, after, strict=True):
        assert np.allclose(new, apply(old[None], transformation)[0], atol=1e-6)


@pytest.mark.parametrize(("transformation", "expected"), [
    (Transformation.ROTATE_90_CW, ["H", "L"]),
    (Transformation.ROTATE_180, ["R", "H"]),
    (Transformation.ROTATE_90_CCW, ["F", "R"]),
    (Transformation.FLIP_HORIZONTAL, ["R", "F"]),
    (Transformation.FLIP_VERTICAL, ["L", "H"]),
], ids=lambda value: value.value if isinstance(value, Transformation) else None)
def test_patient_orientation_turns(transformation: Transformation, expected: list[str]) -> None:
    ds = Dataset()
    ds.PatientOrientation = ["L", "F"]
    ds.PixelData = b""
    geometry.check(ds, transformation, allow_patient_geometry=False)
    geometry.update(ds, transformation, 2, 2)
    assert list(ds.PatientOrientation) == expected


@ALL
def test_spacings_swap_on_quarter_turns(transformation: Transformation) -> None:
    ds = Dataset()
    ds.PixelSpacing = ["0.5", "0.25"]
    ds.ImagerPixelSpacing = ["0.6", "0.3"]
    ds.PixelAspectRatio = [2, 1]
    geometry.update(ds, transformation, 2, 2)
    swapped = transformation.quarter_turn
    assert [str(v) for v in ds.PixelSpacing] == (["0.25", "0.5"] if swapped else ["0.5", "0.25"])
    assert [str(v) for v in ds.ImagerPixelSpacing] == (["0.3", "0.6"] if swapped else ["0.6", "0.3"])
    assert list(ds.PixelAspectRatio) == ([1, 2] if swapped else [2, 1])


def _region_values(region: Dataset, rows: int, columns: int) -> NDArray[np.float64]:
    """Return each pixel's physical (x, y) values in the region, NaN outside it, shaped (rows, columns, 2)."""
    row, column = np.mgrid[0:rows, 0:columns].astype(np.float64)
    reference_x = region.RegionLocationMinX0 + region.ReferencePixelX0
    reference_y = region.RegionLocationMinY0 + region.ReferencePixelY0
    values = np.stack([region.ReferencePixelPhysicalValueX + (column - reference_x) * region.PhysicalDeltaX,
                       region.ReferencePixelPhysicalValueY + (row - reference_y) * region.PhysicalDeltaY], axis=-1)
    inside = ((column >= region.RegionLocationMinX0) & (column <= region.RegionLocationMaxX1)
              & (row >= region.RegionLocationMinY0) & (row <= region.RegionLocationMaxY1))
    values[~inside] = np.nan
    return values


@ALL
def test_ultrasound_region_values_follow_pixels(transformation: Transformation) -> None:
    """Each pixel keeps its physical values; on a quarter turn the x and y quantities swap with the axes."""
    ds = pydicom.dcmread(sample("OBXXXX1A.dcm"), stop_before_pixels=True)
    rows, columns = int(ds.Rows), int(ds.Columns)
    before = [_region_values(region, rows, columns) for region in ds.SequenceOfUltrasoundRegions]
    units = [(region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection)
             for region in ds.SequenceOfUltrasoundRegions]
    geometry.update(ds, transformation, rows, columns)
    new_rows, new_columns = (columns, rows) if transformation.quarter_turn else (rows, columns)
    for old, old_units, region in zip(before, units, ds.SequenceOfUltrasoundRegions, strict=True):
        moved = apply(old[None], transformation)[0]
        if transformation.quarter_turn:
            moved = moved[..., ::-1]
            old_units = old_units[::-1]
        assert np.allclose(_region_values(region, new_rows, new_columns), moved, equal_nan=True)
        assert (region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection) == old_units


@pytest.mark.parametrize(("change", "message"), [
    (lambda ds: ds.__setattr__("ShutterShape", "RECTANGULAR"), "Display Shutter"),
    (lambda ds: ds.add_new(0x60000010, "US", 2), "overlay plane (6000,xxxx)"),
    (lambda ds: ds.__setattr__("PatientOrientation", ["L", "X"]), "Patient Orientation 'L\\\\X' has letters"),
    (lambda ds: ds.__delattr__("PixelData"), "has no Pixel Data"),
    (lambda ds: ds.__setattr__("ImagePositionPatient", ["0", "0", "0"]), "Image Orientation (Patient) and"),
])
def test_refusals(change: Any, message: str) -> None:
    ds = pydicom.dcmread(sample("SC_rgb.dcm"))
    change(ds)
    with pytest.raises(Refused) as raised:
        geometry.check(ds, Transformation.ROTATE_180, allow_patient_geometry=False)
    assert message in str(raised.value)


def test_doppler_position_in_region_refused() -> None:
    ds = pydicom.dcmread(sample("OBXXXX1A.dcm"))
    ds.SequenceOfUltrasoundRegions[0].DopplerSampleVolumeXPosition = 10
    with pytest.raises(Refused, match="DopplerSampleVolumeXPosition in ultrasound region 1"):
        geometry.check(ds, Transformation.ROTATE_90_CW, allow_patient_geometry=True)


def test_geometry_in_detector_information_refused_even_when_allowed() -> None:
    ds = pydicom.dcmread(sample("SC_rgb.dcm"))
    detector = Dataset()
    detector.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.DetectorInformationSequence = Sequence([detector])
    with pytest.raises(Refused, match=r"DetectorInformationSequence\[1\].ImageOrientationPatient is not recomputed"):
        geometry.check(ds, Transformation.ROTATE_90_CW, allow_patient_geometry=True)

"""The attributes that describe the pixel grid, checked before and updated after a transformation.

A quarter turn swaps Pixel Spacing, Imager Pixel Spacing, Nominal Scanned
Pixel Spacing and Pixel Aspect Ratio, whose two values are (row spacing,
column spacing) in DICOM PS3.3. Patient Orientation (0020,0020) names the
patient directions of the row and the column direction, and its letters
move and swap with the axes.

Image Orientation (Patient) and Image Position (Patient) place every pixel
in the patient. Transforming the pixels of such an
image is refused unless ``transform.allow_patient_geometry`` is set. With
it, both are recomputed at the top level and in the Plane Orientation and
Plane Position functional groups, so each pixel keeps its place in the
patient. The regions of the Sequence of Ultrasound Regions move with
the pixels, and their physical axes swap and change
sign with the image axes. Attributes with pixel coordinates that this
module does not transform (overlays, shutters, graphic annotations, and
Doppler sample volume and TM-line positions in ultrasound regions) refuse
the transformation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.valuerep import DSfloat

from migrator.steps import Change
from migrator.transform.transformation import (
    AXES,
    Transformation,
    source_of_first_pixel,
)

#: Attributes of two values, (row, column), that swap on a quarter turn.
SWAPPED = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing", "PixelAspectRatio")
#: Attributes with pixel coordinates that are not transformed.
UNTRANSFORMED = {
    "ShutterShape": "Display Shutter (0018,1600) coordinates",
    "GraphicAnnotationSequence": "Graphic Annotation Sequence (0070,0001) coordinates",
}
#: Ultrasound region attributes with pixel positions that are not transformed.
UNTRANSFORMED_IN_REGIONS = ("DopplerSampleVolumeXPosition", "DopplerSampleVolumeYPosition", "TMLinePositionX0",
                            "TMLinePositionY0", "TMLinePositionX1", "TMLinePositionY1")
_REGION_CORNERS = ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1")
#: The attributes of one physical axis of an ultrasound region, X and Y.
_REGION_AXES = (("PhysicalDeltaX", "PhysicalUnitsXDirection", "ReferencePixelPhysicalValueX"),
                ("PhysicalDeltaY", "PhysicalUnitsYDirection", "ReferencePixelPhysicalValueY"))
PATIENT_GEOMETRY = ("ImageOrientationPatient", "ImagePositionPatient")
#: Functional group sequences whose geometry is recomputed.
FUNCTIONAL_GROUPS = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
_OPPOSITE = {"A": "P", "P": "A", "L": "R", "R": "L", "H": "F", "F": "H"}


class Refused(Exception):
    """The instance must not be transformed as it is; the message is the sin bin reason's detail."""


def _walk(ds: Dataset, path: str = "") -> Iterator[tuple[str, Dataset, str]]:
    """Yield (path of the containing item, the item, keyword) for every element, in sequences too."""
    for element in ds:
        keyword = element.keyword or str(element.tag)
        yield path, ds, keyword
        if element.VR == "SQ" and keyword != "IconImageSequence":
            for number, item in enumerate(element.value, start=1):
                yield from _walk(item, f"{path}{keyword}[{number}].")


def _overlay_groups(ds: Dataset) -> list[str]:
    groups = {element.tag.group for element in ds if 0x6000 <= element.tag.group <= 0x601E
              and element.tag.group % 2 == 0}
    return [f"{group:04X}" for group in sorted(groups)]


def check(ds: Dataset, transformation: Transformation, allow_patient_geometry: bool) -> None:
    """Raise Refused when transforming the pixels of ``ds`` would leave it wrong or cannot be done.

    Raises
    ------
    Refused
        The data set has no Pixel Data, or float pixel data, or attributes
        with pixel coordinates that are not transformed. Or it has patient
        geometry without ``allow_patient_geometry``, or in a place where it
        is not recomputed. Or its Patient Orientation has letters other
        than A, P, L, R, H and F.
    """
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise Refused("float pixel data (7FE0,0008) or (7FE0,0009) is not transformed")
    if "PixelData" not in ds:
        raise Refused("the instance has no Pixel Data (7FE0,0010) to transform")
    untransformed = [label for keyword, label in UNTRANSFORMED.items() if keyword in ds]
    untransformed += [f"overlay plane ({group},xxxx)" for group in _overlay_groups(ds)]
    for number, region in enumerate(ds.get("SequenceOfUltrasoundRegions") or [], start=1):
        untransformed += [f"{keyword} in ultrasound region {number}"
                          for keyword in UNTRANSFORMED_IN_REGIONS if keyword in region]
        if not all(keyword in region for keyword in _REGION_CORNERS):
            untransformed.append(f"ultrasound region {number} without its four Region Location values")
    if untransformed:
        raise Refused(f"{', '.join(untransformed)} would not follow the pixels; such instances are "
                      "not transformed")
    places = sorted({f"{path}{keyword}" for path, _, keyword in _walk(ds) if keyword in PATIENT_GEOMETRY})
    if places and not allow_patient_geometry:
        raise Refused("Image Orientation (Patient) and Image Position (Patient) place the pixels in the "
                      "patient, and transforming the pixels alone would misplace them; set "
                      "transform.allow_patient_geometry = true to transform them with that geometry "
                      "recomputed")
    unsupported = [place for place in places if not _recomputed_place(place)]
    if unsupported:
        raise Refused(f"{', '.join(unsupported)} is not recomputed by the transformation")
    if "ImagePositionPatient" in ds and not ("ImageOrientationPatient" in ds and "PixelSpacing" in ds):
        raise Refused("Image Position (Patient) cannot be recomputed without Image Orientation (Patient) "
                      "and Pixel Spacing")
    if any(measures is None or "PixelSpacing" not in measures for _, _, measures in _plane_items(ds)[1]):
        raise Refused("a frame's Image Position (Patient) cannot be recomputed without the Pixel Spacing "
                      "of its Pixel Measures functional group")
    for _, item, keyword in _walk(ds):
        if keyword == "PatientOrientation" and not _valid_orientation(item.PatientOrientation):
            raise Refused(f"Patient Orientation {_text(item.PatientOrientation)!r} has letters other than "
                          "A, P, L, R, H and F, or not two values, so it cannot be transformed")


def _recomputed_place(place: str) -> bool:
    parts = place.split(".")
    if len(parts) == 1:
        return True
    return (len(parts) == 3 and parts[0].split("[")[0] in FUNCTIONAL_GROUPS
            and parts[1].split("[")[0] in ("PlaneOrientationSequence", "PlanePositionSequence"))


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "\\".join(str(part) for part in value)


def _values(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    return [value] if isinstance(value, str) else [str(part) for part in value]


def _valid_orientation(value: Any) -> bool:
    parts = _values(value)
    return not parts or (len(parts) == 2 and all(part and set(part) <= set(_OPPOSITE) for part in parts))


def update(ds: Dataset, transformation: Transformation, rows: int, columns: int) -> list[Change]:
    """Update the grid attributes of ``ds`` after its pixels were transformed; return the changes.

    ``rows`` and ``columns`` are the source's. :func:`check` must have passed.
    """
    changes: list[Change] = []
    if transformation.quarter_turn:
        for path, item, keyword in list(_walk(ds)):
            if keyword in SWAPPED and len(_values(item.get(keyword))) == 2:
                old = item[keyword].value
                item[keyword].value = [old[1], old[0]]
                changes.append(Change(path + keyword, _text(old), _text(item[keyword].value)))
    for path, item, keyword in list(_walk(ds)):
        if keyword == "PatientOrientation" and _values(item.PatientOrientation):
            old = _values(item.PatientOrientation)
            item.PatientOrientation = _orientation_after(old, transformation)
            changes.append(Change(path + keyword, _text(old), _text(item.PatientOrientation)))
    changes += _update_patient_geometry(ds, transformation, rows, columns)
    for number, region in enumerate(ds.get("SequenceOfUltrasoundRegions") or [], start=1):
        changes += _update_region(region, f"SequenceOfUltrasoundRegions[{number}].", transformation, rows, columns)
    return changes


def _point_after(transformation: Transformation, row: float, column: float, rows: int,
                 columns: int) -> tuple[float, float]:
    """Return where the source pixel (row, column) lies after the transformation, as (row, column)."""
    if transformation is Transformation.ROTATE_90_CW:
        return column, rows - 1 - row
    if transformation is Transformation.ROTATE_90_CCW:
        return columns - 1 - column, row
    if transformation is Transformation.ROTATE_180:
        return rows - 1 - row, columns - 1 - column
    if transformation is Transformation.FLIP_HORIZONTAL:
        return row, columns - 1 - column
    return rows - 1 - row, column


def _update_region(region: Dataset, path: str, transformation: Transformation, rows: int,
                   columns: int) -> list[Change]:
    """Move one ultrasound region and its reference pixel, and turn its physical axes with the image axes."""
    old = {keyword: region[keyword].value for keyword in region.dir() if keyword.startswith(
        ("RegionLocation", "ReferencePixel", "Physical"))}
    # Some devices let a region end one pixel past the image. The region is cut
    # to the image first, because a mirrored coordinate past the edge would be negative.
    corners = [_point_after(transformation, min(old[y], rows - 1), min(old[x], columns - 1), rows, columns)
               for x, y in (("RegionLocationMinX0", "RegionLocationMinY0"),
                            ("RegionLocationMaxX1", "RegionLocationMaxY1"))]
    min_row, max_row = sorted(int(row) for row, _ in corners)
    min_column, max_column = sorted(int(column) for _, column in corners)
    region.RegionLocationMinX0, region.RegionLocationMaxX1 = min_column, max_column
    region.RegionLocationMinY0, region.RegionLocationMaxY1 = min_row, max_row
    if "ReferencePixelX0" in old and "ReferencePixelY0" in old:
        # The reference pixel is given relative to the region's Min X0 and Min Y0; pydicom's
        # OBXXXX1A.dcm has a region whose Reference Pixel X0 is minus its Min X0, so at column 0.
        row, column = _point_after(transformation, old["RegionLocationMinY0"] + old["ReferencePixelY0"],
                                   old["RegionLocationMinX0"] + old["ReferencePixelX0"], rows, columns)
        region.ReferencePixelX0 = int(column) - min_column
        region.ReferencePixelY0 = int(row) - min_row
    for new_axis, (source_axis, sign) in enumerate(AXES[transformation]):
        for position, keyword in enumerate(_REGION_AXES[new_axis]):
            source_keyword = _REGION_AXES[source_axis][position]
            if source_keyword not in old:
                if keyword in region:
                    del region[keyword]
                continue
            value = old[source_keyword]
            # Delta is the physical increment per pixel, so it changes sign when the axis reverses.
            setattr(region, keyword, sign * value if keyword.startswith("PhysicalDelta") else value)
    return [Change(path + keyword, str(value), str(region[keyword].value))
            for keyword, value in old.items() if keyword in region and region[keyword].value != value]


def _orientation_after(labels: list[str], transformation: Transformation) -> list[str]:
    result = []
    for axis, sign in AXES[transformation]:
        label = labels[axis]
        result.append(label if sign > 0 else "".join(_OPPOSITE[letter] for letter in label))
    return result


def _floats(value: Any) -> NDArray[np.float64]:
    return np.array([float(part) for part in value], dtype=np.float64)


def _ds(values: NDArray[np.float64]) -> list[DSfloat]:
    # auto_format keeps each value within the 16 characters that a DS value may have.
    return [DSfloat(float(value) + 0.0, auto_format=True) for value in values]


def _axes_after(orientation: NDArray[np.float64], transformation: Transformation) -> NDArray[np.float64]:
    directions = (orientation[:3], orientation[3:])
    return np.concatenate([sign * directions[axis] for axis, sign in AXES[transformation]])


def _position_after(position: NDArray[np.float64], orientation: NDArray[np.float64], spacing: NDArray[np.float64],
                    transformation: Transformation, rows: int, columns: int) -> NDArray[np.float64]:
    row, column = source_of_first_pixel(transformation, rows, columns)
    # Pixel Spacing is (row spacing, column spacing): the distance between
    # rows runs along the column direction, and between columns along the row direction.
    shifted: NDArray[np.float64] = position + column * spacing[1] * orientation[:3] + row * spacing[0] * orientation[3:]
    return shifted


def _update_patient_geometry(ds: Dataset, transformation: Transformation, rows: int,
                             columns: int) -> list[Change]:
    changes: list[Change] = []
    if "ImageOrientationPatient" in ds:
        orientation = _floats(ds.ImageOrientationPatient)
        if "ImagePositionPatient" in ds:
            # Pixel Spacing was already swapped for a quarter turn; the position needs the source's.
            spacing = _source_spacing(ds, transformation)
            old = ds.ImagePositionPatient
            ds.ImagePositionPatient = _ds(_position_after(_floats(old), orientation, spacing, transformation,
                                                          rows, columns))
            changes.append(Change("ImagePositionPatient", _text(old), _text(ds.ImagePositionPatient)))
        old = ds.ImageOrientationPatient
        ds.ImageOrientationPatient = _ds(_axes_after(orientation, transformation))
        changes.append(Change("ImageOrientationPatient", _text(old), _text(ds.ImageOrientationPatient)))
    changes += _update_functional_groups(ds, transformation, rows, columns)
    return changes


def _source_spacing(item: Dataset, transformation: Transformation) -> NDArray[np.float64]:
    spacing = _floats(item.PixelSpacing)
    return spacing[::-1] if transformation.quarter_turn else spacing


def _first_item(group: Dataset | None, keyword: str) -> Dataset | None:
    if group is None or not group.get(keyword):
        return None
    item: Dataset = group[keyword].value[0]
    return item


def _plane_items(ds: Dataset) -> tuple[list[Dataset], list[tuple[Dataset, Dataset, Dataset | None]]]:
    """Return the Plane Orientation items, and each Plane Position item with the orientation and Pixel Measures of its frame.

    An item in the shared functional groups counts once, for the first frame.
    """
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    frames = per_frame or ([Dataset()] if shared is not None else [])
    orientations: dict[int, Dataset] = {}
    positions: dict[int, tuple[Dataset, Dataset, Dataset | None]] = {}
    for frame in frames:
        orientation = _first_item(frame, "PlaneOrientationSequence") or _first_item(shared, "PlaneOrientationSequence")
        position = _first_item(frame, "PlanePositionSequence") or _first_item(shared, "PlanePositionSequence")
        measures = _first_item(frame, "PixelMeasuresSequence") or _first_item(shared, "PixelMeasuresSequence")
        if orientation is not None and "ImageOrientationPatient" in orientation:
            orientations.setdefault(id(orientation), orientation)
            if position is not None and "ImagePositionPatient" in position:
                positions.setdefault(id(position), (position, orientation, measures))
    return list(orientations.values()), list(positions.values())


def _update_functional_groups(ds: Dataset, transformation: Transformation, rows: int,
                              columns: int) -> list[Change]:
    """Recompute the Plane Orientation and Plane Position functional groups of every frame."""
    orientations, positions = _plane_items(ds)
    # Every position is computed from the orientations before any of them changes.
    for position, orientation, measures in positions:
        assert measures is not None  # check() refuses a position without Pixel Measures
        position.ImagePositionPatient = _ds(_position_after(
            _floats(position.ImagePositionPatient), _floats(orientation.ImageOrientationPatient),
            _source_spacing(measures, transformation), transformation, rows, columns))
    for orientation in orientations:
        orientation.ImageOrientationPatient = _ds(_axes_after(_floats(orientation.ImageOrientationPatient),
                                                              transformation))
    changes = []
    if positions:
        changes.append(Change("FunctionalGroups.PlanePositionSequence.ImagePositionPatient", None,
                              f"recomputed in {len(positions)} item(s)"))
    if orientations:
        changes.append(Change("FunctionalGroups.PlaneOrientationSequence.ImageOrientationPatient", None,
                              f"recomputed in {len(orientations)} item(s)"))
    return changes

"""The five transformations, their names in lists and databases, and their effect on the image axes."""

from __future__ import annotations

import enum
import re

import numpy as np
from numpy.typing import NDArray


class Transformation(str, enum.Enum):
    """A rotation or flip of the pixel grid, as displayed (first row at the top)."""

    ROTATE_90_CW = "rotate_90_cw"
    ROTATE_180 = "rotate_180"
    ROTATE_90_CCW = "rotate_90_ccw"
    #: Mirror left and right: the columns are reversed.
    FLIP_HORIZONTAL = "flip_horizontal"
    #: Mirror top and bottom: the rows are reversed.
    FLIP_VERTICAL = "flip_vertical"

    @property
    def quarter_turn(self) -> bool:
        """True when rows become columns, so Rows, Columns and spacings swap."""
        return self in (Transformation.ROTATE_90_CW, Transformation.ROTATE_90_CCW)

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self]


DESCRIPTIONS = {
    Transformation.ROTATE_90_CW: "rotated 90 degrees clockwise",
    Transformation.ROTATE_180: "rotated 180 degrees",
    Transformation.ROTATE_90_CCW: "rotated 90 degrees anticlockwise",
    Transformation.FLIP_HORIZONTAL: "flipped horizontally (left and right swapped)",
    Transformation.FLIP_VERTICAL: "flipped vertically (top and bottom swapped)",
}

#: The words of each accepted spelling, in any order: "rotate_90_cw",
#: "Rotate 90 clockwise" and "rotate clockwise 90 degrees" all name one.
_SPELLINGS: list[tuple[frozenset[str], Transformation]] = [
    (frozenset(words.split()), transformation)
    for words, transformation in [
        ("rotate 90 cw", Transformation.ROTATE_90_CW),
        ("rotate 90 clockwise", Transformation.ROTATE_90_CW),
        ("rotate 270 ccw", Transformation.ROTATE_90_CW),
        ("rotate 270 anticlockwise", Transformation.ROTATE_90_CW),
        ("rotate 270 counterclockwise", Transformation.ROTATE_90_CW),
        ("rotate 180", Transformation.ROTATE_180),
        ("rotate 90 ccw", Transformation.ROTATE_90_CCW),
        ("rotate 90 anticlockwise", Transformation.ROTATE_90_CCW),
        ("rotate 90 counterclockwise", Transformation.ROTATE_90_CCW),
        ("rotate 270 cw", Transformation.ROTATE_90_CCW),
        ("rotate 270 clockwise", Transformation.ROTATE_90_CCW),
        ("flip horizontal", Transformation.FLIP_HORIZONTAL),
        ("flip horizontally", Transformation.FLIP_HORIZONTAL),
        ("flip vertical", Transformation.FLIP_VERTICAL),
        ("flip vertically", Transformation.FLIP_VERTICAL),
    ]
]
_IGNORED_WORDS = {"degrees", "degree", "deg", "by"}

#: The names that messages list as valid.
ACCEPTED = ", ".join(t.value for t in Transformation)


def parse_transformation(text: str) -> Transformation | None:
    """Return the transformation that ``text`` names, or None when it names none.

    Case, word order, separators (space, ``_``, ``-``) and the word
    "degrees" do not matter.
    """
    words = {word for word in re.split(r"[^0-9a-z]+", text.lower().replace("°", " ")) if word}
    words -= _IGNORED_WORDS
    for spelling, transformation in _SPELLINGS:
        if words == spelling:
            return transformation
    return None


def apply(frames: NDArray[np.generic], transformation: Transformation) -> NDArray[np.generic]:
    """Transform an array shaped (frames, rows, columns, ...) and return a C-contiguous copy."""
    rows, columns = 1, 2
    if transformation is Transformation.ROTATE_90_CW:
        result = np.rot90(frames, k=-1, axes=(rows, columns))
    elif transformation is Transformation.ROTATE_180:
        result = np.rot90(frames, k=2, axes=(rows, columns))
    elif transformation is Transformation.ROTATE_90_CCW:
        result = np.rot90(frames, k=1, axes=(rows, columns))
    elif transformation is Transformation.FLIP_HORIZONTAL:
        result = np.flip(frames, axis=columns)
    else:
        result = np.flip(frames, axis=rows)
    return np.ascontiguousarray(result)


def source_of_first_pixel(transformation: Transformation, rows: int, columns: int) -> tuple[int, int]:
    """Return (row, column) of the source pixel that becomes the first pixel of the result."""
    return {
        Transformation.ROTATE_90_CW: (rows - 1, 0),
        Transformation.ROTATE_180: (rows - 1, columns - 1),
        Transformation.ROTATE_90_CCW: (0, columns - 1),
        Transformation.FLIP_HORIZONTAL: (0, columns - 1),
        Transformation.FLIP_VERTICAL: (rows - 1, 0),
    }[transformation]


#: For each transformation, the result's row direction (along a row, as the
#: column index grows) and column direction (down a column, as the row index
#: grows), as (source axis, sign). Axis 0 is the source's row direction and
#: axis 1 its column direction.
AXES: dict[Transformation, tuple[tuple[int, int], tuple[int, int]]] = {
    Transformation.ROTATE_90_CW: ((1, -1), (0, 1)),
    Transformation.ROTATE_180: ((0, -1), (1, -1)),
    Transformation.ROTATE_90_CCW: ((1, 1), (0, -1)),
    Transformation.FLIP_HORIZONTAL: ((0, -1), (1, 1)),
    Transformation.FLIP_VERTICAL: ((0, 1), (1, -1)),
}

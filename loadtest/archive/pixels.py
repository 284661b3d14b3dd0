"""CT frames encoded once as JPEG 2000 lossless, for every generated image to reuse.

The frames come from a real head CT slice that pydicom-data ships (693_J2KR.dcm:
512 x 512, 16 bits signed, from the CQ500 collection). Each frame adds its own
Gaussian noise to the pixels inside the scan field, the way a CT's quantum noise
differs from slice to slice, and every second frame is mirrored left to right.
The noise raises the encoded size from the sample's 105 kB to between about 160
and 200 kB, inside the 150 to 250 kB that the load test aims at. Encoding takes
about 30 ms a frame, so a handful of frames is encoded once per run and each
file copies one frame's encoded bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless

from loadtest.archive.header import encode_elements
from migrator.demo.archive import find_sample

SOURCE_SAMPLE = "693_J2KR.dcm"

#: Noise standard deviations (in stored values, which are Hounsfield units here)
#: that the frames cycle through. 8 gives about 165 kB and 20 about 195 kB.
NOISE_SIGMAS = (8.0, 11.0, 14.0, 17.0, 20.0)

#: Image Pixel module keywords copied from the sample to every generated image.
PIXEL_MODULE_KEYWORDS = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "PixelSpacing",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelPaddingValue",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
)


@dataclass(frozen=True)
class EncodedFrame:
    """One JPEG 2000 lossless frame as an encoded (7FE0,0010) Pixel Data element."""

    #: The whole element: tag, VR, undefined length, offset table, fragments, delimiter.
    pixel_data_element: bytes
    #: Noise standard deviation the frame was made with.
    noise_sigma: float


@dataclass(frozen=True)
class PixelTemplates:
    """The encoded frames and the Image Pixel module that describes all of them."""

    #: The sample's Image Pixel and CT Image module values, Pixel Data excluded.
    pixel_module: Dataset
    frames: tuple[EncodedFrame, ...]


def _read_source() -> tuple[Dataset, np.ndarray]:
    path = find_sample(SOURCE_SAMPLE)
    if path is None:
        raise FileNotFoundError(
            f"the CT sample {SOURCE_SAMPLE} was not found; install pydicom-data, which ships it "
            "(pip install pydicom-data)"
        )
    source = pydicom.dcmread(path)
    pixels = source.pixel_array
    if pixels.shape != (512, 512) or pixels.dtype != np.int16:
        raise ValueError(f"{path} contains {pixels.dtype} pixels of shape {pixels.shape}, "
                         "expected one 512 x 512 frame of signed 16-bit values")
    return source, pixels


def _noisy_frame(pixels: np.ndarray, padding_value: int, sigma: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian noise to every pixel that is not padding (outside the scan field)."""
    noise = np.rint(rng.normal(0.0, sigma, pixels.shape)).astype(np.int32)
    noisy = pixels.astype(np.int32) + noise
    # Keep noisy pixels clear of the padding value, so padding stays where it was.
    noisy = np.clip(noisy, padding_value + 1, np.iinfo(np.int16).max)
    return np.where(pixels == padding_value, pixels, noisy).astype(np.int16)


def build_pixel_templates(count: int, seed: int) -> PixelTemplates:
    """Encode ``count`` distinct frames, the same frames for the same ``seed``.

    Raises
    ------
    FileNotFoundError
        If pydicom-data, which ships the CT sample, is not installed.
    ValueError
        If ``count`` is less than 1.
    """
    if count < 1:
        raise ValueError(f"at least one frame is needed, got {count}")
    source, pixels = _read_source()
    pixel_module = Dataset()
    for keyword in PIXEL_MODULE_KEYWORDS:
        if keyword in source:
            pixel_module[keyword] = source[keyword]
    # Its dictionary VR is "US or SS"; the sample's signed pixels make it SS.
    pixel_module["PixelPaddingValue"].VR = "SS"
    padding_value = int(pixel_module.PixelPaddingValue)

    rng = np.random.default_rng(seed)
    frames = []
    for index in range(count):
        sigma = NOISE_SIGMAS[index % len(NOISE_SIGMAS)]
        frame = _noisy_frame(pixels, padding_value, sigma, rng)
        if index % 2:
            frame = np.ascontiguousarray(frame[:, ::-1])  # mirror left and right
        encoder = Dataset()
        encoder.update(pixel_module)
        encoder.compress(JPEG2000Lossless, frame, encoding_plugin="pylibjpeg",
                         generate_instance_uid=False)
        pixel_element = next(encoded for tag, encoded in encode_elements(encoder) if tag == 0x7FE00010)
        frames.append(EncodedFrame(pixel_element, sigma))
    return PixelTemplates(pixel_module, tuple(frames))

"""What the passes share: the result types, the per-slice records, the exclusion tally, the input errors that
mark a file as bad, and the not-classifiable outcome with its codes and sentences."""

from __future__ import annotations

import logging
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian

# The package's one logger name, as before the split into modules: records keep the name "node.volume".
logger = logging.getLogger("node.volume")

MAX_EXAMPLES = 10

# What pydicom and its decoders raise on malformed files or pixel data. Caught only around the calls that
# read input, so that a bad file is skipped and reported instead of failing the series.
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    InvalidDicomError,
    OSError,
    EOFError,
    ValueError,
    struct.error,
    KeyError,
    IndexError,
    NotImplementedError,  # no decoder for the transfer syntax
    RuntimeError,  # pylibjpeg / openjpeg decode failures
    AttributeError,  # pydicom: "no pixel data to decode", missing required pixel module elements
)

# Series-level codes when nothing usable is left, chosen from the dominant exclusion reason.
CODE_FOR_REASON = {
    "unreadable": "unreadable",
    "not_image": "not_image",
    "not_ct": "not_ct",
    "localizer": "localizer_only",
    "no_geometry": "no_geometry",
    "not_monochrome": "not_monochrome",
}
SENTENCE_FOR_CODE = {
    "unreadable": "none of the {n} files could be read as DICOM",
    "not_image": "no image instances: the series holds only non-image objects (e.g. SR, presentation states)",
    "not_ct": "not a CT series (modality {modalities})",
    "localizer_only": "only localizer/scout images, no volume",
    "no_geometry": "no image has Image Position/Orientation (Patient), so slices cannot be ordered",
    "not_monochrome": "the images are not single-sample grayscale",
}


@dataclass
class Volume:
    voxels: np.ndarray  # float32 HU, (slices, rows, cols), slices ascending along the slice normal
    # mm between voxel centres along (slice, row, col), after downsampling; slice = median spacing
    spacing: tuple[float, float, float]
    row_cosine: tuple[float, float, float]  # IOP[0:3]
    column_cosine: tuple[float, float, float]  # IOP[3:6]
    report: dict[str, Any]  # JSON-serialisable account for the audit


@dataclass(frozen=True)
class NotClassifiable:
    code: str
    reason: str
    report: dict[str, Any]


@dataclass(frozen=True)
class PixelSource:
    """How to get the pixels of one file: raw reads for native data, pydicom's decoders otherwise."""

    path: Path
    transfer_syntax: str
    frames: int
    rows: int
    cols: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    little_endian: bool
    value_offset: int | None  # file offset of native pixel bytes; None when encapsulated
    padding: tuple[float, float] | None  # raw Pixel Padding Value range (inclusive)

    @property
    def raw_dtype(self) -> np.dtype[Any] | None:
        """numpy dtype of a native pixel, when the raw fast path applies."""
        if self.value_offset is None or self.transfer_syntax == DeflatedExplicitVRLittleEndian:
            return None
        if self.bits_allocated not in (8, 16, 32):
            return None
        kind = "i" if self.signed else "u"
        return np.dtype(f"{'<' if self.little_endian else '>'}{kind}{self.bits_allocated // 8}")


@dataclass
class SliceHeader:
    source: PixelSource
    frame: int | None  # None: a single-frame object
    uid: str  # SOPInstanceUID (with "#frame" for frames), for the report's examples
    instance_number: int
    order: int  # position in the input, for a stable tie-break
    position: np.ndarray  # ImagePositionPatient
    orientation: np.ndarray  # ImageOrientationPatient (6)
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float
    projection: float = 0.0


@dataclass
class Exclusions:
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, example: str, count: int = 1) -> None:
        self.counts[reason] += count
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < MAX_EXAMPLES:
            bucket.append(example)


def not_classifiable(code: str, reason: str, report: dict[str, Any]) -> NotClassifiable:
    report = {**report, "classifiable": False, "code": code, "reason": reason}
    logger.info("series not classifiable (%s): %s", code, reason)
    return NotClassifiable(code=code, reason=reason, report=report)


def too_few_result(n: int, min_slices: int, report: dict[str, Any]) -> NotClassifiable:
    code = "single_slice" if n == 1 else "too_few_slices"
    noun = "slice" if n == 1 else "slices"
    return not_classifiable(code, f"only {n} image {noun} (at least {min_slices} are needed)", report)

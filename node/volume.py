"""Instances -> volume: the spooled files of one series become a float32 HU array, or a reason why not.

Two passes. The header pass reads every file with `stop_before_pixels`, drops what is not part of one
image volume (unreadable files, non-image objects, non-CT, localizers, images without geometry), keeps the
largest group of slices that agree on size, pixel spacing and orientation, and sorts them along the slice
normal (row cosine x column cosine), dropping duplicate positions. The pixel pass then decodes each slice,
averages it down in-plane by an integer factor and writes it straight into a preallocated array, so a
full-resolution series is never held in memory. Multi-frame (Enhanced CT) objects contribute one slice per
frame, with geometry and rescale from the functional groups.

Bad input never raises: it gives a `NotClassifiable` with a code and one sentence, and every exclusion is
counted in the report. See docs/volume.md.
"""

from __future__ import annotations

import logging
import math
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import iter_pixels, pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian

logger = logging.getLogger(__name__)

CT_MODALITY = "CT"
ORIENTATION_TOLERANCE = 1e-2  # max abs difference of direction cosines within one group (about 0.6 degrees)
DUPLICATE_TOLERANCE_MM = 1e-2  # two slices closer than this along the normal are the same position
GAP_FACTOR = 1.5  # a spacing above GAP_FACTOR x median is reported as a gap
AIR_HU = -1000.0  # Pixel Padding Value pixels (outside the reconstruction circle) become air
MAX_EXAMPLES = 10
_PIXEL_DATA_TAG = (0x7FE0, 0x0010)
_UNDEFINED_LENGTH = 0xFFFFFFFF

# What pydicom and its decoders raise on malformed files or pixel data. Caught only around the calls that
# read input, so that a bad file is skipped and reported instead of failing the series.
_INPUT_ERRORS: tuple[type[BaseException], ...] = (
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
_CODE_FOR_REASON = {
    "unreadable": "unreadable",
    "not_image": "not_image",
    "not_ct": "not_ct",
    "localizer": "localizer_only",
    "no_geometry": "no_geometry",
    "not_monochrome": "not_monochrome",
}
_SENTENCE_FOR_CODE = {
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
class _PixelSource:
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
class _Slice:
    source: _PixelSource
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
class _Exclusions:
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, example: str, count: int = 1) -> None:
        self.counts[reason] += count
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < MAX_EXAMPLES:
            bucket.append(example)


# ---- attribute values, read from the raw elements ----
#
# dcmread leaves elements raw until they are accessed; pydicom's conversion on access (validation hooks,
# DSfloat/IS objects) costs more than reading the file (about 2 ms against 0.3 ms per CT header here).
# The attributes needed are ASCII strings (CS, DS, IS, UI) or 16-bit integers, so they are parsed here.

_BINARY_VRS = {"US": "H", "SS": "h", "UL": "L", "SL": "l"}
# In Implicit VR the element carries no VR: the binary ones among the attributes read here
_BINARY_TAGS = {
    tag_for_keyword(k): "H"
    for k in "Rows Columns BitsAllocated BitsStored PixelRepresentation SamplesPerPixel PixelPaddingValue "
    "PixelPaddingRangeLimit".split()
}
_TAGS: dict[str, int] = {}


def _tag(keyword: str) -> int:
    tag = _TAGS.get(keyword)
    if tag is None:
        found = tag_for_keyword(keyword)
        if found is None:
            raise KeyError(f"not a DICOM keyword: {keyword}")
        tag = _TAGS[keyword] = found
    return tag


def _values(ds: Dataset | None, keyword: str) -> list[Any]:
    """The values of `keyword` in `ds`: str for text VRs, int for binary ones; [] when absent or empty."""
    if ds is None:
        return []
    tag = _tag(keyword)
    elem = ds.get_item(tag)
    if elem is None:
        return []
    if isinstance(elem, RawDataElement):
        raw = elem.value
        if not raw:
            return []
        code = _BINARY_VRS.get(elem.VR) if elem.VR not in (None, "UN") else _BINARY_TAGS.get(tag)
        if code is not None:
            size = struct.calcsize(code)
            endian = "<" if elem.is_little_endian else ">"
            return list(struct.unpack(f"{endian}{len(raw) // size}{code}", raw[: len(raw) // size * size]))
        text = raw.decode("latin-1")
        return [v.strip(" \x00") for v in text.strip(" \x00").split("\\")]
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes | int | float):
        return [value]
    return list(value)


def _floats(values: list[Any], n: int) -> np.ndarray | None:
    if len(values) != n:
        return None
    try:
        arr = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if bool(np.all(np.isfinite(arr))) else None


def _number(values: list[Any], default: float) -> float:
    try:
        result = float(values[0]) if values else default
    except (TypeError, ValueError):
        return default
    return result if math.isfinite(result) else default


def _int(values: list[Any], default: int) -> int:
    try:
        return int(float(values[0])) if values else default
    except (TypeError, ValueError, OverflowError):
        return default


def _text(values: list[Any]) -> str:
    return str(values[0]).strip() if values else ""


def _upper_values(values: list[Any]) -> list[str]:
    return [str(v).upper() for v in values]


def _is_localizer(image_type: list[Any]) -> bool:
    return any("LOCALIZER" in v or "SCOUT" in v for v in _upper_values(image_type))


def _valid_orientation(iop: np.ndarray | None) -> np.ndarray | None:
    """IOP with both cosines of non-zero length and not parallel; None otherwise."""
    if iop is None:
        return None
    row, col = iop[:3], iop[3:]
    if np.linalg.norm(row) < 1e-6 or np.linalg.norm(col) < 1e-6:
        return None
    if np.linalg.norm(np.cross(row, col)) < 1e-3 * np.linalg.norm(row) * np.linalg.norm(col):
        return None
    return iop


def _normal(iop: np.ndarray) -> np.ndarray:
    normal = np.cross(iop[:3], iop[3:])
    return np.asarray(normal / np.linalg.norm(normal), dtype=np.float64)


def _item(ds: Dataset | None, sequence: str) -> Dataset | None:
    """The first item of `sequence` in `ds`, or None."""
    if ds is None:
        return None
    seq = ds.get(sequence)
    return seq[0] if seq else None


# ---- header pass ----


def _peek_pixel_element(fp: Any, ds: Dataset) -> tuple[bool, int | None]:
    """After a `stop_before_pixels` read, the file is positioned at (7FE0,0010) if there is one.

    Returns (has pixel data, file offset of native pixel bytes or None when encapsulated/unknown)."""
    implicit, little = ds.original_encoding
    start = fp.tell()
    head = fp.read(8)
    if len(head) < 8:
        return False, None
    endian = "<" if little is not False else ">"
    group, element = struct.unpack(f"{endian}HH", head[:4])
    if (group, element) != _PIXEL_DATA_TAG:
        return False, None
    if implicit:
        (length,) = struct.unpack(f"{endian}L", head[4:8])
        offset = start + 8
    else:
        extra = fp.read(4)
        if len(extra) < 4:
            return False, None
        (length,) = struct.unpack(f"{endian}L", extra)
        offset = start + 12
    return True, (None if length == _UNDEFINED_LENGTH else offset)


def _padding_range(ds: Dataset, signed: bool, bits_allocated: int) -> tuple[float, float] | None:
    pad = _values(ds, "PixelPaddingValue")
    if not pad:
        return None
    values = []
    for raw in (pad, _values(ds, "PixelPaddingRangeLimit") or pad):
        value = _int(raw, 0)
        # US/SS ambiguity: a signed image's padding may have been read as unsigned (63536 -> -2000)
        if signed and value >= 2 ** (bits_allocated - 1):
            value -= 2**bits_allocated
        values.append(float(value))
    return min(values), max(values)


def _header_slices(
    path: Path, order: int, exclusions: _Exclusions, seen: dict[str, Counter[str]]
) -> list[_Slice]:
    """The candidate slices of one file (one per frame), or [] with the reason recorded."""
    try:
        with open(path, "rb") as fp:
            ds = dcmread(fp, stop_before_pixels=True, force=True)
            has_pixels, value_offset = _peek_pixel_element(fp, ds)
    except _INPUT_ERRORS as exc:
        logger.debug("unreadable instance file %s: %s", path, exc)
        exclusions.add("unreadable", path.name)
        return []
    uid = _text(_values(ds, "SOPInstanceUID")) or path.name
    sop_class = _text(_values(ds, "SOPClassUID"))
    modality = _text(_values(ds, "Modality")).upper()
    rows, cols = _int(_values(ds, "Rows"), 0), _int(_values(ds, "Columns"), 0)
    if not sop_class and not modality and not rows:
        # force=True accepts any bytes; a "dataset" with none of these is not DICOM
        exclusions.add("unreadable", path.name)
        return []
    file_meta = getattr(ds, "file_meta", None)
    transfer_syntax = str(file_meta.get("TransferSyntaxUID", "")) if file_meta is not None else ""
    seen["transfer_syntaxes"][transfer_syntax or "unknown"] += 1
    seen["modalities"][modality or "unknown"] += 1
    if not has_pixels or rows <= 0 or cols <= 0:
        exclusions.add("not_image", uid)
        return []
    if modality != CT_MODALITY:
        exclusions.add("not_ct", uid)
        return []
    if _is_localizer(_values(ds, "ImageType")):
        exclusions.add("localizer", uid)
        return []
    if _int(_values(ds, "SamplesPerPixel"), 1) != 1:
        exclusions.add("not_monochrome", uid)
        return []

    frames = max(1, _int(_values(ds, "NumberOfFrames"), 1))
    bits_allocated = _int(_values(ds, "BitsAllocated"), 16)
    signed = _int(_values(ds, "PixelRepresentation"), 0) == 1
    _, little = ds.original_encoding
    source = _PixelSource(
        path=path,
        transfer_syntax=transfer_syntax,
        frames=frames,
        rows=rows,
        cols=cols,
        bits_allocated=bits_allocated,
        bits_stored=_int(_values(ds, "BitsStored"), bits_allocated),
        signed=signed,
        little_endian=little is not False,
        value_offset=value_offset,
        padding=_padding_range(ds, signed, bits_allocated),
    )
    instance_number = _int(_values(ds, "InstanceNumber"), 2**31)
    per_frame = (
        ds.get("PerFrameFunctionalGroupsSequence")
        if frames > 1 or "PerFrameFunctionalGroupsSequence" in ds
        else None
    )
    shared = _item(ds, "SharedFunctionalGroupsSequence") if per_frame else None

    if frames == 1 and not per_frame:
        items: list[tuple[int | None, Dataset | None]] = [(None, None)]
    elif per_frame and len(per_frame) >= frames:
        items = [(i, per_frame[i]) for i in range(frames)]
    else:
        # multi-frame without per-frame positions: its frames cannot be placed
        exclusions.add("no_geometry", uid)
        return []

    slices = []
    for frame, group in items:

        def lookup(sequence: str, keyword: str, group: Dataset | None = group) -> list[Any]:
            """From the frame's functional group, else the shared one, else the top level."""
            for item in (_item(group, sequence), _item(shared, sequence)):
                values = _values(item, keyword)
                if values:
                    return values
            return _values(ds, keyword)

        frame_uid = uid if frame is None else f"{uid}#{frame + 1}"
        if frame is not None and _is_localizer(
            _values(_item(group, "CTImageFrameTypeSequence"), "FrameType")
        ):
            exclusions.add("localizer", frame_uid)
            continue
        position = _floats(lookup("PlanePositionSequence", "ImagePositionPatient"), 3)
        orientation = _valid_orientation(
            _floats(lookup("PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        )
        if position is None or orientation is None:
            exclusions.add("no_geometry", frame_uid)
            continue
        spacing = _floats(lookup("PixelMeasuresSequence", "PixelSpacing"), 2)
        if spacing is None or np.any(spacing <= 0):
            spacing = _floats(_values(ds, "ImagerPixelSpacing"), 2)
        if spacing is None or np.any(spacing <= 0):
            seen["pixel_spacing_defaulted"][frame_uid] += 1
            spacing = np.ones(2)
        slope_raw = lookup("PixelValueTransformationSequence", "RescaleSlope")
        intercept_raw = lookup("PixelValueTransformationSequence", "RescaleIntercept")
        if not slope_raw or not intercept_raw:
            seen["rescale_defaulted"][frame_uid] += 1
        slope = _number(slope_raw, 1.0) or 1.0
        slices.append(
            _Slice(
                source=source,
                frame=frame,
                uid=frame_uid,
                instance_number=instance_number,
                order=order,
                position=position,
                orientation=orientation,
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                slope=slope,
                intercept=_number(intercept_raw, 0.0),
            )
        )
    return slices


def _largest_group(slices: list[_Slice], exclusions: _Exclusions) -> list[_Slice]:
    """Keep the largest set of slices with one size, one pixel spacing and one orientation."""
    groups: list[tuple[tuple[int, int, float, float], np.ndarray, list[_Slice]]] = []
    for s in slices:
        key = (s.source.rows, s.source.cols, round(s.pixel_spacing[0], 3), round(s.pixel_spacing[1], 3))
        for gkey, giop, members in groups:
            if gkey == key and float(np.max(np.abs(giop - s.orientation))) <= ORIENTATION_TOLERANCE:
                members.append(s)
                break
        else:
            groups.append((key, s.orientation, [s]))
    # equal sizes: the group holding the lowest InstanceNumber, so that the spool's file order does not matter
    best_key, _, best = max(groups, key=lambda g: (len(g[2]), -min(s.instance_number for s in g[2])))
    for key, _, members in groups:
        if members is best:
            continue
        if key[:2] != best_key[:2]:
            reason = "size_mismatch"
        elif key != best_key:
            reason = "pixel_spacing_mismatch"
        else:
            reason = "orientation_mismatch"
        for s in members:
            exclusions.add(reason, s.uid)
    return best


def _sort_and_dedupe(slices: list[_Slice], normal: np.ndarray, exclusions: _Exclusions) -> list[_Slice]:
    for s in slices:
        s.projection = float(np.dot(s.position, normal))
    slices.sort(key=lambda s: (s.projection, s.instance_number, s.order, s.frame or 0))
    kept = [slices[0]]
    for s in slices[1:]:
        if s.projection - kept[-1].projection < DUPLICATE_TOLERANCE_MM:
            exclusions.add("duplicate_position", s.uid)
        else:
            kept.append(s)
    return kept


def _geometry_report(slices: list[_Slice], normal: np.ndarray) -> dict[str, Any]:
    projections = np.array([s.projection for s in slices])
    steps = np.diff(projections)
    median = float(np.median(steps))
    gaps = [
        {"index": int(i), "spacing_mm": round(float(step), 4)}
        for i, step in enumerate(steps)
        if step > GAP_FACTOR * median
    ]
    travel = slices[-1].position - slices[0].position
    cosine = abs(float(np.dot(travel, normal))) / float(np.linalg.norm(travel))
    return {
        "slice_spacing": {
            "min": round(float(steps.min()), 4),
            "median": round(median, 4),
            "max": round(float(steps.max()), 4),
        },
        "gaps": gaps,
        "tilt_degrees": round(math.degrees(math.acos(min(1.0, cosine))), 3),
    }


# ---- pixel pass ----


class _Scratch:
    """Buffers reused from slice to slice. Fresh large arrays each time would cost a page fault per 4 KiB
    (they come straight from mmap), which measured slower than the arithmetic itself."""

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype[Any] | type) -> np.ndarray:
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        buffer = self._buffers.get(name)
        if buffer is None or buffer.nbytes < size:
            buffer = self._buffers[name] = np.empty(size, dtype=np.uint8)
        return buffer[:size].view(dtype).reshape(shape)


def _block_mean(frame: np.ndarray, fr: int, fc: int, out: np.ndarray, scratch: _Scratch) -> None:
    """Mean over fr x fc blocks of `frame` into `out` (float32); the remainder at the far edges is cropped.

    Adds strided views instead of reshape().mean(), which is about 15x slower on a 512^2 slice."""
    rows, cols = out.shape
    cropped = frame[: rows * fr, : cols * fc]
    if fr == 1 and fc == 1:
        np.copyto(out, cropped, casting="unsafe")
        return
    by_row = cropped.reshape(rows, fr, cols * fc)
    acc = scratch.get("acc", (rows, cols * fc), np.float32)
    np.copyto(acc, by_row[:, 0, :], casting="unsafe")
    for i in range(1, fr):
        acc += by_row[:, i, :]
    by_col = acc.reshape(rows, cols, fc)
    np.copyto(out, by_col[:, :, 0])
    for j in range(1, fc):
        out += by_col[:, :, j]
    out *= np.float32(1.0 / (fr * fc))


def _read_native_frame(
    source: _PixelSource, dtype: np.dtype[Any], frame: int, scratch: _Scratch
) -> np.ndarray:
    assert source.value_offset is not None
    arr = scratch.get("raw", (source.rows, source.cols), dtype)
    with open(source.path, "rb") as fp:
        fp.seek(source.value_offset + frame * arr.nbytes)
        got = fp.readinto(arr.data.cast("B"))
    if got != arr.nbytes:
        raise EOFError(f"pixel data of {source.path.name} frame {frame + 1} is truncated")
    shift = source.bits_allocated - source.bits_stored
    if 0 < shift < source.bits_allocated:
        # as pydicom does: ignore the unused high bits (sign-extending signed data)
        np.left_shift(arr, shift, out=arr)
        np.right_shift(arr, shift, out=arr)
    return arr


def _frames(source: _PixelSource, wanted: list[int | None], scratch: _Scratch) -> Iterable[np.ndarray]:
    """The frames `wanted` of one file, in that order, one at a time (native ones in a reused buffer)."""
    dtype = source.raw_dtype
    if dtype is not None:
        for frame in wanted:
            yield _read_native_frame(source, dtype, frame or 0, scratch)
    elif source.transfer_syntax and source.transfer_syntax != DeflatedExplicitVRLittleEndian:
        if wanted == [None]:
            yield pixel_array(source.path)
        else:
            yield from iter_pixels(source.path, indices=[f or 0 for f in wanted])
    else:
        # deflated, no transfer syntax, or an odd bit depth: the whole dataset through pydicom
        ds = dcmread(source.path, force=True)
        for frame in wanted:
            yield pixel_array(ds, index=frame) if source.frames > 1 else ds.pixel_array
        del ds


FRAMES_PER_TASK = 32  # a multi-frame object is decoded in chunks, so one task's result stays small


@dataclass
class _FileTask:
    """Some slices of one file (all of a single-frame file; a chunk of frames of a multi-frame one)."""

    source: _PixelSource
    slots: list[tuple[int, _Slice]]  # (destination index, slice), in frame order


def _decode_into(
    task: _FileTask, fr: int, fc: int, target: Callable[[int], np.ndarray], scratch: _Scratch
) -> tuple[int, str | None]:
    """Decode, pad-correct, downsample and rescale the slices of one task, each into `target(dest)`, one
    full-resolution frame at a time. Returns how many slots were done (in order) and the error if any."""
    source = task.source
    done = 0
    try:
        for (dest, s), raw in zip(
            task.slots, _frames(source, [s.frame for _, s in task.slots], scratch), strict=False
        ):
            if raw.shape != (source.rows, source.cols):
                raise ValueError(f"frame shape {raw.shape} != ({source.rows}, {source.cols})")
            frame = raw
            if source.padding is not None:
                low, high = source.padding
                mask = scratch.get("mask", raw.shape, np.bool_)
                if low == high:
                    np.equal(raw, low, out=mask)
                else:
                    np.logical_and(raw >= low, raw <= high, out=mask)
                if mask.any():
                    frame = scratch.get("float", raw.shape, np.float32)
                    np.copyto(frame, raw, casting="unsafe")
                    frame[mask] = (AIR_HU - s.intercept) / s.slope
            out = target(dest)
            _block_mean(frame, fr, fc, out, scratch)
            if s.slope != 1.0:
                out *= np.float32(s.slope)
            if s.intercept != 0.0:
                out += np.float32(s.intercept)
            done += 1
    except _INPUT_ERRORS as exc:
        return done, f"{source.path.name}: {exc}"
    return done, None


@dataclass
class _TaskResult:
    dests: list[int]  # destination index of each slice in `slices`
    slices: np.ndarray  # (done, rows, cols) downsampled HU
    failed: list[int]
    error: str | None


def _run_file_task(task: _FileTask, fr: int, fc: int, out_shape: tuple[int, int]) -> _TaskResult:
    """_decode_into a fresh array: the form a worker process runs (module level, so it pickles)."""
    chunk = np.empty((len(task.slots), *out_shape), dtype=np.float32)
    index = {dest: i for i, (dest, _) in enumerate(task.slots)}
    done, error = _decode_into(task, fr, fc, lambda dest: chunk[index[dest]], _Scratch())
    dests = [dest for dest, _ in task.slots]
    return _TaskResult(dests[:done], chunk[:done], dests[done:], error)


def _pixel_tasks(slices: list[_Slice]) -> list[_FileTask]:
    by_file: dict[Path, list[tuple[int, _Slice]]] = {}
    for dest, s in enumerate(slices):
        by_file.setdefault(s.source.path, []).append((dest, s))
    tasks = []
    for slots in by_file.values():
        slots.sort(key=lambda slot: slot[1].frame or 0)  # frames in file order
        for i in range(0, len(slots), FRAMES_PER_TASK):
            tasks.append(_FileTask(slots[0][1].source, slots[i : i + FRAMES_PER_TASK]))
    tasks.sort(key=lambda t: t.slots[0][0])  # in slice order
    return tasks


def _pixel_pass(
    tasks: list[_FileTask], voxels: np.ndarray, fr: int, fc: int, executor: Executor | None, in_flight: int
) -> list[int]:
    """Fill `voxels` from the tasks; returns the slots that failed. Tasks that need a decoder go to
    `executor` when there is one, at most `in_flight` at a time (bounded memory); the rest run here and
    write straight into `voxels`."""
    failed: list[int] = []
    scratch = _Scratch()

    def note_error(error: str | None) -> None:
        if error is not None:
            logger.warning("could not decode pixels of %s", error)

    def collect(result: _TaskResult) -> None:
        voxels[result.dests] = result.slices
        note_error(result.error)
        failed.extend(result.failed)

    pending: set[Future[_TaskResult]] = set()
    out_shape = (int(voxels.shape[1]), int(voxels.shape[2]))
    for task in tasks:
        if executor is None or task.source.raw_dtype is not None:
            # native pixels are a file read and a few numpy adds: shipping them to a worker costs more
            done, error = _decode_into(task, fr, fc, voxels.__getitem__, scratch)
            note_error(error)
            failed.extend(dest for dest, _ in task.slots[done:])
            continue
        if len(pending) >= in_flight:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                collect(fut.result())
        pending.add(executor.submit(_run_file_task, task, fr, fc, out_shape))
    for fut in pending:
        collect(fut.result())
    return failed


# ---- public API ----


def downsample_factor(rows: int, cols: int, max_in_plane: int) -> int:
    if max_in_plane < 1:
        raise ValueError(f"max_in_plane must be >= 1, got {max_in_plane}")
    return max(1, math.ceil(max(rows, cols) / max_in_plane))


def _plane_factors(rows: int, cols: int, max_in_plane: int) -> tuple[int, int, int, int, int]:
    """(f, factor along rows, factor along cols, output rows, output cols)."""
    f = downsample_factor(rows, cols, max_in_plane)
    fr, fc = min(f, rows), min(f, cols)  # a dimension shorter than f collapses to one voxel
    return f, fr, fc, rows // fr, cols // fc


def _not_classifiable(code: str, reason: str, report: dict[str, Any]) -> NotClassifiable:
    report = {**report, "classifiable": False, "code": code, "reason": reason}
    logger.info("series not classifiable (%s): %s", code, reason)
    return NotClassifiable(code=code, reason=reason, report=report)


def _too_few(n: int, min_slices: int, report: dict[str, Any]) -> NotClassifiable:
    code = "single_slice" if n == 1 else "too_few_slices"
    noun = "slice" if n == 1 else "slices"
    return _not_classifiable(code, f"only {n} image {noun} (at least {min_slices} are needed)", report)


def assemble_series(
    files: Sequence[Path],
    *,
    max_in_plane: int = 256,
    min_slices: int = 3,
    executor: Executor | None = None,
    in_flight: int = 8,
) -> Volume | NotClassifiable:
    """The volume of one series from its instance files, or why there is none. Never raises for bad input.

    `executor`: where the pixel pass decodes (default: this thread). The decoders hold the GIL, so only a
    process pool gains (compressed data on a multi-core machine); `in_flight` bounds the tasks submitted
    to it at once, and so the memory (each holds at most FRAMES_PER_TASK downsampled slices)."""
    if max_in_plane < 1:
        raise ValueError(f"max_in_plane must be >= 1, got {max_in_plane}")
    started = time.perf_counter()
    exclusions = _Exclusions()
    seen: dict[str, Counter[str]] = {
        k: Counter()
        for k in ("transfer_syntaxes", "modalities", "rescale_defaulted", "pixel_spacing_defaulted")
    }
    candidates: list[_Slice] = []
    for order, path in enumerate(files):
        candidates.extend(_header_slices(Path(path), order, exclusions, seen))

    def report_so_far() -> dict[str, Any]:
        return {
            "instances_total": len(files),
            "excluded": dict(sorted(exclusions.counts.items())),
            "excluded_examples": {k: v for k, v in sorted(exclusions.examples.items())},
            "transfer_syntaxes": sorted(seen["transfer_syntaxes"]),
            "modalities": sorted(seen["modalities"]),
        }

    if not files:
        return _not_classifiable("empty", "no instance files were given", report_so_far())
    if not candidates:
        readable = {r: n for r, n in exclusions.counts.items() if r != "unreadable"}
        if not readable:
            sentence = _SENTENCE_FOR_CODE["unreadable"].format(n=len(files))
            return _not_classifiable("unreadable", sentence, report_so_far())
        # the dominant reason names the series; ties go to the order of _CODE_FOR_REASON
        priority = list(_CODE_FOR_REASON)
        reason = max(readable, key=lambda r: (readable[r], -priority.index(r)))
        code = _CODE_FOR_REASON[reason]
        modalities = "/".join(m for m in sorted(seen["modalities"]) if m != CT_MODALITY) or "unknown"
        return _not_classifiable(
            code, _SENTENCE_FOR_CODE[code].format(modalities=modalities), report_so_far()
        )

    group = _largest_group(candidates, exclusions)
    iop = group[0].orientation
    normal = _normal(iop)
    slices = _sort_and_dedupe(group, normal, exclusions)
    del candidates, group
    if len(slices) < min_slices:
        return _too_few(len(slices), min_slices, report_so_far())
    header_seconds = time.perf_counter() - started

    rows, cols = slices[0].source.rows, slices[0].source.cols
    f, fr, fc, out_rows, out_cols = _plane_factors(rows, cols, max_in_plane)
    voxels = np.empty((len(slices), out_rows, out_cols), dtype=np.float32)
    failed = _pixel_pass(_pixel_tasks(slices), voxels, fr, fc, executor, max(1, in_flight))

    if failed:
        bad = set(failed)
        for dest in sorted(bad):
            exclusions.add("unreadable_pixels", slices[dest].uid)
        keep = [i for i in range(len(slices)) if i not in bad]
        for new_index, old_index in enumerate(keep):  # compact in place: no second array
            if new_index != old_index:
                voxels[new_index] = voxels[old_index]
        voxels = voxels[: len(keep)]
        slices = [slices[i] for i in keep]
        if not slices:
            return _not_classifiable("unreadable", "no slice's pixel data could be decoded", report_so_far())
        if len(slices) < min_slices:
            return _too_few(len(slices), min_slices, report_so_far())

    spacing_slice = float(np.median(np.diff([s.projection for s in slices])))
    spacing = (spacing_slice, slices[0].pixel_spacing[0] * fr, slices[0].pixel_spacing[1] * fc)
    header = slices[0]
    report = report_so_far()
    report.update(
        {
            "classifiable": True,
            "instances_used": len({s.source.path for s in slices}),
            "slices": len(slices),
            "source_shape": [len(slices), rows, cols],
            "downsample_factor": f,
            "shape": list(voxels.shape),
            "spacing_mm": [round(v, 4) for v in spacing],
            "source_pixel_spacing_mm": [round(v, 4) for v in header.pixel_spacing],
            **_geometry_report(slices, normal),
            "multiframe": any(s.frame is not None for s in slices),
            "orientation": [round(float(v), 6) for v in iop],
            "rescale_defaulted": sum(seen["rescale_defaulted"].values()),
            "pixel_spacing_defaulted": sum(seen["pixel_spacing_defaulted"].values()),
            "timing_s": {
                "headers": round(header_seconds, 3),
                "pixels": round(time.perf_counter() - started - header_seconds, 3),
            },
        }
    )
    logger.info(
        "assembled volume %s from %d slices (%d of %d instances), factor %d, tilt %.1f deg, %d gaps",
        report["shape"],
        len(slices),
        report["instances_used"],
        len(files),
        f,
        report["tilt_degrees"],
        len(report["gaps"]),
    )
    return Volume(
        voxels=voxels,
        spacing=spacing,
        row_cosine=(float(iop[0]), float(iop[1]), float(iop[2])),
        column_cosine=(float(iop[3]), float(iop[4]), float(iop[5])),
        report=report,
    )


def volume_from_array(
    hu: np.ndarray,
    spacing: Sequence[float],
    row_cosine: Sequence[float],
    column_cosine: Sequence[float],
    report: dict[str, Any] | None = None,
    *,
    max_in_plane: int = 256,
) -> Volume:
    """A Volume from an array already (slices, rows, cols) in HU (NIfTI, synthetic): same in-plane
    downsampling and invariants as `assemble_series`. Wrong shapes or spacings are programming errors."""
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise ValueError(f"expected a non-empty (slices, rows, cols) array, got shape {hu.shape}")
    if len(spacing) != 3 or not all(math.isfinite(float(s)) and float(s) > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive numbers, got {spacing!r}")
    if len(row_cosine) != 3 or len(column_cosine) != 3:
        raise ValueError("row_cosine and column_cosine must have 3 components each")
    slices, rows, cols = (int(n) for n in hu.shape)
    f, fr, fc, out_rows, out_cols = _plane_factors(rows, cols, max_in_plane)
    voxels = np.empty((slices, out_rows, out_cols), dtype=np.float32)
    scratch = _Scratch()
    for k in range(slices):
        _block_mean(hu[k], fr, fc, voxels[k], scratch)
    out_spacing = (float(spacing[0]), float(spacing[1]) * fr, float(spacing[2]) * fc)
    computed: dict[str, Any] = {
        "classifiable": True,
        "slices": slices,
        "source_shape": [slices, rows, cols],
        "downsample_factor": f,
        "shape": list(voxels.shape),
        "spacing_mm": [round(v, 4) for v in out_spacing],
        "slice_spacing": {k: round(float(spacing[0]), 4) for k in ("min", "median", "max")},
        "gaps": [],
        "tilt_degrees": 0.0,
        "multiframe": False,
        "orientation": [round(float(v), 6) for v in (*row_cosine, *column_cosine)],
    }
    return Volume(
        voxels=voxels,
        spacing=out_spacing,
        row_cosine=(float(row_cosine[0]), float(row_cosine[1]), float(row_cosine[2])),
        column_cosine=(float(column_cosine[0]), float(column_cosine[1]), float(column_cosine[2])),
        report={**(report or {}), **computed},
    )

"""The header pass: read each file without its pixels, exclude what is not part of one CT image volume
(with the reason counted), and describe each remaining slice and where its pixels are."""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from node.volume.elements import (
    element_floats,
    element_int,
    element_number,
    element_text,
    element_values,
    first_item,
    is_localizer,
    valid_orientation,
)
from node.volume.model import INPUT_ERRORS, Exclusions, PixelSource, SliceHeader, logger

CT_MODALITY = "CT"
_PIXEL_DATA_TAG = (0x7FE0, 0x0010)
_UNDEFINED_LENGTH = 0xFFFFFFFF


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
    pad = element_values(ds, "PixelPaddingValue")
    if not pad:
        return None
    values = []
    for raw in (pad, element_values(ds, "PixelPaddingRangeLimit") or pad):
        value = element_int(raw, 0)
        # US/SS ambiguity: a signed image's padding may have been read as unsigned (63536 -> -2000)
        if signed and value >= 2 ** (bits_allocated - 1):
            value -= 2**bits_allocated
        values.append(float(value))
    return min(values), max(values)


def header_slices(
    path: Path, order: int, exclusions: Exclusions, seen: dict[str, Counter[str]]
) -> list[SliceHeader]:
    """The candidate slices of one file (one per frame), or [] with the reason recorded."""
    try:
        with open(path, "rb") as fp:
            ds = dcmread(fp, stop_before_pixels=True, force=True)
            has_pixels, value_offset = _peek_pixel_element(fp, ds)
    except INPUT_ERRORS as exc:
        logger.debug("unreadable instance file %s: %s", path, exc)
        exclusions.add("unreadable", path.name)
        return []
    uid = element_text(element_values(ds, "SOPInstanceUID")) or path.name
    sop_class = element_text(element_values(ds, "SOPClassUID"))
    modality = element_text(element_values(ds, "Modality")).upper()
    rows, cols = element_int(element_values(ds, "Rows"), 0), element_int(element_values(ds, "Columns"), 0)
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
    if is_localizer(element_values(ds, "ImageType")):
        exclusions.add("localizer", uid)
        return []
    if element_int(element_values(ds, "SamplesPerPixel"), 1) != 1:
        exclusions.add("not_monochrome", uid)
        return []

    frames = max(1, element_int(element_values(ds, "NumberOfFrames"), 1))
    bits_allocated = element_int(element_values(ds, "BitsAllocated"), 16)
    signed = element_int(element_values(ds, "PixelRepresentation"), 0) == 1
    _, little = ds.original_encoding
    source = PixelSource(
        path=path,
        transfer_syntax=transfer_syntax,
        frames=frames,
        rows=rows,
        cols=cols,
        bits_allocated=bits_allocated,
        bits_stored=element_int(element_values(ds, "BitsStored"), bits_allocated),
        signed=signed,
        little_endian=little is not False,
        value_offset=value_offset,
        padding=_padding_range(ds, signed, bits_allocated),
    )
    instance_number = element_int(element_values(ds, "InstanceNumber"), 2**31)
    per_frame = (
        ds.get("PerFrameFunctionalGroupsSequence")
        if frames > 1 or "PerFrameFunctionalGroupsSequence" in ds
        else None
    )
    shared = first_item(ds, "SharedFunctionalGroupsSequence") if per_frame else None

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
            for item in (first_item(group, sequence), first_item(shared, sequence)):
                values = element_values(item, keyword)
                if values:
                    return values
            return element_values(ds, keyword)

        frame_uid = uid if frame is None else f"{uid}#{frame + 1}"
        if frame is not None and is_localizer(
            element_values(first_item(group, "CTImageFrameTypeSequence"), "FrameType")
        ):
            exclusions.add("localizer", frame_uid)
            continue
        position = element_floats(lookup("PlanePositionSequence", "ImagePositionPatient"), 3)
        orientation = valid_orientation(
            element_floats(lookup("PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        )
        if position is None or orientation is None:
            exclusions.add("no_geometry", frame_uid)
            continue
        spacing = element_floats(lookup("PixelMeasuresSequence", "PixelSpacing"), 2)
        if spacing is None or np.any(spacing <= 0):
            spacing = element_floats(element_values(ds, "ImagerPixelSpacing"), 2)
        if spacing is None or np.any(spacing <= 0):
            seen["pixel_spacing_defaulted"][frame_uid] += 1
            spacing = np.ones(2)
        slope_raw = lookup("PixelValueTransformationSequence", "RescaleSlope")
        intercept_raw = lookup("PixelValueTransformationSequence", "RescaleIntercept")
        if not slope_raw or not intercept_raw:
            seen["rescale_defaulted"][frame_uid] += 1
        slope = element_number(slope_raw, 1.0) or 1.0
        slices.append(
            SliceHeader(
                source=source,
                frame=frame,
                uid=frame_uid,
                instance_number=instance_number,
                order=order,
                position=position,
                orientation=orientation,
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                slope=slope,
                intercept=element_number(intercept_raw, 0.0),
            )
        )
    return slices

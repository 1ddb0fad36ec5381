"""The two passes put together: `assemble_series` for a series' files, `volume_from_array` for an array
already in HU."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

from node.volume.geometry import geometry_report, largest_group, slice_normal, sort_and_dedupe
from node.volume.headers import CT_MODALITY, header_slices
from node.volume.model import (
    CODE_FOR_REASON,
    SENTENCE_FOR_CODE,
    Exclusions,
    NotClassifiable,
    SliceHeader,
    Volume,
    logger,
    not_classifiable,
    too_few_result,
)
from node.volume.pixels import Scratch, block_mean, pixel_pass, pixel_tasks, plane_factors


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
    exclusions = Exclusions()
    seen: dict[str, Counter[str]] = {
        k: Counter()
        for k in ("transfer_syntaxes", "modalities", "rescale_defaulted", "pixel_spacing_defaulted")
    }
    candidates: list[SliceHeader] = []
    for order, path in enumerate(files):
        candidates.extend(header_slices(Path(path), order, exclusions, seen))

    def report_so_far() -> dict[str, Any]:
        return {
            "instances_total": len(files),
            "excluded": dict(sorted(exclusions.counts.items())),
            "excluded_examples": {k: v for k, v in sorted(exclusions.examples.items())},
            "transfer_syntaxes": sorted(seen["transfer_syntaxes"]),
            "modalities": sorted(seen["modalities"]),
        }

    if not files:
        return not_classifiable("empty", "no instance files were given", report_so_far())
    if not candidates:
        readable = {r: n for r, n in exclusions.counts.items() if r != "unreadable"}
        if not readable:
            sentence = SENTENCE_FOR_CODE["unreadable"].format(n=len(files))
            return not_classifiable("unreadable", sentence, report_so_far())
        # the dominant reason names the series; ties go to the order of CODE_FOR_REASON
        priority = list(CODE_FOR_REASON)
        reason = max(readable, key=lambda r: (readable[r], -priority.index(r)))
        code = CODE_FOR_REASON[reason]
        modalities = "/".join(m for m in sorted(seen["modalities"]) if m != CT_MODALITY) or "unknown"
        return not_classifiable(code, SENTENCE_FOR_CODE[code].format(modalities=modalities), report_so_far())

    group = largest_group(candidates, exclusions)
    iop = group[0].orientation
    normal = slice_normal(iop)
    slices = sort_and_dedupe(group, normal, exclusions)
    del candidates, group
    if len(slices) < min_slices:
        return too_few_result(len(slices), min_slices, report_so_far())
    header_seconds = time.perf_counter() - started

    rows, cols = slices[0].source.rows, slices[0].source.cols
    f, fr, fc, out_rows, out_cols = plane_factors(rows, cols, max_in_plane)
    voxels = np.empty((len(slices), out_rows, out_cols), dtype=np.float32)
    failed = pixel_pass(pixel_tasks(slices), voxels, fr, fc, executor, max(1, in_flight))

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
            return not_classifiable("unreadable", "no slice's pixel data could be decoded", report_so_far())
        if len(slices) < min_slices:
            return too_few_result(len(slices), min_slices, report_so_far())

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
            **geometry_report(slices, normal),
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
    f, fr, fc, out_rows, out_cols = plane_factors(rows, cols, max_in_plane)
    voxels = np.empty((slices, out_rows, out_cols), dtype=np.float32)
    scratch = Scratch()
    for k in range(slices):
        block_mean(hu[k], fr, fc, voxels[k], scratch)
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

"""Geometry of the header pass's slices: the largest group that agrees on size, pixel spacing and
orientation, the order along the slice normal without duplicate positions, and spacing, gaps and tilt."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from node.volume.model import Exclusions, SliceHeader

ORIENTATION_TOLERANCE = 1e-2  # max abs difference of direction cosines within one group (about 0.6 degrees)
DUPLICATE_TOLERANCE_MM = 1e-2  # two slices closer than this along the normal are the same position
GAP_FACTOR = 1.5  # a spacing above GAP_FACTOR x median is reported as a gap


def slice_normal(iop: np.ndarray) -> np.ndarray:
    normal = np.cross(iop[:3], iop[3:])
    return np.asarray(normal / np.linalg.norm(normal), dtype=np.float64)


def largest_group(slices: list[SliceHeader], exclusions: Exclusions) -> list[SliceHeader]:
    """Keep the largest set of slices with one size, one pixel spacing and one orientation."""
    groups: list[tuple[tuple[int, int, float, float], np.ndarray, list[SliceHeader]]] = []
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


def sort_and_dedupe(
    slices: list[SliceHeader], normal: np.ndarray, exclusions: Exclusions
) -> list[SliceHeader]:
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


def geometry_report(slices: list[SliceHeader], normal: np.ndarray) -> dict[str, Any]:
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

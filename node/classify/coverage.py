"""Body part from anatomical coverage: which landmarks the series reaches, from its feet end to its head end.

Each axial slice of the canonical volume (every ~5 mm) is measured with a few robust physical quantities:
the body's cross-section (the largest region above -300 HU), the share of it that is air in the lungs,
whether bone encloses brain (the cranial vault), how much thick bone lies laterally (iliac wings,
femoral heads, and the shoulder girdle), and whether the body splits into two limbs (legs). Runs of
slices along the head-to-feet axis then give the landmarks, in the order a CT localiser shows them:

    femoral heads / pelvic floor  <  iliac crest  <  diaphragm (lung base)  <  lung apex (thoracic inlet)
    <  skull base  <  vertex

The series' coverage, from which landmark to which, decides the body part by a documented table
(`body_part_from_segments`; docs/classification.md): Chest = lung apex to diaphragm, Abdomen-pelvis =
diaphragm to below the iliac crest, and so on. Nothing here is learned, so it needs no labels; its
thresholds come from anatomy and physics (lung air below -400 HU, cortical bone above 200 HU, brain
0-80 HU), and were checked on the shared series. A volume without a body outline (random bytes, an
empty scan) has no anatomy at all: `no_anatomy` says so, and the classifier must not answer for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from node.classify.canonical import CanonicalVolume
from node.classify.labels import BODY_PARTS
from node.classify.morphology import fill_holes

SLICE_STEP_MM = 5.0
MAX_SLICES = 120
MIN_BODY_CM2 = 40.0  # a cross-section smaller than this is no trunk, head or limb
LUNG_FRACTION = 0.06  # air share of the cross-section above which a slice holds lung
MIN_LUNG_CM2 = 15.0
SKULL_SCORE = 0.3  # share of the cross-section that is brain enclosed by bone
PELVIC_BONE_CM2 = 8.0  # thick bone more than 50 mm from the midline (iliac wings, femoral heads)
TRUNK_CM2 = 300.0  # below this a lung-free, skull-free cross-section is neck (or a limb)
MIN_RUN_MM = 10.0  # a landmark run shorter than this is noise
# The segments of the body along the head-to-feet axis, feet first.
SEGMENTS = ("legs", "pelvis", "abdomen", "chest", "neck", "head")
COARSE_PIXEL_MM = 3.0  # slices are block-averaged to about this pixel size before they are measured
# Share of the cross-section that fat, bone or lung must reach for a slice to show a patient.
MIN_TISSUE_SHARE = 0.03
# A slice whose body covers more than this share of the image border is cut by the field of view.
TRUNCATED_BORDER_SHARE = 0.25


@dataclass(frozen=True)
class SliceMeasure:
    z_mm: float
    body_cm2: float
    lung_fraction: float
    lung_cm2: float
    skull: float
    lateral_bone_cm2: float
    limbs: bool  # the body splits into two similar limbs (legs)
    anatomical: bool  # a body outline with soft tissue: this slice shows a patient
    truncated: bool = False  # the field of view cuts the body (a crop, a small-field reconstruction)


@dataclass(frozen=True)
class Coverage:
    """Where the series runs from and to, its segments (mm), and the body part they make."""

    anatomical: bool
    segments_mm: dict[str, float]
    landmarks: list[tuple[str, float]]  # (name, z mm from the series' feet end), feet to head
    covers_from: str | None
    covers_to: str | None
    probabilities: dict[str, float]
    reason: str

    @property
    def label(self) -> str | None:
        if not self.probabilities:
            return None
        return max(self.probabilities, key=lambda k: self.probabilities[k])

    def as_audit(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "anatomical": self.anatomical,
            "from": self.covers_from,
            "to": self.covers_to,
            "segments_mm": {k: round(v) for k, v in self.segments_mm.items() if v > 0},
            "landmarks": [{"name": n, "z_mm": round(z, 1)} for n, z in self.landmarks],
            "reason": self.reason,
        }
        if self.probabilities:
            out["label"] = self.label
            out["probabilities"] = {k: round(v, 4) for k, v in self.probabilities.items() if v >= 0.001}
        return out


def measure_slice(s: np.ndarray, z_mm: float, dy: float, dx: float) -> SliceMeasure | None:
    body = s > -300
    lab, n = ndi.label(body)
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel())[1:] * dy * dx / 100.0
    order = np.argsort(sizes)[::-1]
    main = lab == (int(order[0]) + 1)
    box = ndi.find_objects(main.astype(np.uint8))[0]
    filled = np.zeros_like(main)
    filled[box] = fill_holes(main[box])
    area = float(np.count_nonzero(filled)) * dy * dx / 100.0
    if area < MIN_BODY_CM2:
        return SliceMeasure(z_mm, area, 0.0, 0.0, 0.0, 0.0, False, False)
    edges = np.concatenate((filled[0], filled[-1], filled[:, 0], filled[:, -1]))
    truncated = float(np.mean(edges)) > TRUNCATED_BORDER_SHARE
    inside = s[filled]
    soft = float(np.mean((inside > -150) & (inside < 150)))
    # A patient is a mix of tissues: fat, bone or lung beside the soft tissue. A water or acrylic phantom
    # is one density with at most small inserts.
    fat = float(np.mean((inside > -150) & (inside < -50)))
    dense = float(np.mean(inside > 200))
    lung_air = float(np.mean(inside < -400))
    mixed = fat >= MIN_TISSUE_SHARE or dense >= MIN_TISSUE_SHARE or lung_air >= MIN_TISSUE_SHARE
    air = ndi.binary_opening((s < -400) & filled)
    lung_cm2 = float(np.count_nonzero(air)) * dy * dx / 100.0
    bone = (s > 200) & filled
    skull = 0.0
    if np.count_nonzero(bone) * dy * dx / 100.0 > 5.0:
        enclosed = fill_holes(bone) & ~bone
        inner = float(np.count_nonzero(enclosed)) * dy * dx / 100.0
        if inner > 20.0:
            hu = s[enclosed]
            skull = inner / area * float(np.mean((hu > 0) & (hu < 80)))
    xs = np.nonzero(filled)[1]
    mid_x = float(xs.mean())
    # Thick bone (iliac wings, femoral heads, the shoulder girdle), not ribs: an opening of about 4 mm.
    thick = ndi.binary_opening(bone, iterations=max(1, round(4.0 / dx)))
    tx = np.nonzero(thick)[1]
    lateral = float(np.count_nonzero(np.abs(tx - mid_x) * dx > 50.0)) * dy * dx / 100.0 if tx.size else 0.0
    limbs = False
    if len(order) >= 2:
        first, second = sizes[order[0]], sizes[order[1]]
        if second >= 60.0 and second >= 0.6 * first:
            c1 = ndi.center_of_mass(lab == (int(order[0]) + 1))[1]
            c2 = ndi.center_of_mass(lab == (int(order[1]) + 1))[1]
            third = sizes[order[2]] if len(order) >= 3 else 0.0
            limbs = abs(c1 - c2) * dx > 80.0 and third < 0.3 * second
    if limbs:
        area = float(sizes[order[0]] + sizes[order[1]])
    anatomical = soft >= 0.3 and mixed
    return SliceMeasure(z_mm, area, lung_cm2 / area, lung_cm2, skull, lateral, limbs, anatomical, truncated)


def _runs(flags: list[bool], z: list[float], step_mm: float) -> list[tuple[float, float]]:
    """(start, end) mm of each run of True, at least MIN_RUN_MM long (a single slice counts one step)."""
    out: list[tuple[float, float]] = []
    start: float | None = None
    for i, flag in enumerate(flags):
        if flag and start is None:
            start = z[i]
        if start is not None and (not flag or i == len(flags) - 1):
            end = z[i] if flag else z[i - 1]
            if end - start + step_mm >= MIN_RUN_MM:
                out.append((start, end))
            start = None
    return out


def _longest(runs: list[tuple[float, float]]) -> tuple[float, float] | None:
    return max(runs, key=lambda r: r[1] - r[0]) if runs else None


def _coarse(plane: np.ndarray, factor: int) -> np.ndarray:
    """Block mean by `factor` (the measurements need ~3 mm pixels, not the series' resolution)."""
    if factor == 1:
        return plane
    rows, cols = (plane.shape[0] // factor) * factor, (plane.shape[1] // factor) * factor
    return plane[:rows, :cols].reshape(rows // factor, factor, cols // factor, factor).mean(axis=(1, 3))


def _sampled_measures(volume: CanonicalVolume) -> tuple[list[SliceMeasure], int, float]:
    """Measures of slices about SLICE_STEP_MM apart: (measures, slices sampled, step in mm)."""
    dz, dy, dx = volume.spacing
    step = max(1, int(round(SLICE_STEP_MM / dz)))
    indices = list(range(0, volume.voxels.shape[0], step))
    if len(indices) > MAX_SLICES:
        indices = [indices[i] for i in np.linspace(0, len(indices) - 1, MAX_SLICES).astype(int)]
    factor = max(1, round(COARSE_PIXEL_MM / max(dy, dx)))
    measures = []
    for k in indices:
        measured = measure_slice(_coarse(volume.voxels[k], factor), k * dz, dy * factor, dx * factor)
        if measured is not None:
            measures.append(measured)
    return measures, len(indices), step * dz


def _is_lung(m: SliceMeasure) -> bool:
    return (
        m.lung_fraction > LUNG_FRACTION
        and m.lung_cm2 > MIN_LUNG_CM2
        and m.body_cm2 > TRUNK_CM2
        and m.skull < SKULL_SCORE
    )


def _is_pelvis(m: SliceMeasure, lung_bottom: float) -> bool:
    # Thick lateral bone well below the lungs: the pelvis (above or at the lungs it is the shoulder girdle).
    return (
        m.lateral_bone_cm2 > PELVIC_BONE_CM2
        and m.body_cm2 > TRUNK_CM2
        and m.z_mm < lung_bottom - 60.0
        and m.lung_fraction < LUNG_FRACTION
    )


def _within(run: tuple[float, float] | None, z_mm: float, step_mm: float) -> bool:
    return run is not None and run[0] <= z_mm <= run[1] + step_mm


def measure_coverage(volume: CanonicalVolume) -> Coverage:
    measures, sampled, step_mm = _sampled_measures(volume)
    anatomical = sum(1 for m in measures if m.anatomical)
    if anatomical < max(1, 0.3 * sampled):
        why = (
            f"no anatomy: {anatomical} of {sampled} sampled slices show a body outline of soft tissue with "
            "fat, bone or lung (random data, an empty scan or a phantom)"
        )
        return Coverage(False, {}, [], None, None, {}, why)
    truncated = sum(1 for m in measures if m.anatomical and m.truncated)
    if truncated > 0.5 * anatomical:
        why = (
            f"the field of view cuts the body on {truncated} of {anatomical} slices (a crop or a small-field "
            "reconstruction): the cross-sections cannot place it"
        )
        return Coverage(True, {}, [], None, None, {}, why)
    z = [m.z_mm for m in measures]
    lung = _longest(_runs([_is_lung(m) for m in measures], z, step_mm))
    skull = _longest(_runs([m.skull > SKULL_SCORE for m in measures], z, step_mm))
    lung_bottom = lung[0] if lung is not None else math.inf
    pelvis = _longest(_runs([_is_pelvis(m, lung_bottom) for m in measures], z, step_mm))
    above_legs = pelvis[0] if pelvis is not None else lung_bottom
    legs = _longest(_runs([m.limbs and m.z_mm < above_legs for m in measures], z, step_mm))
    bottom, top = z[0], z[-1] + step_mm
    segments = {region: 0.0 for region in SEGMENTS}
    landmarks: list[tuple[str, float]] = []
    if legs is not None:
        segments["legs"] = legs[1] - legs[0] + step_mm
    if pelvis is not None:
        segments["pelvis"] = pelvis[1] - pelvis[0] + step_mm
        if pelvis[0] > bottom + step_mm:
            landmarks.append(("pelvic floor", pelvis[0]))
        landmarks.append(("iliac crest", pelvis[1]))
    if lung is not None:
        segments["chest"] = lung[1] - lung[0] + step_mm
        if lung[0] > bottom + step_mm:
            landmarks.append(("diaphragm", lung[0]))
        if lung[1] < top - 2 * step_mm:
            landmarks.append(("lung apex", lung[1]))
    if skull is not None:
        segments["head"] = top - skull[0]
        landmarks.append(("skull base", skull[0]))
        largest = max(m.body_cm2 for m in measures)
        if skull[1] < top - 2 * step_mm or measures[-1].body_cm2 < 0.6 * largest:
            landmarks.append(("vertex", skull[1]))
    # The rest: trunk slices below the lungs are abdomen; small cross-sections, and anything above the
    # lungs, are neck (or, below a cranial vault, the face and skull base).
    for m in measures:
        if not m.anatomical or _within(lung, m.z_mm, step_mm) or _within(pelvis, m.z_mm, step_mm):
            continue
        if _within(legs, m.z_mm, step_mm) or (skull is not None and m.z_mm >= skull[0]):
            continue
        above_lungs = lung is not None and m.z_mm > lung[1]
        if above_lungs or (m.body_cm2 < TRUNK_CM2 and lung is None) or m.z_mm >= lung_bottom:
            segments["neck"] += step_mm
        else:
            segments["abdomen"] += step_mm
    landmarks.sort(key=lambda item: item[1])
    probabilities, why = body_part_from_segments(segments, {name for name, _ in landmarks})
    covered = [r for r in SEGMENTS if segments[r] > MIN_RUN_MM]
    return Coverage(
        True,
        segments,
        landmarks,
        covered[0] if covered else None,
        covered[-1] if covered else None,
        probabilities,
        why,
    )


def body_part_from_segments(segments: dict[str, float], landmarks: set[str]) -> tuple[dict[str, float], str]:
    """The body-part table (docs/classification.md): the covered segments, in mm, and the landmarks reached
    make one of the 16 classes; the answer is a distribution (the class, and its neighbours a little)."""
    head, neck, chest = segments["head"], segments["neck"], segments["chest"]
    abdomen, pelvis, legs = segments["abdomen"], segments["pelvis"], segments["legs"]
    full_chest = "lung apex" in landmarks or chest >= 180.0
    full_pelvis = "pelvic floor" in landmarks or pelvis >= 120.0
    scores: dict[str, float] = {}

    def vote(name: str, weight: float) -> None:
        scores[name] = scores.get(name, 0.0) + weight

    if head >= 30.0 and chest < 0.5 * (head + neck):
        if chest < 20.0 and neck <= 130.0:
            vote("Head", 1.0)
        else:
            vote("Head and neck", 1.0)
    elif neck >= 60.0 and chest < 0.5 * neck and abdomen + pelvis < 30.0:
        vote("Neck", 1.0)
    elif chest >= max(abdomen, 40.0) and pelvis < 60.0:
        vote("Chest", 1.0)
    elif full_chest and full_pelvis and abdomen >= 60.0:
        vote("Chest-abdomen-pelvis", 1.0)
    elif pelvis >= 40.0 and abdomen < 80.0 and chest < 30.0:
        vote("Pelvis", 1.0)
    elif abdomen >= 80.0 and (full_pelvis or pelvis >= 60.0) and chest < 0.5 * abdomen:
        vote("Abdomen-pelvis", 1.0)
    elif abdomen >= 40.0:
        vote("Abdomen", 0.8)
        vote("Abdomen-pelvis" if pelvis >= 40.0 else "Chest", 0.2)
    if legs > max(head, neck, chest, abdomen, pelvis):
        # Legs are outside the 16 classes: a flat answer, so that the result is low confidence.
        scores = {"Pelvis": 0.2}
    if not scores:
        return {}, "the covered segments fit no body part of the table"
    smoothed = {name: scores.get(name, 0.0) + 0.02 for name in BODY_PARTS}
    norm = sum(smoothed.values())
    covered = ", ".join(f"{k} {v:.0f} mm" for k, v in segments.items() if v >= MIN_RUN_MM)
    return {name: value / norm for name, value in smoothed.items()}, f"covers {covered}"

"""IV contrast from the physics of blood: find blood-pool vessels in the volume and measure their HU.

Unenhanced blood is 30-60 HU; blood enhanced by IV contrast is 120-500 HU (arterial or venous phase). The
aorta, the vena cava and the iliac vessels are round, homogeneous, 10-45 mm across, surrounded by fat or
lung (not by bone), and run along the spine for centimetres. The estimator looks for exactly that:

1. per axial slice (every ~5 mm): the body outline, the vertebral body (bone on the posterior midline),
   and round homogeneous regions of -20..700 HU of vessel size that stand out from their surroundings
   and are not enclosed by bone (a vertebral body has a cortical ring; a vessel has fat around it);
2. regions at the same place on consecutive slices are linked into tubes; a tube shorter than 20 mm is
   dropped (a bowel loop cut across, a lymph node);
3. tubes in front of and beside the vertebral body are vessel-like; the one nearest the aorta's usual
   place (anterior, slightly left of the vertebral body) is the primary evidence.

Oral contrast fills bowel, which does not run beside the spine as one round tube; calcium, metal and bone
fail the homogeneity, ring or HU tests. The answer carries its evidence ("aorta-like tube, 24 mm, median
212 HU, 60 mm long, 38 mm anterior and 17 mm left of the vertebral body"). Where no vessel is found (a
head, a small field of view, a slab without the spine) the estimator says so and other sources decide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from node.classify.canonical import CanonicalVolume
from node.classify.morphology import fill_holes

# HU where a logistic on the blood's HU crosses 0.5, and its scale: 60 HU -> 0.05, 130 HU -> 0.95.
CONTRAST_MIDPOINT_HU = 95.0
CONTRAST_SCALE_HU = 12.0
# Sampling: analyse slices about this far apart (mm), at most this many.
SLICE_STEP_MM = 5.0
MAX_SLICES = 80
# A vessel region.
MIN_DIAMETER_MM = 10.0
MAX_DIAMETER_MM = 45.0
MAX_ASPECT = 1.7
MIN_FILL = 0.55  # region area / bounding box area (a disc: 0.785)
LOW_HU, HIGH_HU = -20.0, 700.0
MAX_LOCAL_STD_HU = 40.0
MAX_RING_BONE_FRACTION = 0.25  # share of the surrounding ring above 400 HU
MIN_CONTRAST_TO_RING_HU = 40.0  # the region must be this much denser than its surroundings
# A tube: linked regions spanning at least this length.
MIN_TUBE_MM = 20.0
MAX_TUBE_HU_SPREAD = 90.0  # interquartile range of the regions' HU along the tube
# Where blood-pool vessels lie relative to the vertebral body's centre (mm; +posterior, +patient's left).
VESSEL_ZONE_POSTERIOR = (-140.0, -5.0)
VESSEL_ZONE_LEFT = (-60.0, 70.0)
AORTA_TYPICAL = (-35.0, 18.0)
# A region centred this close to the vertebral body's centre is bone (the body itself, a disc), not a vessel.
MIN_DISTANCE_FROM_SPINE_MM = 24.0


@dataclass(frozen=True)
class Region:
    slice_index: int
    z_mm: float
    diameter_mm: float
    hu: float
    ring_hu: float
    y_mm: float
    x_mm: float
    # Relative to the vertebral body's centre on that slice (None when no vertebral body was found).
    posterior_mm: float | None
    left_mm: float | None


@dataclass
class Tube:
    regions: list[Region] = field(default_factory=list)

    @property
    def length_mm(self) -> float:
        return self.regions[-1].z_mm - self.regions[0].z_mm

    @property
    def hu(self) -> float:
        return float(np.median([r.hu for r in self.regions]))

    @property
    def hu_spread(self) -> float:
        values = [r.hu for r in self.regions]
        return float(np.percentile(values, 75) - np.percentile(values, 25))

    @property
    def diameter_mm(self) -> float:
        return float(np.median([r.diameter_mm for r in self.regions]))

    def relative_position(self) -> tuple[float, float] | None:
        rel = [(r.posterior_mm, r.left_mm) for r in self.regions if r.posterior_mm is not None]
        if len(rel) < max(1, len(self.regions) // 2):
            return None
        arr = np.array(rel, dtype=float)
        return float(np.median(arr[:, 0])), float(np.median(arr[:, 1]))


@dataclass(frozen=True)
class BloodPool:
    """The estimator's answer: P(IV contrast) from the blood's HU, with its evidence; or why there is none."""

    found: bool
    probability_yes: float | None
    evidence: dict[str, Any]
    reason: str

    def as_audit(self) -> dict[str, Any]:
        out: dict[str, Any] = {"found": self.found, "reason": self.reason, **self.evidence}
        if self.probability_yes is not None:
            out["probability_yes"] = round(self.probability_yes, 4)
        return out


def contrast_probability(hu: float) -> float:
    """P(IV contrast | blood HU): a logistic through 95 HU (unenhanced blood 30-60, enhanced 120-500)."""
    return 1.0 / (1.0 + math.exp(-(hu - CONTRAST_MIDPOINT_HU) / CONTRAST_SCALE_HU))


def measure_blood(volume: CanonicalVolume, below_mm: float | None = None) -> BloodPool:
    """Find blood-pool tubes and measure the most aorta-like one. `below_mm`: only slices below this z
    (the skull base, when the coverage found one: no great vessel runs beside the spine inside the head)."""
    dz, dy, dx = volume.spacing
    step = max(1, int(round(SLICE_STEP_MM / dz)))
    last = volume.voxels.shape[0] if below_mm is None else min(volume.voxels.shape[0], int(below_mm / dz))
    indices = list(range(0, last, step))
    if not indices:
        return BloodPool(False, None, {"tubes": 0, "regions": 0}, "no slice below the skull base to search")
    if len(indices) > MAX_SLICES:
        indices = [indices[i] for i in np.linspace(0, len(indices) - 1, MAX_SLICES).astype(int)]
    regions: list[Region] = []
    for k in indices:
        regions.extend(_slice_regions(volume.voxels[k], k, k * dz, dy, dx))
    tubes = [t for t in _link(regions, step * dz) if t.length_mm >= MIN_TUBE_MM]
    tubes = [t for t in tubes if t.hu_spread <= MAX_TUBE_HU_SPREAD]
    vessels = [(t, pos) for t in tubes if (pos := t.relative_position()) is not None and _in_vessel_zone(pos)]
    if not vessels:
        why = "no vessel-like tube beside the spine" if tubes else "no round homogeneous tube of vessel size"
        return BloodPool(False, None, {"tubes": len(tubes), "regions": len(regions)}, why)
    best, pos = min(vessels, key=lambda tp: _aorta_distance(tp[1]) - 0.5 * tp[0].length_mm)
    hu = best.hu
    evidence = {
        "structure": "aorta-like tube" if _aorta_distance(pos) < 45.0 else "vessel-like tube",
        "hu_median": round(hu, 1),
        "hu_iqr": round(best.hu_spread, 1),
        "diameter_mm": round(best.diameter_mm, 1),
        "length_mm": round(best.length_mm, 1),
        "z_mm": [round(best.regions[0].z_mm, 1), round(best.regions[-1].z_mm, 1)],
        "slices": [best.regions[0].slice_index, best.regions[-1].slice_index],
        "anterior_mm": round(-pos[0], 1),
        "left_mm": round(pos[1], 1),
        "other_vessels": [
            {
                "hu_median": round(t.hu, 1),
                "diameter_mm": round(t.diameter_mm, 1),
                "length_mm": round(t.length_mm),
            }
            for t, _ in vessels
            if t is not best
        ][:4],
    }
    side = "left" if pos[1] >= 0 else "right"
    reason = (
        f"{evidence['structure']}, {best.diameter_mm:.0f} mm, median {hu:.0f} HU "
        f"over {best.length_mm:.0f} mm, "
        f"{-pos[0]:.0f} mm anterior and {abs(pos[1]):.0f} mm {side} of the vertebral body"
    )
    return BloodPool(True, contrast_probability(hu), evidence, reason)


def _in_vessel_zone(pos: tuple[float, float]) -> bool:
    posterior, left = pos
    return (
        VESSEL_ZONE_POSTERIOR[0] <= posterior <= VESSEL_ZONE_POSTERIOR[1]
        and VESSEL_ZONE_LEFT[0] <= left <= VESSEL_ZONE_LEFT[1]
    )


def _aorta_distance(pos: tuple[float, float]) -> float:
    return math.hypot(pos[0] - AORTA_TYPICAL[0], pos[1] - AORTA_TYPICAL[1])


def _body_mask(s: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice]] | None:
    """The patient's outline (largest region above -300 HU, holes filled) and its bounding box."""
    body = s > -300
    lab, n = ndi.label(body)
    if n == 0:
        return None
    largest = int(np.argmax(np.bincount(lab.ravel())[1:])) + 1
    keep = lab == largest
    box = ndi.find_objects(keep.astype(np.uint8))[0]
    filled = np.zeros_like(keep)
    filled[box] = fill_holes(keep[box])
    return filled, box


def _vertebral_body(
    s: np.ndarray, body: np.ndarray, box: tuple[slice, slice], dy: float, dx: float
) -> tuple[float, float] | None:
    """Centre (row, col) of the bone region nearest the posterior midline, if there is one."""
    mid_y = (box[0].start + box[0].stop) / 2.0
    mid_x = (box[1].start + box[1].stop) / 2.0
    half = int(45.0 / dx) + 1
    y0, y1 = int(mid_y), box[0].stop
    x0, x1 = max(0, int(mid_x) - half), min(s.shape[1], int(mid_x) + half)
    if y1 - y0 < 3 or x1 - x0 < 3:
        return None
    bone = ndi.binary_opening((s[y0:y1, x0:x1] > 180) & body[y0:y1, x0:x1])
    lab, n = ndi.label(bone)
    if n == 0:
        return None
    flat = lab.ravel()
    counts = np.bincount(flat, minlength=n + 1).astype(float)
    rows, cols = np.indices(lab.shape)
    cy = np.bincount(flat, weights=rows.ravel(), minlength=n + 1) / np.maximum(counts, 1)
    cx = np.bincount(flat, weights=cols.ravel(), minlength=n + 1) / np.maximum(counts, 1)
    best: tuple[float, float, float] | None = None
    for i in range(1, n + 1):
        if counts[i] * dy * dx < 150.0:  # specks, small ribs' ends
            continue
        lateral = abs(cx[i] + x0 - mid_x) * dx
        if lateral <= 40.0 and (best is None or lateral < best[0]):
            best = (lateral, cy[i] + y0, cx[i] + x0)
    return None if best is None else (best[1], best[2])


def _slice_regions(s: np.ndarray, k: int, z_mm: float, dy: float, dx: float) -> list[Region]:
    """Vessel-like regions of one axial slice, searched in the window where blood-pool vessels lie
    relative to the vertebral body (a slice without a vertebral body has none: head, upper neck, legs)."""
    outline = _body_mask(s)
    if outline is None:
        return []
    body, box = outline
    spine = _vertebral_body(s, body, box, dy, dx)
    if spine is None:
        return []
    margin = MAX_DIAMETER_MM / 2 + 6.0
    y0 = max(0, int((spine[0] * dy + VESSEL_ZONE_POSTERIOR[0] - margin) / dy))
    y1 = min(s.shape[0], int((spine[0] * dy + VESSEL_ZONE_POSTERIOR[1] + margin) / dy) + 1)
    x0 = max(0, int((spine[1] * dx + VESSEL_ZONE_LEFT[0] - margin) / dx))
    x1 = min(s.shape[1], int((spine[1] * dx + VESSEL_ZONE_LEFT[1] + margin) / dx) + 1)
    if y1 - y0 < 8 or x1 - x0 < 8:
        return []
    window = s[y0:y1, x0:x1]
    sm = ndi.uniform_filter(window, size=3)  # a 3x3 mean: noise down, edges kept well enough
    mean = ndi.uniform_filter(sm, 5)
    std = np.sqrt(np.maximum(ndi.uniform_filter(sm * sm, 5) - mean * mean, 0.0))
    inside = ndi.binary_erosion(body[y0:y1, x0:x1], iterations=3, border_value=1)
    candidates = (sm > LOW_HU) & (sm < HIGH_HU) & (std < MAX_LOCAL_STD_HU) & inside
    lab, _ = ndi.label(candidates)
    # Areas first (one pass): most regions are far too small or too large to be a vessel's core, and the
    # morphology below is what costs.
    core_mm2 = np.bincount(lab.ravel()) * dy * dx
    smallest = 0.3 * math.pi * (MIN_DIAMETER_MM / 2) ** 2
    largest = 1.2 * math.pi * (MAX_DIAMETER_MM / 2) ** 2
    out = []
    for i, box in enumerate(ndi.find_objects(lab), start=1):
        if box is None or not smallest <= core_mm2[i] <= largest:
            continue
        h = (box[0].stop - box[0].start) * dy
        w = (box[1].stop - box[1].start) * dx
        if max(h, w) < MIN_DIAMETER_MM * 0.8 or min(h, w) > MAX_DIAMETER_MM * 1.3:
            continue
        # A margin around the box for the ring.
        by0, by1 = max(0, box[0].start - 6), min(lab.shape[0], box[0].stop + 6)
        bx0, bx1 = max(0, box[1].start - 6), min(lab.shape[1], box[1].stop + 6)
        core = lab[by0:by1, bx0:bx1] == i
        local = sm[by0:by1, bx0:bx1]
        # The homogeneity filter trims a rim of about its half-width: grow the core back over voxels of
        # the same density, so that the diameter is the vessel's.
        core_hu = float(np.median(local[core]))
        m = core | (ndi.binary_dilation(core, iterations=2) & (np.abs(local - core_hu) < 60.0))
        area = float(np.count_nonzero(m)) * dy * dx
        diameter = 2.0 * math.sqrt(area / math.pi)
        if not MIN_DIAMETER_MM <= diameter <= MAX_DIAMETER_MM:
            continue
        if max(h, w) / max(min(h, w), 1e-6) > MAX_ASPECT or area / (h * w) < MIN_FILL:
            continue
        # The surroundings are judged around the homogeneous core (a vertebral body's core is ringed by
        # cortical bone; a vessel's by fat, lung or soft tissue).
        ring = ndi.binary_dilation(core, iterations=3) & ~ndi.binary_dilation(core, iterations=1)
        ring_hu = local[ring]
        if ring_hu.size == 0 or float(np.mean(ring_hu > 400.0)) > MAX_RING_BONE_FRACTION:
            continue
        inner = ndi.binary_erosion(core)
        raw = window[by0:by1, bx0:bx1]
        hu = float(np.median(raw[inner])) if np.count_nonzero(inner) > 3 else float(np.median(raw[core]))
        ring_mean = float(np.mean(ring_hu))
        if ring_mean > hu - MIN_CONTRAST_TO_RING_HU:
            continue
        ys, xs = np.nonzero(m)
        cy, cx = ys.mean() + by0 + y0, xs.mean() + bx0 + x0
        posterior, left = (cy - spine[0]) * dy, (cx - spine[1]) * dx
        if math.hypot(posterior, left) < MIN_DISTANCE_FROM_SPINE_MM:  # the vertebral body itself
            continue
        out.append(Region(k, z_mm, diameter, hu, ring_mean, cy * dy, cx * dx, posterior, left))
    return out


def _link(regions: list[Region], gap_mm: float) -> list[Tube]:
    """Regions at the same place (within about half a diameter) on nearby slices become one tube."""
    tubes: list[Tube] = []
    open_tubes: list[Tube] = []
    by_slice: dict[int, list[Region]] = {}
    for r in regions:
        by_slice.setdefault(r.slice_index, []).append(r)
    for k in sorted(by_slice):
        z = by_slice[k][0].z_mm
        open_tubes = [t for t in open_tubes if z - t.regions[-1].z_mm <= 2.2 * gap_mm]
        taken: set[int] = set()
        for r in sorted(by_slice[k], key=lambda r: -r.diameter_mm):
            best: tuple[float, Tube] | None = None
            for t in open_tubes:
                if id(t) in taken:
                    continue
                last = t.regions[-1]
                distance = math.hypot(r.y_mm - last.y_mm, r.x_mm - last.x_mm)
                similar = abs(r.diameter_mm - last.diameter_mm) < 12.0 and abs(r.hu - last.hu) < 80.0
                if (
                    similar
                    and distance < max(8.0, 0.6 * r.diameter_mm)
                    and (best is None or distance < best[0])
                ):
                    best = (distance, t)
            if best is not None:
                best[1].regions.append(r)
                taken.add(id(best[1]))
            else:
                tube = Tube([r])
                tubes.append(tube)
                open_tubes.append(tube)
                taken.add(id(tube))
    return tubes

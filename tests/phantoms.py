"""Synthetic CT phantoms with known HU and geometry, for the anatomical measurements' unit tests.

A trunk phantom is an axial stack (canonical axes: z up, y anterior->posterior, x right->left) of an
elliptical body of soft tissue under a fat layer, a vertebral body (cortical ring around cancellous
bone) on the posterior midline, and an aorta: a cylinder of chosen HU, in fat, in front of and left of
the vertebral body. Extra objects (a bowel loop of oral contrast, calcium) can be added.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from node.classify.canonical import CanonicalVolume

AIR, FAT, SOFT, CANCELLOUS, CORTEX = -1000.0, -100.0, 40.0, 220.0, 700.0


@dataclass(frozen=True)
class Disc:
    """A cylinder along z: centre (y, x) in mm, radius in mm, HU, from slice z0 to z1 (None: all)."""

    y: float
    x: float
    radius: float
    hu: float
    z0: int | None = None
    z1: int | None = None


def trunk_phantom(
    aorta_hu: float | None = 40.0,
    *,
    slices: int = 40,
    spacing: tuple[float, float, float] = (5.0, 1.5, 1.5),
    size: int = 256,
    extra: tuple[Disc, ...] = (),
    noise_hu: float = 8.0,
    seed: int = 0,
) -> CanonicalVolume:
    dz, dy, dx = spacing
    yy, xx = np.mgrid[0:size, 0:size]
    y_mm, x_mm = yy * dy, xx * dx
    cy, cx = size * dy / 2, size * dx / 2
    body = ((y_mm - cy) / 110.0) ** 2 + ((x_mm - cx) / 160.0) ** 2 <= 1.0
    inner = ((y_mm - cy) / 95.0) ** 2 + ((x_mm - cx) / 145.0) ** 2 <= 1.0
    plane = np.full((size, size), AIR, dtype=np.float32)
    plane[body] = FAT
    plane[inner] = SOFT
    # Retroperitoneal / mediastinal fat around the spine and the aorta.
    spine_y, spine_x = cy + 55.0, cx
    fat_pad = ((y_mm - (spine_y - 30.0)) / 35.0) ** 2 + ((x_mm - (spine_x + 10.0)) / 45.0) ** 2 <= 1.0
    plane[fat_pad & inner] = FAT
    vertebra = (y_mm - spine_y) ** 2 + (x_mm - spine_x) ** 2
    plane[vertebra <= 20.0**2] = CORTEX
    plane[vertebra <= 17.0**2] = CANCELLOUS
    volume = np.repeat(plane[None], slices, axis=0)
    discs = list(extra)
    if aorta_hu is not None:
        discs.append(Disc(spine_y - 38.0, spine_x + 18.0, 12.0, aorta_hu))
    for disc in discs:
        mask = (y_mm - disc.y) ** 2 + (x_mm - disc.x) ** 2 <= disc.radius**2
        volume[disc.z0 : disc.z1, mask] = disc.hu
    rng = np.random.default_rng(seed)
    volume += rng.normal(0.0, noise_hu, volume.shape).astype(np.float32)
    return CanonicalVolume(volume, spacing, "axial")


def spine_position(
    size: int = 256, spacing: tuple[float, float, float] = (5.0, 1.5, 1.5)
) -> tuple[float, float]:
    """(y, x) in mm of the phantom's vertebral body centre."""
    return size * spacing[1] / 2 + 55.0, size * spacing[2] / 2


BONE, BRAIN, LUNG = 600.0, 35.0, -850.0


def _plane(region: str, size: int, d: float) -> np.ndarray:
    """One axial slice of a region of a simple body: pelvis, abdomen, chest, neck, head (d mm per pixel)."""
    yy, xx = np.mgrid[0:size, 0:size]
    y, x = (yy - size / 2) * d, (xx - size / 2) * d
    plane = np.full((size, size), AIR, dtype=np.float32)

    def ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
        return bool_array(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0)

    if region == "head":
        plane[ellipse(0, 0, 95, 80)] = BONE
        plane[ellipse(0, 0, 88, 73)] = BRAIN
        return plane
    if region == "neck":
        plane[ellipse(0, 0, 55, 60)] = FAT
        plane[ellipse(0, 0, 50, 55)] = SOFT
        plane[ellipse(25, 0, 9, 9)] = BONE
        return plane
    plane[ellipse(0, 0, 110, 165)] = FAT  # subcutaneous fat
    plane[ellipse(0, 0, 100, 155)] = SOFT
    plane[ellipse(60, 0, 18, 18)] = BONE  # vertebral body
    if region == "chest":
        plane[ellipse(-5, -75, 70, 55)] = LUNG
        plane[ellipse(-5, 75, 70, 55)] = LUNG
    if region == "pelvis":
        plane[ellipse(10, -110, 40, 14)] = BONE  # iliac wings
        plane[ellipse(10, 110, 40, 14)] = BONE
    return plane


def bool_array(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=bool)


def body_phantom(
    segments: list[tuple[str, float]], *, slice_mm: float = 5.0, pixel_mm: float = 2.0, size: int = 200
) -> CanonicalVolume:
    """A canonical volume (z from the feet end) made of the regions in order, each this many mm long."""
    planes = []
    for region, length in segments:
        planes += [_plane(region, size, pixel_mm)] * max(1, int(round(length / slice_mm)))
    return CanonicalVolume(np.stack(planes), (slice_mm, pixel_mm, pixel_mm), "axial")

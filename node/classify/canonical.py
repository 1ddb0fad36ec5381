"""A volume turned to the patient's axes: axis 0 inferior -> superior, axis 1 anterior -> posterior, axis 2
right -> left (DICOM LPS: +z, +y, +x), whatever plane the series was acquired in.

The anatomical measurements (blood pool, coverage) reason in the patient's frame ("next to the spine",
"head-to-feet"); a coronal or sagittal series is turned, not resampled: each array axis is matched to the
patient axis it runs closest to (an oblique or tilted series keeps its small angle).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from node.volume import Volume

# Patient axes in LPS order: 0 = x (right -> left), 1 = y (anterior -> posterior),
# 2 = z (inferior -> superior).
_TARGET = (2, 1, 0)  # canonical array axis 0 is patient z, axis 1 patient y, axis 2 patient x


@dataclass(frozen=True)
class CanonicalVolume:
    """HU voxels indexed [z, y, x]: z ascending = towards the head, y ascending = towards the back,
    x ascending = towards the patient's left. `spacing` in mm along (z, y, x)."""

    voxels: np.ndarray
    spacing: tuple[float, float, float]
    # Which plane the slices were acquired in: the patient axis of the original slice normal.
    acquired: str

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        shape = self.voxels.shape
        return (shape[0] * self.spacing[0], shape[1] * self.spacing[1], shape[2] * self.spacing[2])


def canonical(volume: Volume) -> CanonicalVolume:
    return turn(volume.voxels, volume.spacing, volume.row_cosine, volume.column_cosine)


def turn(
    voxels_in: np.ndarray,
    spacing_in: Sequence[float],
    row_cosine: Sequence[float],
    column_cosine: Sequence[float],
) -> CanonicalVolume:
    """(slices, rows, cols) voxels with DICOM's row/column cosines, turned to the patient's axes."""
    row = np.asarray(row_cosine, dtype=float)  # direction of increasing column index (array axis 2)
    col = np.asarray(column_cosine, dtype=float)  # direction of increasing row index (array axis 1)
    normal = np.cross(row, col)  # direction of increasing slice index (array axis 0)
    directions = {0: normal, 1: col, 2: row}
    # For each array axis: the patient axis it follows most closely, and whether it runs along it or against.
    patient_axis = {a: int(np.argmax(np.abs(d))) for a, d in directions.items()}
    if len(set(patient_axis.values())) != 3:
        # Two array axes closest to the same patient axis (a 45-degree oblique): keep the acquisition order.
        patient_axis = {0: 2, 1: 1, 2: 0}
    sign = {a: float(np.sign(directions[a][patient_axis[a]]) or 1.0) for a in directions}
    # Array axis that carries each canonical axis.
    source_of = {
        target: next(a for a, p in patient_axis.items() if p == _TARGET[target]) for target in range(3)
    }
    voxels = np.transpose(voxels_in, (source_of[0], source_of[1], source_of[2]))
    for target in range(3):
        if sign[source_of[target]] < 0:
            voxels = np.flip(voxels, axis=target)
    spacing = tuple(float(spacing_in[source_of[t]]) for t in range(3))
    acquired = {2: "axial", 1: "coronal", 0: "sagittal"}[patient_axis[0]]
    return CanonicalVolume(np.ascontiguousarray(voxels), (spacing[0], spacing[1], spacing[2]), acquired)

"""The classifier's vocabularies: one tuple of class names per task, in the order of the network's outputs.

The order is part of a model package's contract (configs/metadata.json repeats it and loading checks it).
"""

from __future__ import annotations

BODY_PARTS: tuple[str, ...] = (
    "Head",
    "Head and face",
    "Face/Orbits/Sinus",
    "Temporal bone",
    "Head and neck",
    "Neck",
    "C-spine",
    "C and T spine",
    "T-spine",
    "T and L spine",
    "L-spine",
    "Chest",
    "Chest-abdomen-pelvis",
    "Abdomen",
    "Abdomen-pelvis",
    "Pelvis",
)
AXES: tuple[str, ...] = ("axial", "coronal", "sagittal")
CONTRAST: tuple[str, ...] = ("no", "yes")

# Task name -> classes. Task names are the keys used everywhere: rules (prediction.body_part), audit.
TASKS: dict[str, tuple[str, ...]] = {"body_part": BODY_PARTS, "axis": AXES, "contrast": CONTRAST}

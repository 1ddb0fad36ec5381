"""The classifier's vocabularies: one tuple of class names per task, in the order of the network's outputs.

The order is part of a model package's contract (configs/metadata.json repeats it and loading checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

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


# ---------------------------------------------------------------------------------------------- codes
#
# How each class is written where DICOM wants a term or a coded concept: Body Part Examined (0018,0015)
# defined terms (PS3.16 Annex L, Table L-1) and SNOMED CT concepts of CID 4030/4031 for the SR. Every code
# below was checked against pydicom's copy of the DICOM code tables (pydicom.sr.codedict; tests/unit/
# test_labels.py keeps them in step); where no concept exists the entry is None rather than a guess.


@dataclass(frozen=True)
class Code:
    """A coded concept as an SR writes it: (code value, coding scheme designator, code meaning)."""

    value: str
    scheme: str
    meaning: str

    def as_tuple(self) -> tuple[str, str, str]:
        return (self.value, self.scheme, self.meaning)


# Class -> Body Part Examined defined term (CS, at most 16 characters).
BODY_PART_TERMS: dict[str, str] = {
    "Head": "HEAD",
    # Annex L has no term for the head with the face; the face is part of the head (SNOMED too).
    "Head and face": "HEAD",
    # No single term covers face, orbits and sinuses (ORBIT, MAXILLA, JAW, ZYGOMA are each narrower):
    # HEAD is the closest term that contains them all.
    "Face/Orbits/Sinus": "HEAD",
    # IAC (internal auditory canal) is narrower than the temporal bone; HEAD contains it.
    "Temporal bone": "HEAD",
    "Head and neck": "HEADNECK",
    "Neck": "NECK",
    "C-spine": "CSPINE",
    "C and T spine": "CTSPINE",  # Cervico-thoracic spine
    "T-spine": "TSPINE",
    "T and L spine": "TLSPINE",  # Thoraco-lumbar spine
    "L-spine": "LSPINE",
    "Chest": "CHEST",
    "Chest-abdomen-pelvis": "CHESTABDPELVIS",
    "Abdomen": "ABDOMEN",
    "Abdomen-pelvis": "ABDOMENPELVIS",
    "Pelvis": "PELVIS",
}

# Class -> anatomic region for the SR (SNOMED CT, CID 4031 Common Anatomic Region unless noted).
BODY_PART_CODES: dict[str, Code] = {
    "Head": Code("69536005", "SCT", "Head"),
    # No SNOMED concept for "head and face": Head contains the face.
    "Head and face": Code("69536005", "SCT", "Head"),
    # No concept for face + orbits + sinuses together; Facial bones (CID 4030/4031) is the CT region.
    "Face/Orbits/Sinus": Code("91397008", "SCT", "Facial bones"),
    # Not in CID 4031; from CID 4028 Craniofacial Anatomic Region (extensible use).
    "Temporal bone": Code("60911003", "SCT", "Temporal Bone"),
    "Head and neck": Code("774007", "SCT", "Head and Neck"),
    "Neck": Code("45048000", "SCT", "Neck"),
    "C-spine": Code("122494005", "SCT", "Cervical spine"),
    "C and T spine": Code("1217257000", "SCT", "Cervico-thoracic spine"),
    "T-spine": Code("122495006", "SCT", "Thoracic spine"),
    "T and L spine": Code("1217256009", "SCT", "Thoraco-lumbar spine"),
    "L-spine": Code("122496007", "SCT", "Lumbar spine"),
    "Chest": Code("816094009", "SCT", "Chest"),
    "Chest-abdomen-pelvis": Code("416775004", "SCT", "Chest, Abdomen and Pelvis"),
    "Abdomen": Code("818981001", "SCT", "Abdomen"),
    "Abdomen-pelvis": Code("818982008", "SCT", "Abdomen and Pelvis"),
    "Pelvis": Code("816092008", "SCT", "Pelvis"),
}

# Class -> scan plane (CID 6312 Cross-sectional Scan Plane Orientation).
AXIS_CODES: dict[str, Code] = {
    "axial": Code("24422004", "SCT", "Axial"),
    "coronal": Code("81654009", "SCT", "Coronal"),
    "sagittal": Code("30730003", "SCT", "Sagittal"),
}
# Also in CID 6312: for a plane flagged oblique by the metadata prior.
OBLIQUE_CODE = Code("21114003", "SCT", "Oblique")

# Class -> answer to "contrast administered" (CID 230 Yes-No). SNOMED has no plain "with contrast"
# qualifier in the DICOM tables; CID 10014 offers only procedures ("CT without contrast", "Diagnostic
# radiography with contrast media"), so the SR states the question and a Yes/No answer instead.
CONTRAST_CODES: dict[str, Code] = {
    "no": Code("373067005", "SCT", "No"),
    "yes": Code("373066001", "SCT", "Yes"),
}
# IV is the route the contrast class is about (CID 11 Route of Administration).
INTRAVENOUS_ROUTE_CODE = Code("47625008", "SCT", "Intravenous route")

# Concept names (the questions) for the SR's content items, one per task.
TASK_CONCEPTS: dict[str, Code] = {
    # As the CT Radiation Dose SR names the scanned region (values from CID 4030/4031).
    "body_part": Code("123014", "DCM", "Target Region"),
    "axis": Code("130546", "DCM", "Cross-sectional scan plane orientation"),
    # From CID 3409 Drug/Contrast Administration: the closest coded question that exists.
    "contrast": Code("122086", "DCM", "Contrast administered"),
}

# Task -> class -> code, for code that writes any task.
TASK_CODES: dict[str, dict[str, Code]] = {
    "body_part": BODY_PART_CODES,
    "axis": AXIS_CODES,
    "contrast": CONTRAST_CODES,
}

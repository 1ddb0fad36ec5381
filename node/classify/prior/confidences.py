"""Confidences and limits of the prior: what each attribute's word is worth, how sources combine, and
the axis tolerances. docs/prior.md gives the reasons."""

from __future__ import annotations

BODY_PART_EXAMINED_CONFIDENCE = 0.8
BODY_PART_NEAR_CONFIDENCE = 0.5  # BodyPartExamined outside the vocabulary, read as its closest class
# Free-text sources, most specific to the series first. Contrast is a property of one series, so the
# study-level texts (a study may hold a plain and an enhanced series) count less for it.
DESCRIPTION_SOURCES: tuple[tuple[str, float], ...] = (
    ("SeriesDescription", 0.7),
    ("ProtocolName", 0.65),
    ("StudyDescription", 0.65),
    ("RequestedProcedureDescription", 0.6),
    ("PerformedProcedureStepDescription", 0.6),
)
STUDY_LEVEL_SOURCES = frozenset(
    {"StudyDescription", "RequestedProcedureDescription", "PerformedProcedureStepDescription"}
)
STUDY_LEVEL_CONTRAST_PENALTY = 0.1
# How indirect a description's words are: an organ inside a class's region, a region only near a class.
KIND_PENALTY = {"region": 0.0, "within": 0.1, "near": 0.2}
CLOSEST_PENALTY = (
    0.1  # combined regions with no class of their own, read as the smallest class containing them
)
CONTRAST_EXPLICIT = 0.7  # W, WO, WITH CONTRAST, NON CON, C+, C-, ...
CONTRAST_IMPLIED = 0.6  # ARTERIAL, PORTAL, CTA, PE, ... (a phase or an angiography implies IV contrast)
CONTRAST_TAG = 0.8  # ContrastBolusAgent / Route / Volume / Ingredient filled in
CONTRAST_TAG_IV = 0.9  # ... and the route (or the agent's text) says intravenous
CONTRAST_TAG_NONE = 0.6  # ContrastBolusAgent says NONE / NO
CONTRAST_USAGE = 0.85  # enhanced CT: ContrastBolusUsageSequence > ContrastBolusAgentAdministered YES/NO
AXIS_TEXT_CONFIDENCE = 0.5  # no IOP: SeriesDescription / ProtocolName say AX, COR, SAG
AXIS_IMAGE_TYPE_CONFIDENCE = 0.3  # no IOP: ImageType AXIAL (a CT acquisition type, often kept on reformats)
AGREE_BONUS = 0.05  # per further source with the same label
CONFLICT_PENALTY = 0.15  # per source with a label that contradicts the winner
MAX_COMBINED = 0.95
MIN_COMBINED = 0.1

DEFAULT_OBLIQUE_TOLERANCE_DEGREES = 10.0
# A gantry-tilted axial acquisition rotates the slice about the patient's left-right axis; scanners tilt
# up to about 30 degrees. Such a series is axial to a radiologist, only flagged oblique.
DEFAULT_GANTRY_TILT_LIMIT_DEGREES = 30.0
AXIS_GANTRY_TILT_CONFIDENCE = 0.9
# Other obliques: (obliquity up to, confidence); 54.7 degrees is the most a nearest axis can be away.
AXIS_OBLIQUE_CONFIDENCE: tuple[tuple[float, float], ...] = ((30.0, 0.6), (45.0, 0.5), (55.0, 0.4))

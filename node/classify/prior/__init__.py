"""The metadata prior: what a series' DICOM attributes say about its body part, axis and contrast.

The prior reads the header only and is kept apart from the image model, so that the two can be compared:
a disagreement between them is a result in its own right (routed to QA, shown in the SR). Tags are read
as what they say, even when they are wrong (BodyPartExamined BREAST on a head-and-neck series says
Chest): the image decides what is true. docs/prior.md has the tables, confidences and their reasons.

    prior = read_prior(header)              # header: one instance of the series, stop_before_pixels
    prior.axis.label, prior.axis.confidence, prior.axis.evidence
    facts.update(prior.as_facts())          # prior.body_part, prior.axis_oblique, ... for routing rules

Evidence never quotes a patient-identifying attribute, nor free text beyond the words that matched the
vocabulary (descriptions are free text and sometimes carry names).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydicom.dataset import Dataset

from node.classify.prior.axis import Orientation, axis_answer, orientation_of
from node.classify.prior.body_part import (
    body_part_answer,
    body_part_from_examined,
    body_part_from_text,
    body_parts_overlap,
    class_for_atoms,
)
from node.classify.prior.body_vocabulary import CLASS_ATOMS, COARSE_REGIONS, Kind
from node.classify.prior.confidences import (
    AGREE_BONUS,
    AXIS_GANTRY_TILT_CONFIDENCE,
    AXIS_IMAGE_TYPE_CONFIDENCE,
    AXIS_OBLIQUE_CONFIDENCE,
    AXIS_TEXT_CONFIDENCE,
    BODY_PART_EXAMINED_CONFIDENCE,
    BODY_PART_NEAR_CONFIDENCE,
    CLOSEST_PENALTY,
    CONFLICT_PENALTY,
    CONTRAST_EXPLICIT,
    CONTRAST_IMPLIED,
    CONTRAST_TAG,
    CONTRAST_TAG_IV,
    CONTRAST_TAG_NONE,
    CONTRAST_USAGE,
    DEFAULT_GANTRY_TILT_LIMIT_DEGREES,
    DEFAULT_OBLIQUE_TOLERANCE_DEGREES,
    DESCRIPTION_SOURCES,
    KIND_PENALTY,
    MAX_COMBINED,
    MIN_COMBINED,
    STUDY_LEVEL_CONTRAST_PENALTY,
    STUDY_LEVEL_SOURCES,
)
from node.classify.prior.contrast import ContrastSays, contrast_answer, contrast_from_text
from node.classify.prior.results import PRIOR_VERSION, UNKNOWN, Prior, PriorAnswer
from node.classify.prior.text import TextMatch, words_of

__all__ = [
    "AGREE_BONUS",
    "AXIS_GANTRY_TILT_CONFIDENCE",
    "AXIS_IMAGE_TYPE_CONFIDENCE",
    "AXIS_OBLIQUE_CONFIDENCE",
    "AXIS_TEXT_CONFIDENCE",
    "BODY_PART_EXAMINED_CONFIDENCE",
    "BODY_PART_NEAR_CONFIDENCE",
    "CLASS_ATOMS",
    "CLOSEST_PENALTY",
    "COARSE_REGIONS",
    "CONFLICT_PENALTY",
    "CONTRAST_EXPLICIT",
    "CONTRAST_IMPLIED",
    "CONTRAST_TAG",
    "CONTRAST_TAG_IV",
    "CONTRAST_TAG_NONE",
    "CONTRAST_USAGE",
    "DEFAULT_GANTRY_TILT_LIMIT_DEGREES",
    "DEFAULT_OBLIQUE_TOLERANCE_DEGREES",
    "DESCRIPTION_SOURCES",
    "KIND_PENALTY",
    "MAX_COMBINED",
    "MIN_COMBINED",
    "PRIOR_VERSION",
    "STUDY_LEVEL_CONTRAST_PENALTY",
    "STUDY_LEVEL_SOURCES",
    "UNKNOWN",
    "ContrastSays",
    "Kind",
    "Orientation",
    "Prior",
    "PriorAnswer",
    "TextMatch",
    "body_part_from_examined",
    "body_part_from_text",
    "body_parts_overlap",
    "class_for_atoms",
    "contrast_from_text",
    "orientation_of",
    "read_prior",
    "words_of",
]


def read_prior(
    header: Dataset,
    *,
    iops: Iterable[Sequence[Any]] | None = None,
    oblique_tolerance_degrees: float = DEFAULT_OBLIQUE_TOLERANCE_DEGREES,
    gantry_tilt_limit_degrees: float = DEFAULT_GANTRY_TILT_LIMIT_DEGREES,
) -> Prior:
    """What the header of a series says about its body part, axis and contrast.

    header: the representative instance (read with stop_before_pixels). iops: the Image Orientation
    (Patient) values seen across the series, if known (an enhanced multi-frame header's per-frame values
    are used otherwise). A slice normal more than `oblique_tolerance_degrees` from its nearest patient
    axis is flagged oblique; the label stays the nearest axis, and a rotation about the left-right axis
    up to `gantry_tilt_limit_degrees` (a gantry tilt) keeps a high confidence.
    """
    axis, obliquity, oblique = axis_answer(header, iops, oblique_tolerance_degrees, gantry_tilt_limit_degrees)
    return Prior(
        body_part=body_part_answer(header),
        axis=axis,
        contrast=contrast_answer(header),
        axis_obliquity_degrees=obliquity,
        axis_oblique=oblique,
    )

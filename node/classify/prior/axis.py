"""Reading the imaging axis: the plane of Image Orientation (Patient), obliquity and gantry tilt, and
plane words in ImageType and descriptions when there is no orientation."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from node.classify.labels import AXES
from node.classify.prior.attributes import attribute_number, attribute_text
from node.classify.prior.combine import Vote, combine_votes
from node.classify.prior.confidences import (
    AXIS_GANTRY_TILT_CONFIDENCE,
    AXIS_IMAGE_TYPE_CONFIDENCE,
    AXIS_OBLIQUE_CONFIDENCE,
    AXIS_TEXT_CONFIDENCE,
)
from node.classify.prior.results import PriorAnswer
from node.classify.prior.text import quote_words, scan_text, shown_text, words_of

_AXIS_OF_INDEX = ("sagittal", "coronal", "axial")  # LPS x, y, z: the axis the slice normal runs along
_PATIENT_AXIS = ("x", "y", "z")
assert set(_AXIS_OF_INDEX) == set(AXES)


@dataclass(frozen=True)
class Orientation:
    """The plane of one Image Orientation (Patient)."""

    label: str
    obliquity_degrees: float  # angle between the slice normal and the nearest patient axis
    normal: tuple[float, float, float]
    # angle between the normal and the patient's y-z plane: 0 when the plane is turned only about the
    # left-right (x) axis, which is what a gantry tilt does to an axial slice
    off_x_rotation_degrees: float


def orientation_of(iop: Sequence[Any]) -> Orientation | None:
    """The plane of an Image Orientation (Patient) value, or None when it is not 6 finite numbers
    making two non-parallel directions."""
    if len(iop) != 6:
        return None
    values = [attribute_number(v) for v in iop]
    if any(v is None for v in values):
        return None
    row = [float(v) for v in values[:3] if v is not None]
    col = [float(v) for v in values[3:] if v is not None]
    normal = (
        row[1] * col[2] - row[2] * col[1],
        row[2] * col[0] - row[0] * col[2],
        row[0] * col[1] - row[1] * col[0],
    )
    length = math.sqrt(sum(c * c for c in normal))
    if length < 1e-6:
        return None
    unit = (normal[0] / length, normal[1] / length, normal[2] / length)
    index = max(range(3), key=lambda i: abs(unit[i]))
    obliquity = math.degrees(math.acos(min(1.0, abs(unit[index]))))
    off_x = math.degrees(math.asin(min(1.0, abs(unit[0]))))
    return Orientation(_AXIS_OF_INDEX[index], obliquity, unit, off_x)


def _iop_of(header: Dataset) -> tuple[Any, str] | None:
    """Image Orientation (Patient) of the header and where it was found (top level, or the enhanced
    multi-frame functional groups)."""
    iop = header.get("ImageOrientationPatient")
    if iop is not None:
        return iop, "ImageOrientationPatient"
    for outer in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = header.get(outer)
        if not seq:
            continue
        planes = seq[0].get("PlaneOrientationSequence")
        if planes and planes[0].get("ImageOrientationPatient") is not None:
            return planes[0].ImageOrientationPatient, f"{outer}[0].PlaneOrientationSequence"
    return None


def _per_frame_iops(header: Dataset) -> list[Any]:
    out = []
    for frame in header.get("PerFrameFunctionalGroupsSequence", None) or ():
        planes = frame.get("PlaneOrientationSequence")
        if planes and planes[0].get("ImageOrientationPatient") is not None:
            out.append(planes[0].ImageOrientationPatient)
    return out


def axis_answer(
    header: Dataset,
    iops: Iterable[Sequence[Any]] | None,
    tolerance: float,
    tilt_limit: float,
) -> tuple[PriorAnswer, float | None, bool | None]:
    found = _iop_of(header)
    orientation = orientation_of(found[0]) if found is not None else None
    if found is None or orientation is None:
        answer = _axis_without_iop(header)
        if found is not None:
            answer = PriorAnswer(
                answer.label,
                answer.confidence,
                answer.source,
                f"{found[1]} is malformed; " + answer.evidence,
            )
        return answer, None, None

    where = found[1]
    n = tuple(round(c, 2) + 0.0 for c in orientation.normal)  # + 0.0: no "-0.00"
    axis_name = _PATIENT_AXIS[_AXIS_OF_INDEX.index(orientation.label)]
    evidence = (
        f"normal ({n[0]:.2f}, {n[1]:.2f}, {n[2]:.2f}) is {orientation.obliquity_degrees:.1f}° "
        f"from the patient {axis_name} axis ({orientation.label})"
    )
    oblique = orientation.obliquity_degrees > tolerance
    if not oblique:
        confidence = 1.0 - 0.05 * (orientation.obliquity_degrees / tolerance if tolerance > 0 else 0.0)
        evidence += f", within the {tolerance:g}° tolerance"
    elif (
        orientation.label == "axial"
        and orientation.obliquity_degrees <= tilt_limit
        and orientation.off_x_rotation_degrees <= tolerance
    ):
        confidence = AXIS_GANTRY_TILT_CONFIDENCE
        evidence += (
            f"; beyond the {tolerance:g}° tolerance but a rotation about the left-right axis within "
            f"{tilt_limit:g}°, as a gantry tilt makes: axial, flagged oblique"
        )
        tilt = attribute_number(header.get("GantryDetectorTilt"))
        if tilt is not None and tilt != 0.0:
            evidence += f" (GantryDetectorTilt {tilt:g})"
    else:
        confidence = _oblique_confidence(orientation.obliquity_degrees)
        evidence += f"; oblique (beyond the {tolerance:g}° tolerance): nearest plane"

    image_type = [str(v).strip().upper() for v in (header.get("ImageType") or ())]
    if "LOCALIZER" in image_type:
        confidence = min(confidence, 0.5)
        evidence += "; ImageType LOCALIZER: a projection image, its plane is the projection's"
    # Several orientations in one series (a stack of reformats, a localizer mixed in) weaken the answer.
    seen = [orientation_of(v) for v in (list(iops) if iops is not None else _per_frame_iops(header))]
    labels = sorted({o.label for o in seen if o is not None})
    if len(labels) > 1:
        confidence = min(confidence, 0.5)
        evidence += f"; the series has several planes ({', '.join(labels)})"
    return (
        PriorAnswer(orientation.label, round(confidence, 3), where, evidence),
        orientation.obliquity_degrees,
        oblique,
    )


def _oblique_confidence(obliquity_degrees: float) -> float:
    """Beyond the tolerance and not a gantry tilt: the nearer the plane is to halfway between two axes
    (at most 54.7 degrees from the nearest), the less its nearest axis means."""
    for limit, confidence in AXIS_OBLIQUE_CONFIDENCE:
        if obliquity_degrees <= limit:
            return confidence
    return AXIS_OBLIQUE_CONFIDENCE[-1][1]


_AXIS_WORDS: dict[tuple[str, ...], str] = {}
for _label, _words in (
    ("axial", "AX,AXIAL,AXI,TRA,TRANS,TRANSVERSE,TRANSAXIAL,AXIALE,TRANSVERSAL"),
    ("coronal", "COR,CORONAL,CORO,KORONAR,CORONALE"),
    ("sagittal", "SAG,SAGITTAL,SAGITAL,SAGITTALE"),
):
    for _w in _words.split(","):
        _AXIS_WORDS[(_w,)] = _label


def _axis_without_iop(header: Dataset) -> PriorAnswer:
    votes: list[Vote] = []
    for keyword in ("SeriesDescription", "ProtocolName"):
        text = attribute_text(header, keyword)
        if not text:
            continue
        hits = scan_text(words_of(text), _AXIS_WORDS)
        said = {label for _, label in hits}
        shown = quote_words([shown_text(k) for k, _ in hits])
        if len(said) == 1:
            label = said.pop()
            votes.append(Vote(label, AXIS_TEXT_CONFIDENCE, keyword, f"{keyword} {shown} -> {label}"))
        elif said:
            votes.append(Vote(None, 0.0, keyword, f"{keyword} {shown}: several planes"))
    image_type = [str(v).strip().upper() for v in (header.get("ImageType") or ())]
    if "LOCALIZER" in image_type:
        votes.append(Vote(None, 0.0, "ImageType", "ImageType LOCALIZER: a projection, no slice plane"))
    elif "AXIAL" in image_type:
        votes.append(Vote("axial", AXIS_IMAGE_TYPE_CONFIDENCE, "ImageType", "ImageType 'AXIAL' -> axial"))
    answer = combine_votes(
        votes, nothing="no ImageOrientationPatient, and no plane words in ImageType or descriptions"
    )
    if answer.label is None:
        return answer
    return PriorAnswer(
        answer.label, answer.confidence, answer.source, "no ImageOrientationPatient; " + answer.evidence
    )

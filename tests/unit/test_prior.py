"""The metadata prior: vocabulary of descriptions and tags, axis from orientation, combining sources."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from node.classify.labels import AXES, BODY_PARTS, CONTRAST
from node.classify.prior import (
    CLASS_ATOMS,
    Prior,
    PriorAnswer,
    body_part_from_examined,
    body_part_from_text,
    body_parts_overlap,
    class_for_atoms,
    contrast_from_text,
    orientation_of,
    read_prior,
    words_of,
)

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
CORONAL = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
SAGITTAL = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]


def header(**attributes: object) -> Dataset:
    ds = Dataset()
    ds.Modality = "CT"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def tilted(degrees: float) -> list[float]:
    """An axial IOP whose columns are turned about the patient's left-right axis, as a gantry tilt does."""
    t = math.radians(degrees)
    return [1.0, 0.0, 0.0, 0.0, math.cos(t), -math.sin(t)]


def double_oblique(about_x: float, about_y: float) -> list[float]:
    """An axial IOP turned about x, then about y."""
    a, b = math.radians(about_x), math.radians(about_y)
    row = [math.cos(b), 0.0, -math.sin(b)]
    col = [0.0, math.cos(a), -math.sin(a)]
    # turn col about y by b too
    col = [col[0] * math.cos(b) + col[2] * math.sin(b), col[1], -col[0] * math.sin(b) + col[2] * math.cos(b)]
    return row + col


# ---------------------------------------------------------------------------------------------- words


def test_words_of_rewrites_punctuation_forms() -> None:
    assert words_of("CT HEAD W/O") == ["CT", "HEAD", "<WO>"]
    assert words_of("ct abd/pel w") == ["CT", "ABD", "PEL", "W"]
    assert words_of("HEAD C+") == ["HEAD", "<CPLUS>"]
    assert words_of("HEAD +C") == ["HEAD", "<CPLUS>"]
    assert words_of("HEAD C-") == ["HEAD", "<CMINUS>"]
    assert words_of("C-SPINE") == ["C", "SPINE"]
    assert words_of("C- SPINE") == ["C", "SPINE"]
    assert words_of("C-T SPINE") == ["C", "T", "SPINE"]
    assert words_of("W/ORAL") == ["W", "ORAL"]
    assert words_of("abdomen__w") == ["ABDOMEN", "W"]


# ---------------------------------------------------------------------------------------------- body part

BODY_PART_CASES: list[tuple[str, str]] = [
    ("CT ABD/PEL W", "Abdomen-pelvis"),
    ("ABDOMEN PELVIS", "Abdomen-pelvis"),
    ("ABD PEL", "Abdomen-pelvis"),
    ("CT A/P W CONTRAST", "Abdomen-pelvis"),
    ("ABDOMEN/PELVIS", "Abdomen-pelvis"),
    ("KUB stone protocol", "Abdomen-pelvis"),
    ("THORAX", "Chest"),
    ("CHEST", "Chest"),
    ("LUNG SCREENING LOW DOSE", "Chest"),
    ("CTA CHEST", "Chest"),
    ("PE STUDY", "Chest"),
    ("CT Thorax nativ", "Chest"),
    ("HEAD WO", "Head"),
    ("BRAIN", "Head"),
    ("CT HEAD", "Head"),
    ("CRANIUM", "Head"),
    ("TK - glowy", "Head"),
    ("C-SPINE", "C-spine"),
    ("CSPINE", "C-spine"),
    ("CERVICAL SPINE", "C-spine"),
    ("CT C SPINE WO", "C-spine"),
    ("SPINE CERVICAL", "C-spine"),
    ("T-SPINE", "T-spine"),
    ("THORACIC SPINE", "T-spine"),
    ("L-SPINE", "L-spine"),
    ("LUMBAR", "L-spine"),
    ("LUMBAR SPINE W/O", "L-spine"),
    ("C-T SPINE", "C and T spine"),
    ("C/T SPINE", "C and T spine"),
    ("CERVICAL AND THORACIC SPINE", "C and T spine"),
    ("CERVICOTHORACIC", "C and T spine"),
    ("T-L SPINE", "T and L spine"),
    ("TL SPINE", "T and L spine"),
    ("THORACOLUMBAR SPINE", "T and L spine"),
    ("CAP", "Chest-abdomen-pelvis"),
    ("CT CAP W", "Chest-abdomen-pelvis"),
    ("CHEST ABDOMEN PELVIS", "Chest-abdomen-pelvis"),
    ("CHEST/ABD/PELVIS", "Chest-abdomen-pelvis"),
    ("CT C/A/P", "Chest-abdomen-pelvis"),
    ("PELVIS", "Pelvis"),
    ("NECK", "Neck"),
    ("SOFT TISSUE NECK", "Neck"),
    ("HEAD NECK", "Head and neck"),
    ("HEADNECK", "Head and neck"),
    ("HEAD AND NECK", "Head and neck"),
    ("CTA HEAD/NECK", "Head and neck"),
    ("SINUS", "Face/Orbits/Sinus"),
    ("SINUSES WO", "Face/Orbits/Sinus"),
    ("ORBITS", "Face/Orbits/Sinus"),
    ("FACE", "Face/Orbits/Sinus"),
    ("MAXILLOFACIAL", "Face/Orbits/Sinus"),
    ("FACIAL BONES", "Face/Orbits/Sinus"),
    ("TEMPORAL BONE", "Temporal bone"),
    ("TEMPORAL BONES", "Temporal bone"),
    ("IAC", "Temporal bone"),
    ("T-BONES", "Temporal bone"),
    ("HEAD AND FACE", "Head and face"),
    ("BRAIN + SINUS", "Head and face"),
    ("LIVER 3 PHASE", "Abdomen"),
    ("CAROTID CTA", "Neck"),
]


@pytest.mark.parametrize(("text", "expected"), BODY_PART_CASES)
def test_body_part_vocabulary(text: str, expected: str) -> None:
    match = body_part_from_text(text)
    assert match.label == expected, match


@pytest.mark.parametrize(
    "text",
    ["", "1.25mm", "PET-CT STUDY", "CT SPINE", "ROUTINE", "WORK", "TEMPORAL LOBE", "CT", "AP", "C-ARM"],
)
def test_body_part_nothing(text: str) -> None:
    assert body_part_from_text(text).label is None


def test_body_part_spanning_regions_is_unknown_but_explained() -> None:
    match = body_part_from_text("CT HEAD, CHEST")
    assert match.label is None
    assert match.words == ("HEAD", "CHEST")
    assert "no single class" in match.note


def test_body_part_combination_without_class_reads_as_smallest_containing_class() -> None:
    match = body_part_from_text("CHEST ABDOMEN")
    assert match.label == "Chest-abdomen-pelvis"
    assert "smallest class containing" in match.note
    assert match.penalty > 0


def test_indirect_words_cost_confidence() -> None:
    assert body_part_from_text("CHEST").penalty == 0.0
    assert body_part_from_text("HEART").penalty > 0.0  # an organ in the chest
    assert body_part_from_text("BREAST").penalty > body_part_from_text("HEART").penalty  # near
    # an organ word next to a region word that covers it is not indirect
    assert body_part_from_text("CT ABDOMEN PELVIS ENTEROGRAPHY").penalty == 0.0


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("HEAD", "Head"),
        ("HEADNECK", "Head and neck"),
        ("NECK", "Neck"),
        ("CSPINE", "C-spine"),
        ("CTSPINE", "C and T spine"),
        ("TSPINE", "T-spine"),
        ("TLSPINE", "T and L spine"),
        ("LSPINE", "L-spine"),
        ("CHEST", "Chest"),
        ("CHESTABDPELVIS", "Chest-abdomen-pelvis"),
        ("ABDOMEN", "Abdomen"),
        ("ABDOMENPELVIS", "Abdomen-pelvis"),
        ("PELVIS", "Pelvis"),
        ("IAC", "Temporal bone"),
        ("ORBIT", "Face/Orbits/Sinus"),
        ("BREAST", "Chest"),
        ("WHOLEBODY", "Chest-abdomen-pelvis"),
        ("chest ", "Chest"),
        ("ABD PELVIS", "Abdomen-pelvis"),  # not a defined term: read as text
    ],
)
def test_body_part_examined_terms(term: str, expected: str) -> None:
    assert body_part_from_examined(term).label == expected


@pytest.mark.parametrize("term", ["KNEE", "EXTREMITY", "SPINE", "NECKCHEST", "FOOT"])
def test_body_part_examined_outside_the_vocabulary(term: str) -> None:
    match = body_part_from_examined(term)
    assert match.label is None
    assert match.words == (term,)
    assert match.note


def test_class_atoms_cover_the_vocabulary() -> None:
    assert tuple(CLASS_ATOMS) == BODY_PARTS
    for name, atoms in CLASS_ATOMS.items():
        assert class_for_atoms(atoms) == (name, False)
    assert class_for_atoms([]) == (None, False)


# ---------------------------------------------------------------------------------------------- contrast

CONTRAST_CASES: list[tuple[str, str | None]] = [
    ("CT ABD/PEL W", "yes"),
    ("CT HEAD W", "yes"),
    ("abdomen__w", "yes"),
    ("CHEST WITH CONTRAST", "yes"),
    ("CHEST W/ CONTRAST", "yes"),
    ("CHEST W/CONTRAST", "yes"),
    ("HEAD C+", "yes"),
    ("HEAD +C", "yes"),
    ("MIT KM", "yes"),
    ("OHNE KM", "no"),
    ("CE-CT", "yes"),
    ("CONTRAST", "yes"),
    ("CONTRAST ENHANCED", "yes"),
    ("POST CONTRAST", "yes"),
    ("ARTERIAL", "yes"),
    ("PORTAL VENOUS", "yes"),
    ("DELAYED", "yes"),
    ("CTA CHEST", "yes"),
    ("ANGIO", "yes"),
    ("PE STUDY", "yes"),
    ("W ORAL AND IV CONTRAST", "yes"),
    ("HEAD WO", "no"),
    ("HEAD W/O", "no"),
    ("CT HEAD W/O CONTRAST", "no"),
    ("WITHOUT CONTRAST", "no"),
    ("NON CON", "no"),
    ("NONCON", "no"),
    ("NON-CONTRAST", "no"),
    ("NO CONTRAST", "no"),
    ("NC HEAD", "no"),
    ("PLAIN", "no"),
    ("NATIVE", "no"),
    ("UNENHANCED", "no"),
    ("HEAD C-", "no"),
    ("C- HEAD", "no"),
    ("W/0", "no"),
    ("CT HEAD WITHOUT IV CONTRAST", "no"),
    # ambiguous: both said
    ("CT ABDOMEN W/WO", None),
    ("W&WO", None),
    ("W + WO", None),
    ("W/W/O", None),
    ("WITH AND WITHOUT CONTRAST", None),
    ("C+/C-", None),
    ("PRE AND POST", None),
    ("WWO", None),
    # nothing said: WO, W and C- only as whole words
    ("WORK", None),
    ("SWOLLEN", None),
    ("WORKUP", None),
    ("WOUND", None),
    ("C-SPINE", None),
    ("C-T SPINE", None),
    ("C- SPINE", None),
    ("C-ARM", None),
    ("1.25mm", None),
    ("CT HEAD", None),
    # oral contrast says nothing about IV contrast
    ("ORAL CONTRAST ONLY", None),
    ("W ORAL CONTRAST", None),
]


@pytest.mark.parametrize(("text", "expected"), CONTRAST_CASES)
def test_contrast_vocabulary(text: str, expected: str | None) -> None:
    assert contrast_from_text(text).label == expected, contrast_from_text(text)


def test_contrast_ambiguous_and_oral_are_explained() -> None:
    assert "both" in contrast_from_text("CT ABDOMEN W/WO").note
    assert "oral" in contrast_from_text("ORAL CONTRAST ONLY").note
    assert contrast_from_text("WORK").words == ()


def test_contrast_evidence_shows_markers_as_written() -> None:
    assert contrast_from_text("HEAD C-").words == ("C-",)
    assert contrast_from_text("HEAD C+").words == ("C+",)
    prior = read_prior(header(SeriesDescription="CT HEAD W/O"))
    assert prior.contrast.evidence == "SeriesDescription 'W/O' -> no"


def test_contrast_implied_words_weigh_less() -> None:
    assert contrast_from_text("ARTERIAL").penalty > contrast_from_text("W CONTRAST").penalty == 0.0


# ---------------------------------------------------------------------------------------------- axis


@pytest.mark.parametrize(
    ("iop", "label"),
    [
        (AXIAL, "axial"),
        (CORONAL, "coronal"),
        (SAGITTAL, "sagittal"),
        ([-1.0, 0.0, 0.0, 0.0, -1.0, 0.0], "axial"),  # prone / feet first: the sign does not matter
        ([0.0, 1.0, 0.0, 1.0, 0.0, 0.0], "axial"),
        ([1.0, 0.0, 0.0, 0.0, 0.0, 1.0], "coronal"),
    ],
)
def test_axis_from_orientation(iop: list[float], label: str) -> None:
    prior = read_prior(header(ImageOrientationPatient=iop))
    assert prior.axis.label == label
    assert prior.axis.confidence == 1.0
    assert prior.axis.source == "ImageOrientationPatient"
    assert prior.axis_oblique is False
    assert prior.axis_obliquity_degrees == pytest.approx(0.0)


def test_axis_evidence_names_the_normal_and_angle() -> None:
    prior = read_prior(header(ImageOrientationPatient=AXIAL))
    assert "normal (0.00, 0.00, 1.00) is 0.0° from the patient z axis" in prior.axis.evidence


def test_axis_slightly_oblique_within_tolerance() -> None:
    prior = read_prior(header(ImageOrientationPatient=double_oblique(4, 3)))
    assert prior.axis.label == "axial"
    assert prior.axis_oblique is False
    assert 0.95 <= prior.axis.confidence < 1.0
    assert prior.axis_obliquity_degrees == pytest.approx(5.0, abs=0.1)


def test_axis_real_ge_gantry_tilt_is_axial_flagged_oblique() -> None:
    # qa_ge_head_tilt: GE HiSpeed head with an 18.5 degree gantry tilt.
    iop = [1.0, 0.0, 0.0, 0.0, 0.9483237, -0.3173047]
    prior = read_prior(header(ImageOrientationPatient=iop, GantryDetectorTilt="+18.5"))
    assert prior.axis.label == "axial"
    assert prior.axis_oblique is True
    assert prior.axis_obliquity_degrees == pytest.approx(18.5, abs=0.1)
    assert prior.axis.confidence == 0.9
    assert "gantry tilt" in prior.axis.evidence
    assert "GantryDetectorTilt 18.5" in prior.axis.evidence


@pytest.mark.parametrize("degrees", [12, 20, 28, 30])
def test_axis_gantry_tilts_up_to_the_limit_stay_axial_with_high_confidence(degrees: float) -> None:
    prior = read_prior(header(ImageOrientationPatient=tilted(degrees)))
    assert prior.axis.label == "axial"
    assert prior.axis_oblique is True
    assert prior.axis.confidence == 0.9


def test_axis_tilt_beyond_the_limit_is_oblique_with_low_confidence() -> None:
    prior = read_prior(header(ImageOrientationPatient=tilted(38)))
    assert prior.axis.label == "axial"
    assert prior.axis_oblique is True
    assert prior.axis.confidence == 0.5


def test_axis_double_oblique_is_not_a_gantry_tilt() -> None:
    prior = read_prior(header(ImageOrientationPatient=double_oblique(15, 15)))
    assert prior.axis.label == "axial"
    assert prior.axis_oblique is True
    assert prior.axis.confidence == 0.6
    assert "gantry" not in prior.axis.evidence


def test_axis_oblique_coronal() -> None:
    # a coronal plane turned 20 degrees about the z axis
    t = math.radians(20)
    prior = read_prior(header(ImageOrientationPatient=[math.cos(t), math.sin(t), 0.0, 0.0, 0.0, -1.0]))
    assert prior.axis.label == "coronal"
    assert prior.axis_oblique is True
    assert prior.axis.confidence == 0.6


def test_axis_tolerance_is_a_parameter() -> None:
    prior = read_prior(header(ImageOrientationPatient=tilted(18.5)), oblique_tolerance_degrees=20.0)
    assert prior.axis_oblique is False
    assert prior.axis.confidence >= 0.95
    strict = read_prior(header(ImageOrientationPatient=tilted(18.5)), gantry_tilt_limit_degrees=15.0)
    assert strict.axis.confidence == 0.6


def _functional_groups(iop: Sequence[float]) -> Dataset:
    plane = Dataset()
    plane.ImageOrientationPatient = list(iop)
    group = Dataset()
    group.PlaneOrientationSequence = DicomSequence([plane])
    return group


def test_axis_enhanced_multiframe_shared_groups() -> None:
    ds = header()
    ds.SharedFunctionalGroupsSequence = DicomSequence([_functional_groups(SAGITTAL)])
    prior = read_prior(ds)
    assert prior.axis.label == "sagittal"
    assert prior.axis.source == "SharedFunctionalGroupsSequence[0].PlaneOrientationSequence"


def test_axis_enhanced_multiframe_per_frame_groups() -> None:
    ds = header()
    ds.SharedFunctionalGroupsSequence = DicomSequence([Dataset()])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence([_functional_groups(CORONAL) for _ in range(3)])
    prior = read_prior(ds)
    assert prior.axis.label == "coronal"
    assert prior.axis.confidence == 1.0
    assert prior.axis.source.startswith("PerFrameFunctionalGroupsSequence")


def test_axis_several_planes_in_one_series_lower_the_confidence() -> None:
    prior = read_prior(header(ImageOrientationPatient=AXIAL), iops=[AXIAL, AXIAL, CORONAL])
    assert prior.axis.label == "axial"
    assert prior.axis.confidence == 0.5
    assert "several planes" in prior.axis.evidence
    same = read_prior(header(ImageOrientationPatient=AXIAL), iops=[AXIAL, tilted(1)])
    assert same.axis.confidence == 1.0


def test_enhanced_per_frame_planes_count_as_seen() -> None:
    ds = header()
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(
        [_functional_groups(AXIAL), _functional_groups(SAGITTAL)]
    )
    prior = read_prior(ds)
    assert prior.axis.label == "axial"
    assert prior.axis.confidence == 0.5


@pytest.mark.parametrize(
    ("attributes", "label", "confidence", "source"),
    [
        ({"SeriesDescription": "MPR COR 3mm"}, "coronal", 0.5, "SeriesDescription"),
        ({"SeriesDescription": "SAG BONE"}, "sagittal", 0.5, "SeriesDescription"),
        ({"ProtocolName": "AX HEAD"}, "axial", 0.5, "ProtocolName"),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"]}, "axial", 0.3, "ImageType"),
        ({"ImageType": ["DERIVED", "SECONDARY", "AXIAL"], "SeriesDescription": "COR"}, "coronal", 0.35, None),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, None, 0.0, "none"),
        ({"SeriesDescription": "BONE"}, None, 0.0, "none"),
        ({}, None, 0.0, "none"),
    ],
)
def test_axis_without_orientation_falls_back_to_words(
    attributes: dict[str, object], label: str | None, confidence: float, source: str | None
) -> None:
    prior = read_prior(header(**attributes))
    assert prior.axis.label == label
    assert prior.axis.confidence == pytest.approx(confidence)
    if source is not None:
        assert prior.axis.source == source
    assert prior.axis_obliquity_degrees is None
    assert prior.axis_oblique is None


@pytest.mark.parametrize("iop", [[1.0, 0.0, 0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 1.0], [0.0] * 6])
def test_axis_malformed_orientation_falls_back(iop: list[float]) -> None:
    prior = read_prior(header(ImageOrientationPatient=iop, SeriesDescription="AXIAL"))
    assert prior.axis.label == "axial"
    assert prior.axis.confidence == 0.5
    assert "malformed" in prior.axis.evidence
    assert orientation_of(iop) is None


# ---------------------------------------------------------------------------------------------- whole prior


def test_body_part_examined_is_strongest() -> None:
    prior = read_prior(header(BodyPartExamined="CHEST"))
    assert prior.body_part == PriorAnswer(
        "Chest", 0.8, "BodyPartExamined", "BodyPartExamined 'CHEST' -> Chest"
    )


def test_body_part_agreement_raises_and_conflict_lowers_confidence() -> None:
    agree = read_prior(header(BodyPartExamined="CHEST", StudyDescription="CT CHEST W"))
    assert agree.body_part.label == "Chest"
    assert agree.body_part.confidence == pytest.approx(0.85)
    assert "agrees: StudyDescription 'CHEST'" in agree.body_part.evidence

    conflict = read_prior(header(BodyPartExamined="CHEST", SeriesDescription="HEAD 5mm"))
    assert conflict.body_part.label == "Chest"
    assert conflict.body_part.confidence == pytest.approx(0.65)
    assert "conflicts: SeriesDescription 'HEAD' -> Head" in conflict.body_part.evidence


def test_body_part_outvoted_tag() -> None:
    prior = read_prior(
        header(BodyPartExamined="CHEST", SeriesDescription="HEAD", StudyDescription="CT BRAIN")
    )
    assert prior.body_part.label == "Head"
    assert prior.body_part.source == "SeriesDescription"
    assert prior.body_part.confidence == pytest.approx(0.6)
    assert "conflicts: BodyPartExamined 'CHEST' -> Chest" in prior.body_part.evidence


def test_body_part_overlap_is_not_a_conflict() -> None:
    prior = read_prior(
        header(BodyPartExamined="ABDOMEN", RequestedProcedureDescription="CT ABDOMEN PELVIS W CONTRAST")
    )
    assert prior.body_part.label == "Abdomen"
    assert prior.body_part.confidence == pytest.approx(0.8)
    assert "overlaps: RequestedProcedureDescription" in prior.body_part.evidence


def test_body_part_breast_reads_as_chest_with_moderate_confidence() -> None:
    prior = read_prior(header(BodyPartExamined="BREAST"))
    assert prior.body_part.label == "Chest"
    assert prior.body_part.confidence == pytest.approx(0.5)
    assert "BodyPartExamined 'BREAST'" in prior.body_part.evidence


def test_body_part_unknown_term_is_explained() -> None:
    prior = read_prior(header(BodyPartExamined="KNEE"))
    assert prior.body_part.label is None
    assert prior.body_part.confidence == 0.0
    assert "KNEE" in prior.body_part.evidence


def test_body_part_confidence_ordering() -> None:
    def confidence(**attributes: object) -> float:
        return read_prior(header(**attributes)).body_part.confidence

    tag = confidence(BodyPartExamined="PELVIS")
    series = confidence(SeriesDescription="PELVIS")
    protocol = confidence(ProtocolName="PELVIS")
    study = confidence(StudyDescription="PELVIS")
    requested = confidence(RequestedProcedureDescription="PELVIS")
    organ = confidence(SeriesDescription="PROSTATE")
    near = confidence(BodyPartExamined="BREAST")
    assert tag > series > protocol == study > requested > 0.0
    assert series > organ
    assert tag > near > 0.0


def test_contrast_from_tags() -> None:
    agent = read_prior(header(ContrastBolusAgent="OMNIPAQUE 350"))
    assert (agent.contrast.label, agent.contrast.confidence, agent.contrast.source) == (
        "yes",
        0.8,
        "ContrastBolusAgent",
    )
    iv = read_prior(header(ContrastBolusAgent="OMNIPAQUE 350", ContrastBolusRoute="IV"))
    assert (iv.contrast.label, iv.contrast.confidence) == ("yes", 0.9)
    assert "intravenous" in iv.contrast.evidence
    route_only = read_prior(header(ContrastBolusRoute="INTRAVENOUS"))
    assert route_only.contrast.label == "yes"
    ingredient = read_prior(header(ContrastBolusIngredient="IODINE"))
    assert ingredient.contrast.label == "yes"
    volume = read_prior(header(ContrastBolusVolume="80"))
    assert volume.contrast.label == "yes"


def test_contrast_tags_that_say_no_or_nothing() -> None:
    none = read_prior(header(ContrastBolusAgent="NONE"))
    assert (none.contrast.label, none.contrast.confidence) == ("no", 0.6)
    zero_volume = read_prior(header(ContrastBolusVolume="0"))
    assert zero_volume.contrast.label is None
    oral = read_prior(header(ContrastBolusAgent="GASTROGRAFIN", ContrastBolusRoute="ORAL"))
    assert oral.contrast.label is None
    assert "oral" in oral.contrast.evidence
    both = read_prior(header(ContrastBolusAgent="ORAL + IV"))
    assert both.contrast.label == "yes"


def test_contrast_absent_evidence_is_unknown_not_no() -> None:
    prior = read_prior(header(BodyPartExamined="CHEST", SeriesDescription="LUNG 1.25"))
    assert prior.contrast.label is None
    assert prior.contrast.confidence == 0.0
    assert prior.contrast.source == "none"


def test_contrast_enhanced_usage_sequence() -> None:
    usage = Dataset()
    usage.ContrastBolusAgentNumber = 1
    usage.ContrastBolusAgentAdministered = "NO"
    group = Dataset()
    group.ContrastBolusUsageSequence = DicomSequence([usage])
    ds = header()
    ds.SharedFunctionalGroupsSequence = DicomSequence([group])
    prior = read_prior(ds)
    assert (prior.contrast.label, prior.contrast.confidence) == ("no", 0.85)
    assert prior.contrast.source == "ContrastBolusUsageSequence"


def test_contrast_series_description_against_the_tag() -> None:
    prior = read_prior(header(ContrastBolusAgent="OMNIPAQUE", SeriesDescription="NON CON"))
    assert prior.contrast.label == "yes"
    assert prior.contrast.confidence == pytest.approx(0.65)
    assert "conflicts: SeriesDescription 'NON CON' -> no" in prior.contrast.evidence


def test_contrast_confidence_ordering() -> None:
    def confidence(**attributes: object) -> float:
        return read_prior(header(**attributes)).contrast.confidence

    tag_iv = confidence(ContrastBolusAgent="ISOVUE", ContrastBolusRoute="IV")
    tag = confidence(ContrastBolusAgent="ISOVUE")
    series_explicit = confidence(SeriesDescription="CHEST W")
    series_implied = confidence(SeriesDescription="ARTERIAL")
    study_explicit = confidence(StudyDescription="CT CHEST W")
    assert tag_iv > tag > series_explicit > series_implied > 0.0
    assert series_explicit > study_explicit > 0.0
    assert confidence(StudyDescription="CT ABDOMEN W/WO") == 0.0


def test_prior_reads_descriptions_as_they_say() -> None:
    prior = read_prior(header(StudyDescription="CT ABD/PEL W", SeriesDescription="PORTAL VENOUS 3mm"))
    assert prior.body_part.label == "Abdomen-pelvis"
    assert prior.body_part.source == "StudyDescription"
    assert prior.contrast.label == "yes"
    assert prior.contrast.source == "SeriesDescription"


def test_no_patient_identifying_attribute_in_evidence() -> None:
    ds = header(
        PatientName="HEAD^CHEST",
        PatientID="CHEST123",
        PatientBirthDate="19700101",
        StudyDescription="CT HEAD SMITH JOHN W/O",
        SeriesDescription="AX HEAD for Dr MILLER",
        ImageOrientationPatient=AXIAL,
    )
    prior = read_prior(ds)
    assert prior.body_part.label == "Head"
    text = json.dumps(prior.as_audit())
    for identifying in ("SMITH", "JOHN", "MILLER", "CHEST123", "19700101", "HEAD^CHEST"):
        assert identifying not in text.upper()


def test_facts_and_audit() -> None:
    prior = read_prior(
        header(
            BodyPartExamined="HEAD",
            ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, 0.9483237, -0.3173047],
        )
    )
    facts = prior.as_facts()
    assert set(facts) == {
        "prior.body_part",
        "prior.body_part_confidence",
        "prior.body_part_source",
        "prior.axis",
        "prior.axis_confidence",
        "prior.axis_source",
        "prior.contrast",
        "prior.contrast_confidence",
        "prior.contrast_source",
        "prior.axis_obliquity_degrees",
        "prior.axis_oblique",
    }
    assert facts["prior.body_part"] == "Head"
    assert facts["prior.axis"] == "axial"
    assert facts["prior.axis_oblique"] is True
    assert facts["prior.axis_obliquity_degrees"] == pytest.approx(18.5, abs=0.05)
    assert facts["prior.contrast"] == "unknown"
    assert facts["prior.contrast_confidence"] == 0.0
    assert facts["prior.contrast_source"] == "none"

    audit = json.loads(json.dumps(prior.as_audit()))
    assert audit["version"] >= 1
    assert audit["axis"]["oblique"] is True
    assert audit["contrast"]["label"] == "unknown"
    assert "evidence" in audit["body_part"]


def test_labels_are_from_the_vocabularies() -> None:
    samples = [text for text, _ in BODY_PART_CASES] + [text for text, _ in CONTRAST_CASES]
    for text in samples:
        prior = read_prior(
            header(StudyDescription=text, SeriesDescription=text, ImageOrientationPatient=AXIAL)
        )
        assert prior.body_part.label is None or prior.body_part.label in BODY_PARTS
        assert prior.axis.label in AXES
        assert prior.contrast.label is None or prior.contrast.label in CONTRAST
        for task in ("body_part", "axis", "contrast"):
            answer = prior.answer(task)
            assert 0.0 <= answer.confidence <= 1.0
            assert (answer.label is None) == (answer.confidence == 0.0)


def test_answer_rejects_unknown_task() -> None:
    prior = read_prior(header())
    assert isinstance(prior, Prior)
    with pytest.raises(KeyError):
        prior.answer("modality")


def test_axis_of_a_localizer_is_weak() -> None:
    prior = read_prior(
        header(ImageOrientationPatient=CORONAL, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    )
    assert prior.axis.label == "coronal"
    assert prior.axis.confidence == 0.5
    assert "LOCALIZER" in prior.axis.evidence


def test_spine_and_its_trunk_region_overlap_rather_than_conflict() -> None:
    assert body_parts_overlap("C-spine", "Neck")
    assert body_parts_overlap("Abdomen", "Abdomen-pelvis")
    assert body_parts_overlap("Temporal bone", "Head")
    assert not body_parts_overlap("Head", "Chest")
    assert not body_parts_overlap("Head and neck", "Chest")
    prior = read_prior(header(BodyPartExamined="CSPINE", StudyDescription="CT NECK"))
    assert prior.body_part.label == "C-spine"
    assert "conflicts" not in prior.body_part.evidence

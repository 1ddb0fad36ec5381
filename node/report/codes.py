"""Coded concepts of the Structured Report that node.classify.labels does not already hold.

Standard codes (DCM, SCT, UCUM) were checked against pydicom's copy of the DICOM code tables
(pydicom.sr.codedict; tests/unit/test_report_codes.py keeps them in step). Where DICOM has no concept
(which evidence source said what, the prior-versus-image relation, two coverage landmarks), the report
uses the node's own coding scheme 99DCMNODE: PS3.16 8.2 reserves designators starting with "99" for
private schemes, and the document names the scheme in its Coding Scheme Identification Sequence.
"""

from __future__ import annotations

from highdicom.sr import CodedConcept

from node.classify.labels import BODY_PART_CODES, Code

PRIVATE_SCHEME = "99DCMNODE"
PRIVATE_SCHEME_NAME = "dicom-node classification concepts"


def concept(code: Code) -> CodedConcept:
    """A labels.Code as highdicom writes it."""
    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _private(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME, meaning)


# The procedure the report is about (CID 100 Quantitative Diagnostic Imaging Procedure allows any
# imaging procedure; the series are CT).
PROCEDURE = Code("77477000", "SCT", "Computed tomography")
# Each answer's probability: a NUM "Probability" (DCM 122157) in UCUM's unitless ratio.
PROBABILITY = Code("122157", "DCM", "Probability")
RATIO = Code("{ratio}", "UCUM", "ratio")
MILLIMETRE = Code("mm", "UCUM", "millimeter")
HOUNSFIELD = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
YES = Code("373066001", "SCT", "Yes")
NO = Code("373067005", "SCT", "No")
ROUTE_OF_ADMINISTRATION = Code("410675002", "SCT", "Route of administration")

# Coverage: the series runs from its inferior (feet) end to its superior (head) end.
INFERIOR_EXTENT = Code("128121", "DCM", "Plane through Inferior Extent")
SUPERIOR_EXTENT = Code("128120", "DCM", "Plane through Superior Extent")
LENGTH = Code("410668003", "SCT", "Length")
DISTANCE = Code("121206", "DCM", "Distance")
DIAMETER = Code("81827009", "SCT", "Diameter")
MEDIAN_ATTENUATION = Code("112182", "DCM", "Median Attenuation Coefficient")
AORTA = Code("15825003", "SCT", "Aorta")
BLOOD_VESSEL = Code("59820001", "SCT", "Blood Vessel")

# node.classify.coverage SEGMENTS -> anatomic region.
SEGMENT_CODES: dict[str, Code] = {
    "legs": Code("61685007", "SCT", "Lower limb"),
    "pelvis": BODY_PART_CODES["Pelvis"],
    "abdomen": BODY_PART_CODES["Abdomen"],
    "chest": BODY_PART_CODES["Chest"],
    "neck": BODY_PART_CODES["Neck"],
    "head": BODY_PART_CODES["Head"],
}
# node.classify.coverage landmarks -> concept (private where SNOMED's DICOM subset has none).
LANDMARK_CODES: dict[str, Code] = {
    "pelvic floor": _private("L-PELVIC-FLOOR", "Pelvic floor"),
    "iliac crest": Code("29850006", "SCT", "Iliac Crest"),
    "diaphragm": Code("5798000", "SCT", "Diaphragm"),
    "lung apex": Code("86598002", "SCT", "Apex of Lung"),
    "skull base": _private("L-SKULL-BASE", "Skull base"),
    "vertex": Code("88986008", "SCT", "Vertex of Head"),
}

# Which evidence an answer comes from (the fusion's sources, node.classify.fusion).
EVIDENCE_SOURCE = _private("EVIDENCE-SOURCE", "Evidence source")
SOURCE_CODES: dict[str, Code] = {
    "final": _private("SRC-FUSED", "Fused result of all sources"),
    "prior": _private("SRC-PRIOR", "DICOM attributes (prior)"),
    "image": _private("SRC-IMAGE", "Image model"),
    "geometry": _private("SRC-GEOMETRY", "Image orientation geometry"),
    "coverage": _private("SRC-COVERAGE", "Anatomical coverage"),
    "blood": _private("SRC-BLOOD", "Blood-pool attenuation"),
    "none": _private("SRC-NONE", "No evidence"),
}
MAIN_SOURCE = _private("MAIN-SOURCE", "Source that weighed most")
# Prior (attributes) versus image: node.classify.fusion TaskResult.relation.
PRIOR_VERSUS_IMAGE = _private("PRIOR-VS-IMAGE", "Prior versus image")
RELATION_CODES: dict[str, Code] = {
    "agree": _private("REL-AGREE", "Agree"),
    "partial": _private("REL-PARTIAL", "Partly agree"),
    "conflict": _private("REL-CONFLICT", "Conflict"),
    "one-sided": _private("REL-ONE-SIDED", "Only one side answered"),
    "none": _private("REL-NONE", "Neither answered"),
}
DISAGREEMENT = _private("DISAGREEMENT", "Attributes and images disagree")
LOW_CONFIDENCE = _private("LOW-CONFIDENCE", "Low confidence")

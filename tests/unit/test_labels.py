"""The classifier's vocabularies and their DICOM terms and codes."""

from __future__ import annotations

import functools

import pytest
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code as PydicomCode

from node.classify import labels
from node.classify.labels import (
    AXES,
    AXIS_CODES,
    BODY_PART_CODES,
    BODY_PART_TERMS,
    BODY_PARTS,
    CONTRAST,
    CONTRAST_CODES,
    TASK_CODES,
    TASK_CONCEPTS,
    TASKS,
    Code,
)


@functools.cache
def _codedict_meanings(scheme: str) -> dict[str, set[str]]:
    """Code value -> the meanings pydicom's copy of the DICOM code tables gives it, for one scheme."""
    table = getattr(codes, scheme)
    out: dict[str, set[str]] = {}
    for name in dir(table):
        if name.startswith("_"):
            continue
        code = getattr(table, name)
        if isinstance(code, PydicomCode):
            out.setdefault(code.value, set()).add(code.meaning)
    return out


def _all_codes() -> list[Code]:
    found = [c for table in TASK_CODES.values() for c in table.values()]
    found += list(TASK_CONCEPTS.values())
    found += [labels.OBLIQUE_CODE, labels.INTRAVENOUS_ROUTE_CODE]
    return found


def test_vocabularies_unchanged() -> None:
    # The order is part of a model package's contract: a change here is a breaking change.
    assert BODY_PARTS == (
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
    assert AXES == ("axial", "coronal", "sagittal")
    assert CONTRAST == ("no", "yes")
    assert TASKS == {"body_part": BODY_PARTS, "axis": AXES, "contrast": CONTRAST}


def test_every_class_has_a_term_and_a_code() -> None:
    assert set(BODY_PART_TERMS) == set(BODY_PARTS)
    assert set(BODY_PART_CODES) == set(BODY_PARTS)
    assert set(AXIS_CODES) == set(AXES)
    assert set(CONTRAST_CODES) == set(CONTRAST)
    assert set(TASK_CODES) == set(TASKS) == set(TASK_CONCEPTS)
    for task, classes in TASKS.items():
        assert set(TASK_CODES[task]) == set(classes)


@pytest.mark.parametrize("term", sorted(set(BODY_PART_TERMS.values())))
def test_body_part_terms_are_valid_cs(term: str) -> None:
    # CS: upper case, digits, space, underscore; at most 16 characters. Annex L terms have no spaces.
    assert len(term) <= 16
    assert term.isupper() and term.isalpha()


def test_terms_of_the_single_region_classes() -> None:
    assert BODY_PART_TERMS["Head"] == "HEAD"
    assert BODY_PART_TERMS["Head and neck"] == "HEADNECK"
    assert BODY_PART_TERMS["C and T spine"] == "CTSPINE"
    assert BODY_PART_TERMS["T and L spine"] == "TLSPINE"
    assert BODY_PART_TERMS["Chest-abdomen-pelvis"] == "CHESTABDPELVIS"
    assert BODY_PART_TERMS["Abdomen-pelvis"] == "ABDOMENPELVIS"


@pytest.mark.parametrize("code", _all_codes(), ids=lambda c: f"{c.scheme}-{c.value}")
def test_codes_match_pydicom_codedict(code: Code) -> None:
    meanings = _codedict_meanings(code.scheme)
    assert code.value in meanings, f"{code} is not in pydicom's {code.scheme} code table"
    assert code.meaning in meanings[code.value], f"{code}: pydicom says {sorted(meanings[code.value])}"


def test_known_body_part_codes() -> None:
    # Spot checks by pydicom's names, so a typo in a value cannot hide behind a matching meaning.
    assert BODY_PART_CODES["Chest"].value == codes.SCT.Chest.value
    assert BODY_PART_CODES["Abdomen-pelvis"].value == codes.SCT.AbdomenAndPelvis.value
    assert BODY_PART_CODES["Chest-abdomen-pelvis"].value == codes.SCT.ChestAbdomenAndPelvis.value
    assert BODY_PART_CODES["C and T spine"].value == codes.SCT.CervicoThoracicSpine.value
    assert BODY_PART_CODES["T and L spine"].value == codes.SCT.ThoracoLumbarSpine.value
    assert BODY_PART_CODES["Temporal bone"].value == codes.SCT.TemporalBone.value
    assert AXIS_CODES["sagittal"].value == codes.SCT.Sagittal.value
    assert CONTRAST_CODES["yes"].value == codes.SCT.Yes.value


def test_code_is_hashable_and_a_tuple() -> None:
    code = BODY_PART_CODES["Head"]
    assert code.as_tuple() == ("69536005", "SCT", "Head")
    assert {code, Code("69536005", "SCT", "Head")} == {code}

"""The metadata prior on the real CT series of ../shared/data/ct (see its README and manifest.csv).

Each series' header is read as the node reads it (one instance, stop_before_pixels). The tags are read as
what they say, which is sometimes wrong on purpose (BodyPartExamined BREAST on a head-and-neck series):
these tests pin what the prior says, not the truth; the manifest's labels are the truth.
"""

from __future__ import annotations

import json

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from node.classify.prior import Prior, read_prior
from tests.peers import DICOM_SERIES, ct_files

SERIES = DICOM_SERIES


def _header(name: str) -> Dataset:
    return dcmread(ct_files(name)[0], stop_before_pixels=True)


def _prior(name: str, *, all_orientations: bool = False) -> Prior:
    files = ct_files(name)
    header = dcmread(files[0], stop_before_pixels=True)
    iops = None
    if all_orientations:
        iops = [dcmread(f, stop_before_pixels=True).ImageOrientationPatient for f in files]
    prior = read_prior(header, iops=iops)
    # What the header said, for whoever reads a failure (pytest shows captured output).
    said = {k: str(header.get(k, "-")) for k in ("BodyPartExamined", "StudyDescription", "SeriesDescription")}
    said["ContrastBolusAgent"] = str(header.get("ContrastBolusAgent", "-"))
    print(name, said, json.dumps(prior.as_audit(), ensure_ascii=False))
    return prior


@pytest.mark.parametrize("name", SERIES)
def test_every_real_series_is_axial(name: str) -> None:
    prior = _prior(name, all_orientations=True)
    assert prior.axis.label == "axial"
    assert prior.axis.source == "ImageOrientationPatient"
    assert prior.axis.confidence >= 0.9
    json.dumps(prior.as_audit())  # serialisable


@pytest.mark.parametrize("name", [n for n in SERIES if n != "qa_ge_head_tilt"])
def test_untilted_series_are_not_oblique(name: str) -> None:
    prior = _prior(name)
    assert prior.axis_oblique is False
    assert prior.axis.confidence == 1.0


def test_gantry_tilted_ge_head_is_axial_flagged_oblique() -> None:
    prior = _prior("qa_ge_head_tilt", all_orientations=True)
    assert prior.axis.label == "axial"
    assert prior.axis_oblique is True
    assert prior.axis_obliquity_degrees == pytest.approx(18.5, abs=0.2)
    assert "gantry tilt" in prior.axis.evidence
    assert prior.body_part.label == "Head"
    assert prior.body_part.source == "BodyPartExamined"
    facts = prior.as_facts()
    assert facts["prior.axis"] == "axial"
    assert facts["prior.axis_oblique"] is True


def test_lidc_contrast_from_contrast_bolus_agent() -> None:
    prior = _prior("lidc0001_full")
    assert prior.contrast.label == "yes"
    assert prior.contrast.source == "ContrastBolusAgent"
    assert prior.contrast.confidence >= 0.8
    assert prior.body_part.label == "Chest"
    assert prior.body_part.source == "BodyPartExamined"


@pytest.mark.parametrize("name", ["fltbreast001_petct_upper", "fltbreast001_petct_lower"])
def test_breast_tag_is_read_as_what_it_says(name: str) -> None:
    # The images show head-neck-upper chest and abdomen-pelvis; the tag says BREAST. The prior reports
    # the tag (closest class Chest, moderate confidence) so that the disagreement with the image shows.
    prior = _prior(name)
    assert prior.body_part.label == "Chest"
    assert prior.body_part.source == "BodyPartExamined"
    assert "BodyPartExamined 'BREAST'" in prior.body_part.evidence
    assert 0.3 <= prior.body_part.confidence <= 0.6
    assert prior.contrast.label is None  # low-dose PET/CT: no contrast attributes, no contrast words


def test_philips_chest_without_descriptions_has_no_body_part_evidence() -> None:
    prior = _prior("itkelastix_chest")
    assert prior.body_part.label is None
    assert prior.body_part.confidence == 0.0
    assert prior.as_facts()["prior.body_part"] == "unknown"
    assert prior.contrast.label is None


def test_kits_slab_body_part_examined_abdomen() -> None:
    prior = _prior("kits00072_arterial_slab")
    assert prior.body_part.label == "Abdomen"
    assert prior.body_part.source == "BodyPartExamined"
    # The requested procedure says abdomen and pelvis: an overlap, not a conflict.
    assert "conflicts" not in prior.body_part.evidence
    assert prior.contrast.label == "yes"
    assert prior.contrast.source == "ContrastBolusAgent"


def test_cptac_head_from_polish_descriptions() -> None:
    # No BodyPartExamined; StudyDescription 'TK - glowy' and ProtocolName '... Glowa ...' (Polish: head).
    prior = _prior("cptacgbm_c3n01192_head")
    assert prior.body_part.label == "Head"
    assert prior.body_part.source in ("ProtocolName", "StudyDescription")
    assert prior.contrast.label is None


@pytest.mark.parametrize("name", SERIES)
def test_evidence_quotes_no_patient_attribute(name: str) -> None:
    header = _header(name)
    prior = read_prior(header)
    text = json.dumps(prior.as_audit(), ensure_ascii=False)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs"):
        value = str(header.get(keyword, "") or "").strip()
        if len(value) >= 4:  # short values (a sex letter, "0") could match anything
            assert value not in text, keyword

"""The Structured Report built from frozen results: content read back with pydicom, UIDs, references;
every SR written here is checked with dsrdump and dciodvfy (tests/srcheck.py).

The results are the real frozen results of pancctcb001_abdomen with the starter model
(tests/data/results_pancctcb001.json: `dicom-node rules test --json`, analysis facts and details)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from node.classify.labels import BODY_PART_CODES, TASK_CONCEPTS
from node.report import ReportSkipped, build_report, report_uids
from node.report import codes as rc
from node.report.build import Evidence
from tests.nodeutil import synthetic_ct
from tests.srcheck import check_sr, dciodvfy_errors

RESULTS = Path(__file__).parents[1] / "data" / "results_pancctcb001.json"


@pytest.fixture
def results() -> dict[str, Any]:
    return json.loads(RESULTS.read_text())


@pytest.fixture
def series() -> tuple[Dataset, list[Evidence]]:
    series_uid, study_uid = generate_uid(), generate_uid()
    slices = [synthetic_ct(series_uid, study_uid, number=n, rows=4) for n in range(1, 6)]
    header = slices[0]
    header.PatientName = "Doe^Jane"
    header.PatientID = "PID-7"
    header.AccessionNumber = "ACC-1"
    header.SeriesNumber = 3
    return header, [Evidence(str(s.SOPClassUID), str(s.SOPInstanceUID)) for s in slices]


def written(report: object, path: Path) -> Dataset:
    """Save, check with dsrdump and dciodvfy, read back."""
    assert not isinstance(report, ReportSkipped)
    report.save_as(path, enforce_file_format=True)  # type: ignore[attr-defined]
    check_sr(path)
    return dcmread(path)


def items(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from items(item)


def groups(ds: Dataset) -> dict[str, Dataset]:
    """Measurement groups by their tracking identifier."""
    out = {}
    for item in items(ds):
        if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "125007":
            ident = [
                c.TextValue
                for c in item.ContentSequence
                if c.ConceptNameCodeSequence[0].CodeValue == "112039"
            ]
            out[ident[0]] = item
    return out


def coded(group: Dataset, name: tuple[str, str]) -> list[tuple[str, str]]:
    """(value, scheme) of the CODE items of a group with this concept name (value, scheme)."""
    return [
        (c.ConceptCodeSequence[0].CodeValue, c.ConceptCodeSequence[0].CodingSchemeDesignator)
        for c in group.ContentSequence
        if c.ValueType == "CODE"
        and (c.ConceptNameCodeSequence[0].CodeValue, c.ConceptNameCodeSequence[0].CodingSchemeDesignator)
        == name
    ]


def numbers(group: Dataset, name: str) -> list[tuple[float, str]]:
    return [
        (
            float(c.MeasuredValueSequence[0].NumericValue),
            c.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue,
        )
        for c in group.ContentSequence
        if c.ValueType == "NUM" and c.ConceptNameCodeSequence[0].CodeValue == name
    ]


def key(code: Any) -> tuple[str, str]:
    return (code.value, code.scheme)


def test_answers_probabilities_and_evidence_are_coded(results, series, tmp_path: Path) -> None:
    header, evidence = series
    ds = written(build_report(results, header, evidence, generation=1), tmp_path / "sr.dcm")
    by_name = groups(ds)
    body = by_name["body part: final answer"]
    assert coded(body, key(TASK_CONCEPTS["body_part"])) == [("818981001", "SCT")]  # Abdomen
    assert numbers(body, "122157") == [(0.9411, "{ratio}")]
    assert coded(body, key(rc.PRIOR_VERSUS_IMAGE)) == [key(rc.RELATION_CODES["conflict"])]
    assert coded(body, key(rc.DISAGREEMENT)) == [key(rc.NO)]
    assert coded(body, key(rc.MAIN_SOURCE)) == [key(rc.SOURCE_CODES["prior"])]
    # What each source said, beside the fused answer: the image model said Chest.
    image = by_name["body part: image model"]
    assert coded(image, key(TASK_CONCEPTS["body_part"])) == [key(BODY_PART_CODES["Chest"])]
    assert numbers(image, "122157") == [(0.3391, "{ratio}")]
    assert "body part: DICOM attributes (SeriesDescription)" in by_name
    plane = by_name["imaging plane: final answer"]
    assert coded(plane, key(TASK_CONCEPTS["axis"])) == [("24422004", "SCT")]  # Axial
    contrast = by_name["IV contrast: final answer"]
    assert coded(contrast, key(TASK_CONCEPTS["contrast"])) == [("373066001", "SCT")]  # Yes
    assert coded(contrast, key(rc.ROUTE_OF_ADMINISTRATION)) == [("47625008", "SCT")]
    coverage = by_name["anatomical coverage"]
    assert coded(coverage, key(rc.INFERIOR_EXTENT)) == [key(BODY_PART_CODES["Pelvis"])]
    assert coded(coverage, key(rc.SUPERIOR_EXTENT)) == [key(BODY_PART_CODES["Chest"])]
    assert numbers(coverage, rc.DISTANCE.value) == [(72.0, "mm"), (282.0, "mm")]
    blood = by_name["blood pool"]
    assert numbers(blood, rc.MEDIAN_ATTENUATION.value) == [(277.8, "[hnsf'U]")]


def test_algorithm_identification_names_the_model_and_its_fusion_weights(
    results, series, tmp_path: Path
) -> None:
    header, evidence = series
    ds = written(build_report(results, header, evidence, generation=1), tmp_path / "sr.dcm")
    body = groups(ds)["body part: final answer"]
    texts = {}
    for c in body.ContentSequence:
        if c.ValueType == "TEXT":
            texts.setdefault(c.ConceptNameCodeSequence[0].CodeMeaning, []).append(c.TextValue)
    assert texts["Algorithm Name"] == ["ct-starter"]
    assert texts["Algorithm Version"] == ["0.2.0"]
    assert "body_part fusion weights: prior=0.6 coverage=1.0 image=0.3" in texts["Algorithm Parameters"]


def test_document_is_an_unverified_sr_in_the_source_study_referencing_every_instance(
    results, series, tmp_path: Path
) -> None:
    header, evidence = series
    ds = written(build_report(results, header, evidence, generation=1), tmp_path / "sr.dcm")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
    assert ds.Modality == "SR"
    assert ds.VerificationFlag == "UNVERIFIED"
    assert ds.SeriesDescription == "Node classification"
    assert ds.Manufacturer == "dicom-node"
    assert ds.StudyInstanceUID == header.StudyInstanceUID
    assert ds.SeriesInstanceUID != header.SeriesInstanceUID
    assert (ds.PatientName, ds.PatientID, ds.AccessionNumber) == ("Doe^Jane", "PID-7", "ACC-1")
    assert ds.SeriesNumber == 9003
    [study] = ds.CurrentRequestedProcedureEvidenceSequence
    assert study.StudyInstanceUID == header.StudyInstanceUID
    [referenced] = study.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == header.SeriesInstanceUID
    assert [
        (r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in referenced.ReferencedSOPSequence
    ] == [(e.sop_class_uid, e.sop_instance_uid) for e in evidence]


def test_uids_follow_source_series_model_and_generation(results, series, tmp_path: Path) -> None:
    header, evidence = series
    first = written(build_report(results, header, evidence, generation=1), tmp_path / "a.dcm")
    again = written(build_report(results, header, evidence, generation=1), tmp_path / "b.dcm")
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    expected = report_uids(str(header.SeriesInstanceUID), "ct-starter@0.2.0", 1)
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (
        expected.series_instance_uid,
        expected.sop_instance_uid,
    )
    assert first.SOPInstanceUID.startswith("2.25.") and len(first.SOPInstanceUID) <= 64
    follow_up = report_uids(str(header.SeriesInstanceUID), "ct-starter@0.2.0", 2)
    assert follow_up.series_instance_uid == first.SeriesInstanceUID  # one SR series per source series
    assert follow_up.sop_instance_uid != first.SOPInstanceUID
    other_model = report_uids(str(header.SeriesInstanceUID), "ct-starter@0.3.0", 1)
    assert other_model.series_instance_uid != first.SeriesInstanceUID
    assert report_uids(generate_uid(), "ct-starter@0.2.0", 1).series_instance_uid != first.SeriesInstanceUID


def test_not_classifiable_results_give_no_report(results, series) -> None:
    header, evidence = series
    results["facts"]["classifiable"] = False
    results["not_classifiable"] = {"code": "single_slice", "reason": "one slice: no volume"}
    skipped = build_report(results, header, evidence, generation=1)
    assert skipped == ReportSkipped("not classifiable: one slice: no volume")


def test_a_header_without_type2_patient_attributes_still_gives_a_valid_report(
    results, series, tmp_path
) -> None:
    header, evidence = series
    for keyword in (
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "ReferringPhysicianName",
    ):
        if keyword in header:
            delattr(header, keyword)
    ds = written(build_report(results, header, evidence, generation=1), tmp_path / "sr.dcm")
    assert ds.PatientName == ""


def test_answers_without_a_code_are_left_out_not_guessed(results, series, tmp_path: Path) -> None:
    header, evidence = series
    results = copy.deepcopy(results)
    results["final"]["contrast"]["sources"]["prior"] = {"label": "unknown", "confidence": 0.0}
    results["measurements"] = None
    ds = written(build_report(results, header, evidence, generation=1), tmp_path / "sr.dcm")
    names = set(groups(ds))
    assert not any(n.startswith("IV contrast: DICOM attributes") for n in names)
    assert "anatomical coverage" not in names and "blood pool" not in names


def test_dciodvfy_check_finds_a_broken_report(results, series, tmp_path: Path) -> None:
    header, evidence = series
    report = build_report(results, header, evidence, generation=1)
    assert not isinstance(report, ReportSkipped)
    del report.VerificationFlag  # type 1 in the SR Document General module
    del report.ContentSequence
    report.save_as(tmp_path / "broken.dcm", enforce_file_format=True)
    assert dciodvfy_errors(tmp_path / "broken.dcm") != []


def test_standard_codes_match_the_dicom_tables() -> None:
    """Every non-private code of node/report/codes.py is in pydicom's copy of the DICOM code tables."""
    known = {
        (c.value, c.scheme_designator)
        for scheme in ("DCM", "SCT")
        for name in dir(getattr(codes, scheme))
        if not name.startswith("_") and hasattr(c := getattr(getattr(codes, scheme), name), "value")
    }
    values = [v for v in vars(rc).values() if isinstance(v, rc.Code)]
    values += list(rc.SEGMENT_CODES.values()) + list(rc.LANDMARK_CODES.values())
    standard = [v for v in values if v.scheme in ("DCM", "SCT")]
    assert len(standard) >= 15
    assert [v for v in standard if (v.value, v.scheme) not in known] == []
    assert all(v.scheme in ("DCM", "SCT", "UCUM", rc.PRIVATE_SCHEME) for v in values)


def test_disputed_low_confidence_and_oblique_answers_say_so(results, series, tmp_path: Path) -> None:
    header, evidence = series
    results["facts"]["disagreement.body_part"] = True
    results["facts"]["prior.axis_oblique"] = True
    results["final"]["body_part"]["low_confidence"] = True
    ds = written(build_report(results, header, evidence, generation=1), tmp_path / "sr.dcm")
    by_name = groups(ds)
    body = by_name["body part: final answer"]
    assert coded(body, key(rc.DISAGREEMENT)) == [key(rc.YES)]
    assert coded(body, key(rc.LOW_CONFIDENCE)) == [key(rc.YES)]
    plane = by_name["imaging plane: final answer"]
    assert coded(plane, key(TASK_CONCEPTS["axis"])) == [("24422004", "SCT"), ("21114003", "SCT")]  # + Oblique


def test_identity_removed_without_a_method_is_not_copied_as_an_error(results, series, tmp_path: Path) -> None:
    """Real de-identified CT (qa_ge_head_tilt) says PatientIdentityRemoved YES with an empty
    DeidentificationMethod; copied as is, dciodvfy reports a Type 1C error in the SR."""
    header, evidence = series
    header.PatientIdentityRemoved = "YES"
    header.DeidentificationMethod = ""
    ds = written(build_report(results, header, evidence, generation=1), tmp_path / "sr.dcm")
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethod == "unknown: the source series states no method"


"""Every operator and combinator of the routing rules, on hand-made headers."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError
from pydicom.dataset import Dataset, FileMetaDataset

from node.facts import SeriesFacts
from node.rules.conditions import Condition, LeafTrace
from node.rules.fields import parse_field

_ADAPTER: TypeAdapter[Any] = TypeAdapter(Condition)


def cond(data: dict[str, Any]) -> Any:
    return _ADAPTER.validate_python(data)


def header(**attributes: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def facts(ds: Dataset | None = None, **kwargs: Any) -> SeriesFacts:
    return SeriesFacts(
        series_uid="1.2.3", attributes=ds if ds is not None else ct(), instance_count=10, **kwargs
    )


def ct() -> Dataset:
    ds = header(
        Modality="CT",
        SeriesDescription="Thorax 2mm Lung",
        ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
        SliceThickness="2.5",
        SeriesNumber="3",
        BodyPartExamined="",
        PatientID="PAT-123",
        PatientName="Doe^Jane",
        ReferencedImageSequence=[Dataset()],
    )
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"
    return ds


def check(data: dict[str, Any], f: SeriesFacts | None = None) -> LeafTrace:
    trace = cond(data).evaluate(f or facts())
    return trace


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"attribute": "Modality", "equals": "CT"}, True),
        ({"attribute": "Modality", "equals": "ct"}, False),  # exact by default
        ({"attribute": "Modality", "equals": "ct", "ignore_case": True}, True),
        ({"attribute": "Modality", "not_equals": "MR"}, True),
        ({"attribute": "Modality", "not_equals": "CT"}, False),
        ({"attribute": "Modality", "in": ["MR", "CT"]}, True),
        ({"attribute": "Modality", "in": ["MR", "PT"]}, False),
        ({"attribute": "Modality", "in": ["mr", "ct"], "ignore_case": True}, True),
        ({"attribute": "SeriesDescription", "regex": ".*Lung.*"}, True),
        ({"attribute": "SeriesDescription", "regex": "Lung"}, False),  # full match, not search
        ({"attribute": "SeriesDescription", "regex": ".*lung.*"}, False),
        ({"attribute": "SeriesDescription", "regex": ".*lung.*", "ignore_case": True}, True),
        ({"attribute": "ImageType", "contains": "AXIAL"}, True),
        ({"attribute": "ImageType", "contains": "LOCALIZER"}, False),
        ({"attribute": "ImageType", "contains": "axial", "ignore_case": True}, True),
        ({"attribute": "ImageType", "equals": "ORIGINAL\\PRIMARY\\AXIAL"}, True),  # whole value, joined
        ({"attribute": "ImageType", "equals": "AXIAL"}, False),
        ({"attribute": "ImageType", "regex": ".*\\\\AXIAL"}, True),
        ({"attribute": "SliceThickness", "lt": 3}, True),
        ({"attribute": "SliceThickness", "lt": 2.5}, False),
        ({"attribute": "SliceThickness", "le": 2.5}, True),
        ({"attribute": "SliceThickness", "gt": 2.5}, False),
        ({"attribute": "SliceThickness", "ge": 2.5}, True),
        ({"attribute": "SliceThickness", "range": [0.5, 2.5]}, True),  # inclusive
        ({"attribute": "SliceThickness", "range": [2.6, 5]}, False),
        ({"attribute": "SliceThickness", "equals": 2.5}, True),  # a number compares numerically
        ({"attribute": "SeriesNumber", "equals": 3}, True),
        ({"attribute": "SeriesNumber", "equals": "3"}, True),
        ({"attribute": "ContrastBolusAgent", "exists": True}, False),
        ({"attribute": "ContrastBolusAgent", "exists": False}, True),
        ({"attribute": "ContrastBolusAgent", "missing": True}, True),
        ({"attribute": "Modality", "missing": True}, False),
        ({"attribute": "BodyPartExamined", "exists": True}, False),  # present but empty counts as missing
        ({"attribute": "ReferencedImageSequence", "exists": True}, True),
        ({"attribute": "(0008,0060)", "equals": "CT"}, True),
        ({"attribute": "0008,0060", "equals": "CT"}, True),
        ({"attribute": "00080060", "equals": "CT"}, True),
        ({"attribute": "TransferSyntaxUID", "equals": "1.2.840.10008.1.2.4.90"}, True),  # file meta
    ],
)
def test_operator(condition: dict[str, Any], expected: bool) -> None:
    trace = check(condition)
    assert trace.result is expected, trace


@pytest.mark.parametrize(
    ("condition", "reason"),
    [
        ({"attribute": "ContrastBolusAgent", "equals": "IV"}, "missing"),
        (
            {"attribute": "ContrastBolusAgent", "not_equals": "IV"},
            "missing",
        ),  # missing: false, even not_equals
        ({"attribute": "ContrastBolusAgent", "gt": 1}, "missing"),
        ({"attribute": "BodyPartExamined", "regex": ".*"}, "present but empty"),
        ({"attribute": "Modality", "gt": 1}, "'CT' is not a number"),
        ({"attribute": "ImageType", "gt": 1}, "3 values; numeric operators need one"),
        ({"attribute": "Modality", "equals": 1}, "'CT' is not a number"),
        ({"attribute": "Modality", "equals": True}, "not a boolean"),
    ],
)
def test_false_with_a_reason(condition: dict[str, Any], reason: str) -> None:
    trace = check(condition)
    assert trace.result is False
    assert trace.reason == reason


def test_leaf_trace_records_field_operator_expected_actual() -> None:
    trace = check({"attribute": "SliceThickness", "range": [0.5, 3.0]})
    assert (trace.field, trace.op, trace.expected, trace.actual, trace.result) == (
        "SliceThickness",
        "range",
        [0.5, 3.0],
        "2.5",
        True,
    )
    assert "within" in trace.reason
    assert check({"attribute": "ContrastBolusAgent", "exists": True}).actual is None


def test_combinators_nest_and_evaluate_every_child() -> None:
    c = cond(
        {
            "all": [
                {"attribute": "Modality", "equals": "CT"},
                {
                    "any": [
                        {"attribute": "SeriesDescription", "regex": "(?i).*brain.*"},
                        {"not": {"attribute": "ContrastBolusAgent", "exists": True}},
                    ]
                },
                {"attribute": "SliceThickness", "range": [0.5, 3.0]},
            ]
        }
    )
    trace = c.evaluate(facts())
    assert trace.result is True
    assert [child.result for child in trace.children] == [True, True, True]
    any_trace = trace.children[1]
    assert [child.result for child in any_trace.children] == [False, True]  # both children evaluated
    assert any_trace.children[1].kind == "not"
    assert any_trace.children[1].children[0].result is False

    assert (
        cond({"all": [{"attribute": "Modality", "equals": "CT"}, {"attribute": "Modality", "equals": "MR"}]})
        .evaluate(facts())
        .result
        is False
    )
    assert (
        cond({"any": [{"attribute": "Modality", "equals": "PT"}, {"attribute": "Modality", "equals": "MR"}]})
        .evaluate(facts())
        .result
        is False
    )
    assert cond({"not": {"attribute": "Modality", "equals": "CT"}}).evaluate(facts()).result is False


def test_node_fields_and_extra_namespaces() -> None:
    f = facts(
        calling_ae="SCANNER1",
        called_ae="NODE_QA",
        generation=2,
        extra={
            "classifiable": True,
            "prediction.body_part": "Chest",
            "prediction.body_part_confidence": 0.93,
            "disagreement.contrast": False,
            "classification.model": "ct-starter@0.1.0",
        },
    )
    assert check({"attribute": "series.instance_count", "ge": 10}, f).result is True
    assert check({"attribute": "series.instance_count", "gt": 10}, f).result is False
    assert check({"attribute": "series.calling_ae", "equals": "SCANNER1"}, f).result is True
    assert check({"attribute": "series.called_ae", "equals": "NODE_QA"}, f).result is True
    assert check({"attribute": "series.called_ae", "equals": "SCANNER1"}, f).result is False
    assert check({"attribute": "series.generation", "equals": 2}, f).result is True
    assert check({"attribute": "classifiable", "equals": True}, f).result is True
    assert (
        check({"attribute": "prediction.body_part", "in": ["Chest", "Chest-abdomen-pelvis"]}, f).result
        is True
    )
    assert check({"attribute": "prediction.body_part_confidence", "ge": 0.9}, f).result is True
    assert check({"attribute": "disagreement.contrast", "equals": False}, f).result is True
    assert check({"attribute": "prediction.body_part", "contains": "Chest"}, f).result is True
    assert check({"attribute": "classification.model", "regex": "ct-starter@.*"}, f).result is True
    missing = check({"attribute": "prediction.contrast", "equals": "yes"}, f)
    assert (missing.result, missing.reason, missing.actual) == (False, "missing", None)
    assert check({"attribute": "prediction.contrast", "missing": True}, f).result is True
    assert check({"attribute": "series.calling_ae", "exists": True}, facts()).result is False
    assert check({"attribute": "series.called_ae", "exists": True}, facts()).result is False


def test_multi_valued_number_and_bytes_values() -> None:
    ds = header(Modality="CT", PixelSpacing=["0.70", "0.7"])
    ds.add_new(0x00091010, "LO", "VENDOR\\X")  # a private tag
    f = facts(ds)
    assert check({"attribute": "PixelSpacing", "contains": 0.7}, f).result is True
    assert check({"attribute": "PixelSpacing", "contains": 0.5}, f).result is False
    assert check({"attribute": "PixelSpacing", "equals": "0.70\\0.7"}, f).result is True
    assert check({"attribute": "(0009,1010)", "contains": "X"}, f).result is True


def test_identifying_fields_are_marked() -> None:
    assert check({"attribute": "PatientID", "equals": "PAT-123"}).identifying is True
    assert check({"attribute": "PatientName", "regex": "Doe.*"}).identifying is True
    assert check({"attribute": "Modality", "equals": "CT"}).identifying is False
    audit = check({"attribute": "PatientID", "equals": "PAT-123"}).to_audit()
    assert audit["actual"] == "<redacted>"
    assert (
        check({"attribute": "PatientID", "equals": "PAT-123"}).to_audit(redact=False)["actual"] == "PAT-123"
    )


@pytest.mark.parametrize("text", ["(0008,0060)", "0008,0060", "00080060", "(0008,0060) ", "Modality"])
def test_parse_field_tag_forms(text: str) -> None:
    ref = parse_field(text)
    assert (ref.kind, ref.tag, ref.keyword) == ("dicom", 0x00080060, "Modality")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"attribute": "Modaliti", "equals": "CT"}, "did you mean 'Modality'"),
        ({"attribute": "modality", "equals": "CT"}, "did you mean 'Modality'"),
        ({"attribute": "series.count", "ge": 1}, "unknown field 'series.count'"),
        ({"attribute": "Modality", "equal": "CT"}, "unknown operator 'equal' (did you mean 'equals'?)"),
        ({"attribute": "SliceThickness", "gte": 1}, "did you mean 'ge'"),
        ({"attribute": "Modality"}, "no operator"),
        ({"attribute": "Modality", "equals": "CT", "in": ["MR"]}, "one operator per condition"),
        ({"attribute": "SeriesDescription", "regex": "(unclosed"}, "invalid regular expression"),
        ({"attribute": "SeriesDescription", "contains": "lung"}, "use regex"),
        ({"attribute": "SliceThickness", "gt": 1, "ignore_case": True}, "ignore_case applies only"),
        ({"attribute": "SliceThickness", "range": [3, 1]}, "above high"),
        ({"attribute": "SliceThickness", "gt": "thick"}, "valid"),
        ({"attribute": "ReferencedImageSequence", "equals": "x"}, "sequence"),
        ({"all": [{"attribute": "Modality", "equals": "CT"}], "any": []}, "takes no other keys"),
        ({"all": []}, "at least 1"),
        ({"attribute": "Modality", "equals": None}, "needs a value"),
    ],
)
def test_invalid_conditions(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        cond(data)
    assert fragment in str(info.value)


def test_condition_must_be_a_mapping() -> None:
    with pytest.raises(ValidationError) as info:
        _ADAPTER.validate_python("Modality == CT")
    assert "a condition is a mapping" in str(info.value)

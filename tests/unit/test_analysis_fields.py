"""The registry of analysis fields (node.classify.fields) against the code that produces the facts and the
documentation that lists them: the analyser runs on a real CT series, classified and not, and every fact it
produces must be in the registry with a value of the declared type."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from node.classify.analyser import ClassifyingAnalyser
from node.classify.engine import ClassifierEngine, ImagePrediction
from node.classify.fields import (
    ANALYSIS_FIELDS,
    NOT_CLASSIFIABLE_CODES,
    PREDICTION_SOURCES,
    SOURCES_BY_TASK,
    UNKNOWN,
    AnalysisField,
    markdown_table,
)
from node.classify.fusion import UNKNOWN as FUSION_UNKNOWN
from node.classify.fusion import FusionPolicy, Opinion, fuse_task
from node.classify.labels import TASKS
from node.classify.package import load_package
from node.classify.prior import UNKNOWN as PRIOR_UNKNOWN
from node.classify.prior import PriorAnswer
from node.volume.model import CODE_FOR_REASON, SENTENCE_FOR_CODE, too_few_result
from tests.classifyutil import tiny_package
from tests.peers import ct_files

REPO = Path(__file__).resolve().parents[2]
SERIES = "kits00072_arterial_slab"  # 18 slices: quick to assemble and classify


@pytest.fixture(scope="module")
def analyser(tmp_path_factory: pytest.TempPathFactory) -> ClassifyingAnalyser:
    package = tiny_package(tmp_path_factory.mktemp("pkg") / "tiny")
    return ClassifyingAnalyser(ClassifierEngine(load_package(package), device="cpu"))


def assert_fits(facts: dict[str, Any], classified: bool) -> None:
    """Every fact is in the registry with a value of its type; every field due is there."""
    unknown = sorted(set(facts) - set(ANALYSIS_FIELDS))
    assert not unknown, f"facts missing from node/classify/fields.py: {unknown}"
    for name, value in facts.items():
        spec = ANALYSIS_FIELDS[name]
        assert value_fits(spec, value), f"{name} = {value!r} is not a {spec.type_text}"
    due = {"always", "classified" if classified else "not classified"}
    expected = {name for name, spec in ANALYSIS_FIELDS.items() if spec.present in due}
    assert set(facts) == expected


def value_fits(spec: AnalysisField, value: Any) -> bool:
    if value is None:
        return spec.nullable
    if spec.kind == "label":
        return isinstance(value, str) and value in spec.vocabulary
    if spec.kind == "number":
        assert spec.bounds is not None
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and spec.bounds[0] <= value <= spec.bounds[1]
    if spec.kind == "boolean":
        return isinstance(value, bool)
    return isinstance(value, str) and bool(value)


def test_a_classified_real_series_gives_only_registered_facts(analyser: ClassifyingAnalyser) -> None:
    files = ct_files(SERIES)
    header = dcmread(files[0], stop_before_pixels=True)
    result = analyser.analyse(str(header.SeriesInstanceUID), header, files)
    assert result.facts["classifiable"] is True
    assert_fits(result.facts, classified=True)
    assert result.facts["prior.axis_obliquity_degrees"] is not None


def test_a_header_without_orientation_leaves_the_obliquity_missing(analyser: ClassifyingAnalyser) -> None:
    files = ct_files(SERIES)
    header = dcmread(files[0], stop_before_pixels=True)
    del header.ImageOrientationPatient
    result = analyser.analyse(str(header.SeriesInstanceUID), header, files)
    assert result.facts["prior.axis_obliquity_degrees"] is None and result.facts["prior.axis_oblique"] is None
    assert_fits(result.facts, classified=True)


def test_not_classifiable_series_give_only_registered_facts(analyser: ClassifyingAnalyser) -> None:
    files = ct_files(SERIES)
    header = dcmread(files[0], stop_before_pixels=True)
    uid = str(header.SeriesInstanceUID)
    for given, code in ((files[:1], "single_slice"), (files[:2], "too_few_slices"), ([], "empty")):
        result = analyser.analyse(uid, header, given)
        assert result.facts["classifiable"] is False
        assert result.facts["classification.code"] == code
        assert_fits(result.facts, classified=False)


def test_a_failing_model_gives_only_registered_facts(
    analyser: ClassifyingAnalyser, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(volume: object) -> ImagePrediction:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(analyser.engine, "classify", broken)
    files = ct_files(SERIES)
    header = dcmread(files[0], stop_before_pixels=True)
    result = analyser.analyse(str(header.SeriesInstanceUID), header, files)
    assert result.facts["classification.code"] == "classifier_error"
    assert_fits(result.facts, classified=False)


def _literal_codes() -> set[str]:
    """First arguments written as literals in calls of not_classifiable(...) or NotClassifiable(...)."""
    codes = set()
    for path in [*(REPO / "node" / "volume").glob("*.py"), *(REPO / "node" / "classify").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id in ("not_classifiable", "NotClassifiable") and node.args:
                    first = node.args[0]
                    if isinstance(first, ast.Constant) and isinstance(first.value, str):
                        codes.add(first.value)
    return codes


def test_every_not_classifiable_code_is_in_the_vocabulary() -> None:
    produced = {
        *CODE_FOR_REASON.values(),
        *SENTENCE_FOR_CODE,
        too_few_result(1, 3, {}).code,
        too_few_result(2, 3, {}).code,
        *_literal_codes(),
    }
    assert "classifier_error" in produced and "empty" in produced  # the scan found the literals
    assert produced == set(NOT_CLASSIFIABLE_CODES)


def test_prediction_sources_and_unknown_are_what_fusion_and_the_prior_write() -> None:
    assert UNKNOWN == FUSION_UNKNOWN == PRIOR_UNKNOWN
    policy = FusionPolicy()
    geometry = PriorAnswer("axial", 1.0, "ImageOrientationPatient", "")
    tag = PriorAnswer("yes", 0.9, "ContrastBolusAgent", "")
    image = ImagePrediction(
        labels={task: classes[0] for task, classes in TASKS.items()},
        probabilities={task: {c: 1.0 / len(classes) for c in classes} for task, classes in TASKS.items()},
        model_id="m@1",
        device="cpu",
        batch_size=1,
    )
    confident = ImagePrediction(
        labels=image.labels,
        probabilities={task: {c: float(c == classes[0]) for c in classes} for task, classes in TASKS.items()},
        model_id="m@1",
        device="cpu",
        batch_size=1,
    )
    results = {
        "axis": [fuse_task("axis", geometry, image, policy)],
        "contrast": [
            fuse_task("contrast", answer, model, policy)
            for answer in (tag, None)
            for model in (image, confident, None)
        ],
        "body_part": [fuse_task("body_part", None, model, policy) for model in (confident, None)],
    }
    blood = Opinion("blood", {"yes": 0.98, "no": 0.02}, "aorta-like tube, 250 HU")
    coverage = Opinion("coverage", {c: float(c == "Chest") * 0.8 + 0.2 / 16 for c in TASKS["body_part"]})
    results["contrast"].append(fuse_task("contrast", None, image, policy, blood))
    results["body_part"].append(fuse_task("body_part", None, image, policy, coverage))
    for task, answers in results.items():
        assert {r.source for r in answers} <= set(SOURCES_BY_TASK[task]), task
    assert {r.source for answers in results.values() for r in answers} == set(PREDICTION_SOURCES)
    assert fuse_task("body_part", None, None, policy).label == UNKNOWN


def test_docs_table_of_analysis_fields_is_the_registry() -> None:
    text = (REPO / "docs" / "rules.md").read_text(encoding="utf-8")
    start, end = "<!-- analysis-fields: start -->\n", "<!-- analysis-fields: end -->"
    assert start in text and end in text, "docs/rules.md lost its analysis-fields markers"
    table = text.split(start, 1)[1].split(end, 1)[0]
    assert table.strip() == markdown_table().strip(), (
        "docs/rules.md's table of analysis fields differs from node/classify/fields.py; regenerate it with "
        "python -m node.classify.fields and paste it between the markers"
    )

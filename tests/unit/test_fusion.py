from __future__ import annotations

from dataclasses import dataclass

import pytest

from node.classify.engine import ImagePrediction
from node.classify.fusion import FusionPolicy, FusionWeights, Opinion, fuse, relation
from node.classify.labels import TASKS


@dataclass(frozen=True)
class Answer:
    label: str | None
    confidence: float
    source: str


def image(
    body_part: str, p_body: float, axis: str = "axial", contrast: str = "no", p: float = 0.9
) -> ImagePrediction:
    def probs(task: str, label: str, conf: float) -> dict[str, float]:
        classes = TASKS[task]
        rest = (1.0 - conf) / (len(classes) - 1)
        return {c: (conf if c == label else rest) for c in classes}

    return ImagePrediction(
        labels={"body_part": body_part, "axis": axis, "contrast": contrast},
        probabilities={
            "body_part": probs("body_part", body_part, p_body),
            "axis": probs("axis", axis, p),
            "contrast": probs("contrast", contrast, p),
        },
        model_id="m@1",
        device="cpu",
        batch_size=1,
    )


POLICY = FusionPolicy(min_confidence=0.6, min_prior_confidence=0.5)


def test_geometry_wins_the_axis_even_against_a_confident_image() -> None:
    priors = {"axis": Answer("axial", 1.0, "ImageOrientationPatient")}
    fused = fuse(priors, image("Chest", 0.9, axis="coronal", p=0.99), POLICY)
    axis = fused.tasks["axis"]
    assert (axis.label, axis.source) == ("axial", "geometry")
    assert axis.disagreement  # recorded: either the tags or the model is wrong


def test_axis_from_the_image_when_there_is_no_geometry() -> None:
    priors = {"axis": Answer("sagittal", 0.4, "SeriesDescription")}
    fused = fuse(priors, image("Chest", 0.9, axis="coronal", p=0.95), POLICY)
    assert (fused.tasks["axis"].label, fused.tasks["axis"].source) == ("coronal", "image")
    assert not fused.tasks["axis"].disagreement  # a 0.4 prior is too weak to disagree with


def coverage(label: str, p: float = 0.77) -> Opinion:
    classes = TASKS["body_part"]
    rest = (1 - p) / (len(classes) - 1)
    return Opinion("coverage", {c: p if c == label else rest for c in classes}, "covers")


def blood(p_yes: float) -> Opinion:
    return Opinion("blood", {"yes": p_yes, "no": 1 - p_yes}, "aorta-like tube")


def test_breast_tag_against_head_and_neck_coverage_is_a_disagreement() -> None:
    """BodyPartExamined BREAST (read as Chest 0.5) on a series that runs from the lung apex to the vertex."""
    priors = {"body_part": Answer("Chest", 0.5, "BodyPartExamined")}
    fused = fuse(priors, image("Head and neck", 0.8), POLICY, {"body_part": coverage("Head and neck")})
    body = fused.tasks["body_part"]
    assert (body.label, body.source, body.disagreement, body.disagreement_with) == (
        "Head and neck",
        "coverage",
        True,
        "final",
    )
    assert set(body.sources) == {"prior", "coverage", "image"}
    facts = fused.as_facts()
    assert facts["disagreement.body_part"] is True and facts["disagreement.any"] is True


def test_a_weak_image_model_alone_does_not_override_a_tag() -> None:
    """The network is one more source, weighted by its proven reliability: alone it does not beat a tag."""
    priors = {"body_part": Answer("Chest", 0.5, "BodyPartExamined")}
    body = fuse(priors, image("Head and neck", 0.8), POLICY).tasks["body_part"]
    assert (body.label, body.source, body.disagreement) == ("Chest", "prior", False)


def test_an_explicit_contrast_tag_yields_only_to_strong_measured_evidence() -> None:
    tag = {"contrast": Answer("yes", 0.95, "ContrastBolusAgent")}
    strong = fuse(tag, image("Chest", 0.9, contrast="yes", p=0.7), POLICY, {"contrast": blood(0.02)})
    contrast = strong.tasks["contrast"]
    assert (contrast.label, contrast.source, contrast.disagreement) == ("no", "blood", True)
    assert contrast.confidence > 0.6
    weak = fuse(tag, None, POLICY, {"contrast": blood(0.45)}).tasks["contrast"]
    assert (weak.label, weak.source, weak.disagreement) == ("yes", "prior", False)


def test_measured_blood_decides_where_the_tags_say_nothing() -> None:
    result = fuse({}, image("Chest", 0.9, contrast="yes", p=0.64), POLICY, {"contrast": blood(0.01)})
    contrast = result.tasks["contrast"]
    assert (contrast.label, contrast.source, contrast.low_confidence) == ("no", "blood", False)
    assert not contrast.disagreement  # no tag to disagree with


def test_weights_are_the_reliability_of_each_source() -> None:
    priors = {"contrast": Answer("no", 0.7, "SeriesDescription")}
    trusted = FusionPolicy(weights=FusionWeights({"contrast": {"prior": 0.2, "image": 1.0}}))
    assert fuse(priors, image("Chest", 0.9, contrast="yes", p=0.8), trusted).tasks["contrast"].label == "yes"
    assert fuse(priors, image("Chest", 0.9, contrast="yes", p=0.8), POLICY).tasks["contrast"].label == "no"


def test_overlapping_regions_are_partial_not_a_disagreement() -> None:
    assert relation("body_part", "Chest", "Chest-abdomen-pelvis") == "partial"
    assert relation("body_part", "Abdomen", "Abdomen-pelvis") == "partial"
    assert relation("body_part", "Chest", "Pelvis") == "conflict"
    priors = {"body_part": Answer("Chest", 0.8, "BodyPartExamined")}
    assert not fuse(priors, image("Chest-abdomen-pelvis", 0.9), POLICY).tasks["body_part"].disagreement


def test_a_confident_prior_wins_over_a_low_confidence_image() -> None:
    priors = {"contrast": Answer("yes", 0.8, "ContrastBolusAgent")}
    fused = fuse(priors, image("Chest", 0.9, contrast="no", p=0.55), POLICY)
    contrast = fused.tasks["contrast"]
    assert (contrast.label, contrast.source, contrast.low_confidence) == ("yes", "prior", False)
    assert not contrast.disagreement  # the image is not sure enough to disagree


def test_low_confidence_image_without_prior_is_kept_and_flagged() -> None:
    fused = fuse({}, image("Pelvis", 0.3), POLICY)
    body = fused.tasks["body_part"]
    assert (body.label, body.source, body.low_confidence) == ("Pelvis", "image", True)
    assert fused.as_facts()["prediction.low_confidence"] is True


def test_not_classifiable_falls_back_to_the_prior_or_unknown() -> None:
    priors = {"body_part": Answer("Head", 0.8, "BodyPartExamined"), "contrast": Answer(None, 0.0, "none")}
    fused = fuse(priors, None, POLICY)
    assert fused.tasks["body_part"].label == "Head" and fused.tasks["body_part"].source == "prior"
    assert fused.tasks["contrast"].label == "unknown" and fused.tasks["contrast"].source == "none"
    assert fused.tasks["axis"].label == "unknown"
    assert not fused.any_disagreement


@pytest.mark.parametrize("task", list(TASKS))
def test_facts_name_every_task(task: str) -> None:
    facts = fuse({}, image("Chest", 0.9), POLICY).as_facts()
    for suffix in ("", "_confidence", "_source", "_low_confidence"):
        assert f"prediction.{task}{suffix}" in facts
    assert f"disagreement.{task}" in facts

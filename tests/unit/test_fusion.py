from __future__ import annotations

from dataclasses import dataclass

import pytest

from node.classify.engine import ImagePrediction
from node.classify.fusion import FusionPolicy, fuse, relation
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


def test_breast_tag_against_head_and_neck_image_is_a_disagreement() -> None:
    priors = {"body_part": Answer("Chest", 0.5, "BodyPartExamined")}
    fused = fuse(priors, image("Head and neck", 0.8), POLICY)
    body = fused.tasks["body_part"]
    assert (body.label, body.source, body.relation, body.disagreement) == (
        "Head and neck",
        "image",
        "conflict",
        True,
    )
    facts = fused.as_facts()
    assert facts["disagreement.body_part"] is True and facts["disagreement.any"] is True


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

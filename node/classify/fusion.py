"""Fusion: one final answer per task from the image model and the prior, and their disagreements.

Policy (docs/classification.md):
- axis: the geometry (Image Orientation (Patient)) wins wherever it is present; it is exact. Without
  it, the image model; without either, whatever the descriptions said.
- body part and contrast: the image model, unless its confidence is below `min_confidence` and the
  prior is at least `min_prior_confidence` sure; then the prior. Otherwise the image answer stands,
  marked low confidence.
- disagreement: both sides have an answer they are reasonably sure of and the answers conflict. For body
  part "conflict" means the regions do not overlap at all (tag BREAST = Chest vs image Head and neck);
  Chest vs Chest-abdomen-pelvis overlaps and is reported as partial, not as a disagreement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from node.classify.engine import ImagePrediction
from node.classify.labels import TASKS
from node.classify.prior import body_parts_overlap

UNKNOWN = "unknown"
# The prior's axis comes from geometry when its source is Image Orientation (Patient), at the top level
# or in the enhanced multi-frame PlaneOrientationSequence.
GEOMETRY_SOURCES = ("ImageOrientationPatient", "PlaneOrientationSequence")


class PriorAnswerLike(Protocol):
    @property
    def label(self) -> str | None: ...
    @property
    def confidence(self) -> float: ...
    @property
    def source(self) -> str: ...


@dataclass(frozen=True)
class FusionPolicy:
    min_confidence: float = 0.6
    min_prior_confidence: float = 0.5


@dataclass(frozen=True)
class TaskResult:
    label: str
    confidence: float
    source: str  # "image", "geometry", "prior", "none"
    low_confidence: bool
    disagreement: bool
    relation: str  # "agree", "conflict", "partial", "one-sided", "none"


@dataclass(frozen=True)
class Fused:
    tasks: dict[str, TaskResult] = field(default_factory=dict)

    @property
    def any_disagreement(self) -> bool:
        return any(t.disagreement for t in self.tasks.values())

    @property
    def any_low_confidence(self) -> bool:
        return any(t.low_confidence for t in self.tasks.values())

    def as_facts(self) -> dict[str, Any]:
        facts: dict[str, Any] = {}
        for task, result in self.tasks.items():
            facts[f"prediction.{task}"] = result.label
            facts[f"prediction.{task}_confidence"] = round(result.confidence, 4)
            facts[f"prediction.{task}_source"] = result.source
            facts[f"prediction.{task}_low_confidence"] = result.low_confidence
            facts[f"disagreement.{task}"] = result.disagreement
        facts["prediction.low_confidence"] = self.any_low_confidence
        facts["disagreement.any"] = self.any_disagreement
        return facts

    def as_audit(self) -> dict[str, Any]:
        return {
            task: {
                "label": r.label,
                "confidence": round(r.confidence, 4),
                "source": r.source,
                "low_confidence": r.low_confidence,
                "prior_vs_image": r.relation,
            }
            for task, r in self.tasks.items()
        }


def relation(task: str, prior_label: str, image_label: str) -> str:
    if prior_label == image_label:
        return "agree"
    if task == "body_part":
        if prior_label in TASKS[task] and image_label in TASKS[task]:
            if body_parts_overlap(prior_label, image_label):
                return "partial"
    return "conflict"


def fuse_task(
    task: str, prior: PriorAnswerLike | None, image: ImagePrediction | None, policy: FusionPolicy
) -> TaskResult:
    prior_label = prior.label if prior is not None and prior.label else None
    prior_conf = prior.confidence if prior is not None and prior_label else 0.0
    image_label = image.labels.get(task) if image is not None else None
    image_conf = image.confidence(task) if image is not None and image_label else 0.0

    if prior_label and image_label:
        rel = relation(task, prior_label, image_label)
    elif prior_label or image_label:
        rel = "one-sided"
    else:
        rel = "none"
    disagreement = (
        rel == "conflict"
        and prior_conf >= policy.min_prior_confidence
        and image_conf >= policy.min_confidence
    )

    geometry = (
        prior is not None and prior_label is not None and any(s in prior.source for s in GEOMETRY_SOURCES)
    )
    if task == "axis" and geometry:
        assert prior_label is not None
        label, confidence, source = prior_label, prior_conf, "geometry"
    elif image_label and image_conf >= policy.min_confidence:
        label, confidence, source = image_label, image_conf, "image"
    elif prior_label and prior_conf >= policy.min_prior_confidence:
        label, confidence, source = prior_label, prior_conf, "prior"
    elif image_label:
        label, confidence, source = image_label, image_conf, "image"
    elif prior_label:
        label, confidence, source = prior_label, prior_conf, "prior"
    else:
        label, confidence, source = UNKNOWN, 0.0, "none"
    return TaskResult(
        label=label,
        confidence=confidence,
        source=source,
        low_confidence=confidence < policy.min_confidence,
        disagreement=disagreement,
        relation=rel,
    )


def fuse(priors: dict[str, PriorAnswerLike], image: ImagePrediction | None, policy: FusionPolicy) -> Fused:
    """priors: task -> the prior's answer; image: None when the series was not classifiable."""
    return Fused({task: fuse_task(task, priors.get(task), image, policy) for task in TASKS})

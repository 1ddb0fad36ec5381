"""Fusion: one final answer per task from every source of evidence, weighted by how reliable it has proved.

Sources, per task (docs/classification.md):
- axis: the geometry (Image Orientation (Patient)) where present: exact, it decides alone. Otherwise the
  image model and the descriptions.
- contrast: the prior (ContrastBolusAgent/Route are strong, descriptions weaker), the measured HU of the
  blood pool (node.classify.bloodpool), the image model.
- body part: the prior (BodyPartExamined, descriptions), the anatomical coverage (node.classify.coverage),
  the image model.

Each source gives a probability over the task's classes; fusion pools them log-linearly,
p(c) ~ prod_s p_s(c)^w_s, with one weight per source and task (`FusionWeights`). A weight is the
source's reliability: 1.0 takes its probabilities at face value, 0.3 trusts it a third as much in
log-odds. The shipped weights are set in the model package (configs/metadata.json, node.fusion) from
leave-one-patient-out predictions (node.training.calibrate); the defaults below are the documented
starting point. An explicit contrast tag (p 0.95, weight 1) is overridden only by strong measured
evidence (blood at 40 HU when the tag says yes), and then it is a disagreement.

- `source` is the source that contributed most to the winning class's margin over the runner-up.
- `low_confidence`: the pooled probability of the answer is below `min_confidence`.
- `disagreement`: the tags were reasonably sure (>= `min_prior_confidence`) of an answer that conflicts
  with the confident final answer, or with a confident measurement (blood pool, coverage), whichever side
  fusion took. For body part "conflict" means the regions do not overlap (tag BREAST = Chest vs Head and
  neck); Chest vs Chest-abdomen-pelvis is "partial". `disagreement_with` names the other side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from node.classify.labels import TASKS
from node.classify.prior import body_parts_overlap

if TYPE_CHECKING:  # engine imports torch; fusion itself is pure
    from node.classify.engine import ImagePrediction

UNKNOWN = "unknown"
# The prior's axis comes from geometry when its source is Image Orientation (Patient), at the top level
# or in the enhanced multi-frame PlaneOrientationSequence.
GEOMETRY_SOURCES = ("ImageOrientationPatient", "PlaneOrientationSequence")
# Explicit contrast attributes: strong evidence (docs/prior.md).
EXPLICIT_CONTRAST_SOURCES = ("ContrastBolusAgent", "ContrastBolusRoute", "ContrastBolusVolume")
_FLOOR = 1e-4  # no source is ever certain a class is impossible


class PriorAnswerLike(Protocol):
    @property
    def label(self) -> str | None: ...
    @property
    def confidence(self) -> float: ...
    @property
    def source(self) -> str: ...


@dataclass(frozen=True)
class FusionWeights:
    """Reliability of each source, per task (log-linear pooling exponents)."""

    weights: Mapping[str, Mapping[str, float]] = field(
        default_factory=lambda: {
            "axis": {"prior": 1.0, "image": 0.7},
            "contrast": {"prior_explicit": 1.0, "prior": 0.6, "blood": 1.0, "image": 0.3},
            "body_part": {"prior": 0.6, "coverage": 1.0, "image": 0.3},
        }
    )

    def of(self, task: str, source: str) -> float:
        return float(self.weights.get(task, {}).get(source, 0.0))

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {task: dict(w) for task, w in self.weights.items()}


@dataclass(frozen=True)
class FusionPolicy:
    min_confidence: float = 0.6
    min_prior_confidence: float = 0.5
    weights: FusionWeights = field(default_factory=FusionWeights)


@dataclass(frozen=True)
class Opinion:
    """One source's answer for one task: its probabilities over the task's classes, and why."""

    source: str  # "prior", "image", "blood", "coverage"
    probabilities: Mapping[str, float]
    evidence: str = ""

    @property
    def label(self) -> str:
        return max(self.probabilities, key=lambda c: self.probabilities[c])

    @property
    def confidence(self) -> float:
        return float(self.probabilities[self.label])


@dataclass(frozen=True)
class TaskResult:
    label: str
    confidence: float
    source: str  # "image", "geometry", "prior", "blood", "coverage", "none"
    low_confidence: bool
    disagreement: bool
    relation: str  # prior vs image: "agree", "conflict", "partial", "one-sided", "none"
    probabilities: dict[str, float] = field(default_factory=dict)
    # What each source said: source -> {label, confidence, weight}.
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    # With a disagreement: which source's answer conflicts with the tags ("final" for fusion's answer).
    disagreement_with: str | None = None


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
                "sources": r.sources,
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


def prior_opinion(task: str, prior: PriorAnswerLike | None) -> Opinion | None:
    """The tags' answer as probabilities: the label at its confidence, the rest shared."""
    if prior is None or not prior.label or prior.label not in TASKS[task]:
        return None
    classes = TASKS[task]
    confidence = min(max(prior.confidence, 1.0 / len(classes)), 0.99)
    rest = (1.0 - confidence) / (len(classes) - 1)
    return Opinion("prior", {c: confidence if c == prior.label else rest for c in classes}, prior.source)


def image_opinion(task: str, image: ImagePrediction | None) -> Opinion | None:
    if image is None or task not in image.probabilities:
        return None
    return Opinion("image", dict(image.probabilities[task]))


def _weight(task: str, opinion: Opinion, policy: FusionPolicy) -> float:
    name = opinion.source
    if (
        task == "contrast"
        and name == "prior"
        and any(s in opinion.evidence for s in EXPLICIT_CONTRAST_SOURCES)
    ):
        name = "prior_explicit"
    return policy.weights.of(task, name)


def pool(
    task: str, opinions: list[Opinion], policy: FusionPolicy
) -> tuple[dict[str, float], dict[str, float]]:
    """(pooled probabilities, weight of each source used)."""
    classes = TASKS[task]
    logp = {c: 0.0 for c in classes}
    used: dict[str, float] = {}
    for opinion in opinions:
        w = _weight(task, opinion, policy)
        if w <= 0.0:
            continue
        used[opinion.source] = w
        for c in classes:
            logp[c] += w * math.log(max(float(opinion.probabilities.get(c, 0.0)), _FLOOR))
    top = max(logp.values())
    exp = {c: math.exp(v - top) for c, v in logp.items()}
    norm = sum(exp.values())
    return {c: v / norm for c, v in exp.items()}, used


def fuse_task(
    task: str,
    prior: PriorAnswerLike | None,
    image: ImagePrediction | None,
    policy: FusionPolicy,
    measured: Opinion | None = None,
) -> TaskResult:
    prior_label = prior.label if prior is not None and prior.label else None
    prior_conf = prior.confidence if prior is not None and prior_label else 0.0
    image_label = image.labels.get(task) if image is not None else None
    if prior_label and image_label:
        rel = relation(task, prior_label, image_label)
    elif prior_label or image_label:
        rel = "one-sided"
    else:
        rel = "none"
    opinions = [
        o for o in (prior_opinion(task, prior), measured, image_opinion(task, image)) if o is not None
    ]
    described = {o.source: {"label": o.label, "confidence": round(o.confidence, 4)} for o in opinions}

    geometry = (
        prior is not None and prior_label is not None and any(s in prior.source for s in GEOMETRY_SOURCES)
    )
    if task == "axis" and geometry:
        assert prior_label is not None
        image_conf = image.confidence(task) if image is not None and image_label else 0.0
        disagreement = rel == "conflict" and image_conf >= policy.min_confidence
        return TaskResult(
            prior_label,
            prior_conf,
            "geometry",
            False,
            disagreement,
            rel,
            {},
            described,
            "image" if disagreement else None,
        )
    if not opinions:
        return TaskResult(UNKNOWN, 0.0, "none", True, False, rel, {}, described)

    probabilities, used = pool(task, opinions, policy)
    label = max(probabilities, key=lambda c: probabilities[c])
    confidence = probabilities[label]
    runner_up = max((c for c in probabilities if c != label), key=lambda c: probabilities[c])
    margins = {
        o.source: used.get(o.source, 0.0)
        * (
            math.log(max(o.probabilities.get(label, 0.0), _FLOOR))
            - math.log(max(o.probabilities.get(runner_up, 0.0), _FLOOR))
        )
        for o in opinions
    }
    source = max(margins, key=lambda s: margins[s]) if margins and max(margins.values()) > 0 else "none"
    for name in described:
        described[name]["weight"] = used.get(name, 0.0)
    disagreement_with = None
    if prior_label is not None and prior_conf >= policy.min_prior_confidence:
        if confidence >= policy.min_confidence and relation(task, prior_label, label) == "conflict":
            disagreement_with = "final"
        elif (
            measured is not None
            and measured.confidence >= policy.min_confidence
            and relation(task, prior_label, measured.label) == "conflict"
        ):
            disagreement_with = measured.source
    return TaskResult(
        label=label,
        confidence=confidence,
        source=source,
        low_confidence=confidence < policy.min_confidence,
        disagreement=disagreement_with is not None,
        relation=rel,
        probabilities=probabilities,
        sources=described,
        disagreement_with=disagreement_with,
    )


def fuse(
    priors: dict[str, PriorAnswerLike],
    image: ImagePrediction | None,
    policy: FusionPolicy,
    measured: dict[str, Opinion] | None = None,
) -> Fused:
    """priors: task -> the prior's answer; image: None when not classifiable; measured: task -> what the
    anatomical measurements say (blood pool for contrast, coverage for body part)."""
    measured = measured or {}
    return Fused(
        {task: fuse_task(task, priors.get(task), image, policy, measured.get(task)) for task in TASKS}
    )

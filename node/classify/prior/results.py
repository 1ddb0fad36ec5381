"""What the prior answers: one PriorAnswer per task, gathered in a Prior, with flat facts for routing
rules and a JSON-serialisable audit record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UNKNOWN = "unknown"  # how an unknown label appears in facts and audit
PRIOR_VERSION = 1  # bump when the tables or confidences change, so audits can be compared


@dataclass(frozen=True)
class PriorAnswer:
    """What the header says for one task. label None means unknown (and confidence 0.0)."""

    label: str | None
    confidence: float
    source: str  # the attribute that decided ("none" when nothing did)
    evidence: str  # human-readable: which attributes said what, agreements and conflicts

    @property
    def known(self) -> bool:
        return self.label is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label if self.label is not None else UNKNOWN,
            "confidence": round(self.confidence, 3),
            "source": self.source,
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class Prior:
    body_part: PriorAnswer
    axis: PriorAnswer
    contrast: PriorAnswer
    # The slice normal's angle to the nearest patient axis; None without Image Orientation (Patient).
    axis_obliquity_degrees: float | None = None
    # True when that angle exceeds the oblique tolerance (the label is still the nearest axis).
    axis_oblique: bool | None = None

    def answer(self, task: str) -> PriorAnswer:
        """The answer for a task name of labels.TASKS ("body_part", "axis", "contrast")."""
        answers = {"body_part": self.body_part, "axis": self.axis, "contrast": self.contrast}
        if task not in answers:
            raise KeyError(f"unknown task {task!r}; expected one of {sorted(answers)}")
        return answers[task]

    def as_facts(self) -> dict[str, Any]:
        """Flat names for routing rules (docs/prior.md): prior.body_part, prior.axis_confidence, ..."""
        facts: dict[str, Any] = {}
        for task in ("body_part", "axis", "contrast"):
            answer = self.answer(task)
            facts[f"prior.{task}"] = answer.label if answer.label is not None else UNKNOWN
            facts[f"prior.{task}_confidence"] = round(answer.confidence, 3)
            facts[f"prior.{task}_source"] = answer.source
        facts["prior.axis_obliquity_degrees"] = (
            None if self.axis_obliquity_degrees is None else round(self.axis_obliquity_degrees, 2)
        )
        facts["prior.axis_oblique"] = self.axis_oblique
        return facts

    def as_audit(self) -> dict[str, Any]:
        """JSON-serialisable record of the prior, evidence included."""
        axis = self.axis.as_dict()
        axis["obliquity_degrees"] = (
            None if self.axis_obliquity_degrees is None else round(self.axis_obliquity_degrees, 2)
        )
        axis["oblique"] = self.axis_oblique
        return {
            "version": PRIOR_VERSION,
            "body_part": self.body_part.as_dict(),
            "axis": axis,
            "contrast": self.contrast.as_dict(),
        }

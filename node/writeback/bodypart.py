"""Body Part Examined (0018,0015) on a forwarded copy: what to write, by the destination's policy.

The answer is decided once per series (`answer_for`), then applied to each instance (`apply`), because
the policy `if_empty` depends on what each instance already carries.

- The value is the DICOM defined term of the final body part (node.classify.labels.BODY_PART_TERMS).
- It is never written when that answer is low-confidence or disputed (prior and image disagree),
  unless the destination sets `include_doubtful: true`; never when the series was not classifiable
  (the final answer is then the sender's own attributes again).
- `if_empty` writes only where the attribute is absent or empty; `overwrite` always.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydicom.dataset import Dataset

from node.classify.labels import BODY_PART_TERMS
from node.deliver.destinations import WriteBack

# What happened to Body Part Examined in one copy (also the private element BodyPartExaminedAction).
Action = Literal["WRITTEN", "KEPT", "DOUBTFUL", "NOT_CLASSIFIABLE"]
WRITTEN: Final = "WRITTEN"
KEPT: Final = "KEPT"  # the sender's value stayed (if_empty, or it already says the same)
DOUBTFUL: Final = "DOUBTFUL"  # low-confidence or disputed, and the destination does not want those
NOT_CLASSIFIABLE: Final = "NOT_CLASSIFIABLE"


@dataclass(frozen=True)
class BodyPartAnswer:
    """The series' body-part answer as the write-back sees it."""

    label: str | None  # the final class, None when not classifiable
    term: str | None  # its defined term (None when the label has none)
    low_confidence: bool
    disputed: bool
    writable: bool  # whether the policy allows writing it at all
    reason: str  # why (not) writable, for the audit


def answer_for(results: Mapping[str, Any], settings: WriteBack) -> BodyPartAnswer:
    facts: Mapping[str, Any] = results.get("facts") or {}
    final = (results.get("final") or {}).get("body_part") or {}
    if not facts.get("classifiable", False):
        return BodyPartAnswer(None, None, False, False, False, "not classifiable: only attributes were read")
    label = final.get("label", facts.get("prediction.body_part"))
    term = BODY_PART_TERMS.get(str(label))
    low = bool(final.get("low_confidence", facts.get("prediction.body_part_low_confidence", False)))
    disputed = bool(facts.get("disagreement.body_part")) or "body_part" in (results.get("disagreement") or {})
    if term is None:
        return BodyPartAnswer(label, None, low, disputed, False, f"no defined term for {label!r}")
    doubts = [w for w, on in (("low confidence", low), ("disputed", disputed)) if on]
    if doubts and not settings.include_doubtful:
        return BodyPartAnswer(label, term, low, disputed, False, f"{' and '.join(doubts)}: not written")
    reason = f"{label} -> {term}" + (f" ({' and '.join(doubts)}, include_doubtful)" if doubts else "")
    return BodyPartAnswer(label, term, low, disputed, True, reason)


def current_value(ds: Dataset) -> str:
    """The instance's Body Part Examined ('' when absent or empty)."""
    value = ds.get("BodyPartExamined")
    return str(value).strip() if value else ""


def apply(ds: Dataset, answer: BodyPartAnswer, settings: WriteBack) -> Action:
    """Set Body Part Examined on `ds` (a copy) as the policy says; returns what was done."""
    if answer.label is None:
        return NOT_CLASSIFIABLE
    if not answer.writable or answer.term is None:
        return DOUBTFUL
    existing = current_value(ds)
    if existing == answer.term:
        return KEPT
    if existing and settings.body_part == "if_empty":
        return KEPT
    ds.BodyPartExamined = answer.term
    return WRITTEN

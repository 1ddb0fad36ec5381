"""Combining sources: each attribute read gives a vote; one answer comes from the votes, with agreements,
overlaps and conflicts in its evidence."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from node.classify.prior.confidences import AGREE_BONUS, CONFLICT_PENALTY, MAX_COMBINED, MIN_COMBINED
from node.classify.prior.results import PriorAnswer
from node.classify.prior.text import TextMatch, quote_words


@dataclass(frozen=True)
class Vote:
    label: str | None  # None: the source was read but says nothing usable (the evidence says why)
    confidence: float
    source: str
    evidence: str


def _clamp(value: float) -> float:
    return round(min(MAX_COMBINED, max(MIN_COMBINED, value)), 3)


def combine_votes(
    votes: Sequence[Vote],
    related: Callable[[str, str], bool] | None = None,
    *,
    nothing: str = "no evidence in the header",
) -> PriorAnswer:
    """One answer from several sources: the label with the highest summed confidence wins; its best
    source's confidence rises a little per agreeing source and falls per contradicting one. Labels that
    `related(a, b)` calls compatible (Abdomen and Abdomen-pelvis) neither agree nor contradict."""
    usable = [v for v in votes if v.label is not None]
    silent = [v.evidence for v in votes if v.label is None]
    if not usable:
        return PriorAnswer(None, 0.0, "none", "; ".join(silent) if silent else nothing)
    scores: dict[str, float] = {}
    for v in usable:
        assert v.label is not None
        scores[v.label] = scores.get(v.label, 0.0) + v.confidence
    order = {v.label: i for i, v in reversed(list(enumerate(usable)))}
    winner = max(
        scores,
        key=lambda label: (
            scores[label],
            max(v.confidence for v in usable if v.label == label),
            -order[label],
        ),
    )
    supporters = [v for v in usable if v.label == winner]
    best = max(supporters, key=lambda v: v.confidence)  # first of the best: sources are in priority order
    agree = [v for v in supporters if v is not best]
    others = [v for v in usable if v.label != winner]
    overlap = [v for v in others if related is not None and v.label is not None and related(winner, v.label)]
    conflict = [v for v in others if v not in overlap]
    confidence = _clamp(best.confidence + AGREE_BONUS * len(agree) - CONFLICT_PENALTY * len(conflict))
    parts = [best.evidence]
    if agree:
        parts.append("agrees: " + "; ".join(v.evidence for v in agree))
    if overlap:
        parts.append("overlaps: " + "; ".join(v.evidence for v in overlap))
    if conflict:
        parts.append("conflicts: " + "; ".join(v.evidence for v in conflict))
    if silent:
        parts.append("also: " + "; ".join(silent))
    return PriorAnswer(winner, confidence, best.source, " | ".join(parts))


def match_vote(match: TextMatch, source: str, confidence: float) -> Vote:
    said = f"{source} {quote_words(match.words)}"
    if match.label is None:
        return Vote(None, 0.0, source, f"{said}: {match.note}")
    note = f" ({match.note})" if match.note else ""
    return Vote(match.label, round(confidence, 3), source, f"{said} -> {match.label}{note}")

"""Accuracy with honest intervals: per task, all three tasks at once, per class sensitivity.

Every proportion comes with its count (k of n) and a Wilson score 95% interval, which behaves at small n
and at 0 or 100% where the normal approximation does not. A label that is unknown (None) for a series is
left out of that task's figures and out of the all-three figure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Z_95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials; (nan, nan) when n is 0."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Proportion:
    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.k, self.n)

    def to_dict(self) -> dict[str, Any]:
        low, high = self.interval
        return {
            "k": self.k,
            "n": self.n,
            "value": _finite(self.value),
            "ci95": [_finite(low), _finite(high)],
            "ci_method": "wilson",
        }

    def __str__(self) -> str:
        if not self.n:
            return "  n/a (n=0)"
        low, high = self.interval
        return f"{self.value:6.1%} [{low:.1%}, {high:.1%}] ({self.k}/{self.n})"


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


@dataclass(frozen=True)
class Prediction:
    """One scored view of a series: its truth (None = unknown) and the predicted class per task."""

    series: str
    view: str  # "original" or the name of a derived view
    patient: str
    truth: Mapping[str, str | None]
    predicted: Mapping[str, str]
    confidence: Mapping[str, float] = field(default_factory=dict)
    fold: str = ""

    @property
    def independent(self) -> bool:
        return self.view == "original"


@dataclass(frozen=True)
class TaskMetrics:
    task: str
    classes: Sequence[str]
    accuracy: Proportion
    sensitivity: dict[str, Proportion]  # per class with at least one true example
    confusion: list[list[int]]  # [truth][predicted], in `classes` order

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy.to_dict(),
            "sensitivity": {c: p.to_dict() for c, p in self.sensitivity.items()},
            "confusion": {"classes": list(self.classes), "rows_truth_columns_predicted": self.confusion},
        }


@dataclass(frozen=True)
class Metrics:
    tasks: dict[str, TaskMetrics]
    all_correct: Proportion
    n_views: int
    n_series: int
    n_patients: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_views": self.n_views,
            "n_series": self.n_series,
            "n_patients": self.n_patients,
            "tasks": {t: m.to_dict() for t, m in self.tasks.items()},
            "all_three_correct": self.all_correct.to_dict(),
        }


def compute_metrics(predictions: Sequence[Prediction], tasks: Mapping[str, Sequence[str]]) -> Metrics:
    per_task: dict[str, TaskMetrics] = {}
    for task, classes in tasks.items():
        index = {c: i for i, c in enumerate(classes)}
        confusion = [[0] * len(classes) for _ in classes]
        correct = total = 0
        for p in predictions:
            truth = p.truth.get(task)
            if truth is None:
                continue
            guess = p.predicted[task]
            confusion[index[truth]][index[guess]] += 1
            total += 1
            correct += truth == guess
        sensitivity = {
            c: Proportion(confusion[i][i], sum(confusion[i]))
            for i, c in enumerate(classes)
            if sum(confusion[i])
        }
        per_task[task] = TaskMetrics(task, list(classes), Proportion(correct, total), sensitivity, confusion)
    complete = [p for p in predictions if all(p.truth.get(t) is not None for t in tasks)]
    all_correct = Proportion(
        sum(all(p.truth[t] == p.predicted[t] for t in tasks) for p in complete), len(complete)
    )
    return Metrics(
        per_task,
        all_correct,
        len(predictions),
        len({p.series for p in predictions}),
        len({p.patient for p in predictions}),
    )


def format_report(metrics: Metrics, title: str) -> str:
    """The text `dicom-node evaluate` and `dicom-node crossval` print."""
    lines = [
        f"{title}: {metrics.n_views} views of {metrics.n_series} series from {metrics.n_patients} patients",
        "  accuracy, Wilson 95% interval, (correct/n)",
    ]
    for task, m in metrics.tasks.items():
        lines.append(f"  {task:<12} {m.accuracy}")
    lines.append(f"  {'all three':<12} {metrics.all_correct}   (views with all three labels)")
    lines.append("  per-class sensitivity:")
    for task, m in metrics.tasks.items():
        for cls, proportion in m.sensitivity.items():
            lines.append(f"    {task:<10} {cls:<22} {proportion}")
    return "\n".join(lines)


def group(predictions: Iterable[Prediction]) -> dict[str, list[Prediction]]:
    """Original series (independent) and derived views (not independent), scored apart."""
    groups: dict[str, list[Prediction]] = {"original": [], "derived": []}
    for p in predictions:
        groups["original" if p.independent else "derived"].append(p)
    return groups

"""Accuracy, Wilson intervals, sensitivity and the all-three figure."""

from __future__ import annotations

import math

import pytest

from node.training.metrics import (
    Prediction,
    Proportion,
    compute_metrics,
    format_report,
    group,
    wilson_interval,
)

TASKS = {"body_part": ["Head", "Chest", "Pelvis"], "axis": ["axial", "coronal"], "contrast": ["no", "yes"]}


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(8, 10, 0.4902, 0.9433), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (1, 2, 0.0945, 0.9055)],
)
def test_wilson_known_values(k: int, n: int, low: float, high: float) -> None:
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(low, abs=1e-4)
    assert got[1] == pytest.approx(high, abs=1e-4)


def test_wilson_edge_cases() -> None:
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    assert Proportion(0, 0).to_dict()["ci95"] == [None, None]


def _p(series: str, truth: tuple, predicted: tuple, view: str = "original") -> Prediction:
    tasks = list(TASKS)
    truths = dict(zip(tasks, truth, strict=True))
    return Prediction(series, view, "P" + series, truths, dict(zip(tasks, predicted, strict=True)))


def test_metrics_per_task_sensitivity_and_all_three() -> None:
    predictions = [
        _p("1", ("Head", "axial", "no"), ("Head", "axial", "no")),
        _p("2", ("Head", "axial", "yes"), ("Chest", "axial", "yes")),
        _p("3", ("Chest", "coronal", "no"), ("Chest", "coronal", "yes")),
        _p("4", (None, "axial", "yes"), ("Pelvis", "axial", "yes")),  # body part unknown
    ]
    metrics = compute_metrics(predictions, TASKS)
    body = metrics.tasks["body_part"]
    assert (body.accuracy.k, body.accuracy.n) == (2, 3)
    assert (body.sensitivity["Head"].k, body.sensitivity["Head"].n) == (1, 2)
    assert (body.sensitivity["Chest"].k, body.sensitivity["Chest"].n) == (1, 1)
    assert "Pelvis" not in body.sensitivity  # no true example
    assert body.confusion[0] == [1, 1, 0]
    assert (metrics.tasks["axis"].accuracy.k, metrics.tasks["axis"].accuracy.n) == (4, 4)
    assert (metrics.tasks["contrast"].accuracy.k, metrics.tasks["contrast"].accuracy.n) == (3, 4)
    # All three: only series with all three labels (1, 2, 3); only series 1 is right on all three.
    assert (metrics.all_correct.k, metrics.all_correct.n) == (1, 3)
    text = format_report(metrics, "test")
    assert "body_part" in text and "(2/3)" in text and "all three" in text
    data = metrics.to_dict()
    assert data["all_three_correct"]["ci95"][0] == pytest.approx(wilson_interval(1, 3)[0], abs=1e-4)


def test_derived_views_are_grouped_apart() -> None:
    predictions = [
        _p("1", ("Head", "axial", "no"), ("Head", "axial", "no")),
        _p("1", ("Head", "coronal", "no"), ("Head", "axial", "no"), view="coronal"),
    ]
    groups = group(predictions)
    assert [p.view for p in groups["original"]] == ["original"]
    assert [p.view for p in groups["derived"]] == ["coronal"]

"""Every source of evidence scored on its own, and fused, for `evaluate` and `crossval`.

For each scored view of a labelled series: the prior (the series' DICOM header; with a derived view's
orientation), the network (the package's or the fold's), the blood pool and the coverage (measured on
the view), and the final answer fused as the node fuses (node.classify.fusion). Each becomes a
`Prediction`; a source that does not answer a task predicts `unknown` there, which counts as wrong
(an abstention is not a correct answer) and is counted apart as "answered".

The final answer's calibration is reported too: expected calibration error (ECE, 10 bins) and a
reliability diagram, and how many wrong final answers carried a low-confidence or disagreement flag.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from node.classify.canonical import turn
from node.classify.engine import ImagePrediction
from node.classify.fusion import UNKNOWN, FusionPolicy, fuse
from node.classify.labels import TASKS
from node.classify.measurements import measure_turned
from node.classify.prior import body_parts_overlap, read_prior
from node.training.dataset import ARCHIVE_SUFFIXES, DEFAULT_CACHE, SeriesEntry, unpack_archive
from node.training.evaluate import ScoredView
from node.training.metrics import Prediction

SOURCES = ("prior", "network", "blood", "coverage", "final")
# Which tasks a source can answer at all.
SOURCE_TASKS = {
    "prior": tuple(TASKS),
    "network": tuple(TASKS),
    "blood": ("contrast",),
    "coverage": ("body_part",),
    "final": tuple(TASKS),
}


@dataclass(frozen=True)
class ScoredSources:
    predictions: dict[str, Prediction]  # source -> prediction
    flagged: dict[str, bool]  # task -> the final answer is low confidence or a disagreement


@cache
def _header(path: Path, cache_dir: Path) -> Dataset | None:
    folder = path
    if folder.is_file() and folder.name.endswith(ARCHIVE_SUFFIXES):
        folder = unpack_archive(folder, cache_dir)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    best: tuple[float, Dataset] | None = None
    for file in files:
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except (OSError, ValueError, pydicom.errors.InvalidDicomError):
            continue
        number = float(ds.get("InstanceNumber", math.inf) or math.inf)
        if best is None or number < best[0]:
            best = (number, ds)
    return best[1] if best is not None else None


def representative_header(entry: SeriesEntry, cache_dir: Path | None = None) -> Dataset | None:
    """The header of the series' lowest-numbered instance (what the node reads); None for NIfTI."""
    if entry.format != "dicom":
        return None
    return _header(entry.path, cache_dir or DEFAULT_CACHE)


def _view_header(header: Dataset | None, item: ScoredView) -> Dataset:
    """The header as the prior sees it for this view: a derived view (a reformat) has its own orientation."""
    out = copy.copy(header) if header is not None else Dataset()  # shallow: elements stay unparsed
    if item.name != "original" or header is None:
        cosines = [*item.view.row_cosine, *item.view.column_cosine]
        out.ImageOrientationPatient = [round(float(c), 6) for c in cosines]
    return out


def score_sources(
    item: ScoredView,
    probabilities: Mapping[str, np.ndarray] | None,
    header: Dataset | None,
    policy: FusionPolicy,
    fold: str = "",
) -> ScoredSources:
    """Every source's answer for one view, and the fused final answer."""
    prior = read_prior(_view_header(header, item))
    view = item.view
    turned = turn(view.voxels, view.spacing, view.row_cosine.tolist(), view.column_cosine.tolist())
    measured = measure_turned(turned)
    image = None
    if probabilities is not None:
        probs = {
            task: {c: float(p) for c, p in zip(TASKS[task], probabilities[task], strict=True)}
            for task in TASKS
        }
        labels = {task: max(probs[task], key=lambda c: probs[task][c]) for task in TASKS}
        image = ImagePrediction(labels, probs, "evaluation", "cpu", 1)
    opinions = measured.opinions() if measured.anatomical else {}
    fused = fuse({task: prior.answer(task) for task in TASKS}, image, policy, opinions)
    answers: dict[str, dict[str, tuple[str, float]]] = {source: {} for source in SOURCES}
    for task in TASKS:
        answer = prior.answer(task)
        if answer.label is not None:
            answers["prior"][task] = (answer.label, answer.confidence)
        if image is not None:
            answers["network"][task] = (image.labels[task], image.confidence(task))
        result = fused.tasks[task]
        answers["final"][task] = (result.label, result.confidence)
    if "contrast" in opinions:
        answers["blood"]["contrast"] = (opinions["contrast"].label, opinions["contrast"].confidence)
    if "body_part" in opinions:
        answers["coverage"]["body_part"] = (opinions["body_part"].label, opinions["body_part"].confidence)
    truth = {task: item.labels.get(task) for task in TASKS}
    predictions = {}
    for source, given in answers.items():
        predicted = {task: given.get(task, (UNKNOWN, 0.0))[0] for task in TASKS}
        confidence = {task: given.get(task, (UNKNOWN, 0.0))[1] for task in TASKS}
        predictions[source] = Prediction(
            item.entry.id, item.name, item.entry.patient, truth, predicted, confidence, fold
        )
    flagged = {task: r.low_confidence or r.disagreement for task, r in fused.tasks.items()}
    return ScoredSources(predictions, flagged)


def calibration(predictions: Sequence[Prediction], bins: int = 10) -> dict[str, Any]:
    """ECE and the reliability curve of the final answers (per task and pooled over tasks)."""
    out: dict[str, Any] = {}
    pooled: list[tuple[float, bool]] = []
    for task in TASKS:
        pairs = [
            (float(p.confidence.get(task, 0.0)), p.predicted[task] == p.truth[task])
            for p in predictions
            if p.truth.get(task) is not None
        ]
        pooled += pairs
        out[task] = _reliability(pairs, bins)
    out["all_tasks"] = _reliability(pooled, bins)
    return out


def _reliability(pairs: Sequence[tuple[float, bool]], bins: int) -> dict[str, Any]:
    if not pairs:
        return {"n": 0, "ece": None, "bins": []}
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = []
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        members = [(c, ok) for c, ok in pairs if low < c <= high or (low == 0.0 and c == 0.0)]
        if not members:
            continue
        confidence = float(np.mean([c for c, _ in members]))
        accuracy = float(np.mean([ok for _, ok in members]))
        ece += len(members) / len(pairs) * abs(confidence - accuracy)
        rows.append(
            {
                "range": [round(float(low), 2), round(float(high), 2)],
                "n": len(members),
                "confidence": round(confidence, 4),
                "accuracy": round(accuracy, 4),
            }
        )
    return {"n": len(pairs), "ece": round(ece, 4), "bins": rows}


def flag_recall(scored: Sequence[ScoredSources]) -> dict[str, Any]:
    """Of the wrong final answers, how many carried a low-confidence or disagreement flag."""
    wrong = flagged = 0
    for item in scored:
        final = item.predictions["final"]
        for task in TASKS:
            truth = final.truth.get(task)
            if truth is None or final.predicted[task] == truth:
                continue
            wrong += 1
            flagged += item.flagged[task]
    return {"wrong": wrong, "flagged": flagged, "share": round(flagged / wrong, 4) if wrong else None}


def _proportion_text(k: int, n: int) -> str:
    from node.training.metrics import Proportion

    return str(Proportion(k, n)) if n else "n/a"


def source_metrics(scored: Sequence[ScoredSources]) -> dict[str, Any]:
    """Per source: accuracy per task (abstentions wrong), how often it answered, and all three correct."""
    from node.training.metrics import Proportion, compute_metrics

    out: dict[str, Any] = {}
    for source in SOURCES:
        predictions = [s.predictions[source] for s in scored]
        metrics = compute_metrics(predictions, {task: [*classes, UNKNOWN] for task, classes in TASKS.items()})
        entry: dict[str, Any] = {"tasks": {}, "all_three_correct": metrics.all_correct.to_dict()}
        for task in SOURCE_TASKS[source]:
            known = [p for p in predictions if p.truth.get(task) is not None]
            answered = sum(1 for p in known if p.predicted[task] != UNKNOWN)
            entry["tasks"][task] = {
                "accuracy": metrics.tasks[task].accuracy.to_dict(),
                "answered": Proportion(answered, len(known)).to_dict(),
            }
            if task == "body_part":
                # The answer's region overlaps the truth's (Chest for Chest-abdomen-pelvis): not exact, but
                # the series still reaches where the rule meant.
                overlapping = sum(
                    1
                    for p in known
                    if p.predicted[task] in TASKS[task]
                    and body_parts_overlap(p.predicted[task], str(p.truth[task]))
                )
                entry["tasks"][task]["overlapping"] = Proportion(overlapping, len(known)).to_dict()
        out[source] = entry
    return out


def format_source_table(metrics: Mapping[str, Any], title: str) -> str:
    """A text table: one row per task (and all three), one column per source."""
    lines = [title, f"{'task':<12}" + "".join(f"{s:>34}" for s in SOURCES)]
    for task in (*TASKS, "all three"):
        cells = []
        for source in SOURCES:
            if task == "all three":
                block = (
                    metrics[source]["all_three_correct"] if source in ("prior", "network", "final") else None
                )
            else:
                block = metrics[source]["tasks"].get(task, {}).get("accuracy")
            cells.append(f"{_proportion_text(block['k'], block['n']) if block else '-':>34}")
        lines.append(f"{task:<12}" + "".join(cells))
    return "\n".join(lines)


def report_sources(scored: Sequence[ScoredSources], out: Path, title: str) -> dict[str, Any]:
    """Print and write (sources.json, reliability.png) the per-source figures of the original series, and
    apart those of the derived views."""
    import json

    from node.training.plots import plot_reliability

    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    texts = []
    for group_name, members in (
        ("original", [s for s in scored if s.predictions["final"].independent]),
        ("derived", [s for s in scored if not s.predictions["final"].independent]),
    ):
        if not members:
            continue
        metrics = source_metrics(members)
        finals = [s.predictions["final"] for s in members]
        block = {
            "sources": metrics,
            "calibration": calibration(finals),
            "wrong_final_answers_flagged": flag_recall(members),
        }
        result[group_name] = block
        label = title + (
            ", original series" if group_name == "original" else ", derived views (NOT independent)"
        )
        calib = block["calibration"]["all_tasks"]
        recall = block["wrong_final_answers_flagged"]
        texts.append(
            format_source_table(metrics, label)
            + f"\nfinal answer calibration: ECE {calib['ece']} over {calib['n']} task answers; "
            + "wrong final answers flagged (low confidence or disagreement): "
            + f"{recall['flagged']} of {recall['wrong']}"
            + "\nbody part, overlapping region: "
            + ", ".join(
                f"{s} {_proportion_text(o['k'], o['n'])}"
                for s in ("prior", "network", "coverage", "final")
                if (o := metrics[s]["tasks"].get("body_part", {}).get("overlapping"))
            )
        )
        if group_name == "original":
            plot_reliability(block["calibration"], out / "reliability.png", f"{title}: final answers")
    text = "\n\n".join(texts)
    print(text)
    (out / "sources.txt").write_text(text + "\n")
    (out / "sources.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def write_scored(scored: Sequence[ScoredSources], path: Path) -> Path:
    """Keep a fold's scored sources (crossval --resume reads them back)."""
    import json

    rows = [
        {
            "flagged": s.flagged,
            "predictions": {
                source: {
                    "series": p.series,
                    "view": p.view,
                    "patient": p.patient,
                    "fold": p.fold,
                    "truth": dict(p.truth),
                    "predicted": dict(p.predicted),
                    "confidence": dict(p.confidence),
                }
                for source, p in s.predictions.items()
            },
        }
        for s in scored
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1) + "\n")
    return path


def read_scored(path: Path) -> list[ScoredSources]:
    import json

    out = []
    for row in json.loads(path.read_text()):
        predictions = {
            source: Prediction(
                p["series"], p["view"], p["patient"], p["truth"], p["predicted"], p["confidence"], p["fold"]
            )
            for source, p in row["predictions"].items()
        }
        out.append(ScoredSources(predictions, dict(row["flagged"])))
    return out

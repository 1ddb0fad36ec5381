"""`dicom-node evaluate`: score a model package on the labelled series of a manifest.

Prints per-task accuracy with Wilson 95% intervals, the all-three-correct accuracy and per-class
sensitivity; writes <out>/metrics.json, <out>/predictions.csv, <out>/confusion_<task>.png and, when the
package carries its training history, <out>/training_curves.png. With views="augmented" the deterministic
derived views of each series (coronal and sagittal reformats, crop recipes) are scored too, reported apart
and labelled as not independent: they come from the same patients as the original series.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from node.classify.model import MultiTaskResNet
from node.classify.preprocess import WINDOW_HU, to_network_input
from node.training.augment import View, derived_views
from node.training.dataset import Manifest, SeriesEntry, load_volumes, read_manifest
from node.training.metrics import Metrics, Prediction, compute_metrics, format_report, group

logger = logging.getLogger(__name__)

VIEW_MODES: tuple[str, ...] = ("original", "augmented")


@dataclass(frozen=True)
class ScoredView:
    entry: SeriesEntry
    name: str  # "original" or the derived view's name
    view: View
    labels: dict[str, str | None]


def views_to_score(
    entries: Sequence[SeriesEntry], views: Mapping[str, View], *, derived: bool
) -> list[ScoredView]:
    out: list[ScoredView] = []
    for entry in entries:
        view = views[entry.id]
        out.append(ScoredView(entry, "original", view, dict(entry.labels)))
        if derived:
            for name, derived_view, labels in derived_views(view, entry.labels, entry.crops):
                out.append(ScoredView(entry, name, derived_view, labels))
    return out


def network_inputs(
    items: Sequence[ScoredView], grid: Sequence[int], window_hu: Sequence[float] = WINDOW_HU
) -> list[torch.Tensor]:
    """Each view's network input (1, 1, *grid) on the CPU; small enough to keep (grid^3 floats each)."""
    return [to_network_input(item.view.voxels, grid, "cpu", window_hu) for item in items]


def _batches(tensors: Sequence[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(tensors), size):
        yield torch.cat(list(tensors[start : start + size]))


@torch.no_grad()
def predict_probabilities(
    network: MultiTaskResNet,
    inputs: Sequence[torch.Tensor],
    device: torch.device,
    batch_size: int = 4,
) -> list[dict[str, np.ndarray]]:
    """Softmax probabilities per task for each input, batched."""
    network.eval()
    results: list[dict[str, np.ndarray]] = []
    for batch in _batches(inputs, batch_size):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = network(batch.to(device))
        probs = {task: torch.softmax(v.float(), dim=1).cpu().numpy() for task, v in logits.items()}
        for i in range(batch.shape[0]):
            results.append({task: p[i] for task, p in probs.items()})
    return results


def to_predictions(
    items: Sequence[ScoredView],
    probabilities: Sequence[Mapping[str, np.ndarray]],
    tasks: Mapping[str, Sequence[str]],
    fold: str = "",
) -> list[Prediction]:
    predictions: list[Prediction] = []
    for item, probs in zip(items, probabilities, strict=True):
        predicted = {task: tasks[task][int(np.argmax(probs[task]))] for task in tasks}
        confidence = {task: float(np.max(probs[task])) for task in tasks}
        truth = {task: item.labels.get(task) for task in tasks}
        predictions.append(
            Prediction(item.entry.id, item.name, item.entry.patient, truth, predicted, confidence, fold)
        )
    return predictions


def write_predictions(predictions: Sequence[Prediction], path: Path, tasks: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        header = ["series", "view", "independent", "patient", "fold"]
        for task in tasks:
            header += [f"{task}_truth", f"{task}_predicted", f"{task}_confidence"]
        writer.writerow(header)
        for p in predictions:
            row: list[Any] = [p.series, p.view, "yes" if p.independent else "no", p.patient, p.fold]
            for task in tasks:
                row += [p.truth.get(task) or "", p.predicted[task], f"{p.confidence.get(task, 0.0):.4f}"]
            writer.writerow(row)
    return path


def read_predictions(path: Path, tasks: Sequence[str]) -> list[Prediction]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [
        Prediction(
            row["series"],
            row["view"],
            row["patient"],
            {t: row[f"{t}_truth"] or None for t in tasks},
            {t: row[f"{t}_predicted"] for t in tasks},
            {t: float(row[f"{t}_confidence"]) for t in tasks},
            row.get("fold", ""),
        )
        for row in rows
    ]


def report(
    predictions: Sequence[Prediction],
    tasks: Mapping[str, Sequence[str]],
    out: Path,
    *,
    title: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Metrics of the original series and (apart) of the derived views: printed, JSON, PNG, CSV."""
    from node.training.plots import plot_confusion

    out.mkdir(parents=True, exist_ok=True)
    groups = group(predictions)
    result: dict[str, Any] = dict(extra or {})
    texts: list[str] = []
    computed: dict[str, Metrics] = {}
    for name, members in groups.items():
        if not members:
            continue
        metrics = compute_metrics(members, tasks)
        computed[name] = metrics
        label = (
            f"{title}, original series (independent)"
            if name == "original"
            else f"{title}, derived views (reformats, crops; NOT independent of the series they come from)"
        )
        texts.append(format_report(metrics, label))
        result[name] = metrics.to_dict()
    for task in tasks:
        for name, metrics in computed.items():
            suffix = "" if name == "original" else "_derived"
            m = metrics.tasks[task]
            plot_confusion(
                m.confusion,
                m.classes,
                out / f"confusion_{task}{suffix}.png",
                f"{task}: {name} ({m.accuracy.k}/{m.accuracy.n} correct)",
            )
    text = "\n\n".join(texts)
    print(text)
    (out / "report.txt").write_text(text + "\n")
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    write_predictions(predictions, out / "predictions.csv", list(tasks))
    return result


def evaluate(
    package_dir: Path,
    manifest_path: Path,
    out: Path,
    *,
    views: str = "original",
    device: str = "auto",
    batch_size: int = 4,
    cache_dir: Path | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    from node.classify.package import load_package
    from node.training.plots import plot_training_curves
    from node.training.train import choose_device, set_threads

    if views not in VIEW_MODES:
        raise ValueError(f"views must be one of {VIEW_MODES}")
    set_threads(threads)
    torch_device = choose_device(device)
    package = load_package(package_dir)
    manifest: Manifest = read_manifest(manifest_path)
    for series_id, reason in manifest.skipped:
        print(f"skipped {series_id}: {reason}")
    from node.classify.measurements import MEASURE_IN_PLANE

    volumes = load_volumes(
        manifest.entries,
        max_in_plane=max(package.max_in_plane, MEASURE_IN_PLANE),  # as the node reads them
        cache_dir=cache_dir,
        progress=progress,
    )
    all_views = {k: View.from_volume(v) for k, v in volumes.items()}
    items = views_to_score(manifest.entries, all_views, derived=views == "augmented")
    network = package.load_network(torch_device)
    probabilities: list[dict[str, np.ndarray]] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        inputs = network_inputs(chunk, package.spec.grid, package.window_hu)
        probabilities += predict_probabilities(network, inputs, torch_device, batch_size)
    predictions = to_predictions(items, probabilities, package.tasks)
    result = report(
        predictions,
        package.tasks,
        out,
        title=f"{package.model_id} on {manifest_path.name}",
        extra={"model": package.model_id, "manifest": str(manifest_path), "views": views},
    )
    from node.classify.fusion import FusionPolicy
    from node.training.sources import report_sources, representative_header, score_sources

    policy = FusionPolicy(weights=package.fusion_weights)
    scored = [
        score_sources(item, probs, representative_header(item.entry, cache_dir), policy)
        for item, probs in zip(items, probabilities, strict=True)
    ]
    result["sources"] = report_sources(scored, out, f"{package.model_id} on {manifest_path.name}")
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    history = package.metadata.get("node", {}).get("training", {}).get("history")
    if history:
        plot_training_curves(history, out / "training_curves.png", f"{package.model_id}: training")
    print(f"wrote {out}/metrics.json, sources.json, predictions.csv, confusion_<task>.png, reliability.png")
    return result

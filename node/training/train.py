"""`dicom-node train`: train a model package on a manifest of labelled series (docs/training.md).

Each series is loaded once (in-plane downsampled to about twice the grid) and kept in memory; every training
sample is a fresh realistic view of one training series (augment.sample_view). Patients are split, never
series: all views of a patient stay on one side. Loss = sum over tasks of cross-entropy, unknown labels
masked out. A checkpoint is written after every epoch (<out>/checkpoints/last.pt, and best.pt when there is
a validation set); --resume continues from last.pt exactly (weights, optimizer, history, random state).
At the end the model package is written (<out>/package or --package-dir) with <out>/training_curves.png.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from node.classify.labels import TASKS
from node.classify.model import MultiTaskResNet, NetworkSpec, build_network, count_parameters
from node.classify.preprocess import to_network_input
from node.errors import NodeError
from node.training.augment import AugmentConfig, View, derived_views, sample_view
from node.training.dataset import Manifest, SeriesEntry, load_volumes, read_manifest
from node.training.evaluate import (
    ScoredView,
    network_inputs,
    predict_probabilities,
    to_predictions,
    views_to_score,
)
from node.training.metrics import Prediction, compute_metrics, group

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


class TrainingError(NodeError):
    """Training cannot start or continue (bad split, incompatible checkpoint ...)."""


@dataclass
class TrainConfig:
    manifest: Path
    out: Path
    package_dir: Path | None = None
    architecture: str = "resnet10"
    width: int = 32
    grid: tuple[int, int, int] = (128, 128, 128)
    dropout: float = 0.2
    epochs: int = 20
    samples_per_epoch: int = 64
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-2
    val_patients: tuple[str, ...] = ()
    val_fraction: float = 0.25
    seed: int = 0
    class_weights: bool = False
    select: str = "last"  # which weights go into the package: "last" epoch, or "best" on validation
    validate_every: int = 1  # epochs between validations (0: only after the last epoch)
    stop_after: int | None = None  # stop after this many epochs of this run (continue later with resume)
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    resume: bool = False
    max_in_plane: int | None = None  # default: 2 x the largest grid size
    cache_dir: Path | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    name: str = "ct-classifier"
    version: str = "0.1.0"
    description: str = "CT series classifier trained with `dicom-node train`"

    def spec(self) -> NetworkSpec:
        return NetworkSpec(
            architecture=self.architecture,
            width=self.width,
            grid=self.grid,
            dropout=self.dropout,
            tasks={task: list(classes) for task, classes in TASKS.items()},
        )

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between a run and its --resume."""
        return {
            "spec": self.spec().to_dict(),
            "samples_per_epoch": self.samples_per_epoch,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
            "class_weights": self.class_weights,
            "augment": self.augment.to_dict(),
        }


@dataclass
class TrainResult:
    network: MultiTaskResNet
    history: list[dict[str, Any]]
    train_patients: list[str]
    val_patients: list[str]
    summary: dict[str, Any]
    val_predictions: list[Prediction]
    package: Path | None = None


# ------------------------------------------------------------------------------------------- machine


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def set_threads(threads: int | None) -> int:
    """Intra-op threads: the CPUs this process may use (its affinity mask), or `threads`."""
    count = max(1, threads or available_cpus())
    torch.set_num_threads(count)
    return count


def choose_device(name: str) -> torch.device:
    """--device auto|cpu|cuda[:N], chosen as the running node chooses classify.device."""
    from node.classify.engine import EngineError, resolve_device

    try:
        return resolve_device(name)
    except EngineError as exc:
        raise TrainingError(f"--device: {exc}") from exc


def show_progress(requested: bool) -> bool:
    return requested and sys.stderr.isatty()


# --------------------------------------------------------------------------------------------- split


def split_patients(
    entries: Sequence[SeriesEntry], val_patients: Sequence[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """(training patients, validation patients): named ones, or a seeded fraction of them (at least one
    patient stays for training; a fraction of 0 means no validation)."""
    patients = sorted({e.patient for e in entries})
    if val_patients:
        unknown = sorted(set(val_patients) - set(patients))
        if unknown:
            raise TrainingError(f"validation patient(s) {', '.join(unknown)} not in the manifest")
        val = sorted(set(val_patients))
    elif val_fraction > 0 and len(patients) > 1:
        count = min(len(patients) - 1, max(1, round(val_fraction * len(patients))))
        rng = np.random.default_rng(seed)
        val = sorted(rng.choice(patients, size=count, replace=False).tolist())
    else:
        val = []
    train = [p for p in patients if p not in val]
    if not train:
        raise TrainingError("no patient left for training")
    return train, val


# ------------------------------------------------------------------------------------------ summary


def data_summary(
    entries: Sequence[SeriesEntry], views: Mapping[str, View], augment: AugmentConfig
) -> dict[str, Any]:
    """Series and patients per class (original series), and the derived views each class gains."""
    summary: dict[str, Any] = {"series": len(entries), "patients": len({e.patient for e in entries})}
    per_task: dict[str, Any] = {}
    for task in TASKS:
        series: Counter[str] = Counter()
        patients: dict[str, set[str]] = {}
        derived: Counter[str] = Counter()
        for entry in entries:
            label = entry.labels.get(task)
            if label is not None:
                series[label] += 1
                patients.setdefault(label, set()).add(entry.patient)
            for _, _, labels in derived_views(views[entry.id], entry.labels, entry.crops, augment):
                if labels.get(task) is not None:
                    derived[str(labels[task])] += 1
        per_task[task] = {
            cls: {
                "series": series.get(cls, 0),
                "patients": len(patients.get(cls, set())),
                "derived_views": derived.get(cls, 0),
            }
            for cls in TASKS[task]
            if series.get(cls) or derived.get(cls)
        }
        per_task[task]["unlabelled_series"] = sum(1 for e in entries if e.labels.get(task) is None)
    summary["per_class"] = per_task
    summary["series_ids"] = [e.id for e in entries]
    return summary


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ training


def _targets(labels: Sequence[Mapping[str, str | None]], device: torch.device) -> dict[str, torch.Tensor]:
    return {
        task: torch.tensor(
            [classes.index(lab[task]) if lab.get(task) is not None else -1 for lab in labels],
            dtype=torch.long,
            device=device,
        )
        for task, classes in TASKS.items()
    }


def _class_weights(entries: Sequence[SeriesEntry], device: torch.device) -> dict[str, torch.Tensor | None]:
    """Inverse frequency of each class over the training series and their crop recipes (0 if absent)."""
    weights: dict[str, torch.Tensor | None] = {}
    for task, classes in TASKS.items():
        counts = Counter(e.labels[task] for e in entries if e.labels.get(task) is not None)
        if task == "body_part":
            counts.update(r.label for e in entries for r in e.crops)
        present = [c for c in classes if counts.get(c)]
        if not present:
            weights[task] = None
            continue
        total = sum(counts[c] for c in present)
        w = [total / (len(present) * counts[c]) if counts.get(c) else 0.0 for c in classes]
        weights[task] = torch.tensor(w, dtype=torch.float32, device=device)
    return weights


def task_losses(
    logits: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Cross-entropy per task over the samples whose label is known (target -1 = unknown: masked)."""
    losses: dict[str, torch.Tensor] = {}
    for task, target in targets.items():
        if bool((target >= 0).any()):
            w = weights.get(task) if weights else None
            losses[task] = F.cross_entropy(logits[task].float(), target, weight=w, ignore_index=-1)
    return losses


def _lr_at(config: TrainConfig, epoch: int) -> float:
    """Cosine decay from lr to 5% of it over the configured epochs (a function of the epoch: resumable)."""
    progress = min(1.0, epoch / max(1, config.epochs))
    return config.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _validate(
    network: MultiTaskResNet,
    items: Sequence[ScoredView],
    inputs: Sequence[torch.Tensor],
    device: torch.device,
    batch_size: int,
) -> tuple[float | None, dict[str, float], list[Prediction]]:
    if not items:
        return None, {}, []
    probabilities = predict_probabilities(network, inputs, device, batch_size)
    predictions = to_predictions(items, probabilities, TASKS)
    loss = 0.0
    for task, classes in TASKS.items():
        known = [(p[task], item.labels[task]) for p, item in zip(probabilities, items, strict=True)]
        nll = [
            -math.log(max(1e-7, float(probs[classes.index(lab)]))) for probs, lab in known if lab is not None
        ]
        if nll:
            loss += sum(nll) / len(nll)
    metrics = compute_metrics(group(predictions)["original"] or predictions, TASKS)
    accuracy = {t: m.accuracy.value for t, m in metrics.tasks.items() if m.accuracy.n}
    return loss, accuracy, predictions


def run_training(
    config: TrainConfig,
    manifest: Manifest,
    views: Mapping[str, View],
) -> TrainResult:
    """The training loop on already loaded series (crossval calls this once per fold)."""
    device = choose_device(config.device)
    spec = config.spec()
    train_patients, val_patients = split_patients(
        manifest.entries, config.val_patients, config.val_fraction, config.seed
    )
    train_entries = [e for e in manifest.entries if e.patient in train_patients]
    val_entries = [e for e in manifest.entries if e.patient in val_patients]
    logger.info(
        "training on %d series of %d patients (%s); validating on %d series of %d patients (%s)",
        len(train_entries),
        len(train_patients),
        ", ".join(train_patients),
        len(val_entries),
        len(val_patients),
        ", ".join(val_patients) or "none",
    )
    torch.manual_seed(config.seed)
    network = build_network(spec).to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    weights = _class_weights(train_entries, device) if config.class_weights else None
    rng = np.random.default_rng(config.seed)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    best_score: float | None = None
    checkpoints = config.out / "checkpoints"
    last_path = checkpoints / "last.pt"
    if config.resume:
        if not last_path.is_file():
            raise TrainingError(f"--resume: no checkpoint at {last_path}")
        state = torch.load(last_path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != config.fingerprint():
            raise TrainingError(
                f"{last_path}: the checkpoint was made with other settings (network, batch, lr, seed or "
                "augmentation); resume with the same ones"
            )
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        best_score = state.get("best_score")
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        logger.info("resuming from %s after epoch %d", last_path, start_epoch)
        if start_epoch >= config.epochs:
            logger.info("already trained %d of %d epochs", start_epoch, config.epochs)
    val_items = views_to_score(val_entries, views, derived=True)
    val_inputs = network_inputs(val_items, spec.grid)
    steps = max(1, config.samples_per_epoch // config.batch_size)
    progress = show_progress(config.progress)
    logger.info(
        "network %s width %d grid %s: %.1fM parameters; %d epochs of %d steps of %d samples on %s",
        spec.architecture,
        spec.width,
        "x".join(map(str, spec.grid)),
        count_parameters(network) / 1e6,
        config.epochs,
        steps,
        config.batch_size,
        device,
    )
    from tqdm import tqdm

    val_predictions: list[Prediction] = []
    end_epoch = config.epochs
    if config.stop_after is not None:
        end_epoch = min(end_epoch, start_epoch + max(0, config.stop_after))
    for epoch in range(start_epoch, end_epoch):
        started = time.monotonic()
        for group_ in optimizer.param_groups:
            group_["lr"] = _lr_at(config, epoch)
        network.train()
        loss_sum = 0.0
        correct: Counter[str] = Counter()
        counted: Counter[str] = Counter()
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", disable=not progress)
        for _ in bar:
            voxels: list[torch.Tensor] = []
            labels: list[dict[str, str | None]] = []
            for _ in range(config.batch_size):
                entry = train_entries[int(rng.integers(len(train_entries)))]
                sample, sample_labels, _ = sample_view(
                    views[entry.id], entry.labels, entry.crops, rng, config.augment
                )
                voxels.append(to_network_input(sample, spec.grid, "cpu"))
                labels.append(sample_labels)
            x = torch.cat(voxels).to(device)
            targets = _targets(labels, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = network(x)
            losses = task_losses(logits, targets, weights)
            loss = torch.stack(list(losses.values())).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach())
            for task, target in targets.items():
                mask = target >= 0
                correct[task] += int((logits[task].argmax(1)[mask] == target[mask]).sum())
                counted[task] += int(mask.sum())
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        last_epoch = epoch + 1 == config.epochs
        if last_epoch or (config.validate_every and (epoch + 1) % config.validate_every == 0):
            val_loss, val_accuracy, val_predictions = _validate(
                network, val_items, val_inputs, device, config.batch_size
            )
        else:
            val_loss, val_accuracy, val_predictions = None, {}, []
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": _lr_at(config, epoch),
            "train_loss": loss_sum / steps,
            "train_accuracy": {t: correct[t] / counted[t] for t in TASKS if counted[t]},
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "seconds": round(time.monotonic() - started, 1),
        }
        history.append(record)
        line = f"epoch {epoch + 1}/{config.epochs}: loss {record['train_loss']:.3f}"
        if val_loss is not None:
            accs = ", ".join(f"{t} {a:.0%}" for t, a in val_accuracy.items())
            line += f"; validation loss {val_loss:.3f}, accuracy {accs}"
        logger.info("%s (%.0f s)", line, record["seconds"])
        score = -val_loss if val_loss is not None else None
        improved = score is not None and (best_score is None or score > best_score)
        if improved:
            best_score = score
        state = {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": config.fingerprint(),
            "epoch": epoch + 1,
            "model": network.state_dict(),
            "optimizer": optimizer.state_dict(),
            "history": history,
            "best_score": best_score,
            "numpy_rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        }
        _atomic_save(state, last_path)
        if improved:
            _atomic_save(state, checkpoints / "best.pt")
    if config.select == "best" and (checkpoints / "best.pt").is_file() and val_items:
        best = torch.load(checkpoints / "best.pt", map_location="cpu", weights_only=False)
        network.load_state_dict(best["model"])
        logger.info("using the best validation epoch (%d)", best["epoch"])
        _, _, val_predictions = _validate(network, val_items, val_inputs, device, config.batch_size)
    elif val_items and not val_predictions:
        _, _, val_predictions = _validate(network, val_items, val_inputs, device, config.batch_size)
    summary = data_summary(train_entries, views, config.augment)
    return TrainResult(network, history, train_patients, val_patients, summary, val_predictions)


def training_metadata(config: TrainConfig, result: TrainResult, manifest: Manifest) -> dict[str, Any]:
    return {
        "manifest": str(config.manifest),
        "manifest_sha256_16": _file_digest(config.manifest),
        "train_patients": result.train_patients,
        "val_patients": result.val_patients,
        "data": result.summary,
        "skipped": [{"id": i, "reason": r} for i, r in manifest.skipped],
        "augmentation": config.augment.to_dict(),
        "epochs": len(result.history),
        "samples_per_epoch": config.samples_per_epoch,
        "batch_size": config.batch_size,
        "optimizer": {
            "name": "AdamW",
            "lr": config.lr,
            "weight_decay": config.weight_decay,
            "schedule": "cosine",
        },
        "class_weights": config.class_weights,
        "selected": config.select,
        "seed": config.seed,
        "history": result.history,
    }


def validation_metrics(predictions: Sequence[Prediction]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, members in group(predictions).items():
        if members:
            out[f"validation_{name}"] = compute_metrics(members, TASKS).to_dict()
    return out


def reading_in_plane(config: TrainConfig) -> int:
    """In-plane size the series are read at: 2 x the grid, and at least what the node's measurements
    read (node.classify.measurements.MEASURE_IN_PLANE), so that training sees what the node sees."""
    from node.classify.measurements import MEASURE_IN_PLANE

    return config.max_in_plane or max(2 * max(config.grid), MEASURE_IN_PLANE)


def prepare(config: TrainConfig) -> tuple[Manifest, dict[str, View]]:
    manifest = read_manifest(config.manifest)
    for series_id, reason in manifest.skipped:
        print(f"skipped {series_id}: {reason}")
    max_in_plane = reading_in_plane(config)
    volumes = load_volumes(
        manifest.entries,
        max_in_plane=max_in_plane,
        cache_dir=config.cache_dir,
        progress=show_progress(config.progress),
    )
    return manifest, {k: View.from_volume(v) for k, v in volumes.items()}


def write_package(
    config: TrainConfig,
    result: TrainResult,
    manifest: Manifest,
    *,
    metrics: Mapping[str, Any] | None = None,
    package_dir: Path | None = None,
) -> Path:
    from node.classify.package import bundle_metadata, save_package

    target = package_dir or config.package_dir or (config.out / "package")
    metadata = bundle_metadata(
        config.name,
        config.version,
        config.spec(),
        description=config.description,
        training=training_metadata(config, result, manifest),
        metrics=dict(metrics) if metrics is not None else validation_metrics(result.val_predictions),
        max_in_plane=reading_in_plane(config),
    )
    network = copy.deepcopy(result.network).cpu()
    save_package(target, network, metadata)
    docs = target / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    if not (docs / "README.md").exists():
        (docs / "README.md").write_text(
            f"# {config.name} {config.version}\n\n"
            f"Trained with `dicom-node train --manifest {config.manifest.name}` "
            f"on {result.summary['series']} series of {result.summary['patients']} patients. "
            "Training data, augmentation, history and validation metrics: ../configs/metadata.json.\n"
        )
    return target


def train(config: TrainConfig) -> TrainResult:
    """`dicom-node train`: load, train, checkpoint, write the package and the training curves."""
    from node.training.plots import plot_training_curves

    set_threads(config.threads)
    config.out.mkdir(parents=True, exist_ok=True)
    manifest, views = prepare(config)
    result = run_training(config, manifest, views)
    result.package = write_package(config, result, manifest)
    plot_training_curves(
        result.history, config.out / "training_curves.png", f"{config.name} {config.version}"
    )
    if result.val_predictions:
        from node.training.evaluate import report

        report(result.val_predictions, TASKS, config.out / "validation", title="validation patients")
    print(f"model package: {result.package}")
    print(f"training curves: {config.out / 'training_curves.png'}")
    return result

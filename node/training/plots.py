"""PNG figures: confusion matrices and training curves (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

logger = logging.getLogger(__name__)


def plot_confusion(
    confusion: Sequence[Sequence[int]],
    classes: Sequence[str],
    path: Path,
    title: str,
    *,
    only_seen: bool = True,
) -> Path:
    """A confusion matrix (rows = truth, columns = prediction) with counts in the cells.

    With `only_seen`, classes that appear neither as truth nor as prediction are left out (16 body parts
    on a few series would otherwise be mostly empty rows).
    """
    matrix = np.asarray(confusion, dtype=np.int64)
    names = list(classes)
    if only_seen and matrix.size:
        keep = [i for i in range(len(names)) if matrix[i, :].sum() or matrix[:, i].sum()]
        if keep:
            matrix = matrix[np.ix_(keep, keep)]
            names = [names[i] for i in keep]
    size = max(4.0, 0.55 * len(names) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1, int(matrix.max()) if matrix.size else 1))
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if matrix[i, j] > threshold else "black",
            )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: Path, title: str = "training") -> Path:
    """Loss (train and validation) and accuracy per task per epoch, from the training history."""
    epochs = [int(h["epoch"]) for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    loss_ax.plot(epochs, [h.get("train_loss") for h in history], marker="o", label="train")
    val_loss = [h.get("val_loss") for h in history]
    if any(v is not None for v in val_loss):
        loss_ax.plot(epochs, [np.nan if v is None else v for v in val_loss], marker="o", label="validation")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss (sum over tasks)")
    loss_ax.set_title("loss")
    loss_ax.legend()
    tasks = sorted({t for h in history for t in h.get("train_accuracy", {})})
    for task in tasks:
        (line,) = acc_ax.plot(
            epochs, [h.get("train_accuracy", {}).get(task, np.nan) for h in history], label=f"{task} train"
        )
        values = [h.get("val_accuracy", {}).get(task) for h in history]
        if any(v is not None for v in values):
            acc_ax.plot(
                epochs,
                [np.nan if v is None else v for v in values],
                linestyle="--",
                color=line.get_color(),
                label=f"{task} validation",
            )
    acc_ax.set_ylim(-0.02, 1.02)
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_title("accuracy (train: augmented samples)")
    acc_ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_reliability(calibration: Mapping[str, Any], path: Path, title: str) -> Path:
    """A reliability diagram: accuracy against confidence per bin, one line per task and all tasks pooled
    (the diagonal is perfect calibration); the legend gives each expected calibration error."""
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for name, block in calibration.items():
        rows = block.get("bins", [])
        if not rows:
            continue
        xs = [r["confidence"] for r in rows]
        ys = [r["accuracy"] for r in rows]
        ax.plot(xs, ys, marker="o", label=f"{name} (ECE {block['ece']}, n={block['n']})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence of the final answer")
    ax.set_ylabel("share correct")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

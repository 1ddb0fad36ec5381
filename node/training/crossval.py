"""`dicom-node crossval`: leave-one-patient-out estimate of what a model trained this way gets right.

For each patient with labels, a model is trained on all the other patients and predicts that patient's
series (the original series, and their deterministic derived views: reformats, crops). The held-out
predictions of all folds are pooled and reported with Wilson 95% intervals, the original series apart
from the derived views (which are not independent of them). With a package directory, a final model is
then trained on every patient and written there with the pooled figures in its metadata: that is how
the starter model and its model card were made.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from node import COMMAND
from node.classify.fusion import FusionPolicy
from node.classify.labels import TASKS
from node.training.evaluate import (
    network_inputs,
    predict_probabilities,
    read_predictions,
    report,
    views_to_score,
    write_predictions,
)
from node.training.metrics import Prediction
from node.training.plots import plot_training_curves
from node.training.sources import (
    ScoredSources,
    read_scored,
    report_sources,
    representative_header,
    score_sources,
    write_scored,
)
from node.training.train import (
    TrainConfig,
    TrainingError,
    choose_device,
    prepare,
    run_training,
    set_threads,
    write_package,
)

logger = logging.getLogger(__name__)


def crossval(config: TrainConfig, *, package_dir: Path | None = None) -> dict[str, Any]:
    """Train one model per held-out patient, pool the held-out predictions, report; optionally train the
    final model on all patients into `package_dir`. With config.resume, finished folds are kept and an
    interrupted fold continues from its last checkpoint."""
    set_threads(config.threads)
    config.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    manifest, views = prepare(config)
    patients = manifest.patients
    if len(patients) < 2:
        raise TrainingError("leave-one-patient-out needs at least two patients with labels")
    command = " ".join(shlex.quote(a) for a in [COMMAND, *sys.argv[1:]]) if sys.argv else ""
    pooled: list[Prediction] = []
    scored: list[ScoredSources] = []
    fold_seconds: dict[str, float] = {}
    device = choose_device(config.device)
    policy = FusionPolicy()
    for number, patient in enumerate(patients, start=1):
        fold_dir = config.out / "folds" / patient
        done = fold_dir / "predictions.csv"
        sources_done = fold_dir / "sources.json"
        if config.resume and done.is_file() and sources_done.is_file():
            logger.info("fold %d/%d (%s): done earlier, reusing %s", number, len(patients), patient, done)
            pooled += read_predictions(done, list(TASKS))
            scored += read_scored(sources_done)
            continue
        logger.info("fold %d/%d: holding out patient %s", number, len(patients), patient)
        fold_started = time.monotonic()
        fold_config = replace(
            config,
            out=fold_dir,
            val_patients=(patient,),
            select="last",  # choosing an epoch on the held-out patient would leak it into the estimate
            validate_every=0,
            resume=config.resume and (fold_dir / "checkpoints" / "last.pt").is_file(),
        )
        result = run_training(fold_config, manifest, views)
        predictions = [replace(p, fold=patient) for p in result.val_predictions]
        write_predictions(predictions, done, list(TASKS))
        # Every source on the held-out patient's series and views, with this fold's network.
        held_out = [e for e in manifest.entries if e.patient == patient]
        items = views_to_score(held_out, views, derived=True)
        probabilities = predict_probabilities(
            result.network, network_inputs(items, config.grid), device, config.batch_size
        )
        fold_scored = [
            score_sources(item, probs, representative_header(item.entry, config.cache_dir), policy, patient)
            for item, probs in zip(items, probabilities, strict=True)
        ]
        write_scored(fold_scored, sources_done)
        scored += fold_scored
        plot_training_curves(result.history, fold_dir / "training_curves.png", f"fold {patient}")
        fold_seconds[patient] = round(time.monotonic() - fold_started, 1)
        pooled += predictions
    summary = report(
        pooled,
        TASKS,
        config.out,
        title="leave-one-patient-out",
        extra={
            "method": "leave-one-patient-out: one model per held-out patient, predictions pooled",
            "command": command,
            "patients": patients,
            "epochs": config.epochs,
            "samples_per_epoch": config.samples_per_epoch,
            "network": config.spec().to_dict(),
            "fold_seconds": fold_seconds,
        },
    )
    summary["sources"] = report_sources(scored, config.out, "leave-one-patient-out, every source")
    (config.out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("cross-validation took %.0f s", time.monotonic() - started)
    if package_dir is not None:
        final_config = replace(
            config,
            out=config.out / "final",
            val_patients=(),
            val_fraction=0.0,
            resume=config.resume and (config.out / "final" / "checkpoints" / "last.pt").is_file(),
        )
        logger.info("final model: training on all %d patients", len(patients))
        result = run_training(final_config, manifest, views)
        plot_training_curves(
            result.history, config.out / "training_curves.png", f"{config.name} (all patients)"
        )
        target = write_package(
            final_config,
            result,
            manifest,
            metrics={"leave_one_patient_out": summary},
            package_dir=package_dir,
        )
        print(f"final model package (trained on all patients): {target}")
    (config.out / "crossval_seconds.json").write_text(
        json.dumps({"total": round(time.monotonic() - started, 1), "folds": fold_seconds}, indent=2) + "\n"
    )
    return summary

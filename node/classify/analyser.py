"""The classifying analyser: what the route job asks between "series complete" and "evaluate the rules".

prior (tags) -> assemble the volume -> anatomical measurements (coverage, blood pool) -> image model ->
fusion of every source -> facts for the rules + one audit record. A volume that shows no anatomy (no body
outline: random bytes, an empty scan) is not classifiable (`no_anatomy`): no source answers for it.
A series that cannot become a volume is routed on its attributes: `classifiable` is false and
`classification.reason` says why. A failure inside the classifier is logged with its traceback and
treated the same way, so no series is held back by the model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from node.analysis import AnalysisResult
from node.classify.engine import ClassifierEngine, ImagePrediction
from node.classify.fusion import Fused, FusionPolicy, fuse
from node.classify.labels import TASKS
from node.classify.measurements import MEASURE_IN_PLANE, Measurements, measure
from node.classify.prior import read_prior
from node.volume import NotClassifiable, assemble_series

logger = logging.getLogger(__name__)


class ClassifyingAnalyser:
    def __init__(
        self, engine: ClassifierEngine, policy: FusionPolicy | None = None, decoders: Executor | None = None
    ) -> None:
        self.engine = engine
        self.policy = policy or FusionPolicy()
        self.decoders = decoders  # a process pool for compressed pixel data, or None (decode here)
        # Read each slice block-averaged while decoding (memory stays bounded), at least as fine as the
        # measurements need; the network's preprocessing area-averages it down to its grid.
        self.max_in_plane = max(engine.package.max_in_plane, MEASURE_IN_PLANE)

    def analyse(self, series_uid: str, header: Dataset, files: Sequence[Path]) -> AnalysisResult:
        started = time.perf_counter()
        prior = read_prior(header)
        priors = {task: getattr(prior, task) for task in TASKS}
        timings: dict[str, float] = {}
        image: ImagePrediction | None = None
        not_classifiable: NotClassifiable | None = None
        measured: Measurements | None = None
        volume_report: dict[str, Any] = {}
        try:
            assembled = assemble_series(files, max_in_plane=self.max_in_plane, executor=self.decoders)
            timings["assemble"] = (time.perf_counter() - started) * 1000.0
            if isinstance(assembled, NotClassifiable):
                not_classifiable = assembled
                volume_report = assembled.report
            else:
                volume_report = assembled.report
                measured = measure(assembled)
                timings.update({f"measure_{k}": v for k, v in measured.timings_ms.items()})
                if not measured.anatomical:
                    not_classifiable = NotClassifiable("no_anatomy", measured.coverage.reason, volume_report)
                    measured = None
                else:
                    image = self.engine.classify(assembled)
                    timings.update(image.timings_ms)
        except Exception as exc:  # job boundary for the model: route on attributes, keep the traceback
            logger.exception("series %s: classification failed", series_uid)
            not_classifiable = NotClassifiable(
                "classifier_error", f"classification failed: {type(exc).__name__}: {exc}", {}
            )
        timings["total"] = (time.perf_counter() - started) * 1000.0

        fused = fuse(priors, image, self.policy, measured.opinions() if measured is not None else None)
        facts: dict[str, Any] = {"classifiable": image is not None}
        facts.update(prior.as_facts())
        facts.update(fused.as_facts())
        if measured is not None and image is not None:
            facts.update(measured.as_facts())
        facts["classification.model"] = self.engine.package.model_id
        if image is not None:
            facts["classification.device"] = image.device
            for task in TASKS:
                facts[f"image.{task}"] = image.labels[task]
                facts[f"image.{task}_confidence"] = round(image.confidence(task), 4)
        if not_classifiable is not None:
            facts["classification.reason"] = not_classifiable.reason
            facts["classification.code"] = not_classifiable.code

        audit: dict[str, Any] = {
            "analyser": "classifier",
            "model": self.engine.package.model_id,
            "classifiable": image is not None,
            "final": fused.as_audit(),
            "prior": prior.as_audit(),
            "image": image.as_audit() if image is not None else None,
            "disagreement": {
                task: {
                    "prior": r.sources.get("prior", {}).get("label"),
                    "with": r.disagreement_with,
                    "final": r.label,
                }
                for task, r in fused.tasks.items()
                if r.disagreement
            },
            "measurements": measured.as_audit() if measured is not None else None,
            "timings_ms": {k: round(v, 1) for k, v in timings.items()},
            "volume": volume_report,
        }
        if not_classifiable is not None:
            audit["not_classifiable"] = {"code": not_classifiable.code, "reason": not_classifiable.reason}
        return AnalysisResult(facts=facts, audit=audit, summary=_summary(fused, image, not_classifiable))

    def close(self) -> None:
        self.engine.close()
        if self.decoders is not None:
            self.decoders.shutdown(wait=True, cancel_futures=True)


def _summary(fused: Fused, image: ImagePrediction | None, not_classifiable: NotClassifiable | None) -> str:
    answers = ", ".join(
        f"{task} {r.label} {r.confidence:.2f} (mostly {r.source})" for task, r in fused.tasks.items()
    )
    if not_classifiable is not None:
        return f"not classifiable: {not_classifiable.reason}; from attributes: {answers}"
    disagreements = [task for task, r in fused.tasks.items() if r.disagreement]
    text = answers
    if disagreements:
        text += "; the tags and the images disagree on " + ", ".join(disagreements)
    return text

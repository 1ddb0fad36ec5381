"""Classification results as a delivery plan freezes them (node.results), and an analyser that gives
them to a running node, for the write-back tests."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from node.analysis import AnalysisResult


def sample_results(**final_body_part: Any) -> dict[str, Any]:
    """Results as a plan freezes them (shape of node.results, values of a real abdomen series)."""
    body_part = {"label": "Abdomen", "confidence": 0.9411, "source": "prior", "low_confidence": False}
    body_part.update(final_body_part)
    return {
        "version": 1,
        "model": "ct-starter@0.2.0",
        "summary": "body_part Abdomen 0.94 (mostly prior), axis axial 1.00 (mostly geometry)",
        "facts": {
            "classifiable": True,
            "prior.body_part": "Abdomen", "prior.body_part_confidence": 0.5,
            "prior.body_part_source": "SeriesDescription",
            "prior.axis": "axial", "prior.axis_confidence": 1.0,
            "prior.axis_source": "ImageOrientationPatient",
            "prior.contrast": "unknown", "prior.contrast_confidence": 0.0, "prior.contrast_source": "none",
            "prediction.body_part": body_part["label"], "disagreement.body_part": False,
            "prediction.axis": "axial", "disagreement.axis": False,
            "prediction.contrast": "yes", "disagreement.contrast": False,
            "prediction.low_confidence": bool(body_part["low_confidence"]), "disagreement.any": False,
            "classification.model": "ct-starter@0.2.0",
            "image.body_part": "Chest", "image.body_part_confidence": 0.3391,
            "image.axis": "axial", "image.axis_confidence": 0.9377,
            "image.contrast": "yes", "image.contrast_confidence": 0.5329,
        },
        "final": {
            "body_part": body_part,
            "axis": {"label": "axial", "confidence": 1.0, "source": "geometry", "low_confidence": False},
            "contrast": {"label": "yes", "confidence": 0.9808, "source": "blood", "low_confidence": False},
        },
        "prior": {"body_part": {"label": "Abdomen", "confidence": 0.5, "source": "SeriesDescription"}},
        "disagreement": {},
        "measurements": {
            "coverage": {
                "anatomical": True, "from": "pelvis", "to": "chest",
                "landmarks": [{"name": "iliac crest", "z_mm": 72.0}, {"name": "diaphragm", "z_mm": 282.0}],
                "label": "Abdomen", "probabilities": {"Abdomen": 0.6212, "Chest": 0.0152},
            },
            "blood": {
                "found": True, "structure": "aorta-like tube", "hu_median": 277.8, "z_mm": [198.0, 396.0],
                "reason": "aorta-like tube, 16 mm, median 278 HU over 198 mm", "probability_yes": 1.0,
            },
        },
    }


def disputed(results: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(results)
    out["facts"]["disagreement.body_part"] = True
    out["facts"]["disagreement.any"] = True
    out["disagreement"] = {"body_part": {"prior": "Chest", "with": "image", "final": "Abdomen"}}
    return out


def not_classifiable() -> dict[str, Any]:
    results = sample_results()
    results["facts"] = {k: v for k, v in results["facts"].items() if k.startswith("prior.")}
    results["facts"].update({"classifiable": False, "classification.model": "ct-starter@0.2.0",
                             "classification.code": "single_slice"})
    results["not_classifiable"] = {"code": "single_slice", "reason": "one slice: no volume"}
    results["measurements"] = None
    return results


class CannedAnalyser:
    """An analyser that answers every series with the same results (no model, no volume)."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results

    def analyse(self, series_uid: str, header: Dataset, files: Sequence[Path]) -> AnalysisResult:
        audit = {k: self.results[k] for k in ("final", "prior", "measurements", "disagreement", "model")}
        return AnalysisResult(facts=dict(self.results["facts"]), audit=audit, summary=self.results["summary"])

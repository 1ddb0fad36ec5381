"""The seam between completion and routing: assemble and classify a series (next issue).

Routing asks an analyser for facts about a completed series; whatever it returns lands in
`SeriesFacts.extra` (e.g. "classifiable", "prediction.body_part") and in the audit. Until a classifier
is configured, `NoAnalysis` reports that nothing was analysed and rules see only DICOM attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydicom.dataset import Dataset


@dataclass(frozen=True)
class AnalysisResult:
    facts: dict[str, Any] = field(default_factory=dict)
    # A compact, JSON-serialisable account for the audit (model version, timings, reasons).
    audit: dict[str, Any] = field(default_factory=dict)
    # One line for the audit row's message (e.g. "body_part Chest (image 0.93), ...").
    summary: str = ""


class SeriesAnalyser(Protocol):
    def analyse(self, series_uid: str, header: Dataset, files: Sequence[Path]) -> AnalysisResult: ...


class NoAnalysis:
    """Routes on attributes alone."""

    def analyse(self, series_uid: str, header: Dataset, files: Sequence[Path]) -> AnalysisResult:
        return AnalysisResult(facts={}, audit={"analyser": "none"}, summary="not analysed")

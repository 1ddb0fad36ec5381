"""What rules see about a series: its DICOM attributes and what the node knows or predicted."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset


@dataclass(frozen=True)
class SeriesFacts:
    series_uid: str
    # Header (no pixel data) of one representative instance of the series.
    attributes: Dataset
    instance_count: int
    calling_ae: str | None = None
    # The AE title the modality sent to (one of the node's own); None for STOW-RS and the dry run.
    called_ae: str | None = None
    generation: int = 1
    # Namespaced values beyond the DICOM header, e.g. "classifiable", "prediction.body_part"
    # (filled by the analysis step between completion and routing).
    extra: dict[str, Any] = field(default_factory=dict)

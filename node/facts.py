"""What rules see about a series: its DICOM attributes and what the node knows or predicted.

`series_facts` is the one way to build them, used by the running node (node.routing) and by the dry run
(`rules test`), so that both decide on the same facts for the same series.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pydicom.dataset import Dataset

from node.errors import InvalidUIDError

# Pixel data (and its float variants) never reach the rules: they are not attributes anyone routes on.
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


@dataclass(frozen=True)
class SeriesFacts:
    series_uid: str
    # Header (no pixel data) of one representative instance of the series.
    attributes: Dataset
    instance_count: int
    calling_ae: str | None = None
    # The AE title the sender addressed (one of the node's own titles).
    called_ae: str | None = None
    generation: int = 1
    # Consistency warnings recorded at receive (node.receive.consistency): how many instances of the
    # series have a SOP Instance UID also stored in another series / arrived under another study.
    # None where the node does not know (the dry run).
    sop_uid_conflicts: int | None = None
    study_uid_conflicts: int | None = None
    # Namespaced values beyond the DICOM header, e.g. "classifiable", "prediction.body_part"
    # (filled from the analysis step's result by node.rules.decide).
    extra: dict[str, Any] = field(default_factory=dict)

    def with_extra(self, extra: dict[str, Any]) -> SeriesFacts:
        """The same facts with these analysis values added (a new object; facts are immutable)."""
        return replace(self, extra={**self.extra, **extra})


def header_without_pixels(ds: Dataset) -> Dataset:
    """`ds` itself when it has no pixel data, else a shallow copy without it (file meta kept)."""
    if not any(tag in ds for tag in PIXEL_TAGS):
        return ds
    header = Dataset()
    for elem in ds:
        if elem.tag not in PIXEL_TAGS:
            header.add(elem)
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None:
        header.file_meta = file_meta
    return header


def series_facts(
    header: Dataset,
    instance_count: int,
    *,
    calling_ae: str | None = None,
    called_ae: str | None = None,
    generation: int = 1,
    sop_uid_conflicts: int | None = None,
    study_uid_conflicts: int | None = None,
) -> SeriesFacts:
    """SeriesFacts from the header of one representative instance. Raises InvalidUIDError when the header
    has no SeriesInstanceUID."""
    series_uid = str(header.get("SeriesInstanceUID", "") or "").strip()
    if not series_uid:
        raise InvalidUIDError("SeriesInstanceUID", None)
    return SeriesFacts(
        series_uid=series_uid,
        attributes=header_without_pixels(header),
        instance_count=instance_count,
        calling_ae=calling_ae,
        called_ae=called_ae,
        generation=generation,
        sop_uid_conflicts=sop_uid_conflicts,
        study_uid_conflicts=study_uid_conflicts,
    )

"""A derived copy (`derived_copy: true`): new SOP Instance and Series Instance UIDs, the original referenced.

The UIDs are derived deterministically from the original's UIDs and the model (id and version) whose
answers the copy carries: re-sending the same series after the same model gives the same UIDs, so the
receiver replaces instead of duplicating; a new model version makes a new derived series.

The copy says what it comes from (PS3.3 C.7.6.1.1.3 Derivation, C.7.6.16 / C.12.1): Image Type value 1
DERIVED, Source Image Sequence with the original's SOP Class and Instance UIDs, Referenced Series
Sequence with the original series, and a Derivation Description. The study stays the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from node.deliver.destinations import WriteBack
from node.uids import hashed_uid

SERIES_DESCRIPTION_SUFFIX = " (classified)"
_DERIVATION = "Copy with the classification written back by the DICOM node (pixel data unchanged)"
_LO = 64


def model_of(results: Mapping[str, Any]) -> str:
    """The model id@version the results come from (part of the derived UIDs)."""
    return str(results.get("model") or (results.get("facts") or {}).get("classification.model") or "none")


def derived_model(writeback: WriteBack, results: Mapping[str, Any] | None) -> str | None:
    """The model the copies' UIDs are derived with when this destination gets derived copies, else None.
    Whatever else goes to that destination (the Structured Report) references the derived UIDs."""
    if writeback.mode != "attributes" or not writeback.derived_copy or results is None:
        return None
    return model_of(results)


def derived_series_uid(series_uid: str, model: str) -> str:
    return hashed_uid("dicom-node derived series", series_uid, model)


def derived_instance_uid(sop_instance_uid: str, model: str) -> str:
    return hashed_uid("dicom-node derived instance", sop_instance_uid, model)


def make_derived(ds: Dataset, model: str) -> tuple[str, str]:
    """Turn `ds` (a copy) into a derived instance; returns (new SOP Instance UID, new Series UID)."""
    original_instance = str(ds.SOPInstanceUID)
    original_series = str(ds.SeriesInstanceUID)
    sop_class = str(ds.SOPClassUID)
    new_instance = derived_instance_uid(original_instance, model)
    new_series = derived_series_uid(original_series, model)

    source = Dataset()
    source.ReferencedSOPClassUID = sop_class
    source.ReferencedSOPInstanceUID = original_instance
    ds.SourceImageSequence = Sequence([source])

    instance_ref = Dataset()
    instance_ref.ReferencedSOPClassUID = sop_class
    instance_ref.ReferencedSOPInstanceUID = original_instance
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = original_series
    series_ref.ReferencedInstanceSequence = Sequence([instance_ref])
    ds.ReferencedSeriesSequence = Sequence([series_ref])

    image_type = list(ds.get("ImageType") or ["DERIVED", "SECONDARY"])
    if len(image_type) < 2:
        image_type.append("SECONDARY")
    image_type[0] = "DERIVED"
    ds.ImageType = image_type
    ds.DerivationDescription = _DERIVATION
    description = str(ds.get("SeriesDescription") or "")
    if not description.endswith(SERIES_DESCRIPTION_SUFFIX):
        kept = description[: _LO - len(SERIES_DESCRIPTION_SUFFIX)]
        ds.SeriesDescription = (kept + SERIES_DESCRIPTION_SUFFIX).strip()

    ds.SOPInstanceUID = new_instance
    ds.SeriesInstanceUID = new_series
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None:
        file_meta.MediaStorageSOPInstanceUID = new_instance
    return new_instance, new_series

"""The Store Instances Response (PS3.18 Annex I) in application/dicom+json, and its HTTP status.

200: every instance stored; 202: some stored, others failed or stored with warnings; 409: none stored
(PS3.18 Table 10.5.3-1).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

DICOM_JSON = "application/dicom+json"

# Failure Reason values (PS3.18 Table I.2-2, PS3.4 Annex B) the endpoint uses itself; the receive path's
# own statuses (node.receive.ingest: A700, A900, C210, C220) pass through unchanged.
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_TRANSFER_SYNTAX = 0xC122
# A9xx, "Data Set does not match": the instance's Study Instance UID is not the one of the request URL
# (PS3.18 10.5.3-1 names the mismatch as a cause of 409).
FAILURE_STUDY_MISMATCH = 0xA900


@dataclass(frozen=True)
class InstanceOutcome:
    """What became of one body part. `failure` set: not stored; else stored (with `warning` if any)."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_uid: str | None = None
    series_uid: str | None = None
    failure: int | None = None
    warning: int | None = None
    reason: str = ""

    @property
    def stored(self) -> bool:
        return self.failure is None


def http_status(outcomes: list[InstanceOutcome]) -> int:
    stored = [o for o in outcomes if o.stored]
    if not stored:
        return 409
    if len(stored) < len(outcomes) or any(o.warning is not None for o in stored):
        return 202
    return 200


def response_dataset(outcomes: list[InstanceOutcome], base_url: str, study_uid: str | None) -> Dataset:
    """`base_url` ends with a slash (the service root); `study_uid` is the request's or, for POST
    /studies, the one study all stored instances share (else the Retrieve URL stays empty: type 2)."""
    base = base_url.rstrip("/")
    if study_uid is None:
        studies = {o.study_uid for o in outcomes if o.stored and o.study_uid}
        study_uid = studies.pop() if len(studies) == 1 else None
    response = Dataset()
    response.RetrieveURL = f"{base}/studies/{study_uid}" if study_uid else ""
    failed = [o for o in outcomes if not o.stored]
    stored = [o for o in outcomes if o.stored]
    if failed:
        response.FailedSOPSequence = Sequence([_item(o, None) for o in failed])
    if stored:
        response.ReferencedSOPSequence = Sequence([_item(o, base) for o in stored])
    return response


def _item(outcome: InstanceOutcome, base: str | None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = outcome.sop_class_uid or ""
    item.ReferencedSOPInstanceUID = outcome.sop_instance_uid or ""
    if base is None:
        item.FailureReason = outcome.failure
        return item
    item.RetrieveURL = (
        f"{base}/studies/{outcome.study_uid}/series/{outcome.series_uid}/instances/{outcome.sop_instance_uid}"
        if outcome.study_uid and outcome.series_uid and outcome.sop_instance_uid
        else ""
    )
    if outcome.warning is not None:
        item.WarningReason = outcome.warning
    return item


def response_json(outcomes: list[InstanceOutcome], base_url: str, study_uid: str | None) -> dict[str, object]:
    return response_dataset(outcomes, base_url, study_uid).to_json_dict()

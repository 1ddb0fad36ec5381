"""The SR document: a highdicom Enhanced SR holding the TID 1500 content, in the source's study.

Why Enhanced SR: the content has codes, numbers, text and references, but no spatial coordinates, so
the Comprehensive 3D SR's one addition (SCOORD3D) is not needed, and Enhanced SR (PS3.3 A.36.2) is the
older, more widely accepted storage class (PACS, viewers, dcmtk's dsrdump, Orthanc). TID 1500 is
defined for it (PS3.16 TID 1500 "Measurement Report": Enhanced SR, Comprehensive SR, Comprehensive 3D SR).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import EnhancedSR
from pydicom.dataset import Dataset

from node import __version__
from node.report.codes import PRIVATE_SCHEME, PRIVATE_SCHEME_NAME
from node.report.content import measurement_report
from node.report.uids import ReportUids, report_uids

SERIES_DESCRIPTION = "Node classification"
MANUFACTURER = "dicom-node"
# Above the usual range of scanner series numbers, so that the SR sorts after the images.
SERIES_NUMBER_OFFSET = 9000
# Type 2 attributes of the Patient and General Study modules that highdicom reads from the first evidence.
_HEADER_TYPE2 = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


@dataclass(frozen=True)
class Evidence:
    """One classified instance, as the report references it."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class ReportSkipped:
    """No report for this series, and why (the audit row says it)."""

    reason: str


def report_model_id(results: Mapping[str, Any]) -> str:
    return str(results.get("model") or (results.get("facts") or {}).get("classification.model") or "unknown")


def build_report(
    results: Mapping[str, Any], header: Dataset, evidence: Sequence[Evidence], generation: int
) -> EnhancedSR | ReportSkipped:
    """The SR of one classified series: `header` is one spooled instance's header (patient and study
    are copied from it), `evidence` every instance the classification covered.

    A series that was not classifiable gets no report: its only answers come from its own attributes,
    which the receiver already has, and an SR saying "not classified" would look like a result.
    """
    facts = results.get("facts") or {}
    if facts.get("classifiable") is not True:
        why = (results.get("not_classifiable") or {}).get("reason") or facts.get("classification.reason")
        return ReportSkipped(f"not classifiable: {why or 'no image answer'}")
    if not evidence:
        return ReportSkipped("no instances to reference")
    source_series = str(header.SeriesInstanceUID)
    uids = report_uids(source_series, report_model_id(results), generation)
    content = measurement_report(results, uids.sop_instance_uid)
    document = EnhancedSR(
        evidence=_evidence_datasets(header, evidence),
        content=content,
        series_instance_uid=uids.series_instance_uid,
        series_number=_series_number(header),
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=generation,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=report_model_id(results)[:64],
        software_versions=f"dicom-node {__version__}",
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=PRIVATE_SCHEME, name=PRIVATE_SCHEME_NAME, responsible_organization="dicom-node"
            )
        ],
    )
    return document


def uids_of(results: Mapping[str, Any], source_series_uid: str, generation: int) -> ReportUids:
    """The UIDs `build_report` gives this series' report (for audit rows when building failed)."""
    return report_uids(source_series_uid, report_model_id(results), generation)


def _series_number(header: Dataset) -> int:
    number = header.get("SeriesNumber")
    try:
        return SERIES_NUMBER_OFFSET + int(number) % 1000 if number not in (None, "") else SERIES_NUMBER_OFFSET
    except (TypeError, ValueError):
        return SERIES_NUMBER_OFFSET


UNSTATED_DEIDENTIFICATION = "unknown: the source series states no method"


def _evidence_datasets(header: Dataset, evidence: Sequence[Evidence]) -> list[Dataset]:
    """highdicom takes patient and study from the first evidence dataset (a copy of the header, with
    the type 2 attributes it reads present, empty where the source lacks them) and the Current Requested
    Procedure Evidence Sequence from all of them: the others need only their UIDs."""
    first = copy.deepcopy(header)
    for keyword in _HEADER_TYPE2:
        if keyword not in first:
            setattr(first, keyword, None)
    # Real de-identified series say "identity removed" with an empty method (Type 1C, invalid); the SR
    # copies the flag, so it states that the method is unknown rather than carry the error along.
    if (
        str(first.get("PatientIdentityRemoved", "")).upper() == "YES"
        and not first.get("DeidentificationMethod")
        and not first.get("DeidentificationMethodCodeSequence")
    ):
        first.DeidentificationMethod = UNSTATED_DEIDENTIFICATION
    study, series = header.StudyInstanceUID, header.SeriesInstanceUID
    items = [first]
    for e in evidence:
        if e.sop_instance_uid == header.SOPInstanceUID:
            continue
        ds = Dataset()
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.SOPClassUID = e.sop_class_uid
        ds.SOPInstanceUID = e.sop_instance_uid
        items.append(ds)
    return items

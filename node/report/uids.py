"""Deterministic UIDs for the Structured Report: the same source series and model give the same SR.

A UID under the 2.25 root (PS3.5 B.2: a UUID written as one decimal integer) whose 128 bits are the
first half of a SHA-256 of its parts. Re-processing a series with the same model version therefore makes
an SR with the same Series and SOP Instance UIDs, and a PACS replaces (or keeps) one copy instead of
collecting duplicates. The generation (a follow-up of late instances makes 2, 3, ...) is part of the SOP
Instance UID only: the follow-up's SR is a new document in the same SR series, since it describes a
different set of instances.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

# Bumped only if the meaning of the parts changes (it would change every SR UID).
_SCHEME = "dicom-node-sr-v1"


def hashed_uid(*parts: str) -> str:
    """2.25.<decimal of 128 bits of SHA-256 over the parts>: at most 44 characters, no leading zero."""
    digest = hashlib.sha256("\x1f".join((_SCHEME, *parts)).encode("utf-8")).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


@dataclass(frozen=True)
class ReportUids:
    series_instance_uid: str
    sop_instance_uid: str


def report_uids(source_series_uid: str, model_id: str, generation: int) -> ReportUids:
    """The SR's UIDs for one source series, classified by `model_id` (name@version), at `generation`."""
    return ReportUids(
        series_instance_uid=hashed_uid("series", source_series_uid, model_id),
        sop_instance_uid=hashed_uid("instance", source_series_uid, model_id, str(generation)),
    )

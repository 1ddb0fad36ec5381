"""Consistency warnings: an instance that is stored as today but flagged, because PACS reconcile it badly.

- `sop_in_other_series`: its SOP Instance UID is already stored in another series;
- `series_in_other_study`: its series is already stored under another StudyInstanceUID.

Checked in the receive transaction (one indexed SELECT per new instance; the study comparison is free),
recorded there as an audit row and a per-series count (series.sop_uid_conflicts / study_uid_conflicts),
which the rules see as `consistency.*` (node.facts); the caller counts the metric after the commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from node import audit
from node.audit import Events, Where
from node.db.models import Instance, Series

SOP_IN_OTHER_SERIES = "sop_in_other_series"
SERIES_IN_OTHER_STUDY = "series_in_other_study"
KINDS = (SOP_IN_OTHER_SERIES, SERIES_IN_OTHER_STUDY)

_EVENTS = {
    SOP_IN_OTHER_SERIES: Events.CONSISTENCY_SOP_IN_OTHER_SERIES,
    SERIES_IN_OTHER_STUDY: Events.CONSISTENCY_SERIES_IN_OTHER_STUDY,
}

_SERIES_OF_SOP_ELSEWHERE = (
    select(Series.series_uid, Series.study_uid)
    .join(Instance, Instance.series_id == Series.id)
    .where(Instance.sop_instance_uid == bindparam("b_sop"), Instance.series_id != bindparam("b_series"))
    .order_by(Instance.id)
    .limit(1)
)
_COUNT_SOP_CONFLICT = (
    update(Series)
    .where(Series.id == bindparam("b_id"))
    .values(sop_uid_conflicts=Series.sop_uid_conflicts + 1)
)
_COUNT_STUDY_CONFLICT = (
    update(Series)
    .where(Series.id == bindparam("b_id"))
    .values(study_uid_conflicts=Series.study_uid_conflicts + 1)
)


@dataclass(frozen=True)
class ConsistencyWarning:
    kind: str
    message: str
    details: dict[str, Any]


def check(
    conn: Connection,
    *,
    series_id: int,
    stored_study_uid: str,
    study_uid: str,
    sop_uid: str,
    new_instance: bool,
) -> list[ConsistencyWarning]:
    """The warnings for one instance about to be stored in the series row `series_id`."""
    found: list[ConsistencyWarning] = []
    if new_instance:
        other = conn.execute(_SERIES_OF_SOP_ELSEWHERE, {"b_sop": sop_uid, "b_series": series_id}).first()
        if other is not None:
            found.append(
                ConsistencyWarning(
                    SOP_IN_OTHER_SERIES,
                    f"SOP Instance UID already stored in series {other.series_uid}; stored here too",
                    {"other_series_uid": other.series_uid, "other_study_uid": other.study_uid},
                )
            )
    if study_uid != stored_study_uid:
        found.append(
            ConsistencyWarning(
                SERIES_IN_OTHER_STUDY,
                f"series is stored under study {stored_study_uid}; this instance names study {study_uid}",
                {"study_uid": study_uid, "series_study_uid": stored_study_uid},
            )
        )
    return found


def record(conn: Connection, series_id: int, warnings: list[ConsistencyWarning], where: Where) -> None:
    """The audit rows and the series' counts, in the receive transaction."""
    for warning in warnings:
        counter = _COUNT_SOP_CONFLICT if warning.kind == SOP_IN_OTHER_SERIES else _COUNT_STUDY_CONFLICT
        conn.execute(counter, {"b_id": series_id})
        audit.record_core(conn, _EVENTS[warning.kind], warning.message, details=warning.details, **where)

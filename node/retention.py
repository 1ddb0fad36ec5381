"""Delete spooled files of series that every destination has, after a configurable keep time.

A series is eligible when it is routed, none of its jobs is queued, running or dead-lettered (a dead
letter keeps its files so that `deliveries retry` can still send them), and its last job finished more
than `keep_seconds` ago. Database rows stay: the audit trail outlives the pixels.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from node import audit
from node.audit import Events
from node.db.models import Instance, Job, JobState, Series, SeriesState, utcnow
from node.receive.spool import Spool

logger = logging.getLogger(__name__)


def sweep(session: Session, spool: Spool, keep_seconds: float, now: dt.datetime | None = None) -> int:
    """Delete what is due; returns the number of series whose files were removed. Commits."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=keep_seconds)
    unfinished = (
        select(Job.series_id)
        .where(Job.state.in_([JobState.QUEUED, JobState.RUNNING, JobState.FAILED]))
        .distinct()
    )
    last_finished = (
        select(Job.series_id, func.max(Job.finished_at).label("last")).group_by(Job.series_id).subquery()
    )
    due = session.scalars(
        select(Series)
        .join(last_finished, last_finished.c.series_id == Series.id)
        .where(
            Series.state == SeriesState.ROUTED,
            Series.files_deleted_at.is_(None),
            Series.id.not_in(unfinished),
            last_finished.c.last <= cutoff,
        )
        .limit(200)
    ).all()
    removed = 0
    for series in due:
        # Delete exactly the files recorded now, never the folder: an instance of a follow-up may be
        # landing in it at this moment, and it must survive.
        instances = session.execute(
            select(Instance.path, Instance.size).where(Instance.series_id == series.id)
        ).all()
        claimed = session.execute(
            update(Series)
            .where(
                Series.id == series.id, Series.state == SeriesState.ROUTED, Series.files_deleted_at.is_(None)
            )
            .values(files_deleted_at=now)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            session.rollback()
            continue
        size = sum(row.size for row in instances)
        audit.record(
            session,
            Events.RETENTION_DELETED,
            f"deleted {len(instances)} spooled files ({size} bytes): every destination has them",
            series_uid=series.series_uid,
            details={"instances": len(instances), "bytes": size, "keep_seconds": keep_seconds},
        )
        session.commit()
        for row in instances:
            spool.remove(row.path)
        spool.prune_series_dir(series.study_uid, series.series_uid)
        removed += 1
    if removed:
        logger.info("retention removed the files of %d series", removed)
    return removed

"""Series completion: quiet time (one-shot APScheduler timer re-armed per instance), expected count,
or a manual trigger. State lives in the database; timers are rebuilt from it at start.

Completion is a conditional UPDATE (state receiving -> complete for the current generation), so a
series completes exactly once per generation even when a timer, the expected count and the CLI race.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from node import audit, jobs
from node.audit import Events
from node.config import CompletionSettings
from node.db.models import JobKind, Series, SeriesState, utcnow
from node.errors import NotFoundError
from node.metrics import NodeMetrics

logger = logging.getLogger(__name__)


def complete_series(
    session: Session,
    series_uid: str,
    reason: str,
    *,
    now: dt.datetime | None = None,
    quiet_before: dt.datetime | None = None,
) -> bool:
    """Mark the series complete and queue its route job, in one transaction (the caller commits).

    `quiet_before`: only complete if the last instance arrived at or before this moment (the
    timer's guard against an instance that slipped in after it was armed). Returns True if this
    call completed the series, False if it was not receiving (already complete) or not quiet yet.
    """
    now = now or utcnow()
    series = session.scalar(select(Series).where(Series.series_uid == series_uid))
    if series is None:
        raise NotFoundError(f"series {series_uid} is not known to this node")
    conditions = [
        Series.id == series.id,
        Series.state == SeriesState.RECEIVING,
        Series.generation == series.generation,
    ]
    if quiet_before is not None:
        conditions.append(Series.last_received_at <= quiet_before)
    result = session.execute(
        update(Series)
        .where(*conditions)
        .values(state=SeriesState.COMPLETE, completed_at=now, complete_reason=reason)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    session.refresh(series)
    audit.record(
        session,
        Events.SERIES_COMPLETE,
        f"series complete ({reason}) with {series.instance_count} instances, generation {series.generation}",
        series_uid=series_uid,
        details={
            "reason": reason,
            "instance_count": series.instance_count,
            "expected_count": series.expected_count,
            "generation": series.generation,
        },
    )
    jobs.enqueue(session, JobKind.ROUTE, series, series.generation)
    return True


class CompletionTracker:
    """Arms one timer per receiving series; fires completion on the scheduler's thread."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        settings: CompletionSettings,
        on_complete: Callable[[], None],
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._metrics = metrics or NodeMetrics()
        self._sessions = session_factory
        self._quiet = dt.timedelta(seconds=settings.quiet_seconds)
        self._on_complete = on_complete
        self._scheduler = BackgroundScheduler(timezone=dt.UTC)
        # Series whose quiet-time job is scheduled. A new instance of such a series does not move the
        # job (an APScheduler add_job per instance cost about 0.2 ms): the job fires at the earlier
        # deadline, finds the series not quiet yet and re-arms from its last_received_at (_complete).
        self._armed: set[str] = set()
        self._armed_lock = threading.Lock()

    def start(self) -> int:
        """Start the scheduler and arm a timer for every series still receiving. Returns how many."""
        self._scheduler.start()
        with self._sessions() as session:
            receiving = session.execute(
                select(Series.series_uid, Series.last_received_at).where(
                    Series.state == SeriesState.RECEIVING
                )
            ).all()
        for series_uid, last_received_at in receiving:
            self.arm(series_uid, last_received_at)
        if receiving:
            logger.info("re-armed completion timers for %d receiving series", len(receiving))
        return len(receiving)

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def arm(self, series_uid: str, last_received_at: dt.datetime) -> None:
        with self._armed_lock:
            self._armed.add(series_uid)
        self._scheduler.add_job(
            self._fire_quiet,
            trigger=DateTrigger(run_date=last_received_at + self._quiet, timezone=dt.UTC),
            id=series_uid,
            args=[series_uid],
            replace_existing=True,
            misfire_grace_time=None,
            coalesce=True,
        )

    def instance_stored(self, series_uid: str, last_received_at: dt.datetime, count_reached: bool) -> None:
        if count_reached:
            with self._armed_lock:
                self._armed.discard(series_uid)
            self._scheduler.add_job(
                self._fire_count,
                id=series_uid,
                args=[series_uid],
                replace_existing=True,
                misfire_grace_time=None,
            )
        else:
            with self._armed_lock:
                if series_uid in self._armed:
                    return
            self.arm(series_uid, last_received_at)

    def pending(self) -> int:
        return len(self._scheduler.get_jobs())

    def _fire_quiet(self, series_uid: str) -> None:
        # Before reading the series: an instance stored from now on arms its own job.
        with self._armed_lock:
            self._armed.discard(series_uid)
        now = utcnow()
        self._complete(series_uid, "quiet_time", now=now, quiet_before=now - self._quiet)

    def _fire_count(self, series_uid: str) -> None:
        self._complete(series_uid, "expected_count", now=utcnow(), quiet_before=None)

    def _complete(
        self, series_uid: str, reason: str, *, now: dt.datetime, quiet_before: dt.datetime | None
    ) -> None:
        try:
            with self._sessions() as session, session.begin():
                done = complete_series(session, series_uid, reason, now=now, quiet_before=quiet_before)
                last = session.scalar(
                    select(Series.last_received_at).where(
                        Series.series_uid == series_uid, Series.state == SeriesState.RECEIVING
                    )
                )
        except Exception:  # job boundary: the timer thread must survive; the series stays receiving
            logger.exception("completing series %s failed; will retry at the next timer", series_uid)
            self.arm(series_uid, utcnow())
            return
        if done:
            logger.info("series %s complete (%s)", series_uid, reason)
            self._metrics.record_series_completed(reason)
            self._on_complete()
        elif last is not None:
            # An instance arrived after the timer was armed: wait for quiet again.
            self.arm(series_uid, last)

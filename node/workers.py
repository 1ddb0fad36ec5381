"""Worker threads that claim jobs of given kinds from the database queue and run a handler on each.

Workers sleep on an Event that producers set (a series completed, a job was queued) and otherwise
check the queue every `idle_poll_seconds`, which also picks up jobs queued by another process (the
CLI's `deliveries retry`) and jobs whose backoff has expired.

A worker survives database outages: any error outside a job (claiming, looking for the next due job)
is logged once per outage, and the worker backs off (doubling up to `max_backoff_seconds`) and tries
again with a fresh session, so that it resumes by itself when the database is back. Each loop records a
heartbeat (`WorkerBeat`) that the health monitor (node.health) reads: a worker that died, stopped
turning, or has held one job too long makes the node unhealthy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from node import jobs
from node.db.models import Job, utcnow

logger = logging.getLogger(__name__)


@dataclass
class WorkerBeat:
    """What a worker last did, in time.monotonic() seconds; read by the health monitor."""

    loop_at: float
    job_id: int | None = None
    job_started_at: float | None = None
    # The error of the current outage (None when the last loop reached the database).
    outage: str | None = None
    outage_since: float | None = None


class JobWorker(threading.Thread):
    def __init__(
        self,
        name: str,
        kinds: Sequence[str],
        session_factory: sessionmaker[Session],
        handler: Callable[[Session, Job], None],
        on_crash: Callable[[Session, Job, BaseException], None],
        wakeup: threading.Event,
        stop: threading.Event,
        idle_poll_seconds: float = 1.0,
        max_backoff_seconds: float = 5.0,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.kinds = list(kinds)
        self._sessions = session_factory
        self._handler = handler
        self._on_crash = on_crash
        self._wakeup = wakeup
        self._stop_event = stop
        self._idle = idle_poll_seconds
        self._max_backoff = max_backoff_seconds
        self.busy = threading.Event()
        self.beat = WorkerBeat(loop_at=time.monotonic())
        # Jobs whose failure could not be recorded (the database went away meanwhile): recorded as soon
        # as it is back, so that no job stays "running" until the next restart.
        self._unrecorded: list[tuple[int, BaseException]] = []

    def run(self) -> None:
        backoff = self._idle
        while not self._stop_event.is_set():
            self.beat.loop_at = time.monotonic()
            try:
                worked = self._run_one()
                if not worked:
                    self._sleep()
            except Exception as exc:  # process boundary: the worker outlives any outage or bug here
                self._outage(exc)
                self._stop_event.wait(backoff)
                backoff = min(self._max_backoff, backoff * 2)
                continue
            if self.beat.outage is not None:
                down = time.monotonic() - (self.beat.outage_since or time.monotonic())
                logger.warning("worker %s: database reachable again after %.1f s", self.name, down)
                self.beat.outage = self.beat.outage_since = None
            backoff = self._idle

    def _outage(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        if self.beat.outage is None:
            # Once per outage with the traceback; the retries that follow stay quiet.
            logger.exception("worker %s: error outside a job; backing off and retrying", self.name)
            self.beat.outage_since = time.monotonic()
        self.beat.outage = text

    def _sleep(self) -> None:
        timeout = self._idle
        with self._sessions() as session:
            due = jobs.next_due(session, self.kinds)
        if due is not None:
            timeout = max(0.0, min(timeout, (due - utcnow()).total_seconds()))
        if self._wakeup.wait(timeout):
            self._wakeup.clear()

    def _record_unrecorded(self) -> None:
        while self._unrecorded:
            job_id, exc = self._unrecorded[0]
            with self._sessions() as session:
                job = session.get(Job, job_id)
                if job is not None:
                    self._on_crash(session, job, exc)
            self._unrecorded.pop(0)
            logger.warning("worker %s: recorded the failure of job %d after the outage", self.name, job_id)

    def _run_one(self) -> bool:
        self._record_unrecorded()
        with self._sessions() as session:
            job = jobs.claim(session, self.kinds)
            if job is None:
                return False
            self.busy.set()
            job_id = job.id  # read now: a rollback below expires the object
            self.beat.job_id, self.beat.job_started_at = job_id, time.monotonic()
            try:
                self._handler(session, job)
            except Exception as exc:  # job boundary: the job is marked failed with the traceback logged
                logger.exception("%s job %d for series id %d failed", job.kind, job_id, job.series_id)
                session.rollback()
                try:
                    self._on_crash(session, job, exc)
                except Exception:
                    self._unrecorded.append((job_id, exc))
                    raise
            finally:
                self.busy.clear()
                self.beat.job_id = self.beat.job_started_at = None
            return True

"""Worker threads that claim jobs of given kinds from the database queue and run a handler on each.

Workers sleep on an Event that producers set (a series completed, a job was queued) and otherwise
check the queue every `idle_poll_seconds`, which also picks up jobs queued by another process (the
CLI's `deliveries retry`) and jobs whose backoff has expired.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from sqlalchemy.orm import Session, sessionmaker

from node import jobs
from node.db.models import Job, utcnow

logger = logging.getLogger(__name__)


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
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._kinds = list(kinds)
        self._sessions = session_factory
        self._handler = handler
        self._on_crash = on_crash
        self._wakeup = wakeup
        self._stop_event = stop
        self._idle = idle_poll_seconds
        self.busy = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                worked = self._run_one()
            except Exception:  # process boundary: log, back off a little, keep the worker alive
                logger.exception("worker %s: unexpected error outside a job", self.name)
                worked = False
            if not worked:
                self._sleep()

    def _sleep(self) -> None:
        timeout = self._idle
        with self._sessions() as session:
            due = jobs.next_due(session, self._kinds)
        if due is not None:
            timeout = max(0.0, min(timeout, (due - utcnow()).total_seconds()))
        if self._wakeup.wait(timeout):
            self._wakeup.clear()

    def _run_one(self) -> bool:
        with self._sessions() as session:
            job = jobs.claim(session, self._kinds)
            if job is None:
                return False
            self.busy.set()
            try:
                self._handler(session, job)
            except Exception as exc:  # job boundary: the job is marked failed with the traceback logged
                logger.exception("%s job %d for series id %d failed", job.kind, job.id, job.series_id)
                session.rollback()
                self._on_crash(session, job, exc)
            finally:
                self.busy.clear()
            return True

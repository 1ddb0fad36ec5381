"""Durable work queue in the database: enqueue, claim, finish, retry with backoff, dead letter, requeue.

A claim is a conditional UPDATE (state queued -> running) that only one worker can win, which works the
same on SQLite and PostgreSQL. Jobs left `running` by a crash are put back by `recover_interrupted`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from node import audit
from node.audit import Events
from node.db.models import Job, JobState, Series, utcnow


def enqueue(
    session: Session,
    kind: str,
    series: Series,
    generation: int,
    destination: str = "",
    rules: list[str] | None = None,
    plan: dict[str, Any] | None = None,
) -> Job | None:
    """Add a job unless the same (kind, series, generation, destination) exists; return the new job.
    `plan` is a delivery's frozen plan (node.deliver.plan.DeliveryPlan.to_json())."""
    existing = session.scalar(
        select(Job).where(
            Job.kind == kind,
            Job.series_id == series.id,
            Job.generation == generation,
            Job.destination == destination,
        )
    )
    if existing is not None:
        return None
    now = utcnow()
    job = Job(
        kind=kind,
        series_id=series.id,
        generation=generation,
        destination=destination,
        state=JobState.QUEUED,
        attempts=0,
        next_run_at=now,
        created_at=now,
        updated_at=now,
        rules=rules,
        plan=plan,
    )
    session.add(job)
    session.flush()
    return job


def claim(session: Session, kinds: Sequence[str], now: dt.datetime | None = None) -> Job | None:
    """Claim the oldest due job of the given kinds, or return None. Commits the claim."""
    now = now or utcnow()
    candidates = session.scalars(
        select(Job.id)
        .where(Job.state == JobState.QUEUED, Job.kind.in_(kinds), Job.next_run_at <= now)
        .order_by(Job.next_run_at, Job.id)
        .limit(8)
    ).all()
    for job_id in candidates:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.QUEUED)
            .values(state=JobState.RUNNING, attempts=Job.attempts + 1, updated_at=now)
        )
        session.commit()
        if result.rowcount == 1:  # type: ignore[attr-defined]
            return session.get(Job, job_id, populate_existing=True)
    return None


def next_due(session: Session, kinds: Sequence[str]) -> dt.datetime | None:
    """When the next queued job of these kinds becomes due (for sleeping until then)."""
    return session.scalar(
        select(Job.next_run_at)
        .where(Job.state == JobState.QUEUED, Job.kind.in_(kinds))
        .order_by(Job.next_run_at)
        .limit(1)
    )


def finish(session: Session, job: Job) -> None:
    now = utcnow()
    job.state = JobState.DONE
    job.finished_at = now
    job.updated_at = now
    job.last_error = None


def backoff_seconds(attempts: int, initial: float, factor: float, maximum: float) -> float:
    """Delay before attempt `attempts + 1`: initial * factor^(attempts-1), capped at maximum."""
    return float(min(maximum, initial * factor ** max(0, attempts - 1)))


def fail(
    session: Session,
    job: Job,
    error: str,
    *,
    max_attempts: int,
    initial: float,
    factor: float,
    maximum: float,
    retryable: bool = True,
) -> bool:
    """Record a failed attempt. Returns True if the job will be retried, False if it is dead-lettered."""
    now = utcnow()
    job.last_error = error
    job.updated_at = now
    if retryable and job.attempts < max_attempts:
        delay = backoff_seconds(job.attempts, initial, factor, maximum)
        job.state = JobState.QUEUED
        job.next_run_at = now + dt.timedelta(seconds=delay)
        return True
    job.state = JobState.FAILED
    job.finished_at = now
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff, shared by route and delivery jobs."""

    max_attempts: int
    initial: float
    factor: float
    maximum: float

    def fail(self, session: Session, job: Job, error: str, retryable: bool = True) -> bool:
        """Record a failed attempt; True if the job will be retried, False if it is now a dead letter."""
        return fail(
            session,
            job,
            error,
            max_attempts=self.max_attempts,
            initial=self.initial,
            factor=self.factor,
            maximum=self.maximum,
            retryable=retryable,
        )


def dead_letter(session: Session, job: Job, error: str) -> None:
    """Fail the job at once, without retries (the caller audits why)."""
    fail(session, job, error, max_attempts=1, initial=0, factor=1, maximum=0, retryable=False)


def requeue(session: Session, job: Job, reason: str) -> None:
    """Put a failed (or done) job back in the queue with a fresh attempt count, and audit it."""
    now = utcnow()
    previous = job.state
    job.state = JobState.QUEUED
    job.attempts = 0
    job.next_run_at = now
    job.updated_at = now
    job.finished_at = None
    audit.record(
        session,
        Events.JOB_REQUEUED,
        f"{job.kind} job requeued ({reason}); was {previous}",
        series_uid=job.series.series_uid,
        job_id=job.id,
        destination=job.destination or None,
        details={"previous_state": previous, "reason": reason, "last_error": job.last_error},
    )


def recover_interrupted(session: Session) -> int:
    """At start-up: jobs left running by a crash go back to the queue (their attempt still counts)."""
    now = utcnow()
    jobs = session.scalars(select(Job).where(Job.state == JobState.RUNNING)).all()
    for job in jobs:
        job.state = JobState.QUEUED
        job.next_run_at = now
        job.updated_at = now
        audit.record(
            session,
            Events.JOB_RECOVERED,
            f"{job.kind} job was running when the node stopped; queued again",
            series_uid=job.series.series_uid,
            job_id=job.id,
            destination=job.destination or None,
        )
    return len(jobs)

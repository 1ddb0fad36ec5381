"""Operator commands on delivery jobs: list them, and requeue dead letters (`node deliveries ...`).

A delivery is one `jobs` row of kind `deliver` (one per series, generation and destination). Its states:
queued (waiting for its next attempt), running (a worker holds it), done (every instance acknowledged),
failed (dead letter: out of attempts, or a non-retryable error). `retry_delivery` puts a failed delivery
back in the queue with a fresh attempt count through `node.jobs.requeue`, which writes the `job.requeued`
audit row; the change and its audit row commit in one transaction. Instances that the destination already
acknowledged (`sent_instances`) are skipped by the next attempt; `force=True` on a done delivery clears
them so that the whole series is sent again.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from node.audit.query import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    dumps,
    iso_text,
    job_dict,
    sent_counts,
    table,
    text_time,
)
from node.db.models import Job, JobKind, JobState, SentInstance, Series
from node.errors import NodeError, NotFoundError
from node.jobs import requeue

logger = logging.getLogger(__name__)

STATES = (JobState.QUEUED, JobState.RUNNING, JobState.DONE, JobState.FAILED)
# Words an operator may use for the dead-letter state.
_STATE_ALIASES = {"dead": JobState.FAILED, "dead_letter": JobState.FAILED, "dead-letter": JobState.FAILED}

_HEADERS = (
    "ID",
    "SERIES",
    "GEN",
    "DESTINATION",
    "STATE",
    "ATTEMPTS",
    "SENT",
    "NEXT RUN (UTC)",
    "RULES",
    "LAST ERROR",
)

OPERATOR_REASON = "operator"
FORCED_REASON = "operator, forced: send again"


class DeliveryStateError(NodeError):
    """A retry that the delivery's current state does not allow (pending already, done without force)."""


def normalise_state(state: str | None) -> str | None:
    """Validate a `--state` value (`dead`, `dead_letter` mean `failed`); ValueError names the choices."""
    if state is None:
        return None
    value = _STATE_ALIASES.get(state.strip().lower(), state.strip().lower())
    if value not in STATES:
        raise ValueError(f"unknown delivery state {state!r}: choose one of {', '.join(STATES)} (or dead)")
    return value


def list_deliveries(
    session: Session, state: str | None = None, destination: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Delivery jobs, most recently changed first, optionally filtered by state and destination."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    wanted = normalise_state(state)
    query = (
        select(Job, Series.series_uid)
        .join(Series, Series.id == Job.series_id)
        .where(Job.kind == JobKind.DELIVER)
    )
    if wanted is not None:
        query = query.where(Job.state == wanted)
    if destination:
        query = query.where(Job.destination == destination)
    rows = session.execute(query.order_by(Job.updated_at.desc(), Job.id.desc()).limit(limit)).all()
    sent = sent_counts(session, [job.id for job, _ in rows])
    result = []
    for job, series_uid in rows:
        item = job_dict(job, sent.get(job.id, 0))
        del item["kind"]
        item["series_uid"] = series_uid
        result.append(item)
    return result


def _load_delivery(session: Session, job_id: int) -> Job:
    # FOR UPDATE on PostgreSQL so that two operators (or an operator and a worker) do not race;
    # SQLite serialises writers anyway.
    job = session.get(Job, job_id, with_for_update=True, populate_existing=True)
    if job is None:
        raise NotFoundError(f"delivery {job_id} not found")
    if job.kind != JobKind.DELIVER:
        raise NotFoundError(f"job {job_id} is a {job.kind} job, not a delivery")
    return job


def _requeue_checked(session: Session, job: Job, force: bool) -> None:
    """Requeue one delivery after checking its state; does not commit."""
    if job.state in (JobState.QUEUED, JobState.RUNNING):
        if job.state == JobState.RUNNING:
            when = "being sent now"
        else:
            when = f"next attempt at {text_time(job.next_run_at)} UTC"
        raise DeliveryStateError(
            f"delivery {job.id} is already pending ({job.state}, {when}); nothing to retry"
        )
    if job.state == JobState.DONE and not force:
        raise DeliveryStateError(
            f"delivery {job.id} to {job.destination} is done (every instance acknowledged); "
            "use --force to send the series again"
        )
    if job.state not in (JobState.DONE, JobState.FAILED):
        raise DeliveryStateError(f"delivery {job.id} is in unknown state {job.state!r}")
    series = job.series
    if series.files_deleted_at is not None:
        raise DeliveryStateError(
            f"delivery {job.id}: the spooled files of series {series.series_uid} were deleted by retention "
            f"at {text_time(series.files_deleted_at)} UTC; there is nothing left to send"
        )
    if job.state == JobState.DONE:
        # Sent again means every instance: forget the acknowledgements that a retry would skip.
        cleared = sent_counts(session, [job.id]).get(job.id, 0)
        session.execute(delete(SentInstance).where(SentInstance.job_id == job.id))
        logger.info("delivery %s: cleared %d acknowledged instances for a forced resend", job.id, cleared)
        requeue(session, job, FORCED_REASON)
    else:
        requeue(session, job, OPERATOR_REASON)
    logger.info(
        "delivery %s of series %s to %s requeued by the operator", job.id, series.series_uid, job.destination
    )


def retry_delivery(session: Session, job_id: int, force: bool = False) -> Job:
    """Requeue one delivery: failed -> queued; done only with force (send again). Commits the change with
    its `job.requeued` audit row. Raises NotFoundError or DeliveryStateError (nothing changed then)."""
    try:
        job = _load_delivery(session, job_id)
        _requeue_checked(session, job, force)
    except NodeError:
        session.rollback()
        raise
    session.commit()
    return job


def retry_all_failed(session: Session, destination: str | None = None) -> list[int]:
    """Requeue every failed delivery (optionally only to one destination), in one transaction.
    Returns the requeued job ids in ascending order."""
    query = select(Job).where(Job.kind == JobKind.DELIVER, Job.state == JobState.FAILED)
    if destination:
        query = query.where(Job.destination == destination)
    jobs = list(session.scalars(query.order_by(Job.id).with_for_update()))
    done: list[int] = []
    skipped = 0
    for job in jobs:
        if job.series.files_deleted_at is not None:
            logger.warning(
                "delivery %s not requeued: files of series %s deleted by retention",
                job.id,
                job.series.series_uid,
            )
            skipped += 1
            continue
        requeue(session, job, OPERATOR_REASON)
        done.append(job.id)
    session.commit()
    if skipped:
        logger.warning("%d failed deliveries skipped: their files were deleted", skipped)
    return done


# ---------------------------------------------------------------------------------------------------------
# Commands


def render_deliveries(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no deliveries match"

    return table(
        _HEADERS,
        [
            (
                d["job_id"],
                d["series_uid"],
                d["generation"],
                d["destination"] or "-",
                d["state"],
                d["attempts"],
                d["sent_instances"],
                iso_text(d["next_run_at"]) if d["state"] == JobState.QUEUED else "-",
                ",".join(d["rules"]) if d["rules"] else "-",
                " ".join(d["last_error"].split()) if d["last_error"] else "-",
            )
            for d in items
        ],
    )


def cmd_deliveries_list(
    session: Session, state: str | None, destination: str | None, as_json: bool, limit: int = 100
) -> int:
    """`node deliveries list [--state S] [--destination D] [--json]`."""
    try:
        items = list_deliveries(session, state=state, destination=destination, limit=limit)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(dumps(items) if as_json else render_deliveries(items))
    return EXIT_OK


def cmd_deliveries_retry(
    session: Session, job_id: int | None, all_failed: bool, destination: str | None, force: bool
) -> int:
    """`node deliveries retry ID [--force] | --all-failed [--destination D]`.
    Exit 0 requeued (or nothing failed), 1 refused by the delivery's state, 2 usage error or unknown id."""
    if (job_id is None) == (not all_failed):
        print("error: give either a delivery ID or --all-failed", file=sys.stderr)
        return EXIT_USAGE
    if job_id is not None:
        if destination:
            print("error: --destination goes with --all-failed, not with an ID", file=sys.stderr)
            return EXIT_USAGE
        try:
            job = retry_delivery(session, job_id, force=force)
        except NotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except DeliveryStateError as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        print(f"requeued delivery {job.id}: series {job.series.series_uid} -> {job.destination}")
        return EXIT_OK
    if force:
        print("error: --force applies to one delivery ID (a done delivery sent again)", file=sys.stderr)
        return EXIT_USAGE
    ids = retry_all_failed(session, destination=destination)
    where = f" to {destination}" if destination else ""
    left = list_deliveries(session, state=JobState.FAILED, destination=destination)
    if not ids and not left:
        print(f"no failed deliveries{where}")
    elif ids:
        print(f"requeued {len(ids)} failed deliveries{where}: {', '.join(str(i) for i in ids)}")
    if left:
        print(
            f"not requeued (spooled files deleted by retention): {', '.join(str(d['job_id']) for d in left)}"
        )
    return EXIT_OK

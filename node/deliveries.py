"""Operator commands on the work queue: list deliveries (and route jobs), requeue dead letters, replan.

A delivery is one `jobs` row of kind `deliver` (one per series, generation and destination) carrying its
frozen plan; a route job (kind `route`, one per series generation) decides and queues the deliveries.
Both have the states queued (waiting for the next attempt), running (a worker holds it), done, failed
(dead letter: out of attempts, or not retryable). A done delivery that quarantined instances (refused by
the destination for what they are, or unreadable: node.deliver.deliverer) is listed as `done (partial)`
with their count.

- `retry_job` puts a failed job back in the queue with a fresh attempt count through `node.jobs.requeue`
  (which writes the `job.requeued` audit row); the change and its audit row commit in one transaction.
  Instances that the destination already acknowledged (`sent_instances`) are skipped by the next
  attempt; `force=True` on a done delivery clears them so that the whole series is sent again.
- `replan` requeues the route job of a delivery's series generation: the running node decides again with
  the rules in force (on the analysis stored with the route job) and gives the deliveries it still
  chooses their new plan (node.routing). Without `replan`, a requeued delivery keeps its frozen plan.
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
    quarantined_counts,
    sent_counts,
    table,
    text_time,
)
from node.db.models import Job, JobKind, JobState, QuarantinedInstance, SentInstance, Series
from node.errors import NodeError, NotFoundError
from node.jobs import requeue

logger = logging.getLogger(__name__)

STATES = (JobState.QUEUED, JobState.RUNNING, JobState.DONE, JobState.FAILED)
KINDS = (JobKind.DELIVER, JobKind.ROUTE)
# Words an operator may use for the dead-letter state.
_STATE_ALIASES = {"dead": JobState.FAILED, "dead_letter": JobState.FAILED, "dead-letter": JobState.FAILED}

LIST_HEADERS = (
    "ID",
    "KIND",
    "SERIES",
    "GEN",
    "DESTINATION",
    "TARGET",
    "STATE",
    "ATTEMPTS",
    "SENT",
    "QUARANTINED",
    "NEXT RUN (UTC)",
    "RULES",
    "LAST ERROR",
)

OPERATOR_REASON = "operator"
FORCED_REASON = "operator, forced: send again"
REPLAN_REASON = "operator: replan with the rules in force"


class DeliveryStateError(NodeError):
    """A retry that the job's current state does not allow (pending already, done without force)."""


def normalise_state(state: str | None) -> str | None:
    """Validate a `--state` value (`dead`, `dead_letter` mean `failed`); ValueError names the choices."""
    if state is None:
        return None
    value = _STATE_ALIASES.get(state.strip().lower(), state.strip().lower())
    if value not in STATES:
        raise ValueError(f"unknown delivery state {state!r}: choose one of {', '.join(STATES)} (or dead)")
    return value


def _kinds(kind: str | None) -> tuple[str, ...]:
    if kind in (None, "all"):
        return KINDS
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}: choose one of {', '.join(KINDS)} or all")
    return (kind,)


def list_deliveries(
    session: Session,
    state: str | None = None,
    destination: str | None = None,
    limit: int = 100,
    kind: str | None = JobKind.DELIVER,
) -> list[dict[str, Any]]:
    """Jobs (deliveries by default; `kind` "route" or "all"), most recently changed first, optionally
    filtered by state and destination."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    wanted = normalise_state(state)
    query = (
        select(Job, Series.series_uid)
        .join(Series, Series.id == Job.series_id)
        .where(Job.kind.in_(_kinds(kind)))
    )
    if wanted is not None:
        query = query.where(Job.state == wanted)
    if destination:
        query = query.where(Job.destination == destination)
    rows = session.execute(query.order_by(Job.updated_at.desc(), Job.id.desc()).limit(limit)).all()
    ids = [job.id for job, _ in rows]
    sent = sent_counts(session, ids)
    quarantined = quarantined_counts(session, ids)
    result = []
    for job, series_uid in rows:
        item = job_dict(job, sent.get(job.id, 0), quarantined.get(job.id, 0))
        item["series_uid"] = series_uid
        result.append(item)
    return result


def _load_job(session: Session, job_id: int) -> Job:
    # FOR UPDATE on PostgreSQL so that two operators (or an operator and a worker) do not race;
    # SQLite serialises writers anyway.
    job = session.get(Job, job_id, with_for_update=True, populate_existing=True)
    if job is None:
        raise NotFoundError(f"delivery or route job {job_id} not found")
    return job


def _name(job: Job) -> str:
    return f"delivery {job.id}" if job.kind == JobKind.DELIVER else f"route job {job.id}"


def _check_requeueable(job: Job, force: bool) -> None:
    if job.state in (JobState.QUEUED, JobState.RUNNING):
        if job.state == JobState.RUNNING:
            when = "running now"
        else:
            when = f"next attempt at {text_time(job.next_run_at)} UTC"
        raise DeliveryStateError(f"{_name(job)} is already pending ({job.state}, {when}); nothing to retry")
    if job.state == JobState.DONE and not force:
        what = (
            f"to {job.destination} is done (every instance acknowledged); "
            "use --force to send the series again"
            if job.kind == JobKind.DELIVER
            else "is done; use --force to route the series again (or --replan)"
        )
        raise DeliveryStateError(f"{_name(job)} {what}")
    if job.state not in (JobState.DONE, JobState.FAILED):
        raise DeliveryStateError(f"{_name(job)} is in unknown state {job.state!r}")
    series = job.series
    if series.files_deleted_at is not None:
        raise DeliveryStateError(
            f"{_name(job)}: the spooled files of series {series.series_uid} were deleted by retention "
            f"at {text_time(series.files_deleted_at)} UTC; there is nothing left to send"
        )


def _requeue_checked(session: Session, job: Job, force: bool) -> None:
    """Requeue one job after checking its state; does not commit."""
    _check_requeueable(job, force)
    if job.state == JobState.DONE and job.kind == JobKind.DELIVER:
        # Sent again means every instance: forget the acknowledgements and the quarantine that a retry
        # would skip (the operator may have fixed the destination or the file).
        cleared = sent_counts(session, [job.id]).get(job.id, 0)
        session.execute(delete(SentInstance).where(SentInstance.job_id == job.id))
        session.execute(delete(QuarantinedInstance).where(QuarantinedInstance.job_id == job.id))
        logger.info("delivery %s: cleared %d acknowledged instances for a forced resend", job.id, cleared)
        requeue(session, job, FORCED_REASON)
    else:
        requeue(session, job, OPERATOR_REASON)
    logger.info("%s of series %s requeued by the operator", _name(job), job.series.series_uid)


def _route_job_of(session: Session, job: Job) -> Job:
    if job.kind == JobKind.ROUTE:
        return job
    route = session.scalar(
        select(Job)
        .where(Job.kind == JobKind.ROUTE, Job.series_id == job.series_id, Job.generation == job.generation)
        .with_for_update()
    )
    if route is None:
        raise NotFoundError(f"delivery {job.id}: no route job for series generation {job.generation}")
    return route


def _replan_checked(session: Session, job: Job) -> Job:
    """Requeue the route job that decided `job`'s series generation; does not commit."""
    route = _route_job_of(session, job)
    _check_requeueable(route, force=True)
    requeue(session, route, REPLAN_REASON + (f" (asked for delivery {job.id})" if route is not job else ""))
    logger.info("route job %s of series %s requeued to replan", route.id, route.series.series_uid)
    return route


def retry_job(session: Session, job_id: int, force: bool = False, replan: bool = False) -> Job:
    """Requeue one job (failed -> queued; done only with force), or with `replan` its series generation's
    route job. Commits the change with its `job.requeued` audit row and returns the job requeued. Raises
    NotFoundError or DeliveryStateError (nothing changed then)."""
    try:
        job = _load_job(session, job_id)
        requeued = _replan_checked(session, job) if replan else job
        if not replan:
            _requeue_checked(session, job, force)
    except NodeError:
        session.rollback()
        raise
    session.commit()
    return requeued


def retry_all_failed(session: Session, destination: str | None = None, replan: bool = False) -> list[int]:
    """Requeue every failed delivery (optionally only to one destination) and, without a destination,
    every failed route job, in one transaction. With `replan` the route jobs of the failed deliveries'
    series generations are requeued instead. Returns the requeued job ids in ascending order."""
    kinds = [JobKind.DELIVER] if destination else list(KINDS)
    query = select(Job).where(Job.kind.in_(kinds), Job.state == JobState.FAILED)
    if destination:
        query = query.where(Job.destination == destination)
    failed = list(session.scalars(query.order_by(Job.id).with_for_update()))
    done: set[int] = set()
    skipped = 0
    for job in failed:
        if job.series.files_deleted_at is not None:
            logger.warning(
                "%s not requeued: files of series %s deleted by retention", _name(job), job.series.series_uid
            )
            skipped += 1
            continue
        if replan:
            route = _route_job_of(session, job)
            if route.id not in done and route.state in (JobState.DONE, JobState.FAILED):
                requeue(session, route, REPLAN_REASON)
                done.add(route.id)
        else:
            requeue(session, job, OPERATOR_REASON)
            done.add(job.id)
    session.commit()
    if skipped:
        logger.warning("%d failed jobs skipped: their files were deleted", skipped)
    return sorted(done)


# ---------------------------------------------------------------------------------------------------------
# Commands


def _kind_of(session: Session, job_id: int) -> str | None:
    job = session.get(Job, job_id)
    return job.kind if job is not None else None


def render_deliveries(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no deliveries match"

    return table(
        LIST_HEADERS,
        [
            (
                d["job_id"],
                d["kind"],
                d["series_uid"],
                d["generation"],
                d["destination"] or "-",
                d["target"] or "-",
                f"{d['state']} (partial)" if d["partial"] else d["state"],
                d["attempts"],
                d["sent_instances"] if d["kind"] == JobKind.DELIVER else "-",
                d["quarantined_instances"] if d["kind"] == JobKind.DELIVER else "-",
                iso_text(d["next_run_at"]) if d["state"] == JobState.QUEUED else "-",
                ",".join(d["rules"]) if d["rules"] else "-",
                " ".join(d["last_error"].split()) if d["last_error"] else "-",
            )
            for d in items
        ],
    )


def cmd_deliveries_list(
    session: Session,
    state: str | None,
    destination: str | None,
    as_json: bool,
    limit: int = 100,
    kind: str | None = JobKind.DELIVER,
) -> int:
    """`dicom-node deliveries list [--state S] [--destination D] [--kind K] [--json]`."""
    try:
        items = list_deliveries(session, state=state, destination=destination, limit=limit, kind=kind)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(dumps(items) if as_json else render_deliveries(items))
    return EXIT_OK


def cmd_deliveries_retry(
    session: Session,
    job_id: int | None,
    all_failed: bool,
    destination: str | None,
    force: bool,
    replan: bool = False,
) -> int:
    """`dicom-node deliveries retry ID [--force|--replan] | --all-failed [--destination D] [--replan]`.
    Exit 0 requeued (or nothing failed), 1 refused by the job's state, 2 usage error or unknown id."""
    if (job_id is None) == (not all_failed):
        print("error: give either a delivery (or route job) ID or --all-failed", file=sys.stderr)
        return EXIT_USAGE
    if force and replan:
        print("error: --force and --replan do not go together", file=sys.stderr)
        return EXIT_USAGE
    if job_id is not None:
        if destination:
            print("error: --destination goes with --all-failed, not with an ID", file=sys.stderr)
            return EXIT_USAGE
        try:
            job = retry_job(session, job_id, force=force, replan=replan)
        except NotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except DeliveryStateError as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        if replan:
            print(
                f"requeued route job {job.id} of series {job.series.series_uid} generation {job.generation}: "
                "the node decides again with the rules in force"
            )
        elif job.kind == JobKind.ROUTE:
            print(f"requeued route job {job.id}: series {job.series.series_uid} generation {job.generation}")
        else:
            print(f"requeued delivery {job.id}: series {job.series.series_uid} -> {job.destination}")
        return EXIT_OK
    if force:
        print("error: --force applies to one delivery ID (a done delivery sent again)", file=sys.stderr)
        return EXIT_USAGE
    ids = retry_all_failed(session, destination=destination, replan=replan)
    where = f" to {destination}" if destination else ""
    left = list_deliveries(session, state=JobState.FAILED, destination=destination, kind="all")
    if not ids and not left:
        print(f"no failed deliveries{where}")
    elif replan and ids:
        print(f"requeued {len(ids)} route jobs to replan{where}: {', '.join(str(i) for i in ids)}")
    for kind, label in ((JobKind.DELIVER, "failed deliveries"), (JobKind.ROUTE, "failed route jobs")):
        of_kind = [i for i in ids if not replan and _kind_of(session, i) == kind]
        if of_kind:
            print(f"requeued {len(of_kind)} {label}{where}: {', '.join(str(i) for i in of_kind)}")
    if left and not replan:
        print(
            f"not requeued (spooled files deleted by retention): {', '.join(str(d['job_id']) for d in left)}"
        )
    return EXIT_OK

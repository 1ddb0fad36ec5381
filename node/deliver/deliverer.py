"""Deliver one series generation to one destination: execute the job's frozen plan (node.deliver.plan),
send what is not yet acknowledged, record each acknowledged instance (so a retry skips it), then finish,
retry with backoff, or dead-letter.

One bad instance never blocks its series: an instance that the sender quarantined (refused by the peer
for what it is, or unreadable from the spool: node.deliver.base) is recorded in quarantined_instances
with an `instance.quarantined` audit row, so that no attempt of this delivery sends it again or counts
it as sent. A delivery that ends with quarantined instances is done and *partial*: its job is `done`
(the series is delivered as far as it can be), `dicom-node deliveries list` shows the count, and the metrics
count it as outcome `partial` (docs/forwarding.md, "One bad instance").

The deliverer reads only its job and the job's plan. It imports nothing of the rules or the router: the
destination's settings are the ones frozen when the route step decided, whatever was reloaded since.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from node import audit, jobs
from node.audit import Events, Where
from node.db.models import Instance, Job, QuarantinedInstance, SentInstance, Series, utcnow
from node.deliver.base import InstanceFile, Sender, SendOutcome
from node.deliver.plan import DeliveryPlan, PlanError
from node.deliver.report_step import ReportStep, wants_report
from node.metrics import NodeMetrics
from node.receive.spool import Spool
from node.writeback import PreparedCopies, prepare_copies, wants_copies

logger = logging.getLogger(__name__)

# Acknowledged instances are committed in batches: a crash re-sends at most this many (at least once).
SENT_FLUSH_EVERY = 32
# At most this many per-instance failures are copied into an audit row.
AUDITED_FAILURES = 20


class Deliverer:
    def __init__(
        self,
        spool: Spool,
        senders: Mapping[str, Sender],
        retry: jobs.RetryPolicy,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._metrics = metrics or NodeMetrics()
        self._spool = spool
        self._senders = senders
        self._retry = retry
        self._reports = ReportStep(spool)

    def pending_files(self, session: Session, job: Job) -> list[InstanceFile]:
        """The job's instances neither acknowledged nor quarantined yet, in instance number order."""
        sent = select(SentInstance.instance_id).where(SentInstance.job_id == job.id)
        quarantined = select(QuarantinedInstance.instance_id).where(QuarantinedInstance.job_id == job.id)
        rows = session.scalars(
            select(Instance)
            .where(
                Instance.series_id == job.series_id,
                Instance.generation == job.generation,
                Instance.id.not_in(sent),
                Instance.id.not_in(quarantined),
            )
            .order_by(Instance.instance_number, Instance.id)
        ).all()
        return [
            InstanceFile(
                instance_id=row.id,
                path=self._spool.absolute(row.path),
                sop_class_uid=row.sop_class_uid,
                sop_instance_uid=row.sop_instance_uid,
                transfer_syntax_uid=row.transfer_syntax_uid,
            )
            for row in rows
        ]

    def handle(self, session: Session, job: Job) -> None:
        series = session.get(Series, job.series_id)
        assert series is not None
        try:
            plan = DeliveryPlan.from_json(job.plan, job.id)
        except PlanError as exc:
            self._give_up(session, job, series, str(exc))
            return
        if plan.destination_name != job.destination or plan.generation != job.generation:
            self._give_up(
                session,
                job,
                series,
                f"delivery {job.id}: its plan is for {plan.destination_name!r} generation {plan.generation}, "
                f"the job for {job.destination!r} generation {job.generation}",
            )
            return
        destination = plan.destination
        sender = self._senders.get(destination.kind)
        if sender is None:
            self._give_up(session, job, series, f"no sender for destination kind {destination.kind!r}")
            return
        listed = self.pending_files(session, job)
        missing = [f for f in listed if not f.path.exists()]
        if missing and (len(missing) == len(listed) or series.files_deleted_at is not None):
            self._give_up(
                session,
                job,
                series,
                f"{len(missing)} spooled files are gone (retention?), e.g. {missing[0].path}",
            )
            return
        # A few files gone while the others are there: those instances cannot be sent, the others can.
        gone = {f.instance_id: f"spool file {f.path} is gone" for f in missing}
        files = [f for f in listed if f.instance_id not in gone]

        # End the read transaction before the (long) send: no snapshot or lock is held across the network.
        session.commit()

        # Write-back (docs/writeback.md): annotated copies are sent instead of the spooled files.
        copies = self._prepare_copies(job, plan, files)
        to_send = copies.files if copies is not None else files
        buffer: list[SentInstance] = []

        def flush() -> None:
            if buffer:
                session.add_all(buffer)
                session.commit()
                buffer.clear()

        def on_sent(instance: InstanceFile, status: int) -> None:
            buffer.append(
                SentInstance(job_id=job.id, instance_id=instance.instance_id, status=status, sent_at=utcnow())
            )
            if len(buffer) >= SENT_FLUSH_EVERY:
                flush()

        try:
            outcome = sender.send(destination, to_send, on_sent) if to_send else None
        finally:
            if copies is not None:
                copies.cleanup()
        flush()
        if copies is not None:
            outcome = _with_copy_failures(outcome, copies)
        if gone:
            outcome = outcome if outcome is not None else SendOutcome()
            outcome.quarantined.update(gone)
        common = Where(series_uid=series.series_uid, job_id=job.id, destination=job.destination)
        if outcome is not None and outcome.quarantined:
            self._quarantine(session, job, listed, outcome, common)
        # Last step, once every instance is acknowledged: the Structured Report (node.deliver.report_step).
        # A report that fails makes the attempt fail; the next attempt sends only the report again.
        report_failure = None
        if (outcome is None or outcome.ok) and wants_report(plan):
            report_failure = self._reports.send(session, job, series, plan, sender)
        total_sent = session.scalar(
            select(func.count()).select_from(SentInstance).where(SentInstance.job_id == job.id)
        )
        total_quarantined = quarantined_count(session, job.id)
        if copies is not None:
            decided = copies.report  # what the write-back did in this attempt
            audit.record(
                session, Events.DELIVERY_WRITEBACK, decided.message(), details=decided.details(), **common
            )
        if outcome is not None:
            failures = dict(list(outcome.failed.items())[:AUDITED_FAILURES])
            uids = {f.instance_id: f.sop_instance_uid for f in listed}
            statuses = sorted({f"0x{s:04X}" for s in outcome.statuses.values()})
            acknowledged = f"{len(outcome.sent)} instances acknowledged"
            if outcome.quarantined:
                acknowledged += f", {len(outcome.quarantined)} quarantined"
            audit.record(
                session,
                Events.DELIVERY_ATTEMPT,
                outcome.error or acknowledged,
                details={
                    "attempt": job.attempts,
                    "instances": len(listed),
                    "sent": len(outcome.sent),
                    "failed": len(outcome.failed),
                    "quarantined": len(outcome.quarantined),
                    "statuses": statuses,
                    # Keyed by SOP Instance UID: what an operator can look up on both sides.
                    "failures": {uids.get(k, str(k)): v for k, v in failures.items()},
                    "error": outcome.error,
                    "duration_seconds": round(outcome.duration_seconds, 3),
                    "associations": outcome.associations,
                },
                **common,
            )
        if (outcome is None or outcome.ok) and report_failure is None:
            jobs.finish(session, job)
            count = len(outcome.sent) if outcome else 0
            message = f"delivered: {count} instances acknowledged in this attempt, {total_sent} in all"
            if total_quarantined:
                message = f"delivered partially: {count} instances acknowledged in this attempt, "
                message += f"{total_sent} in all, {total_quarantined} quarantined"
            audit.record(
                session,
                Events.DELIVERY_DONE,
                message,
                details={
                    "sent_this_attempt": count,
                    "sent_total": total_sent,
                    "quarantined_total": total_quarantined,
                    "partial": bool(total_quarantined),
                    "attempts": job.attempts,
                    "rules_sha256": plan.rules_sha256,
                },
                **common,
            )
            session.commit()
            ending = "partial" if total_quarantined else "done"
            self._metrics.record_delivery(job.destination, ending, outcome)
            if total_quarantined:
                logger.warning(
                    "series %s delivered to %s partially: %d instance(s) quarantined",
                    series.series_uid,
                    job.destination,
                    total_quarantined,
                )
            else:
                logger.info("series %s delivered to %s", series.series_uid, job.destination)
            return
        failed = report_failure if outcome is None or outcome.ok else outcome
        assert failed is not None
        error = failed.error or "delivery failed"
        retry = self._fail_attempt(session, job, error, failed.retryable)
        if retry:
            audit.record(
                session,
                Events.DELIVERY_RETRY,
                f"retry at {job.next_run_at.isoformat()}: {error}",
                details={"attempt": job.attempts, "next_run_at": job.next_run_at.isoformat()},
                **common,
            )
        else:
            reason = "not retryable" if not failed.retryable else f"after {job.attempts} attempts"
            audit.record(
                session,
                Events.DELIVERY_DEAD_LETTER,
                f"dead letter ({reason}): {error}",
                details={"attempt": job.attempts, "retryable": failed.retryable},
                **common,
            )
            logger.error("delivery of %s to %s dead-lettered: %s", series.series_uid, job.destination, error)
        session.commit()
        self._metrics.record_delivery(job.destination, "retry" if retry else "dead_letter", outcome)

    def _quarantine(
        self, session: Session, job: Job, files: list[InstanceFile], outcome: SendOutcome, common: Where
    ) -> None:
        """Record this attempt's quarantined instances, one row and one audit row each; commits."""
        by_id = {f.instance_id: f for f in files}
        now = utcnow()
        for instance_id, reason in outcome.quarantined.items():
            status = outcome.statuses.get(instance_id)
            uid = by_id[instance_id].sop_instance_uid if instance_id in by_id else None
            about: Where = {**common, "sop_instance_uid": uid}
            session.add(
                QuarantinedInstance(
                    job_id=job.id, instance_id=instance_id, status=status, reason=reason, quarantined_at=now
                )
            )
            audit.record(
                session,
                Events.INSTANCE_QUARANTINED,
                f"not sent to {job.destination}: {reason}",
                details={
                    "attempt": job.attempts,
                    "status": f"0x{status:04X}" if status is not None else None,
                    "reason": reason,
                    "by": "destination" if status is not None else "node",
                },
                **about,
            )
            logger.warning(
                "delivery %d to %s: SOP Instance %s quarantined: %s", job.id, job.destination, uid, reason
            )
        session.commit()
        self._metrics.record_quarantined(job.destination, len(outcome.quarantined))

    def _prepare_copies(
        self, job: Job, plan: DeliveryPlan, files: list[InstanceFile]
    ) -> PreparedCopies | None:
        """The annotated copies of `files` when the plan asks for write-back, else None."""
        writeback = plan.destination.writeback
        if not files or plan.results is None or not wants_copies(writeback, plan.results):
            return None
        return prepare_copies(self._spool.root, job.id, files, writeback, plan.results)

    def _fail_attempt(self, session: Session, job: Job, error: str, retryable: bool) -> bool:
        """Record a failed attempt with the configured backoff; True if it will be retried."""
        return self._retry.fail(session, job, error, retryable)

    def _give_up(self, session: Session, job: Job, series: Series, error: str) -> None:
        jobs.dead_letter(session, job, error)
        audit.record(
            session,
            Events.DELIVERY_DEAD_LETTER,
            f"dead letter: {error}",
            series_uid=series.series_uid,
            job_id=job.id,
            destination=job.destination,
        )
        session.commit()
        self._metrics.record_delivery(job.destination, "dead_letter", None)
        logger.error("delivery %d of %s: %s", job.id, series.series_uid, error)

    def on_crash(self, session: Session, job: Job, exc: BaseException) -> None:
        job = session.get(Job, job.id) or job
        series = session.get(Series, job.series_id)
        assert series is not None
        error = f"internal error: {type(exc).__name__}: {exc}"
        retry = self._fail_attempt(session, job, error, retryable=True)
        event = Events.DELIVERY_RETRY if retry else Events.DELIVERY_DEAD_LETTER
        audit.record(
            session, event, error, series_uid=series.series_uid, job_id=job.id, destination=job.destination
        )
        session.commit()
        self._metrics.record_delivery(job.destination, "retry" if retry else "dead_letter", None)


def quarantined_count(session: Session, job_id: int) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(QuarantinedInstance).where(QuarantinedInstance.job_id == job_id)
        )
        or 0
    )


def _with_copy_failures(outcome: SendOutcome | None, copies: PreparedCopies) -> SendOutcome | None:
    """The attempt's outcome with the instances whose copy could not be made: quarantined when their
    spooled file could not be read or parsed (it gives the same error every time); counted as failed,
    retryable, when writing a copy failed (disk full), since then a later attempt may make them all."""
    if not copies.failed:
        return outcome
    outcome = outcome if outcome is not None else SendOutcome()
    if not copies.report.transient_failure:
        outcome.quarantined.update(copies.failed)
        return outcome
    outcome.failed.update(copies.failed)
    if outcome.error is None:
        first = next(iter(copies.failed.values()))
        outcome.error = f"{len(copies.failed)} write-back copies could not be made, e.g. {first}"
        outcome.retryable = copies.report.transient_failure
    return outcome

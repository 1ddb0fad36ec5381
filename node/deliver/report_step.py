"""The delivery's last step: the Structured Report, sent after every instance is acknowledged.

When the plan asks for it (`destination.structured_report` and frozen `results`), the deliverer calls
`ReportStep.send` once the series' instances are all delivered. The SR is built from the plan's results
and the headers of the spooled instances (node.report), written to a temporary folder under the spool's
tmp/ (removed afterwards) and sent with the destination's own sender, as one more InstanceFile.

The SR is not a row of the instances table, so it is never recorded in sent_instances: its InstanceFile
carries the sentinel id REPORT_INSTANCE_ID and its own on_sent callback. Its UIDs are deterministic, so a
retry simply sends the same SR again. Every outcome (sent, refused, skipped, not buildable) is an audit
row `delivery.report` with the SR's UIDs.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

from highdicom.sr import EnhancedSR
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session

from node import audit
from node.audit import Events, Where
from node.db.models import Instance, Job, QuarantinedInstance, Series
from node.deliver.base import InstanceFile, Sender, SendOutcome
from node.deliver.plan import DeliveryPlan
from node.receive.spool import Spool
from node.report import ReportSkipped, build_report
from node.report.build import Evidence, uids_of
from node.writeback.derived import derived_instance_uid, derived_model, derived_series_uid

logger = logging.getLogger(__name__)

# Instance ids are positive (database keys): this one is never a row, and never recorded as sent.
REPORT_INSTANCE_ID = -1


def wants_report(plan: DeliveryPlan) -> bool:
    return plan.destination.structured_report and plan.results is not None


class ReportStep:
    def __init__(self, spool: Spool) -> None:
        self._spool = spool

    def send(
        self, session: Session, job: Job, series: Series, plan: DeliveryPlan, sender: Sender
    ) -> SendOutcome | None:
        """Build and send the SR; audit the outcome (the caller commits it with the job's state).

        None when it was sent or deliberately skipped; the failed outcome otherwise (the caller retries
        or dead-letters the delivery as for an instance)."""
        assert plan.results is not None
        # With derived copies the destination has the series under derived UIDs: the SR references those.
        model = derived_model(plan.destination.writeback, plan.results)
        source_series = derived_series_uid(series.series_uid, model) if model else series.series_uid
        uids = uids_of(plan.results, source_series, plan.generation)
        where = Where(
            series_uid=series.series_uid,
            sop_instance_uid=uids.sop_instance_uid,
            job_id=job.id,
            destination=job.destination,
        )
        details: dict[str, object] = {
            "sop_instance_uid": uids.sop_instance_uid,
            "series_instance_uid": uids.series_instance_uid,
            "attempt": job.attempts,
        }
        # Not the instances this delivery quarantined: the destination does not have them, and their
        # files may be unreadable (the SR copies patient and study from the first one).
        quarantined = select(QuarantinedInstance.instance_id).where(QuarantinedInstance.job_id == job.id)
        rows = session.scalars(
            select(Instance)
            .where(Instance.series_id == series.id, Instance.id.not_in(quarantined))
            .order_by(Instance.instance_number, Instance.id)
        ).all()
        session.commit()  # no read transaction across the send
        work = Path(tempfile.mkdtemp(prefix="sr-", dir=self._spool.tmp_dir))
        try:
            try:
                report = self._build(rows, plan)
            except (OSError, InvalidDicomError, ValueError, TypeError, AttributeError) as exc:
                # Not a network problem: the header or the results cannot make an SR. The delivery fails
                # with the reason (dead letter, `deliveries retry` once fixed); the traceback is logged.
                logger.exception("series %s: structured report not built", series.series_uid)
                error = f"structured report for series {series.series_uid} could not be built: {exc}"
                return self._failed(session, where, details, error, retryable=False)
            if isinstance(report, ReportSkipped):
                self._record(
                    session,
                    where,
                    "skipped",
                    f"no structured report: {report.reason}",
                    {**details, "outcome": "skipped", "reason": report.reason},
                )
                return None
            path = work / f"{uids.sop_instance_uid}.dcm"
            report.save_as(path, enforce_file_format=True)
            item = InstanceFile(
                instance_id=REPORT_INSTANCE_ID,
                path=path,
                sop_class_uid=str(report.SOPClassUID),
                sop_instance_uid=uids.sop_instance_uid,
                transfer_syntax_uid=str(report.file_meta.TransferSyntaxUID),
            )
            acknowledged: list[int] = []
            outcome = sender.send(plan.destination, [item], lambda f, status: acknowledged.append(status))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        details.update(
            references=len(rows), statuses=sorted({f"0x{s:04X}" for s in outcome.statuses.values()})
        )
        if outcome.ok and acknowledged:
            self._record(
                session,
                where,
                "sent",
                f"structured report {uids.sop_instance_uid} acknowledged",
                {**details, "outcome": "sent"},
            )
            return None
        # A refusal of the SR itself comes back as quarantined (it is the instance's): here it fails the
        # step as before, with the destination's reason.
        refused = next(iter(outcome.quarantined.values()), None)
        error = outcome.error or (
            f"refused: {refused}" if refused else "the structured report was not acknowledged"
        )
        error = f"structured report {uids.sop_instance_uid}: {error}"
        outcome.error = error
        self._record(
            session,
            where,
            "failed",
            error,
            {**details, "outcome": "failed", "error": error, "retryable": outcome.retryable},
        )
        return outcome

    def _build(self, rows: Sequence[Instance], plan: DeliveryPlan) -> EnhancedSR | ReportSkipped:
        assert plan.results is not None
        if not rows:
            return ReportSkipped("the series has no instances left")
        header = dcmread(self._spool.absolute(rows[0].path), stop_before_pixels=True)
        evidence = [Evidence(r.sop_class_uid, r.sop_instance_uid) for r in rows]
        model = derived_model(plan.destination.writeback, plan.results)
        if model is not None:
            header.SOPInstanceUID = derived_instance_uid(str(header.SOPInstanceUID), model)
            header.SeriesInstanceUID = derived_series_uid(str(header.SeriesInstanceUID), model)
            evidence = [
                Evidence(e.sop_class_uid, derived_instance_uid(e.sop_instance_uid, model)) for e in evidence
            ]
        with warnings.catch_warnings():
            # highdicom warns about single-component person names, quoting the patient's name: not in logs.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"highdicom\..*")
            return build_report(plan.results, header, evidence, plan.generation)

    def _failed(
        self, session: Session, where: Where, details: dict[str, object], error: str, retryable: bool
    ) -> SendOutcome:
        self._record(
            session,
            where,
            "failed",
            error,
            {**details, "outcome": "failed", "error": error, "retryable": retryable},
        )
        return SendOutcome(error=error, retryable=retryable)

    @staticmethod
    def _record(
        session: Session, where: Where, outcome: str, message: str, details: dict[str, object]
    ) -> None:
        audit.record(session, Events.DELIVERY_REPORT, message, details=details, **where)
        logger.info("series %s to %s: report %s", where.get("series_uid"), where.get("destination"), outcome)

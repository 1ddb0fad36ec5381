"""The route job: read the series, analyse it, decide, and queue one delivery per destination.

Three steps, so that no database transaction is open while the series is analysed (seconds of volume
assembly and classification; on SQLite a long read transaction starves WAL checkpoints):

1. read what the decision needs (the series row, its instance files), then end the transaction;
2. analyse the series (no transaction) and `decide(facts, analysis, rules)`: pure;
3. write the decision, its audit rows and the delivery jobs, each carrying its frozen plan, in ONE
   transaction with the route job's completion.

The deliverer reads only its job and plan: a rules reload never changes queued work. When a route job
runs again for a generation that already has deliveries (`deliveries retry ID --replan`, or a requeued
route job), the decision is made again with the rules in force on the analysis stored with the job, and
the deliveries are reconciled (see `_reconcile`). A failing route job is retried with backoff
(`route.*` settings) and dead-lettered after its last attempt, like a delivery.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from node import audit, jobs
from node.analysis import AnalysisResult, SeriesAnalyser
from node.audit import Events, Where
from node.db.models import Instance, Job, JobKind, JobState, SentInstance, Series, SeriesState
from node.deliver.plan import DeliveryPlan, PlanError
from node.errors import InvalidUIDError, RulesError
from node.facts import SeriesFacts, series_facts
from node.metrics import NodeMetrics
from node.receive.spool import Spool
from node.rules import Decision, RulesHolder, decide

logger = logging.getLogger(__name__)

REPLAN_REASON = "replan: decided again with the rules in force"


class RouteFailure(Exception):
    """The route step cannot run now (e.g. a spooled file cannot be read); retried with backoff."""


@dataclass(frozen=True)
class RouteInput:
    """What step 1 read: enough to analyse and decide without the database."""

    series_id: int
    facts: SeriesFacts
    header: Dataset
    files: list[Path]
    # The analysis stored by an earlier run of this route job (a replan decides on it again).
    stored_analysis: AnalysisResult | None


class Router:
    def __init__(
        self,
        spool: Spool,
        rules: RulesHolder,
        analyser: SeriesAnalyser,
        wake_delivery: threading.Event,
        retry: jobs.RetryPolicy,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._metrics = metrics or NodeMetrics()
        self._spool = spool
        self._rules = rules
        self._analyser = analyser
        self._wake_delivery = wake_delivery
        self._retry = retry

    # -- the job ---------------------------------------------------------------------------------

    def handle(self, session: Session, job: Job) -> None:
        try:
            work = self._read(session, job)
        except RouteFailure as exc:
            session.rollback()
            self.fail(session, job, str(exc))
            return
        if work.stored_analysis is not None:
            analysis, fresh = work.stored_analysis, False
        else:
            started = time.perf_counter()
            analysis, fresh = self._analyser.analyse(work.facts.series_uid, work.header, work.files), True
            self._metrics.record_classification(analysis.facts, analysis.audit, time.perf_counter() - started)
        decision = decide(work.facts, analysis, self._rules.current)
        self._write(session, job, work, analysis, fresh, decision)
        self._wake_delivery.set()

    def _read(self, session: Session, job: Job) -> RouteInput:
        """Step 1: the series row and its files; ends the read transaction before any file is read."""
        series = session.get(Series, job.series_id)
        if series is None:
            raise RouteFailure(f"series id {job.series_id} is gone")
        instances = session.scalars(
            select(Instance)
            .where(Instance.series_id == series.id)
            .order_by(Instance.instance_number, Instance.id)
        ).all()
        if not instances:
            raise RouteFailure(f"series {series.series_uid} has no instances")
        representative = next((i for i in instances if i.generation == job.generation), instances[0])
        header_path = self._spool.absolute(representative.path)
        files = [self._spool.absolute(i.path) for i in instances]
        stored = _stored_analysis(job.analysis)
        series_id, series_uid, count = series.id, series.series_uid, series.instance_count
        calling_ae, called_ae = series.calling_ae, series.called_ae
        conflicts = {
            "sop_uid_conflicts": series.sop_uid_conflicts,
            "study_uid_conflicts": series.study_uid_conflicts,
        }
        session.commit()  # no transaction stays open while files are read and the series is analysed
        try:
            header = pydicom.dcmread(header_path, stop_before_pixels=True)
        except (OSError, InvalidDicomError, EOFError, struct.error, ValueError) as exc:
            raise RouteFailure(f"cannot read {header_path}: {exc}") from exc
        try:
            facts = series_facts(
                header,
                count,
                calling_ae=calling_ae,
                called_ae=called_ae,
                generation=job.generation,
                **conflicts,
            )
        except InvalidUIDError as exc:
            raise RouteFailure(f"{header_path}: {exc}") from exc
        if facts.series_uid != series_uid:
            raise RouteFailure(f"{header_path} belongs to series {facts.series_uid}, not {series_uid}")
        return RouteInput(series_id, facts, header, files, stored)

    def _write(
        self,
        session: Session,
        job: Job,
        work: RouteInput,
        analysis: AnalysisResult,
        fresh: bool,
        decision: Decision,
    ) -> None:
        """Step 3: the decision, its audit rows and the delivery jobs, in one transaction."""
        series = session.get(Series, work.series_id)
        if series is None:
            raise RouteFailure(f"series id {work.series_id} was deleted while it was analysed")
        where = Where(series_uid=series.series_uid, job_id=job.id)
        if fresh:
            _audit_analysis(session, analysis, where)
        details = decision.to_audit()
        audit.record(session, Events.ROUTE_DECISION, decision.summary(), details=details, **where)
        _reconcile(session, series, job.generation, decision)
        job.analysis = {"facts": analysis.facts, "summary": analysis.summary, "audit": analysis.audit}
        # Without a rules file nothing was decided: the series stays `complete`, so that retention keeps
        # its files until rules route it (`deliveries retry ROUTE_JOB --force`).
        decided = decision.routing is not None
        if decided:
            # Conditional in the database, not on the row read above: an instance that arrived while this
            # generation was analysed may have started a follow-up (state receiving, generation + 1), and
            # overwriting that with `routed` would leave the follow-up never completed nor forwarded
            # (found by scripts/crash_soak.py; tests/integration/test_follow_up_during_route.py).
            session.execute(
                update(Series)
                .where(
                    Series.id == series.id,
                    Series.state == SeriesState.COMPLETE,
                    Series.generation == job.generation,
                )
                .values(state=SeriesState.ROUTED)
                .execution_options(synchronize_session=False)
            )
        jobs.finish(session, job)
        session.commit()
        logger.info("series %s generation %d: %s", series.series_uid, job.generation, decision.summary())

    # -- failures --------------------------------------------------------------------------------

    def fail(self, session: Session, job: Job, error: str) -> None:
        """A failed attempt: retried with backoff, then a dead letter (`deliveries retry` requeues)."""
        job = session.get(Job, job.id, populate_existing=True) or job
        series = session.get(Series, job.series_id)
        where = Where(series_uid=series.series_uid if series else None, job_id=job.id)
        if self._retry.fail(session, job, error):
            audit.record(
                session,
                Events.ROUTE_RETRY,
                f"retry at {job.next_run_at.isoformat()}: {error}",
                details={"attempt": job.attempts, "next_run_at": job.next_run_at.isoformat()},
                **where,
            )
            logger.warning("route job %d failed (attempt %d), will retry: %s", job.id, job.attempts, error)
        else:
            audit.record(
                session,
                Events.ROUTE_FAILED,
                f"dead letter after {job.attempts} attempts: {error}",
                details={"attempt": job.attempts},
                **where,
            )
            logger.error("route job %d dead-lettered after %d attempts: %s", job.id, job.attempts, error)
            self._metrics.record_dead_letter("route")
        session.commit()

    def on_crash(self, session: Session, job: Job, exc: BaseException) -> None:
        self.fail(session, job, f"{type(exc).__name__}: {exc}")


def _stored_analysis(data: Any) -> AnalysisResult | None:
    if not isinstance(data, dict) or not isinstance(data.get("facts"), dict):
        return None
    stored_audit = data.get("audit")
    return AnalysisResult(
        facts=dict(data["facts"]),
        audit=dict(stored_audit) if isinstance(stored_audit, dict) else {},
        summary=str(data.get("summary", "")),
    )


def _audit_analysis(session: Session, analysis: AnalysisResult, where: Where) -> None:
    audit.record(session, Events.SERIES_ANALYSED, analysis.summary, details=analysis.audit, **where)
    if not analysis.facts.get("disagreement.any"):
        return
    disagreements = analysis.audit.get("disagreement", {})
    audit.record(
        session,
        Events.CLASSIFICATION_DISAGREEMENT,
        "the tags and the images disagree on " + ", ".join(sorted(disagreements)),
        details={
            task: {
                "prior": analysis.facts.get(f"prior.{task}"),
                "image": analysis.facts.get(f"image.{task}"),
                "final": analysis.facts.get(f"prediction.{task}"),
                "with": disagreements[task].get("with") if isinstance(disagreements[task], dict) else None,
            }
            for task in sorted(disagreements)
        },
        **where,
    )


def _reconcile(session: Session, series: Series, generation: int, decision: Decision) -> None:
    """Make the generation's delivery jobs match the decision.

    A destination without a job gets one (queued, with its plan). When jobs exist already (a replan):
    a queued or failed delivery that the decision still chooses takes the new plan and is queued now
    (its acknowledgements are forgotten if the destination's settings changed: the new peer has none of
    them); a done or running one is left as it is (`deliveries retry ID --force` sends again); a queued
    or failed delivery that the decision no longer chooses is superseded (failed, with the reason).
    """
    existing = {
        j.destination: j
        for j in session.scalars(
            select(Job).where(
                Job.kind == JobKind.DELIVER, Job.series_id == series.id, Job.generation == generation
            )
        )
    }
    for name, plan in decision.plans.items():
        current = existing.get(name)
        if current is None:
            delivery = jobs.enqueue(
                session, JobKind.DELIVER, series, generation, name, list(plan.rules), plan=plan.to_json()
            )
            assert delivery is not None  # no job existed for this destination
            audit.record(
                session,
                Events.DELIVERY_QUEUED,
                f"queued by {', '.join(plan.rules)}",
                series_uid=series.series_uid,
                job_id=delivery.id,
                destination=name,
                details={"rules": list(plan.rules), "generation": generation, "plan": plan.to_json()},
            )
        else:
            _replan(session, series, current, plan)
    for name, current in existing.items():
        if name in decision.plans or current.state not in (JobState.QUEUED, JobState.FAILED):
            continue
        reason = "superseded: the rules in force no longer send this series here"
        jobs.dead_letter(session, current, reason)
        audit.record(
            session,
            Events.DELIVERY_SUPERSEDED,
            reason,
            series_uid=series.series_uid,
            job_id=current.id,
            destination=name,
            details={"rules_sha256": decision.rules_sha256},
        )


def _replan(session: Session, series: Series, job: Job, plan: DeliveryPlan) -> None:
    where = Where(series_uid=series.series_uid, job_id=job.id, destination=job.destination)
    if job.state in (JobState.DONE, JobState.RUNNING):
        what = "already delivered" if job.state == JobState.DONE else "being sent now"
        audit.record(
            session,
            Events.DELIVERY_REPLANNED,
            f"{what}: left as it is (deliveries retry {job.id} --force sends it again)",
            details={"state": job.state, "changed": False},
            **where,
        )
        return
    try:
        old: DeliveryPlan | None = DeliveryPlan.from_json(job.plan, job.id)
    except PlanError:
        old = None
    moved = old is None or old.destination != plan.destination
    if moved:
        # Acknowledgements came from the old peer; the new one has none of these instances.
        session.execute(delete(SentInstance).where(SentInstance.job_id == job.id))
    job.plan = plan.to_json()
    job.rules = list(plan.rules)
    audit.record(
        session,
        Events.DELIVERY_REPLANNED,
        "new plan from the rules in force" + (" (destination settings changed)" if moved else ""),
        details={
            "state": job.state,
            "changed": True,
            "destination_changed": moved,
            "old_plan": old.to_json() if old is not None else None,
            "plan": plan.to_json(),
        },
        **where,
    )
    jobs.requeue(session, job, REPLAN_REASON)


def reload_rules(holder: RulesHolder, session: Session) -> str:
    """Reload and audit the outcome; returns a one-line message. Never raises on invalid rules."""
    try:
        rules = holder.reload()
    except RulesError as exc:
        audit.record(session, Events.RULES_RELOAD_FAILED, str(exc), details={"path": str(holder.path)})
        session.commit()
        logger.error("rules reload failed, previous rules stay in force: %s", exc)
        return f"reload failed, previous rules stay in force: {exc}"
    count = len(rules.rules) if rules is not None else 0
    audit.record(
        session, Events.RULES_LOADED, f"{count} rules from {holder.path}", details={"path": str(holder.path)}
    )
    session.commit()
    return f"loaded {count} rules from {holder.path}"

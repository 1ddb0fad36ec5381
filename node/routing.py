"""Route a completed series: analyse (seam for classification), evaluate the rules, queue deliveries.

Everything the route step decides is written in one transaction: the decision audit row, one
delivery job per destination (with its own audit row), the series state, the job's completion.
"""

from __future__ import annotations

import logging
import threading

import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session

from node import audit, jobs
from node.analysis import SeriesAnalyser
from node.audit import Events
from node.db.models import Instance, Job, JobKind, Series, SeriesState
from node.errors import RulesError
from node.facts import SeriesFacts
from node.receive.spool import Spool
from node.rules import RulesHolder, evaluate

logger = logging.getLogger(__name__)


def read_header(spool: Spool, instance: Instance) -> pydicom.Dataset:
    return pydicom.dcmread(spool.absolute(instance.path), stop_before_pixels=True)


class Router:
    def __init__(
        self, spool: Spool, rules: RulesHolder, analyser: SeriesAnalyser, wake_delivery: threading.Event
    ):
        self._spool = spool
        self._rules = rules
        self._analyser = analyser
        self._wake_delivery = wake_delivery

    def handle(self, session: Session, job: Job) -> None:
        series = session.get(Series, job.series_id)
        assert series is not None
        instances = session.scalars(
            select(Instance)
            .where(Instance.series_id == series.id)
            .order_by(Instance.instance_number, Instance.id)
        ).all()
        representative = next((i for i in instances if i.generation == job.generation), instances[0])
        try:
            header = read_header(self._spool, representative)
        except (OSError, InvalidDicomError) as exc:
            self.fail(session, job, f"cannot read {representative.path}: {exc}")
            return
        analysis = self._analyser.analyse(
            series.series_uid, header, [self._spool.absolute(i.path) for i in instances]
        )
        audit.record(
            session,
            Events.SERIES_ANALYSED,
            analysis.summary,
            series_uid=series.series_uid,
            job_id=job.id,
            details=analysis.audit,
        )
        if analysis.facts.get("disagreement.any"):
            disagreeing = sorted(analysis.audit.get("disagreement", {}))
            audit.record(
                session,
                Events.CLASSIFICATION_DISAGREEMENT,
                "tags and image disagree on " + ", ".join(disagreeing),
                series_uid=series.series_uid,
                job_id=job.id,
                details={
                    task: {
                        "prior": analysis.facts.get(f"prior.{task}"),
                        "image": analysis.facts.get(f"image.{task}"),
                    }
                    for task in disagreeing
                },
            )
        facts = SeriesFacts(
            series_uid=series.series_uid,
            attributes=header,
            instance_count=series.instance_count,
            calling_ae=series.calling_ae,
            generation=job.generation,
            extra=analysis.facts,
        )
        ruleset = self._rules.current
        if ruleset is None:
            audit.record(
                session,
                Events.ROUTE_DECISION,
                "no rules file configured: the series stays in the spool",
                series_uid=series.series_uid,
                job_id=job.id,
                details={"destinations": {}},
            )
        else:
            decision = evaluate(ruleset, facts)
            details = decision.to_audit()
            details["generation"] = job.generation
            summary = ", ".join(sorted(decision.destinations)) or (
                "discarded" if decision.discarded else "none"
            )
            audit.record(
                session,
                Events.ROUTE_DECISION,
                f"destinations: {summary}",
                series_uid=series.series_uid,
                job_id=job.id,
                details=details,
            )
            for name, rule_names in sorted(decision.destinations.items()):
                delivery = jobs.enqueue(
                    session, JobKind.DELIVER, series, job.generation, name, list(rule_names)
                )
                if delivery is not None:
                    audit.record(
                        session,
                        Events.DELIVERY_QUEUED,
                        f"queued by {', '.join(rule_names)}",
                        series_uid=series.series_uid,
                        job_id=delivery.id,
                        destination=name,
                        details={"rules": list(rule_names), "generation": job.generation},
                    )
        if series.state == SeriesState.COMPLETE and series.generation == job.generation:
            series.state = SeriesState.ROUTED
        jobs.finish(session, job)
        session.commit()
        self._wake_delivery.set()

    def fail(self, session: Session, job: Job, error: str) -> None:
        """A route job that cannot run: dead letter (requeue with `node deliveries retry` once fixed)."""
        series = session.get(Series, job.series_id)
        jobs.dead_letter(session, job, error)
        audit.record(
            session,
            Events.ROUTE_FAILED,
            error,
            series_uid=series.series_uid if series else None,
            job_id=job.id,
        )
        session.commit()

    def on_crash(self, session: Session, job: Job, exc: BaseException) -> None:
        job = session.get(Job, job.id) or job
        self.fail(session, job, f"{type(exc).__name__}: {exc}")


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

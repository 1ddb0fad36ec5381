"""The node's Prometheus metrics: every definition and the small `record_*` helpers, in one place.

Each NodeService owns one `NodeMetrics` with a registry of its own (never prometheus-client's global
one), so tests and several nodes in one process do not share counters. `GET /metrics` renders it
(node/web/metrics.py); docs/metrics.md lists every metric with its labels.

Costs: the receive path only increments three counters (a dict lookup, then a lock per counter; about
2 us per instance, no database work). The queue depth is read from the database when /metrics is
scraped, in one GROUP BY over the unfinished jobs (the jobs table's (state, next_run_at) index serves it).

Label values are bounded: AE titles, destinations and transfer syntaxes by the configuration and the
standard, statuses by the standard, tasks and classes by the model. As a guard against a sender that
invents values (any calling AE title is accepted when `receive.allowed_callers` is empty), each label
keeps at most `MAX_LABEL_VALUES` distinct values; later new ones are counted as "other".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from node import __version__
from node.db.models import Job, JobState

if TYPE_CHECKING:
    from node.deliver.base import SendOutcome

logger = logging.getLogger(__name__)

PREFIX = "dicom_node"
MAX_LABEL_VALUES = 200
OTHER = "other"
MAX_CACHED_CHILDREN = 1000
# The classification tasks whose results are counted (node.classify.labels.TASKS, without importing
# the classifier: a node with classification disabled does not load torch).
TASKS = ("body_part", "axis", "contrast")
# Seconds. Classification: volume assembly plus inference, 0.2 s to a minute. Delivery: one attempt.
CLASSIFY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# The job states that make up the queue (done jobs are history, not depth).
QUEUE_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.FAILED)


class BoundedLabel:
    """Passes a label value through until `limit` distinct values were seen; then new ones are OTHER."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        text = value or ""
        if text in self._seen:
            return text
        with self._lock:
            if len(self._seen) < self._limit:
                self._seen.add(text)
                return text
        return OTHER


class NodeMetrics:
    """The metric definitions of one node, on their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self._ae = BoundedLabel()
        self._syntax = BoundedLabel()
        self._destination = BoundedLabel()
        self._value = BoundedLabel()
        # The receive path's label children, resolved once per label combination.
        self._received: dict[tuple[str, str | None, str, str], tuple[Any, Any, Any]] = {}

        info = Gauge(f"{PREFIX}_info", "The node's version (always 1).", ["version"], registry=reg)
        info.labels(__version__).set(1)
        self.instances_received = Counter(
            f"{PREFIX}_instances_received",
            "Instances acknowledged (stored, replaced or duplicate), by transport, calling AE and transfer "
            "syntax UID.",
            ["source", "calling_ae", "transfer_syntax"],
            registry=reg,
        )
        self.bytes_received = Counter(
            f"{PREFIX}_received_bytes",
            "Bytes of acknowledged instances (Part 10 files as spooled), by transport and calling AE.",
            ["source", "calling_ae"],
            registry=reg,
        )
        self.instance_outcomes = Counter(
            f"{PREFIX}_instance_outcomes",
            "What became of acknowledged instances: stored, replaced, duplicate, kept_first, quarantined.",
            ["outcome"],
            registry=reg,
        )
        self.instances_refused = Counter(
            f"{PREFIX}_instances_refused",
            "Instances refused, by transport and the DICOM status answered (e.g. 0xA700).",
            ["source", "status"],
            registry=reg,
        )
        self.consistency_warnings = Counter(
            f"{PREFIX}_consistency_warnings",
            "Instances stored but flagged: sop_in_other_series (the SOP Instance UID is also in another "
            "series), series_in_other_study (the series is already stored under another study).",
            ["kind"],
            registry=reg,
        )
        self.http_requests_refused = Counter(
            f"{PREFIX}_http_requests_refused",
            "STOW-RS requests refused as a whole, by HTTP status (400, 401, 413, 415, 503).",
            ["status"],
            registry=reg,
        )
        self.associations_rejected = Counter(
            f"{PREFIX}_associations_rejected",
            "A-ASSOCIATE-RQs rejected: called_ae, calling_ae (not allowed) or busy (shutting down); "
            "tls_handshake: TLS connections whose handshake failed.",
            ["reason"],
            registry=reg,
        )
        self.series_completed = Counter(
            f"{PREFIX}_series_completed",
            "Series completed by this node, by trigger: quiet_time or expected_count.",
            ["trigger"],
            registry=reg,
        )
        self.classification_seconds = Histogram(
            f"{PREFIX}_classification_seconds",
            "Wall time of one series' analysis (volume assembly, classification, fusion).",
            buckets=CLASSIFY_BUCKETS,
            registry=reg,
        )
        self.classification_results = Counter(
            f"{PREFIX}_classification_results",
            "Final answers per task: the class and the source that decided it (prior, image, coverage, ...).",
            ["task", "label", "source"],
            registry=reg,
        )
        self.classification_disagreements = Counter(
            f"{PREFIX}_classification_disagreements",
            "Series whose tags and images disagree, per task.",
            ["task"],
            registry=reg,
        )
        self.not_classifiable = Counter(
            f"{PREFIX}_series_not_classifiable",
            "Analysed series that could not be classified (no volume: not CT, too few slices, ...).",
            registry=reg,
        )
        self.deliveries = Counter(
            f"{PREFIX}_deliveries",
            "Delivery attempts by destination and outcome: done, partial, retry, dead_letter.",
            ["destination", "outcome"],
            registry=reg,
        )
        self.delivery_seconds = Histogram(
            f"{PREFIX}_delivery_seconds",
            "Wall time of one delivery attempt's send, by destination.",
            ["destination"],
            buckets=DELIVERY_BUCKETS,
            registry=reg,
        )
        self.instances_sent = Counter(
            f"{PREFIX}_instances_sent",
            "Instances the destination acknowledged, by destination.",
            ["destination"],
            registry=reg,
        )
        self.instances_quarantined = Counter(
            f"{PREFIX}_instances_quarantined",
            "Instances left out of a delivery (refused by the destination for what they are, or "
            "unreadable from the spool), by destination.",
            ["destination"],
            registry=reg,
        )
        self.dead_letters = Counter(
            f"{PREFIX}_dead_letters",
            "Jobs dead-lettered by this node (out of attempts or not retryable), by job kind.",
            ["kind"],
            registry=reg,
        )
        self.associations_open = Gauge(
            f"{PREFIX}_associations_open", "DICOM associations open now (established).", registry=reg
        )
        self.associations_open.set_function(lambda: 0)

    # -- gauges computed at scrape time -------------------------------------------------------------

    def watch_associations(self, count: Callable[[], int]) -> None:
        self.associations_open.set_function(count)

    def watch_queue(self, sessions: sessionmaker[Session]) -> None:
        self.registry.register(QueueCollector(sessions))

    # -- recording (one call where it happens) ----------------------------------------------------

    def record_received(
        self, source: str, calling_ae: str | None, transfer_syntax: str, size: int, outcome: str
    ) -> None:
        key = (source, calling_ae, transfer_syntax, outcome)
        children = self._received.get(key)
        if children is None:  # first instance with these labels: resolve them once (labels() is slow)
            ae = self._ae(calling_ae)
            children = (
                self.instances_received.labels(source, ae, self._syntax(transfer_syntax)),
                self.bytes_received.labels(source, ae),
                self.instance_outcomes.labels(outcome),
            )
            if len(self._received) < MAX_CACHED_CHILDREN:  # bounded, as the labels are
                self._received[key] = children
        count, size_total, outcomes = children
        count.inc()
        size_total.inc(size)
        outcomes.inc()

    def record_refused(self, source: str, status: int) -> None:
        self.instances_refused.labels(source, f"0x{status:04X}").inc()

    def record_consistency_warning(self, kind: str) -> None:
        """`kind`: one of node.receive.consistency.KINDS (a bounded label)."""
        self.consistency_warnings.labels(kind).inc()

    def record_http_refused(self, status: int) -> None:
        self.http_requests_refused.labels(str(status)).inc()

    def record_association_rejected(self, reason: str) -> None:
        self.associations_rejected.labels(reason).inc()

    def record_series_completed(self, trigger: str) -> None:
        self.series_completed.labels(self._value(trigger)).inc()

    def record_classification(self, facts: dict[str, Any], audit: dict[str, Any], seconds: float) -> None:
        """One fresh analysis: its duration, and per task the final class and the deciding source."""
        if audit.get("analyser") == "none":  # classification disabled: nothing was analysed
            return
        self.classification_seconds.observe(seconds)
        if facts.get("classifiable") is False:
            self.not_classifiable.inc()
        for task in TASKS:
            label = facts.get(f"prediction.{task}")
            if label is None:
                continue
            source = str(facts.get(f"prediction.{task}_source") or "")
            self.classification_results.labels(task, self._value(str(label)), self._value(source)).inc()
            if facts.get(f"disagreement.{task}"):
                self.classification_disagreements.labels(task).inc()

    def record_delivery(self, destination: str, outcome: str, send: SendOutcome | None) -> None:
        """One delivery attempt's end (outcome done, partial, retry or dead_letter) and its send, if any."""
        name = self._destination(destination)
        self.deliveries.labels(name, outcome).inc()
        if send is not None:
            self.delivery_seconds.labels(name).observe(send.duration_seconds)
            if send.sent:
                self.instances_sent.labels(name).inc(len(send.sent))
        if outcome == "dead_letter":
            self.dead_letters.labels("deliver").inc()

    def record_quarantined(self, destination: str, count: int) -> None:
        self.instances_quarantined.labels(self._destination(destination)).inc(count)

    def record_dead_letter(self, kind: str) -> None:
        self.dead_letters.labels(kind).inc()

    # -- exposition -------------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (version 0.0.4)."""
        return generate_latest(self.registry)


class QueueCollector(Collector):
    """`dicom_node_jobs{kind, state}`: unfinished jobs now, and `dicom_node_database_up`; read at scrape."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def describe(self) -> list[Any]:
        return []  # collected at scrape time only; nothing to describe ahead

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily(
            f"{PREFIX}_jobs",
            "Jobs in the queue now, by kind (route, deliver) and state (queued, running, failed).",
            labels=["kind", "state"],
        )
        up = GaugeMetricFamily(f"{PREFIX}_database_up", "1 when the scrape could read the job queue.")
        try:
            with self._sessions() as session:
                rows = session.execute(
                    select(Job.kind, Job.state, func.count())
                    .where(Job.state.in_(QUEUE_STATES))
                    .group_by(Job.kind, Job.state)
                ).all()
        except SQLAlchemyError as exc:
            logger.warning("metrics: cannot read the job queue: %s", str(exc).splitlines()[0])
            up.add_metric([], 0)
            yield up
            return
        counts = {(str(kind), str(state)): int(n) for kind, state, n in rows}
        for kind in ("route", "deliver"):
            for state in QUEUE_STATES:
                jobs.add_metric([kind, state], counts.pop((kind, state), 0))
        for (kind, state), n in sorted(counts.items()):
            jobs.add_metric([kind, state], n)
        up.add_metric([], 1)
        yield jobs
        yield up

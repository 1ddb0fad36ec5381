"""Route decides, delivery executes a frozen plan (a running node, pynetdicom peers on loopback).

- a rules reload while a delivery is queued changes nothing about it: it goes where it was planned;
- `deliveries retry ID --replan` decides again with the rules in force and the delivery follows;
- a failing route job is retried with backoff, dead-lettered after its last attempt, and requeued by
  `deliveries retry`, like a delivery.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.analysis import AnalysisResult
from node.config import Settings
from node.db.models import Job, JobKind, JobState
from node.deliveries import retry_job
from tests.interop.e2e import events, jobs_in, write_rules
from tests.nodeutil import make_settings, running_node, store, synthetic_ct, wait_for
from tests.peers import free_port, in_process_scp


def _only_delivery(node: object) -> Job:
    (delivery,) = jobs_in(node, JobKind.DELIVER)  # type: ignore[arg-type]
    return delivery


def test_reload_does_not_change_a_queued_delivery_and_replan_does(tmp_path: Path) -> None:
    dead_port = free_port()  # nobody listens: every attempt fails and is retried
    rules_path = write_rules(
        tmp_path / "rules.yaml", {"pacs": {"ae_title": "TESTSCP", "host": "127.0.0.1", "port": dead_port}}
    )
    settings = make_settings(
        tmp_path,
        rules_path=str(rules_path),
        forward={"max_attempts": 4, "backoff_initial_seconds": 0.3, "backoff_factor": 1.0},
    )
    with in_process_scp() as sink, running_node(settings) as node:
        series_uid = generate_uid()
        assert store(node.port, [synthetic_ct(series_uid, number=n) for n in (1, 2, 3)]) == [0, 0, 0]
        wait_for(lambda: events(node, "delivery.retry"), what="a failed first attempt")
        # The administrator points "pacs" at the live peer and reloads: queued work keeps its plan.
        write_rules(rules_path, {"pacs": {"ae_title": "TESTSCP", "host": "127.0.0.1", "port": sink.port}})
        assert "loaded 1 rules" in node.reload_rules()
        wait_for(lambda: _only_delivery(node).state == JobState.FAILED, timeout=30, what="dead letter")
        delivery = _only_delivery(node)
        assert sink.received == []
        assert str(dead_port) in (delivery.last_error or "")
        assert delivery.plan is not None and delivery.plan["destination"]["port"] == dead_port
        attempts = [e.details for e in events(node, "delivery.attempt")]
        assert len(attempts) == 4

        # --replan: the route job decides again with the rules in force; the delivery follows.
        with node.sessions() as session:
            route = retry_job(session, delivery.id, replan=True)
        assert route.kind == JobKind.ROUTE
        node.wake_router.set()
        wait_for(lambda: _only_delivery(node).state == JobState.DONE, timeout=30, what="replanned delivery")
        assert sorted(r.sop_instance_uid for r in sink.received) == sorted(
            {r.sop_instance_uid for r in sink.received}
        )
        assert len(sink.received) == 3
        (replanned,) = events(node, "delivery.replanned")
        assert replanned.details is not None
        assert replanned.details["destination_changed"] is True
        assert replanned.details["old_plan"]["destination"]["port"] == dead_port
        assert replanned.details["plan"]["destination"]["port"] == sink.port
        decisions = events(node, "route.decision")
        assert len(decisions) == 2
        # The second decision was made on the stored analysis: the series was not analysed again.
        assert len(events(node, "series.analysed")) == 1
        assert decisions[0].details is not None and decisions[1].details is not None
        assert decisions[0].details["rules_sha256"] != decisions[1].details["rules_sha256"]


def test_a_destination_removed_by_a_reload_still_gets_what_was_queued_for_it(tmp_path: Path) -> None:
    """The plan holds the destination's settings: renaming it in the rules does not orphan the delivery."""
    answers = iter([0xA700] * 3)  # the first three C-STOREs: out of resources (retryable)
    rules_path = tmp_path / "rules.yaml"
    settings = make_settings(
        tmp_path,
        rules_path=str(rules_path),
        forward={"max_attempts": 5, "backoff_initial_seconds": 0.3, "backoff_factor": 1.0},
    )
    with in_process_scp(status_for=lambda uid: next(answers, 0x0000)) as sink:
        write_rules(rules_path, {"old-name": {"ae_title": "TESTSCP", "host": "127.0.0.1", "port": sink.port}})
        with running_node(settings) as node:
            series_uid = generate_uid()
            assert store(node.port, [synthetic_ct(series_uid, number=n) for n in (1, 2)]) == [0, 0]
            wait_for(lambda: events(node, "delivery.retry"), what="a refused first attempt")
            write_rules(rules_path, {"new-name": {"ae_title": "OTHER", "host": "127.0.0.1", "port": 9}})
            node.reload_rules()
            wait_for(lambda: _only_delivery(node).state == JobState.DONE, timeout=30, what="delivery")
            assert _only_delivery(node).destination == "old-name"
            assert not events(node, "delivery.dead_letter")


class FlakyAnalyser:
    """Raises for the first `failures` calls (a classifier crash, a transient error), then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.lock = threading.Lock()

    def analyse(self, series_uid: str, header: Dataset, files: Sequence[Path]) -> AnalysisResult:
        with self.lock:
            self.calls += 1
            if self.calls <= self.failures:
                raise RuntimeError(f"analyser failure {self.calls}")
        return AnalysisResult(facts={}, audit={"analyser": "flaky"}, summary="analysed")


def route_retry_settings(tmp_path: Path, port: int, max_attempts: int) -> Settings:
    """Rules sending CT to one local peer; route jobs retried quickly, at most max_attempts times."""
    pacs = {"ae_title": "TESTSCP", "host": "127.0.0.1", "port": port}
    rules = write_rules(tmp_path / "rules.yaml", {"pacs": pacs})
    return make_settings(
        tmp_path,
        rules_path=str(rules),
        route={"max_attempts": max_attempts, "backoff_initial_seconds": 0.2, "backoff_factor": 1.0},
    )


def test_a_failing_route_job_is_retried_with_backoff(tmp_path: Path) -> None:
    with in_process_scp() as sink:
        settings = route_retry_settings(tmp_path, sink.port, max_attempts=3)
        with running_node(settings, FlakyAnalyser(failures=1)) as node:
            assert store(node.port, [synthetic_ct(number=1)]) == [0]
            wait_for(lambda: len(sink.received) == 1, timeout=30, what="delivery after one route retry")
            (retry,) = events(node, "route.retry")
            assert retry.message.endswith("RuntimeError: analyser failure 1")
            assert not events(node, "route.failed")


def test_a_dead_lettered_route_job_is_requeued_by_deliveries_retry(tmp_path: Path) -> None:
    with in_process_scp() as sink:
        settings = route_retry_settings(tmp_path, sink.port, max_attempts=2)
        analyser = FlakyAnalyser(failures=2)
        with running_node(settings, analyser) as node:
            series_uid = generate_uid()
            assert store(node.port, [synthetic_ct(series_uid, number=n) for n in (1, 2)]) == [0, 0]
            wait_for(lambda: events(node, "route.failed"), timeout=30, what="route dead letter")
            (route,) = jobs_in(node, JobKind.ROUTE)
            assert (route.state, route.attempts) == (JobState.FAILED, 2)
            assert len(events(node, "route.retry")) == 1
            assert jobs_in(node, JobKind.DELIVER) == [] and sink.received == []
            # Fixed (here: the analyser stops failing); the operator requeues the route job.
            with node.sessions() as session:
                retry_job(session, route.id)
            node.wake_router.set()
            wait_for(lambda: len(sink.received) == 2, timeout=30, what="delivery after the requeue")
            assert analyser.calls == 3



def test_without_rules_a_series_is_kept_and_routed_once_rules_come(tmp_path: Path) -> None:
    from node import retention
    from node.db.models import Series, utcnow

    rules_path = tmp_path / "rules.yaml"
    settings = make_settings(tmp_path, rules_path=None, retention={"keep_seconds": 0})
    with in_process_scp() as sink, running_node(settings) as node:
        series_uid = generate_uid()
        assert store(node.port, [synthetic_ct(series_uid, number=n) for n in (1, 2)]) == [0, 0]
        wait_for(lambda: events(node, "route.decision"), what="the route step")
        (decision,) = events(node, "route.decision")
        assert decision.message == "no rules file configured: the series stays in the spool"
        with node.sessions() as session:
            assert retention.sweep(session, node.spool, 0, now=utcnow()) == 0  # kept: nothing decided
            series = session.query(Series).filter_by(series_uid=series_uid).one()
            assert series.state == "complete" and series.files_deleted_at is None
        # Rules arrive; the operator routes the waiting series.
        write_rules(rules_path, {"pacs": {"ae_title": "TESTSCP", "host": "127.0.0.1", "port": sink.port}})
        node.rules.path = rules_path
        node.reload_rules()
        (route,) = jobs_in(node, JobKind.ROUTE)
        with node.sessions() as session:
            retry_job(session, route.id, force=True)
        node.wake_router.set()
        wait_for(lambda: len(sink.received) == 2, timeout=30, what="delivery once rules are in force")

"""Workers outlive database outages, and the node's health says when one is dead or stuck.

The outage is simulated in front of a real migrated database: a session factory that raises SQLAlchemy's
OperationalError while "down" is set, as a stopped PostgreSQL or a locked SQLite does (the real
PostgreSQL outage is in tests/interop/test_postgres.py).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from node import jobs
from node.analysis import AnalysisResult
from node.cli import main as cli_main
from node.db.models import Job, JobKind, JobState, Series, SeriesState, utcnow
from node.db.session import make_session_factory
from node.health import HEALTH_FILE, read_health
from node.workers import JobWorker
from tests.nodeutil import kill_worker, make_settings, running_node, store, synthetic_ct, wait_for


class SwitchableDatabase:
    """A session factory that fails like an unreachable database while `down` is set."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory
        self.down = threading.Event()
        self.refused = 0

    def __call__(self) -> Session:
        if self.down.is_set():
            self.refused += 1
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("database is down"))
        return self.factory()


@pytest.fixture
def database(db_engine: Engine) -> Iterator[SwitchableDatabase]:
    yield SwitchableDatabase(make_session_factory(db_engine))


def add_job(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        now = utcnow()
        series = Series(
            series_uid=generate_uid(),
            study_uid="1.2.3",
            state=SeriesState.COMPLETE,
            first_received_at=now,
            last_received_at=now,
        )
        session.add(series)
        session.flush()
        job = jobs.enqueue(session, JobKind.ROUTE, series, 1)
        assert job is not None
        session.commit()
        return job.id


def start_worker(
    database: SwitchableDatabase, handler: Any, on_crash: Any
) -> tuple[JobWorker, threading.Event, threading.Event]:
    wakeup, stop = threading.Event(), threading.Event()
    worker = JobWorker(
        "router-0",
        [JobKind.ROUTE],
        database,  # type: ignore[arg-type]
        handler,
        on_crash,
        wakeup,
        stop,
        idle_poll_seconds=0.05,
        max_backoff_seconds=0.2,
    )
    worker.start()
    return worker, wakeup, stop


def test_worker_survives_a_database_outage_while_idle(database: SwitchableDatabase) -> None:
    handled: list[int] = []

    def handler(session: Session, job: Job) -> None:
        handled.append(job.id)
        jobs.finish(session, job)
        session.commit()

    worker, wakeup, stop = start_worker(database, handler, lambda s, j, e: None)
    try:
        database.down.set()
        wait_for(lambda: database.refused >= 5, what="the worker to try the database several times")
        assert worker.is_alive(), "the worker died on a database error"
        assert worker.beat.outage is not None and "database is down" in worker.beat.outage
        database.down.clear()
        job_id = add_job(database.factory)
        wakeup.set()
        wait_for(lambda: handled == [job_id], what="the job after the outage")
        wait_for(lambda: worker.beat.outage is None, what="the outage to be over")
    finally:
        stop.set()
        worker.join(5)


def test_a_failure_that_could_not_be_recorded_is_recorded_after_the_outage(
    database: SwitchableDatabase,
) -> None:
    """The database goes away during a job: its failure is recorded once it is back, so the job does not
    stay `running` until the next restart."""

    def handler(session: Session, job: Job) -> None:
        database.down.set()
        raise RuntimeError("lost the database mid-job")

    recorded: list[str] = []

    def on_crash(session: Session, job: Job, exc: BaseException) -> None:
        if database.down.is_set():  # the session's own connection is gone too
            raise OperationalError("UPDATE jobs", {}, ConnectionRefusedError("database is down"))
        fresh = session.get(Job, job.id)
        assert fresh is not None
        jobs.dead_letter(session, fresh, str(exc))
        session.commit()
        recorded.append(str(exc))

    job_id = add_job(database.factory)
    worker, _, stop = start_worker(database, handler, on_crash)
    try:
        wait_for(lambda: database.refused >= 3, what="on_crash to meet the outage")
        assert recorded == []
        database.down.clear()
        wait_for(lambda: recorded == ["lost the database mid-job"], what="the failure to be recorded")
        with database.factory() as session:
            job = session.get(Job, job_id)
            assert job is not None and job.state == JobState.FAILED
        assert worker.is_alive()
    finally:
        stop.set()
        worker.join(5)


def health_of(data_dir: Path) -> dict[str, Any]:
    return json.loads((data_dir / HEALTH_FILE).read_text())


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the simulated death
def test_a_dead_worker_makes_the_node_unhealthy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(tmp_path, health={"interval_seconds": 0.1})
    data_dir = str(settings.data_dir)
    with running_node(settings) as node:
        wait_for(lambda: read_health(settings.data_dir / HEALTH_FILE)[0], what="a healthy first report")
        assert cli_main(["health", "--data-dir", data_dir]) == 0
        assert capsys.readouterr().out.startswith("healthy")

        kill_worker(node, "delivery-0")
        wait_for(lambda: not health_of(settings.data_dir)["healthy"], what="an unhealthy report")
        assert "worker delivery-0 is not running" in health_of(settings.data_dir)["problems"]
        assert cli_main(["health", "--data-dir", data_dir]) == 1
        out = capsys.readouterr().out
        assert out.startswith("UNHEALTHY") and "delivery-0 is not running" in out
    # Stopped: the file is gone, and `health` says the node is not running.
    assert cli_main(["health", "--data-dir", data_dir]) == 1
    assert "the node is not running" in capsys.readouterr().out


class BlockingAnalyser:
    def __init__(self) -> None:
        self.release = threading.Event()

    def analyse(self, series_uid: str, header: Dataset, files: Any) -> AnalysisResult:
        self.release.wait(30)
        return AnalysisResult(summary="analysed")


def test_a_worker_stuck_on_one_job_makes_the_node_unhealthy(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, health={"interval_seconds": 0.1, "stuck_job_seconds": 0.5})
    analyser = BlockingAnalyser()
    try:
        with running_node(settings, analyser) as node:
            assert store(node.port, [synthetic_ct()]) == [0]
            wait_for(lambda: not health_of(settings.data_dir)["healthy"], timeout=30, what="a stuck report")
            (problem,) = health_of(settings.data_dir)["problems"]
            assert problem.startswith("worker router-0 has held job 1 for")
            analyser.release.set()
            wait_for(lambda: health_of(settings.data_dir)["healthy"], what="healthy again")
    finally:
        analyser.release.set()


def test_a_stale_health_file_is_unhealthy(tmp_path: Path) -> None:
    path = tmp_path / HEALTH_FILE
    report = {"healthy": True, "written_at": "2026-01-01T00:00:00Z", "interval_seconds": 5}
    path.write_text(json.dumps(report))
    healthy, read = read_health(path)
    assert not healthy and "not running or is hung" in read["problems"][-1]

"""PostgreSQL as the production audit database: migrations, concurrent claims, types, constraints.

Runs against a real server started by the `postgres_server` fixture (tests/pgserver.py). Skipped with a
reason where the PostgreSQL binaries are absent; under CI=true that is a failure (tests/conftest.py).
The DB-agnostic queue tests run on both backends in tests/integration/test_jobs_db.py; this module holds
what only a real server can show.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from node import audit, jobs
from node.audit import Events
from node.config import load_settings
from node.db.migrate import MIGRATIONS_DIR, alembic_config, upgrade
from node.db.models import AuditEvent, Job, JobKind, JobState, Series, SeriesState, utcnow
from node.db.session import make_engine, make_session_factory
from tests.pgserver import DB_USER, PostgresServer

pytestmark = pytest.mark.interop

_counter = iter(range(1, 10_000))


@pytest.fixture
def pg_engine(postgres_server: PostgresServer) -> Iterator[Engine]:
    """A fresh, empty database on the session's server (not migrated)."""
    engine = make_engine(postgres_server.create_database(f"pg_interop_{next(_counter)}"))
    try:
        yield engine
    finally:
        engine.dispose()


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("postgresql://")).get_current_head()
    assert head is not None
    return head


def add_series(session: Session, uid: str) -> Series:
    now = utcnow()
    series = Series(series_uid=uid, study_uid="1.2.3", state=SeriesState.COMPLETE,
                    first_received_at=now, last_received_at=now)
    session.add(series)
    session.flush()
    return series


def test_upgrade_twice_on_a_real_server(pg_engine: Engine) -> None:
    assert MIGRATIONS_DIR.is_dir()
    upgrade(pg_engine)
    upgrade(pg_engine)
    inspector = inspect(pg_engine)
    assert {"series", "instances", "jobs", "sent_instances", "audit_events", "alembic_version"} <= set(
        inspector.get_table_names()
    )
    with pg_engine.connect() as conn:
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        assert versions == [head_revision()]
        # UTC columns are plain timestamps holding UTC (the server's or session's zone never applies).
        types: dict[str, str] = dict(conn.execute(text(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'audit_events'"
        )).all())
    assert types["at"] == "timestamp without time zone"
    assert types["details"] in {"json", "jsonb"}
    uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints("jobs")}
    assert ("kind", "series_id", "generation", "destination") in uniques


def test_config_database_url_reaches_the_server(postgres_server: PostgresServer, tmp_path: Path) -> None:
    url = postgres_server.create_database(f"pg_interop_{next(_counter)}")
    config = tmp_path / "node.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\ndatabase_url: '{url}'\n")
    settings = load_settings(config)
    assert settings.resolved_database_url == url
    engine = make_engine(settings.resolved_database_url)
    try:
        upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_database()")).scalar() == url.rsplit("/", 1)[1]
    finally:
        engine.dispose()


def test_many_concurrent_claimers_share_out_every_job_once(pg_engine: Engine) -> None:
    upgrade(pg_engine)
    factory = make_session_factory(pg_engine)
    with factory() as session:
        series = [add_series(session, f"1.2.840.77.{i}") for i in range(5)]
        for i in range(200):
            jobs.enqueue(session, JobKind.DELIVER, series[i % 5], 1, destination=f"d{i}")
        session.commit()
    workers = 8
    barrier = threading.Barrier(workers)
    claimed: list[list[int]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []

    def worker(slot: int) -> None:
        try:
            with factory() as session:
                barrier.wait(timeout=30)
                while (job := jobs.claim(session, [JobKind.DELIVER])) is not None:
                    claimed[slot].append(job.id)
                    # Half the jobs fail once and come straight back: claims race with re-queues.
                    if job.id % 2 and job.attempts == 1:
                        jobs.fail(session, job, "transient", max_attempts=3, initial=0, factor=1, maximum=0)
                        session.commit()
        except BaseException as exc:  # collected and re-raised by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a claimer hung"
    assert not errors, errors
    counts = Counter(job_id for per in claimed for job_id in per)
    assert len(counts) == 200
    # Each job claimed exactly as often as it was attempted: once, or twice for the ones failed once.
    assert all(n == (2 if job_id % 2 else 1) for job_id, n in counts.items()), counts
    assert sum(1 for per in claimed if per) > 1, "only one worker ever claimed: the test did not race"
    with factory() as session:
        rows = session.execute(select(Job.id, Job.state, Job.attempts)).all()
        assert all(state == JobState.RUNNING and tries == counts[job_id] for job_id, state, tries in rows)


def test_database_refuses_a_duplicate_job_even_without_the_check(pg_engine: Engine) -> None:
    """Two routers racing past enqueue()'s SELECT: the unique constraint keeps one job."""
    upgrade(pg_engine)
    factory = make_session_factory(pg_engine)
    with factory() as session:
        series_id = add_series(session, "1.2.840.77.900").id
        session.commit()
    now = utcnow()

    def job() -> Job:
        return Job(kind=JobKind.DELIVER, series_id=series_id, generation=1, destination="pacs",
                   state=JobState.QUEUED, attempts=0, next_run_at=now, created_at=now, updated_at=now)

    with factory() as first, factory() as second:
        first.add(job())
        first.commit()
        second.add(job())
        with pytest.raises(IntegrityError):
            second.commit()


def test_utc_datetimes_do_not_depend_on_the_session_time_zone(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database(f"pg_interop_{next(_counter)}")
    upgrade_engine = make_engine(url)
    upgrade(upgrade_engine)
    upgrade_engine.dispose()
    # A client whose session time zone is far from UTC (and observes daylight saving).
    engine = make_engine(url)
    engine_ny = create_engine(url, connect_args={"options": "-c timezone=America/New_York"})
    try:
        at = dt.datetime(2026, 3, 8, 7, 30, 0, 123456, tzinfo=dt.UTC)  # the hour US clocks jump
        with make_session_factory(engine_ny)() as session:
            with session.begin():
                row = audit.record(session, Events.SERIES_COMPLETE, "complete", series_uid="1.2.3.9",
                                   details={"count": 500, "reason": "quiet", "ratio": 0.5, "note": "Größe ✓"})
                row.at = at
            row_id = row.id
            assert session.execute(text("SHOW timezone")).scalar() == "America/New_York"
        with make_session_factory(engine)() as session:
            back = session.get_one(AuditEvent, row_id)
            assert back.at == at and back.at.tzinfo == dt.UTC
            assert back.details == {"count": 500, "reason": "quiet", "ratio": 0.5, "note": "Größe ✓"}
            # The stored wall-clock value is the UTC one.
            raw = session.execute(text("SELECT at FROM audit_events WHERE id = :i"), {"i": row_id}).scalar()
            assert raw == at.replace(tzinfo=None)
            # And the JSON is queryable by the server (radiology IT runs SQL against the audit table).
            count = session.execute(
                text("SELECT (details->>'count')::int FROM audit_events WHERE id = :i"), {"i": row_id}
            ).scalar()
            assert count == 500
            latest = session.scalars(select(AuditEvent).where(AuditEvent.series_uid == "1.2.3.9")).one()
            assert latest.id == row_id
    finally:
        engine_ny.dispose()
        engine.dispose()


def test_requeue_and_recovery_audit_rows_commit_with_the_state_change(pg_engine: Engine) -> None:
    upgrade(pg_engine)
    factory = make_session_factory(pg_engine)
    with factory() as session:
        series = add_series(session, "1.2.840.77.950")
        job = jobs.enqueue(session, JobKind.DELIVER, series, 1, destination="pacs")
        assert job is not None
        job_id = job.id
        session.commit()
    with factory() as session:
        job = jobs.claim(session, [JobKind.DELIVER])
        assert job is not None
        jobs.requeue(session, job, "operator")
        session.rollback()  # the caller gave up: neither the state change nor its audit row remain
    with factory() as session:
        assert session.get_one(Job, job_id).state == JobState.RUNNING
        assert session.scalars(select(AuditEvent)).all() == []
        assert jobs.recover_interrupted(session) == 1
        session.commit()
    with factory() as session:
        assert session.get_one(Job, job_id).state == JobState.QUEUED
        events = session.scalars(select(AuditEvent.event)).all()
        assert events == [Events.JOB_RECOVERED]


def test_workers_survive_postgresql_stopped_and_started(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """PostgreSQL stopped for several seconds while the node is idle: its workers back off and come back by
    themselves (before: every worker thread died on the first error and nothing was routed again), and
    the health report says the database is unreachable meanwhile."""
    from pydicom.uid import generate_uid

    from node.health import HEALTH_FILE, read_health
    from tests.interop.e2e import all_delivered, write_rules
    from tests.nodeutil import make_settings, running_node, store, synthetic_ct, wait_for
    from tests.peers import in_process_scp

    url = postgres_server.create_database(f"pg_outage_{next(_counter)}")
    with in_process_scp() as sink:
        rules = write_rules(
            tmp_path / "rules.yaml", {"sink": {"ae_title": "TESTSCP", "host": "127.0.0.1", "port": sink.port}}
        )
        settings = make_settings(
            tmp_path, database_url=url, rules_path=str(rules), health={"interval_seconds": 0.2}
        )
        health_file = settings.data_dir / HEALTH_FILE
        with running_node(settings) as node:
            wait_for(lambda: read_health(health_file)[0], what="healthy at start")
            postgres_server.pause()
            try:
                def outage_reported() -> bool:
                    problems = read_health(health_file)[1].get("problems", [])
                    return any("database unreachable" in p for p in problems)

                wait_for(
                    outage_reported,
                    timeout=30,
                    what="the outage in the health report",
                )
                wait_for(
                    lambda: all(w.beat.outage is not None for w in node.workers),
                    timeout=30,
                    what="every worker to notice the outage",
                )
            finally:
                postgres_server.resume()
            assert all(w.is_alive() for w in node.workers)
            wait_for(lambda: read_health(health_file)[0], timeout=30, what="healthy again")
            series_uid = generate_uid()
            assert store(node.port, [synthetic_ct(series_uid, number=n) for n in (1, 2)]) == [0, 0]
            wait_for(lambda: all_delivered(node, 1), timeout=60, what="routing and delivery after the outage")
            # The first store after the restart reconnects; if that outlasts the quiet time, the second
            # instance is a follow-up with its own delivery: wait for both instances, not one job.
            wait_for(lambda: len(sink.received) == 2, timeout=60, what="both instances at the sink")


def test_stores_during_an_outage_get_a700_and_nothing_is_spooled_then_succeed(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """PostgreSQL stopped: a C-STORE gets 0xA700 "database error" (the sender keeps the instance; its
    audit row cannot be written, the WARNING log line says it), no file stays in the spool, and the
    node, on the same association, stores again once the database is back."""
    from sqlalchemy import func, select

    from node.db.models import Instance
    from tests.nodeutil import make_settings, running_node, scu, synthetic_ct

    url = postgres_server.create_database(f"pg_store_outage_{next(_counter)}")
    with running_node(make_settings(tmp_path, database_url=url)) as node:
        assoc = scu().associate("127.0.0.1", node.port, ae_title="NODE")
        try:
            assert int(assoc.send_c_store(synthetic_ct(number=1)).Status) == 0x0000
            postgres_server.pause()
            try:
                refused = assoc.send_c_store(synthetic_ct(number=2))
                assert int(refused.Status) == 0xA700
                assert "database error" in str(refused.ErrorComment)
            finally:
                postgres_server.resume()
            assert int(assoc.send_c_store(synthetic_ct(number=3)).Status) == 0x0000
        finally:
            assoc.release()
        with node.sessions() as session:
            assert session.scalar(select(func.count()).select_from(Instance)) == 2
        assert len(list(node.spool.instances_dir.rglob("*.dcm"))) == 2
        assert not list(node.spool.tmp_dir.iterdir())


def test_no_transaction_is_open_while_a_series_is_analysed(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """The router ends its read transaction before analysing (seconds of assembly and classification):
    while the analyser runs, none of the node's connections is `idle in transaction`."""
    import psycopg

    from node.analysis import AnalysisResult
    from tests.nodeutil import make_settings, running_node, store, synthetic_ct, wait_for

    url = postgres_server.create_database(f"pg_no_txn_{next(_counter)}")
    database = url.rsplit("/", 1)[-1]
    seen: list[int] = []

    class Probe:
        def analyse(self, series_uid: str, header: object, files: object) -> AnalysisResult:
            with psycopg.connect(
                host="127.0.0.1", port=postgres_server.port, user=DB_USER, password=postgres_server.password,
                dbname=database, autocommit=True,
            ) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                    "AND state LIKE 'idle in transaction%%'",
                    (database,),
                ).fetchone()
            seen.append(int(row[0]) if row else -1)
            return AnalysisResult(summary="probed")

    with running_node(make_settings(tmp_path, database_url=url), Probe()) as node:
        assert store(node.port, [synthetic_ct(number=1)]) == [0]
        wait_for(lambda: seen, what="the analysis")
        assert seen == [0], "a connection of the node was idle in transaction during the analysis"
